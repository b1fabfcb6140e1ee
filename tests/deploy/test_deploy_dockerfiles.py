"""Every Dockerfile, parsed line by line: multi-stage, slim Python 3.11, non-root, no build tools at run time,
a health check, the right ports and entry point, and COPY sources that exist and reach the build context."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tccal.config.schema import Config

from .conftest import CONNECTOR_SERVICES, EMULATORS, ROOT

BUILD_TOOLS = re.compile(r"^(gcc(-\d+)?|g\+\+(-\d+)?|build-essential|make|cmake|clang(-\d+)?|cc|.*-dev)$")
DOCKERFILES = {f"services/{s}/Dockerfile": m for s, m in CONNECTOR_SERVICES.items()} | {
    f"emulators/{e}/Dockerfile": m for e, m in EMULATORS.items()
}


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined, comments dropped."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, f"{path}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, rest = text.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            assert keyword == "ARG", f"{path}:{number}: only ARG may precede the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return args, stages


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


def healthcheck_command(instruction: Instruction) -> list[str]:
    words = instruction.args
    assert "CMD" in words, f"line {instruction.line}: HEALTHCHECK without CMD"
    command = words[words.index("CMD") + 3 :].strip()
    return json.loads(command) if command.startswith("[") else shlex.split(command)


def _matches(pattern: list[str], path: list[str]) -> bool:
    """Docker's .dockerignore matching of one pattern against one path, segment by segment (** spans any)."""
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_matches(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], pattern[0]) and _matches(pattern[1:], path[1:])


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (a path in the context) out of the build context: the last
    rule matching the path or one of its parent directories decides."""
    parts = relative.split("/")
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/").split("/")
        if any(_matches(pattern, parts[: i + 1]) for i in range(len(parts))):
            excluded = not negate
    return excluded


def local_distributions() -> dict[str, Path]:
    found = {}
    for pyproject in ROOT.glob("*/**/pyproject.toml"):
        if ".venv" in pyproject.parts:
            continue
        found[tomllib.loads(pyproject.read_text())["project"]["name"]] = pyproject.parent
    return found


def local_dependency_dirs(package_dir: Path) -> set[str]:
    """The package's directory and those of every local distribution it needs, transitively."""
    distributions = local_distributions()
    needed, pending = set(), [package_dir]
    while pending:
        current = pending.pop()
        relative = current.relative_to(ROOT).as_posix()
        if relative in needed:
            continue
        needed.add(relative)
        project = tomllib.loads((current / "pyproject.toml").read_text())["project"]
        for requirement in project.get("dependencies", []):
            name = re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]
            if name in distributions:
                pending.append(distributions[name])
    return needed


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], list[Stage]]:
    relative: str = request.param
    path = ROOT / relative
    assert path.is_file(), f"{relative} is missing"
    args, stages = parse(path)
    return relative, args, stages


def test_every_package_has_a_dockerfile() -> None:
    for kind in ("services", "emulators"):
        for pyproject in (ROOT / kind).glob("*/pyproject.toml"):
            relative = f"{kind}/{pyproject.parent.name}/Dockerfile"
            assert relative in DOCKERFILES, f"{relative}: a package without an image"
            assert (ROOT / relative).is_file(), relative


def test_multi_stage_on_slim_python_311(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    relative, _, stages = dockerfile
    assert len(stages) >= 2, f"{relative}: not multi-stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.image), (
            f"{relative}: stage {stage.name} is FROM {stage.image}, not a slim Python 3.11"
        )
    assert stages[0].image == stages[-1].image, "the venv is built and run on the same interpreter"


def test_final_stage_runs_unprivileged_without_build_tools(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    relative, _, stages = dockerfile
    final = stages[-1]
    users = final.all("USER")
    assert users, f"{relative}: the final stage has no USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"{relative}: runs as {user}"
    if not user.isdigit():
        assert any("useradd" in r.args and user in r.args for r in final.all("RUN")), f"{relative}: user {user}"
    for run in final.all("RUN"):
        words = re.split(r"[\s;&|]+", run.args)
        if "install" in words and ("apt-get" in words or "apt" in words or "apk" in words):
            tools = [w for w in words[words.index("install") + 1 :] if BUILD_TOOLS.match(w)]
            assert not tools, f"{relative}:{run.line}: final stage installs build tools {tools}"
    for copy in final.all("COPY"):
        source = copy.args.split()
        if source[0].startswith("--from="):
            assert source[1] == "/opt/venv", f"{relative}:{copy.line}: copies {source[1]} from the builder"


def test_builder_installs_pinned_wheels(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    relative, _, stages = dockerfile
    runs = " ".join(r.args for r in stages[0].all("RUN"))
    assert "pip wheel" in runs and "--constraint constraints.txt" in runs, f"{relative}: builder does not pin"
    package_dir = (ROOT / relative).parent
    for needed in sorted(local_dependency_dirs(package_dir)):
        assert f"./{needed}" in runs.split(), f"{relative}: the builder does not build {needed}"


def test_copy_sources_exist_in_the_context(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    relative, _, stages = dockerfile
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in copy.args.split() if not w.startswith("--chown") and not w.startswith("--chmod")]
            if words[0].startswith("--from="):
                continue
            for source in words[:-1]:
                path = ROOT / source
                assert path.exists(), f"{relative}:{copy.line}: COPY source {source} does not exist"
                assert not dockerignore_excludes(source.rstrip("/")), f"{relative}: .dockerignore drops {source}"


def test_healthcheck_ports_and_entrypoint(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    relative, _, stages = dockerfile
    final = stages[-1]
    module = DOCKERFILES[relative]
    package_dir = (ROOT / relative).parent
    assert (package_dir / "src" / module / "__main__.py").is_file()
    (entrypoint,) = final.all("ENTRYPOINT")
    assert exec_form(entrypoint) == ["python", "-m", module]
    (check,) = final.all("HEALTHCHECK")
    command = healthcheck_command(check)
    assert "curl" not in command and "wget" not in command
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.args.split()}
    if relative.startswith("services/"):
        name = package_dir.name
        defaults = Config().grpc.endpoint(name)
        expected = {defaults.grpc_port, defaults.http_port}
        if name == "tcs-gateway":
            expected.add(Config().ws_port)
        assert exposed == expected, f"{relative}: EXPOSE {exposed}, the config defaults are {expected}"
        assert command == ["python", "/opt/tc-calendar/healthcheck.py", name]
        copies = [c.args.split() for c in final.all("COPY")]
        assert ["deploy/docker/healthcheck.py", "/opt/tc-calendar/healthcheck.py"] in copies
        env = " ".join(e.args for e in final.all("ENV"))
        assert "TC_CALENDAR_CONFIG=/etc/tc-calendar/config.json" in env
    else:
        assert command[:2] == ["python", "-c"], f"{relative}: {command}"
        assert "urllib.request.urlopen" in command[2]
        (port,) = exposed
        assert f"127.0.0.1:{port}/" in command[2]
        (cmd,) = final.all("CMD")
        assert str(port) in exec_form(cmd), f"{relative}: CMD does not listen on the exposed port {port}"


def copy_into_context(source: str, destination: Path) -> None:
    """COPY `source` (relative to the build context) to `destination`, without what .dockerignore drops."""
    origin = ROOT / source.rstrip("/")
    if origin.is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, destination)
        return

    def ignored(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(ROOT).as_posix()
        return {n for n in names if dockerignore_excludes(f"{relative}/{n}")}

    shutil.copytree(origin, destination, ignore=ignored, dirs_exist_ok=True)


def test_builder_stage_builds_the_wheels(dockerfile: tuple[str, dict[str, str], list[Stage]], tmp_path: Path) -> None:
    """The builder's `pip wheel` step, replayed on exactly what its COPY lines put in /src (with .dockerignore
    applied), with the same build backend (hatchling, and the proto build hook) the dev venv pins. Installing
    the wheels with pip needs the network and is left to `docker build`."""
    relative, _, stages = dockerfile
    builder = stages[0]
    workdir = Path(builder.all("WORKDIR")[-1].args)
    source_root = tmp_path / "src"
    for copy in builder.all("COPY"):
        *sources, target = copy.args.split()
        assert not sources[0].startswith("--"), f"{relative}:{copy.line}: unexpected COPY flags"
        for source in sources:
            destination = (source_root / (workdir / target).relative_to(workdir)).resolve()
            if target.endswith("/") and (ROOT / source).is_file():
                destination = destination / Path(source).name
            copy_into_context(source, destination)
    runs = " ".join(r.args for r in builder.all("RUN")).split()
    packages = [w for w in runs if w.startswith("./")]
    wheels = tmp_path / "wheels"
    for package in packages:
        completed = subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(wheels)],
            cwd=source_root / package,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, f"{relative}: building {package} fails:\n{completed.stderr[-2000:]}"
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == len(packages), built
    module = DOCKERFILES[relative]
    names = {name for wheel in built for name in zipfile.ZipFile(wheel).namelist()}
    assert f"{module}/__main__.py" in names
    assert "trueconf/calendar/v1/common_pb2.py" in names or "proto" not in " ".join(packages)


def test_parser_sees_a_bad_final_stage(tmp_path: Path) -> None:
    """The checks above can fail: a single-stage, root, compiler-laden image is seen as such."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:3.11-slim\n"
        "RUN apt-get update \\\n    && apt-get install -y gcc make\n"
        "# a comment inside\n"
        'ENTRYPOINT ["python", "-m", "x"]\n'
    )
    _, stages = parse(bad)
    assert len(stages) == 1 and not stages[0].all("USER")
    (run,) = stages[0].all("RUN")
    assert "gcc" in run.args and "make" in run.args
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes("services/x/tests/test_a.py")
    assert dockerignore_excludes("proto/gen/python/trueconf/__init__.py")
    assert dockerignore_excludes("libs/tccal/src/tccal/__pycache__/x.pyc")
    assert dockerignore_excludes("deploy/helm/trueconf-calendar-connector/values.yaml")
    assert not dockerignore_excludes("services/ews-ingest/src/ews_ingest/__main__.py")
    assert not dockerignore_excludes("deploy/docker/healthcheck.py")
