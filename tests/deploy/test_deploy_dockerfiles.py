"""The one Dockerfile (deploy/docker/Dockerfile), parsed line by line and resolved for every image with the
build args and target docker-compose.yml gives it: multi-stage, slim Python 3.11, non-root, no build tools at
run time, a health check, the right ports and entry point, and COPY sources that exist and reach the build
context. Build args are substituted only where Docker substitutes them (FROM, ARG, ENV, LABEL, EXPOSE, COPY,
WORKDIR, USER, and RUN through its shell); ENTRYPOINT, CMD and HEALTHCHECK are read from the environment the
image sets, as the container's shell or Python reads it."""

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
import yaml

from tccal.config.schema import Config

from .conftest import COMPOSE_FILE, CONNECTOR_SERVICES, EMULATORS, ROOT

BUILD_TOOLS = re.compile(r"^(gcc(-\d+)?|g\+\+(-\d+)?|build-essential|make|cmake|clang(-\d+)?|cc|.*-dev)$")
DOCKERFILE = "deploy/docker/Dockerfile"
# compose service -> (package directory, module run by `python -m`)
PACKAGES = {s: (f"services/{s}", m) for s, m in CONNECTOR_SERVICES.items()} | {
    f"{e}-emulator": (f"emulators/{e}", m) for e, m in EMULATORS.items()
}
# The ENTRYPOINT of every image: `python -m $TCCAL_ENTRY_MODULE`, arguments given or else $TCCAL_ENTRY_ARGS.
ENTRY_SCRIPT = 'set -f; [ "$#" -gt 0 ] || set -- $TCCAL_ENTRY_ARGS; exec python -m "$TCCAL_ENTRY_MODULE" "$@"'
EXPANDED = {"ENV", "LABEL", "EXPOSE", "COPY", "ADD", "WORKDIR", "USER", "RUN"}


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
    env: dict[str, str] = field(default_factory=dict)

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


_REFERENCE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}|\$(\w+)")


def substitute(text: str, scope: dict[str, str], where: str = "") -> str:
    """${X}, $X, ${X:-default} and ${X:?message} as Docker (and the RUN shell) expand them; unset is empty."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = scope.get(name, "")
        if match.group(2) == "?" and not value:
            raise AssertionError(f"{where}: {match.group(3) or name + ' is required'}")
        if match.group(2) == "-" and not value:
            return match.group(3)
        return value

    return _REFERENCE.sub(one, text)


def env_pairs(args: str) -> dict[str, str]:
    """ENV key=value ... (after substitution), quotes removed as Docker removes them."""
    return dict(word.split("=", 1) for word in shlex.split(args))


def resolve(path: Path, build_args: dict[str, str], target: str | None) -> tuple[list[Stage], Stage]:
    """The stages the target needs (its base stages and those it copies from, first to last) with `build_args`
    applied, and the target stage (its base stages' instructions and environment included), as
    `docker build --target` builds it: a stage the target does not need is not built, so its required args
    are not asked for."""
    global_args, raw_stages = parse(path)
    global_scope = {k: build_args.get(k, v) for k, v in global_args.items()}
    resolved: dict[str, Stage] = {}
    stages: list[Stage] = []
    problems: dict[int, str] = {}
    needs: dict[int, set[int]] = {}
    for index, raw in enumerate(raw_stages):
        image = substitute(raw.image, global_scope)
        base = resolved.get(image)
        stage = Stage(base.image if base else image, raw.name)
        needs[index] = {stages.index(base)} if base else set()
        if base:
            stage.instructions = list(base.instructions)
            stage.env = dict(base.env)
        scope: dict[str, str] = {}
        for instruction in raw.instructions:
            where = f"{path.name}:{instruction.line}"
            if instruction.keyword == "ARG":
                name, has_default, default = instruction.args.partition("=")
                if name in build_args:
                    scope[name] = build_args[name]
                elif has_default:
                    scope[name] = default.strip('"')
                elif name in global_scope:
                    scope[name] = global_scope[name]
                continue
            args = instruction.args
            if instruction.keyword in EXPANDED:
                try:
                    args = substitute(args, {**stage.env, **scope}, where)
                except AssertionError as exc:
                    problems.setdefault(index, str(exc))
            if instruction.keyword == "ENV":
                stage.env.update(env_pairs(args))
            source = re.match(r"--from=(\S+)", args) if instruction.keyword == "COPY" else None
            if source and source.group(1) in resolved:
                needs[index].add(stages.index(resolved[source.group(1)]))
            stage.instructions.append(Instruction(instruction.keyword, args, instruction.line))
        if raw.name:
            resolved[raw.name] = stage
        stages.append(stage)
    final = resolved[target] if target else stages[-1]
    wanted, pending = set(), [stages.index(final)]
    while pending:
        index = pending.pop()
        if index not in wanted:
            wanted.add(index)
            pending.extend(needs[index])
    for index in sorted(wanted):
        if index in problems:
            raise AssertionError(problems[index])
    return [stage for index, stage in enumerate(stages) if index in wanted], final


@dataclass
class Image:
    compose_name: str
    package_dir: str
    module: str
    args: dict[str, str]
    stages: list[Stage]
    final: Stage


def compose_builds() -> dict[str, dict[str, object]]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {name: d["build"] for name, d in services.items() if d.get("build")}


def image_of(compose_name: str, build: dict[str, object]) -> Image:
    assert build.get("dockerfile") == DOCKERFILE, f"{compose_name}: not built from {DOCKERFILE}"
    args = {str(k): str(v) for k, v in dict(build.get("args") or {}).items()}  # type: ignore[call-overload]
    target = build.get("target")
    assert isinstance(target, str), f"{compose_name}: no build target"
    stages, final = resolve(ROOT / DOCKERFILE, args, target)
    package_dir, module = PACKAGES[compose_name]
    return Image(compose_name, package_dir, module, args, stages, final)


@pytest.fixture(scope="module", params=sorted(PACKAGES))
def image(request: pytest.FixtureRequest) -> Image:
    builds = compose_builds()
    assert request.param in builds, f"docker-compose.yml does not build {request.param}"
    return image_of(request.param, builds[request.param])


def effective_command(stage: Stage, arguments: list[str] | None = None) -> list[str]:
    """What the container runs: ENTRYPOINT (+ CMD, or `arguments` as `docker run`/Compose give them)."""
    (entrypoint,) = stage.all("ENTRYPOINT")[-1:]
    words = exec_form(entrypoint)
    cmds = stage.all("CMD")
    given = arguments if arguments is not None else (exec_form(cmds[-1]) if cmds else [])
    if words[:2] != ["/bin/sh", "-c"]:
        return words + given
    assert words[2:] == [ENTRY_SCRIPT, "python"], f"unknown entry script {words}"
    if not given:
        given = stage.env.get("TCCAL_ENTRY_ARGS", "").split()
    return ["python", "-m", stage.env["TCCAL_ENTRY_MODULE"], *given]


def test_every_package_has_an_image() -> None:
    builds = compose_builds()
    for kind in ("services", "emulators"):
        for pyproject in (ROOT / kind).glob("*/pyproject.toml"):
            name = pyproject.parent.name if kind == "services" else f"{pyproject.parent.name}-emulator"
            assert name in PACKAGES and name in builds, f"{kind}/{pyproject.parent.name}: a package without an image"
    assert not list(ROOT.glob("services/*/Dockerfile")) and not list(ROOT.glob("emulators/*/Dockerfile")), (
        f"every image is built from {DOCKERFILE}"
    )


def check_multi_stage_on_slim_python_311(image: Image) -> None:
    relative, stages = image.compose_name, image.stages
    assert len(stages) >= 2 and stages[0] is not image.final, f"{relative}: not multi-stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.image), (
            f"{relative}: stage {stage.name} is FROM {stage.image}, not a slim Python 3.11"
        )
    assert stages[0].image == image.final.image, "the venv is built and run on the same interpreter"


def check_final_stage_runs_unprivileged_without_build_tools(image: Image) -> None:
    relative, final = image.compose_name, image.final
    users = final.all("USER")
    assert users, f"{relative}: the final stage has no USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0", ""), f"{relative}: runs as {user!r}"
    if not user.isdigit():
        assert any("useradd" in r.args and user in r.args for r in final.all("RUN")), f"{relative}: user {user}"
    else:
        assert any(f"--uid {user}" in r.args for r in final.all("RUN")), f"{relative}: no user with uid {user}"
    for run in final.all("RUN"):
        words = re.split(r"[\s;&|]+", run.args)
        if "install" in words and ("apt-get" in words or "apt" in words or "apk" in words):
            tools = [w for w in words[words.index("install") + 1 :] if BUILD_TOOLS.match(w)]
            assert not tools, f"{relative}:{run.line}: final stage installs build tools {tools}"
    for copy in final.all("COPY"):
        source = copy.args.split()
        if source[0].startswith("--from="):
            assert source[1] == "/opt/venv", f"{relative}:{copy.line}: copies {source[1]} from the builder"


def check_builder_installs_pinned_wheels(image: Image) -> None:
    relative = image.compose_name
    runs = " ".join(r.args for r in image.stages[0].all("RUN"))
    assert "pip wheel" in runs and "--constraint constraints.txt" in runs, f"{relative}: builder does not pin"
    needed = local_dependency_dirs(ROOT / image.package_dir)
    source = " ".join(p.read_text() for p in (ROOT / image.package_dir / "src").rglob("*.py"))
    if re.search(r"^\s*(from|import) tccal\b", source, re.MULTILINE):
        needed |= local_dependency_dirs(ROOT / "libs/tccal")
    (wheel_step,) = re.findall(r"pip wheel [^&;]*", runs)
    for directory in sorted(needed):
        assert f"./{directory}" in wheel_step.split(), f"{relative}: the builder does not build {directory}"


def check_copy_sources_exist_in_the_context(image: Image) -> None:
    relative = image.compose_name
    for stage in image.stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in copy.args.split() if not w.startswith("--chown") and not w.startswith("--chmod")]
            if words[0].startswith("--from="):
                continue
            for source in words[:-1]:
                path = ROOT / source
                assert path.exists(), f"{relative}:{copy.line}: COPY source {source} does not exist"
                assert not dockerignore_excludes(source.rstrip("/")), f"{relative}: .dockerignore drops {source}"


def check_healthcheck_ports_and_entrypoint(image: Image) -> None:
    relative, final, module = image.compose_name, image.final, image.module
    package_dir = ROOT / image.package_dir
    assert (package_dir / "src" / module / "__main__.py").is_file()
    assert effective_command(final, ["--x"]) == ["python", "-m", module, "--x"]
    (check,) = final.all("HEALTHCHECK")[-1:]
    command = healthcheck_command(check)
    assert "curl" not in command and "wget" not in command
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.args.split()}
    labels = " ".join(label.args for label in final.all("LABEL"))
    assert f'org.opencontainers.image.title="tc-calendar-{relative}"' in labels, f"{relative}: {labels}"
    if image.package_dir.startswith("services/"):
        name = package_dir.name
        defaults = Config().grpc.endpoint(name)
        expected = {defaults.grpc_port, defaults.http_port}
        if name == "tcs-gateway":
            expected.add(Config().ws_port)
        assert exposed == expected, f"{relative}: EXPOSE {exposed}, the config defaults are {expected}"
        assert command[:2] == ["python", "/opt/tc-calendar/healthcheck.py"], command
        assert (command[2:] or [final.env.get("TCCAL_SERVICE")]) == [name], f"{relative}: health of {command}"
        copies = [c.args.split() for c in final.all("COPY")]
        assert ["deploy/docker/healthcheck.py", "/opt/tc-calendar/healthcheck.py"] in copies
        assert final.env.get("TC_CALENDAR_CONFIG") == "/etc/tc-calendar/config.json"
        assert effective_command(final) == ["python", "-m", module]
    else:
        assert command[:2] == ["python", "-c"], f"{relative}: {command}"
        assert "urllib.request.urlopen" in command[2]
        code = command[2].replace("os.environ['TCCAL_HEALTH_URL']", repr(final.env.get("TCCAL_HEALTH_URL", "")))
        (port,) = exposed
        assert f"127.0.0.1:{port}/" in code, f"{relative}: the health check does not ask port {port}: {code}"
        default = effective_command(final)
        assert str(port) in default, f"{relative}: {default} does not listen on the exposed port {port}"


CHECKS = [
    check_multi_stage_on_slim_python_311,
    check_final_stage_runs_unprivileged_without_build_tools,
    check_builder_installs_pinned_wheels,
    check_copy_sources_exist_in_the_context,
    check_healthcheck_ports_and_entrypoint,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_image(image: Image, check: object) -> None:
    assert callable(check)
    check(image)


def check_all(compose_name: str, build: dict[str, object]) -> None:
    image = image_of(compose_name, build)
    for check in CHECKS:
        check(image)


@pytest.mark.parametrize(
    ("compose_name", "change", "complaint"),
    [
        ("ews-ingest", {"PORTS": "50061"}, "EXPOSE"),
        ("tcs-gateway", {"PACKAGES": "./libs/tccal ./services/tcs-gateway"}, "does not build proto"),
        ("trueconf-emulator", {"PACKAGES": "./emulators/trueconf"}, "does not build libs/tccal"),
        ("licensing", {"NAME": "sync-engine"}, "tc-calendar-sync-engine"),
        ("exchange-emulator", {"HEALTH_URL": "http://127.0.0.1:8081/_emulator/"}, "does not ask port 8080"),
        ("registration-emulator", {"ARGS": "serve"}, "does not listen"),
        ("sync-engine", {"MODULE": ""}, "MODULE is required"),
        ("sync-engine", {"target": "emulator"}, "HEALTH_URL is required"),
    ],
)
def test_checks_fail_on_wrong_build_args(compose_name: str, change: dict[str, str], complaint: str) -> None:
    """The checks above can fail: a wrong build arg (or target) in docker-compose.yml is seen."""
    build = dict(compose_builds()[compose_name])
    args = dict(build["args"])  # type: ignore[call-overload]
    for key, value in change.items():
        if key == "target":
            build["target"] = value
        else:
            args[key] = value
    build["args"] = args
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_all(compose_name, build)


def test_entry_script_runs_the_module_with_default_or_given_arguments(tmp_path: Path) -> None:
    """ENTRY_SCRIPT under a real /bin/sh, with a `python` that prints its arguments."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "TCCAL_ENTRY_MODULE": "some_module", "TCCAL_ENTRY_ARGS": "--port 80 *"}

    def run(*given: str) -> list[str]:
        done = subprocess.run(
            ["/bin/sh", "-c", ENTRY_SCRIPT, "python", *given], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.splitlines()

    assert run() == ["-m", "some_module", "--port", "80", "*"]
    assert run("--user=a:a@x.test:A B", "--host=0.0.0.0") == [
        "-m",
        "some_module",
        "--user=a:a@x.test:A B",
        "--host=0.0.0.0",
    ]
    env["TCCAL_ENTRY_ARGS"] = ""
    assert run() == ["-m", "some_module"]


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


def test_builder_stage_builds_the_wheels(image: Image, tmp_path: Path) -> None:
    """The builder's `pip wheel` step, replayed on exactly what its COPY lines put in /src (with .dockerignore
    applied), with the same build backend (hatchling, and the proto build hook) the dev venv pins. Installing
    the wheels with pip needs the network and is left to `docker build`."""
    relative = image.compose_name
    builder = image.stages[0]
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
    runs = " ".join(r.args for r in builder.all("RUN"))
    (wheel_step,) = re.findall(r"pip wheel [^&;]*", runs)
    packages = [w for w in wheel_step.split() if w.startswith("./")]
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
    module = image.module
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


def test_readme_build_commands_are_composes() -> None:
    """deploy/README.md gives each image's `docker build` command: the same Dockerfile, target and args."""
    text = (ROOT / "deploy" / "README.md").read_text().replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("docker build ")]
    documented: dict[str, tuple[str, str, dict[str, str]]] = {}
    for words in commands:
        options = dict(zip(words[2::2], words[3::2], strict=False))
        tag = next(w for i, w in enumerate(words) if words[i - 1] == "-t")
        args = dict(w.split("=", 1) for i, w in enumerate(words) if words[i - 1] == "--build-arg")
        assert words[-1] == ".", words
        documented[tag.split("/")[1].split(":")[0]] = (options["-f"], options["--target"], args)
    for name, build in compose_builds().items():
        assert name in documented, f"deploy/README.md has no build command of {name}"
        dockerfile, target, args = documented[name]
        assert (dockerfile, target) == (build["dockerfile"], build["target"]), name
        assert args == {str(k): str(v) for k, v in dict(build["args"]).items()}, name  # type: ignore[call-overload]
