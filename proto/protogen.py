"""Generate Python messages, gRPC stubs and .pyi typing stubs from proto/trueconf/**/*.proto.

Used by the build hook and by the staleness test; run by hand with `python proto/protogen.py OUT_DIR`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PACKAGE_DIRS = ("trueconf", "trueconf/calendar", "trueconf/calendar/v1")


def proto_files(proto_root: Path) -> list[Path]:
    return sorted(proto_root.glob("trueconf/**/*.proto"))


def _plugin(name: str) -> str:
    """Path of mypy-protobuf's protoc plugin, beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / f"protoc-gen-{name}"
    found = str(beside) if beside.exists() else shutil.which(f"protoc-gen-{name}")
    if not found:
        raise FileNotFoundError(f"protoc-gen-{name} not found: install mypy-protobuf")
    return found


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Regenerate `out_dir/trueconf/...` from the .proto files under `proto_root`; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    target = out_dir / "trueconf"
    if target.exists():
        shutil.rmtree(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
    plugins = [f"--plugin=protoc-gen-{name}={_plugin(name)}" for name in ("mypy", "mypy_grpc")]
    args = [
        "grpc_tools.protoc",
        *plugins,
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {sources}")
    for package in PACKAGE_DIRS:
        (out_dir / package / "__init__.py").touch()
    (target / "py.typed").touch()
    return sorted(p for p in target.rglob("*") if p.is_file())


if __name__ == "__main__":
    generate(Path(__file__).parent, Path(sys.argv[1]))
