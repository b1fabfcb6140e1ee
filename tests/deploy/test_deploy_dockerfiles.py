"""The one Dockerfile (deploy/docker/Dockerfile), read with dockerfile-parse for every image docker-compose.yml
builds from it (with that image's build args and target): multi-stage, slim Python 3.11, non-root, no build
tools at run time, a health check, the right ports and entry point, COPY sources that exist and reach the
build context, and a builder that builds the right wheels.

dockerfile-parse splits the instructions, resolves FROM and ARG with the build args, keeps the ARG/ENV/LABEL
values in force at each instruction, and substitutes them (its WordSplitter does it for the instructions it
does not expand itself: EXPOSE, USER, WORKDIR, COPY, and RUN's words). Written here, because it models none of
it: a stage built FROM another stage inherits that stage's instructions, environment and labels;
`docker build --target` builds only the stages the target needs; and a RUN's `${ARG:?message}` stops the
build when the arg is empty (the shell does that, not Docker)."""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from dockerfile_parse.parser import image_from
from dockerfile_parse.util import Context, WordSplitter
from packaging.requirements import Requirement

from licensing.authority import AUTHORITY_PUBLIC_KEY, PRODUCTION_ENV, TEST_KEY_SETTING, is_production
from licensing.settings import LicensingSettings
from tccal.config.schema import Config, NotificationListen

from .conftest import COMPOSE_FILE, CONNECTOR_SERVICES, EMULATORS, OPTIONAL_SERVICES, ROOT

DOCKERFILE = "deploy/docker/Dockerfile"
BUILD_TOOLS = re.compile(r"^(gcc(-\d+)?|g\+\+(-\d+)?|build-essential|make|cmake|clang(-\d+)?|cc|.*-dev)$")
# compose service -> (package directory, module run by `python -m`)
PACKAGES = {s: (f"services/{s}", m) for s, m in (CONNECTOR_SERVICES | OPTIONAL_SERVICES).items()} | {
    f"{e}-emulator": (f"emulators/{e}", m) for e, m in EMULATORS.items()
}
# The ENTRYPOINT of every image: `python -m $TCCAL_ENTRY_MODULE`, arguments given or else $TCCAL_ENTRY_ARGS.
ENTRY_SCRIPT = 'set -f; [ "$#" -gt 0 ] || set -- $TCCAL_ENTRY_ARGS; exec python -m "$TCCAL_ENTRY_MODULE" "$@"'
REQUIRED_ARG = re.compile(r"\$\{(\w+):\?([^}]*)\}")


@dataclass(eq=False)
class Step:
    """One instruction and the build args and environment in force at it (dockerfile-parse's Context)."""

    keyword: str
    value: str
    line: int
    context: Context

    def words(self, text: str | None = None) -> list[str]:
        """`text` (the whole value by default) with ARG/ENV substituted and quotes consumed, split at blanks."""
        text = self.value if text is None else text
        return WordSplitter(text, self.context.args, self.context.envs).dequote().split()

    def commands(self) -> list[list[str]]:
        """The words of each simple command of a RUN (split at && || ;), as its /bin/sh runs them."""
        return [self.words(command) for command in re.split(r"&&|\|\||;", self.value)]


@dataclass(eq=False)
class Stage:
    name: str | None
    image: str  # FROM with the build args; a stage built FROM another stage has that stage's image
    steps: list[Step]  # a stage built FROM another stage starts with that stage's steps
    needs: list[str]  # the stages it is built FROM or copies from

    def all(self, keyword: str) -> list[Step]:
        return [step for step in self.steps if step.keyword == keyword]

    @property
    def env(self) -> dict[str, str]:
        return {k: v for step in self.steps for k, v in step.context.line_envs.items()}

    @property
    def labels(self) -> dict[str, str]:
        return {k: v for step in self.steps for k, v in step.context.line_labels.items()}


def build(dockerfile: Path, build_args: dict[str, str], target: str) -> tuple[list[Stage], Stage]:
    """The stages `docker build --target` builds (the target, the stages it is FROM and those it copies from;
    first to last) and the target. A `${ARG:?message}` of a RUN in them with ARG empty fails, as the build does."""
    parser = DockerfileParser(str(dockerfile), build_args=build_args)
    images = iter(parser.parent_images)
    stages: dict[str | None, Stage] = {}
    for instruction, context in zip(parser.structure, parser.context_structure, strict=True):
        keyword, value = instruction["instruction"], instruction["value"]
        if keyword == "FROM":
            image, name = next(images), image_from(value)[1]
            base = stages.get(image)
            stage = Stage(name, base.image, list(base.steps), [image]) if base else Stage(name, image, [], [])
            stages[name or str(len(stages))] = stage
        elif keyword != "COMMENT" and stages:
            stage.steps.append(step := Step(keyword, value, instruction["startline"] + 1, context))
            if keyword == "COPY" and step.words()[0].startswith("--from="):
                stage.needs.append(step.words()[0].removeprefix("--from="))
    assert target in stages, f"{dockerfile}: no stage {target}"
    needed: set[str | None] = set()
    pending = [target]
    while pending:
        if (name := pending.pop()) in stages and name not in needed:
            needed.add(name)
            pending += stages[name].needs
    for run in (s for name in needed for s in stages[name].all("RUN")):
        for arg, message in REQUIRED_ARG.findall(run.value):
            assert run.context.args.get(arg) or run.context.envs.get(arg), f"{dockerfile.name}:{run.line}: {message}"
    return [stage for name, stage in stages.items() if name in needed], stages[target]


@dataclass
class Image:
    compose_name: str
    package_dir: str
    module: str
    stages: list[Stage]
    final: Stage


def compose_builds() -> dict[str, dict[str, Any]]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {name: d["build"] for name, d in services.items() if d.get("build")}


def image_of(compose_name: str, build_spec: dict[str, Any], dockerfile: Path = ROOT / DOCKERFILE) -> Image:
    assert build_spec.get("dockerfile") == DOCKERFILE, f"{compose_name}: not built from {DOCKERFILE}"
    target = build_spec.get("target")
    assert isinstance(target, str), f"{compose_name}: no build target"
    args = {str(k): str(v) for k, v in (build_spec.get("args") or {}).items()}
    stages, final = build(dockerfile, args, target)
    package_dir, module = PACKAGES[compose_name]
    return Image(compose_name, package_dir, module, stages, final)


@pytest.fixture(scope="module", params=sorted(PACKAGES))
def image(request: pytest.FixtureRequest) -> Image:
    builds = compose_builds()
    assert request.param in builds, f"docker-compose.yml does not build {request.param}"
    return image_of(request.param, builds[request.param])


def option(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words[:-1] else None


def pip_commands(stage: Stage, subcommand: str) -> list[list[str]]:
    """The `pip <subcommand>` commands of the stage's RUN lines."""
    commands = [c for run in stage.all("RUN") for c in run.commands()]
    return [c for c in commands if c and Path(c[0]).name == "pip" and c[1:2] == [subcommand]]


def effective_command(final: Stage, arguments: list[str] | None = None) -> list[str]:
    """What the container runs: ENTRYPOINT (+ CMD, or `arguments` as `docker run`/Compose give them)."""
    entrypoints = final.all("ENTRYPOINT")
    assert entrypoints, f"{final.name}: no ENTRYPOINT"
    words = json.loads(entrypoints[-1].value)
    cmds = final.all("CMD")
    given = arguments if arguments is not None else (json.loads(cmds[-1].value) if cmds else [])
    if words[:2] != ["/bin/sh", "-c"]:
        return [*words, *given]
    assert words[2:] == [ENTRY_SCRIPT, "python"], f"unknown entry script {words}"
    return ["python", "-m", final.env["TCCAL_ENTRY_MODULE"], *(given or final.env.get("TCCAL_ENTRY_ARGS", "").split())]


def healthcheck_command(step: Step) -> list[str]:
    """HEALTHCHECK [--option=value ...] CMD command: the command, exec or shell form."""
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.+)", step.value.strip(), re.DOTALL)
    assert match, f"line {step.line}: HEALTHCHECK without CMD"
    command = match[1].strip()
    return list(json.loads(command)) if command.startswith("[") else shlex.split(command)


def _matches(pattern: list[str], path: list[str]) -> bool:
    """Docker's .dockerignore matching of one pattern against one path, segment by segment (** spans any)."""
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_matches(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], pattern[0]) and _matches(pattern[1:], path[1:])


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (a path in the context) out of the build context: the last rule
    matching the path or one of its parent directories decides. (No maintained PyPI package implements
    Docker's rules; gitignore matchers such as pathspec differ: there `*` would also drop what `!proto` lets in.)"""
    parts = relative.split("/")
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if rule and not rule.startswith("#"):
            pattern = rule.lstrip("!").strip("/").split("/")
            if any(_matches(pattern, parts[: i + 1]) for i in range(len(parts))):
                excluded = not rule.startswith("!")
    return excluded


def local_dependency_dirs(package_dir: Path) -> set[str]:
    """The package's directory and those of every local distribution it needs, transitively."""
    distributions = {
        tomllib.loads(p.read_text())["project"]["name"]: p.parent
        for p in ROOT.glob("*/**/pyproject.toml")
        if ".venv" not in p.parts
    }
    needed, pending = set(), [package_dir]
    while pending:
        current = pending.pop()
        if current.relative_to(ROOT).as_posix() not in needed:
            needed.add(current.relative_to(ROOT).as_posix())
            project = tomllib.loads((current / "pyproject.toml").read_text())["project"]
            names = (Requirement(r).name for r in project.get("dependencies", []))
            pending += [distributions[n] for n in names if n in distributions]
    return needed


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
    name, stages = image.compose_name, image.stages
    assert len(stages) >= 2 and stages[0] is not image.final, f"{name}: not multi-stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.image), (
            f"{name}: stage {stage.name} is FROM {stage.image}, not a slim Python 3.11"
        )
    assert stages[0].image == image.final.image, "the venv is built and run on the same interpreter"


def check_final_stage_runs_unprivileged_without_build_tools(image: Image) -> None:
    name, final = image.compose_name, image.final
    users = final.all("USER")
    assert users, f"{name}: the final stage has no USER"
    user = users[-1].words()[0].split(":")[0]
    assert user not in ("root", "0", ""), f"{name}: runs as {user!r}"
    useradds = [c for run in final.all("RUN") for c in run.commands() if c[:1] == ["useradd"]]
    assert any(user in (c[-1], option(c, "--uid")) for c in useradds), f"{name}: no useradd makes user {user}"
    for run in final.all("RUN"):
        for command in run.commands():
            if command[:1] in (["apt-get"], ["apt"], ["apk"]) and {"install", "add"} & set(command):
                tools = [w for w in command if BUILD_TOOLS.match(w)]
                assert not tools, f"{name}:{run.line}: final stage installs build tools {tools}"
    for copy in final.all("COPY"):
        words = copy.words()
        if words[0].startswith("--from="):
            assert words[1] == "/opt/venv", f"{name}:{copy.line}: copies {words[1]} from the builder"


def check_builder_installs_pinned_wheels(image: Image) -> None:
    name, builder = image.compose_name, image.stages[0]
    installs = pip_commands(builder, "install")
    assert installs and all(option(c, "--constraint") == "constraints.txt" for c in installs), f"{name}: unpinned"
    wheel_steps = pip_commands(builder, "wheel")
    assert len(wheel_steps) == 1, f"{name}: the builder's `pip wheel` steps: {wheel_steps}"
    needed = local_dependency_dirs(ROOT / image.package_dir)
    source = " ".join(p.read_text() for p in (ROOT / image.package_dir / "src").rglob("*.py"))
    if re.search(r"^\s*(from|import) tccal\b", source, re.MULTILINE):
        needed |= local_dependency_dirs(ROOT / "libs/tccal")
    for directory in sorted(needed):
        assert f"./{directory}" in wheel_steps[0], f"{name}: the builder does not build {directory}"


def check_copy_sources_exist_in_the_context(image: Image) -> None:
    name = image.compose_name
    for stage in image.stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in copy.words() if not w.startswith(("--chown", "--chmod"))]
            if words[0].startswith("--from="):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"{name}:{copy.line}: COPY source {source} does not exist"
                assert not dockerignore_excludes(source.rstrip("/")), f"{name}: .dockerignore drops {source}"


def check_healthcheck_ports_and_entrypoint(image: Image) -> None:
    name, final, module = image.compose_name, image.final, image.module
    package_dir = ROOT / image.package_dir
    env = final.env
    assert (package_dir / "src" / module / "__main__.py").is_file()
    assert effective_command(final, ["--x"]) == ["python", "-m", module, "--x"]
    checks = final.all("HEALTHCHECK")
    assert checks, f"{name}: no HEALTHCHECK"
    command = healthcheck_command(checks[-1])
    assert "curl" not in command and "wget" not in command, f"{name}: the health check needs {command[0]}"
    exposed = {int(port.split("/")[0]) for expose in final.all("EXPOSE") for port in expose.words()}
    title = final.labels.get("org.opencontainers.image.title")
    assert title == f"tc-calendar-{name}", f"{name}: image title {title!r}"
    if image.package_dir.startswith("services/"):
        service = package_dir.name
        defaults = Config().grpc.endpoint(service)
        expected = (
            {defaults.grpc_port, defaults.http_port}
            | ({Config().ws_port} if service == "tcs-gateway" else set())
            | ({NotificationListen().port} if service == "graph-ingest" else set())
        )
        assert exposed == expected, f"{name}: EXPOSE {exposed}, the config defaults are {expected}"
        assert command[:2] == ["python", "/opt/tc-calendar/healthcheck.py"], command
        assert (command[2:] or [env.get("TCCAL_SERVICE", "")]) == [service], f"{name}: health of {command}"
        copies = [c.words() for c in final.all("COPY")]
        assert ["deploy/docker/healthcheck.py", "/opt/tc-calendar/healthcheck.py"] in copies, f"{name}: {copies}"
        config = env.get("TC_CALENDAR_CONFIG")
        assert config == "/etc/tc-calendar/config.json", f"{name}: TC_CALENDAR_CONFIG={config}"
        assert effective_command(final) == ["python", "-m", module], f"{name}: default arguments {final.env}"
    else:
        assert command[:2] == ["python", "-c"] and "urllib.request.urlopen" in command[2], f"{name}: {command}"
        code = command[2].replace("os.environ['TCCAL_HEALTH_URL']", repr(env.get("TCCAL_HEALTH_URL", "")))
        (port,) = exposed
        assert f"127.0.0.1:{port}/" in code, f"{name}: the health check does not ask port {port}: {code}"
        default = effective_command(final)
        assert str(port) in default, f"{name}: {default} does not listen on the exposed port {port}"


def check_service_images_refuse_test_settings(image: Image) -> None:
    """A product image sets TC_CALENDAR_PRODUCTION=1, and with it licensing refuses a test authority key."""
    env = image.final.env
    if not image.package_dir.startswith("services/"):
        return
    name = image.compose_name
    value = env.get(PRODUCTION_ENV)
    assert value is not None and is_production_value(value), f"{name}: {PRODUCTION_ENV}={value!r} in the image"
    if name == "licensing":
        config = Config.model_validate({"license": {"testAuthorityPublicKey": AUTHORITY_PUBLIC_KEY}})
        with (
            patch.dict(os.environ, {PRODUCTION_ENV: value}),
            pytest.raises(ValueError, match=re.escape(TEST_KEY_SETTING)),
        ):
            LicensingSettings.from_config(config)


def is_production_value(value: str) -> bool:
    with patch.dict(os.environ, {PRODUCTION_ENV: value}):
        return is_production()


CHECKS = [
    check_multi_stage_on_slim_python_311,
    check_final_stage_runs_unprivileged_without_build_tools,
    check_builder_installs_pinned_wheels,
    check_copy_sources_exist_in_the_context,
    check_healthcheck_ports_and_entrypoint,
    check_service_images_refuse_test_settings,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_image(image: Image, check: Any) -> None:
    check(image)


def check_all(image: Image) -> None:
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
    """The checks can fail: a wrong build arg (or target) in docker-compose.yml is seen."""
    spec = dict(compose_builds()[compose_name])
    spec["target"] = change.pop("target", spec["target"])
    spec["args"] = {**spec["args"], **change}
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_all(image_of(compose_name, spec))


@pytest.mark.parametrize(
    ("compose_name", "line", "replacement", "complaint"),
    [
        ("licensing", "FROM ${PYTHON_IMAGE} AS runtime", "FROM python:3.12-slim AS runtime", "not a slim Python"),
        ("ews-ingest", "FROM runtime AS service", "FROM python:3.11-slim AS service", "not multi-stage"),
        ("ews-ingest", "FROM ${PYTHON_IMAGE} AS builder", "FROM python:3.11.9-slim AS builder", "same interpreter"),
        ("sync-engine", "USER 10001:10001\n", "", "no USER"),
        ("sync-engine", "USER 10001:10001", "USER root", "runs as 'root'"),
        ("sync-engine", "USER 10001:10001", "USER 10002", "no useradd makes user 10002"),
        ("trueconf-emulator", "    && groupadd", "    && apt-get install -y gcc && groupadd", "installs build tools"),
        ("licensing", "--from=builder /opt/venv", "--from=builder /src", "copies /src from the builder"),
        ("licensing", "pip install --constraint constraints.txt /wheels", "pip install /wheels", "unpinned"),
        ("ews-ingest", "COPY proto/ proto/", "COPY protos/ proto/", "protos/ does not exist"),
        ("ews-ingest", "COPY constraints.txt ./", "COPY README.md ./", ".dockerignore drops README.md"),
        ("tcs-gateway", 'CMD ["python", "/opt/tc-calendar/healthcheck.py"]', "CMD curl -f localhost", "needs curl"),
        ("exchange-emulator", "\n    CMD [", "\n    [", "HEALTHCHECK without CMD"),
        ("licensing", "LABEL org.opencontainers.image.title=", "LABEL title=", "image title None"),
        ("licensing", 'TCCAL_SERVICE="${NAME}"', 'TCCAL_SERVICE="sync-engine"', "health of"),
        ("licensing", 'ARG ARGS=""', 'ARG ARGS="--verbose"', "default arguments"),
        ("sync-engine", "HEALTHCHECK --interval=30s", "RUN true", "no HEALTHCHECK"),
        ("licensing", "CONFIG=/etc/tc-calendar/config.json", "CONFIG=/x", "TC_CALENDAR_CONFIG=/x"),
        ("licensing", "TC_CALENDAR_PRODUCTION=1", "TC_CALENDAR_PRODUCTION=0", "TC_CALENDAR_PRODUCTION='0'"),
        ("ews-ingest", " \\\n    TC_CALENDAR_PRODUCTION=1", "", "TC_CALENDAR_PRODUCTION=None"),
        ("licensing", "healthcheck.py /opt/", "healthcheck.py /usr/", "/usr/tc-calendar"),
        ("sync-engine", 'exec python -m \\"$TCCAL_ENTRY_MODULE\\"', "exec python -m sync_engine", "entry script"),
    ],
)
def test_checks_fail_on_a_broken_dockerfile(
    compose_name: str, line: str, replacement: str, complaint: str, tmp_path: Path
) -> None:
    """The checks can fail: a copy of the Dockerfile with one line broken is seen."""
    text = (ROOT / DOCKERFILE).read_text()
    assert line in text, line
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(line, replacement))
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_all(image_of(compose_name, compose_builds()[compose_name], broken))


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
    given = ["--user=a:a@x.test:A B", "--host=0.0.0.0"]
    assert run(*given) == ["-m", "some_module", *given]
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
    """The builder's `pip wheel` step, replayed on exactly what its COPY lines put in its WORKDIR (with
    .dockerignore applied), with the same build backend (hatchling, and the proto build hook) the dev venv pins.
    Installing the wheels with pip needs the network and is left to `docker build`."""
    name, builder = image.compose_name, image.stages[0]
    workdir = Path(builder.all("WORKDIR")[-1].words()[0])
    source_root = tmp_path / "src"
    for copy in builder.all("COPY"):
        *sources, target = copy.words()
        assert not sources[0].startswith("--"), f"{name}:{copy.line}: unexpected COPY flags"
        for source in sources:
            destination = source_root / (workdir / target).relative_to(workdir)
            if target.endswith("/") and (ROOT / source).is_file():
                destination = destination / Path(source).name
            copy_into_context(source, destination)
    packages = [w for w in pip_commands(builder, "wheel")[0] if w.startswith("./")]
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
        assert completed.returncode == 0, f"{name}: building {package} fails:\n{completed.stderr[-2000:]}"
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == len(packages), built
    names = {entry for wheel in built for entry in zipfile.ZipFile(wheel).namelist()}
    assert f"{image.module}/__main__.py" in names
    assert "trueconf/calendar/v1/common_pb2.py" in names or "./proto" not in packages


def test_dockerignore_rules() -> None:
    """The context filter above agrees with what .dockerignore is written to do."""
    dropped = [".venv/bin/python", "services/x/tests/test_a.py", "proto/gen/python/trueconf/__init__.py"]
    dropped += ["libs/tccal/src/tccal/__pycache__/x.pyc", "deploy/helm/trueconf-calendar-connector/values.yaml"]
    kept = ["services/ews-ingest/src/ews_ingest/__main__.py", "deploy/docker/healthcheck.py"]
    assert [path for path in dropped + kept if dockerignore_excludes(path)] == dropped


def test_readme_build_commands_are_composes() -> None:
    """deploy/README.md gives each image's `docker build` command: the same Dockerfile, target and args."""
    text = (ROOT / "deploy" / "README.md").read_text().replace("\\\n", " ")
    documented: dict[str, tuple[str, str, dict[str, str]]] = {}
    for words in (shlex.split(line) for line in text.splitlines() if line.startswith("docker build ")):
        assert words[-1] == ".", words
        flags = [(flag, value) for flag, value in itertools.pairwise(words) if flag.startswith("-")]
        options = dict(flags)
        args = dict(value.split("=", 1) for flag, value in flags if flag == "--build-arg")
        documented[options["-t"].split("/")[1].split(":")[0]] = (options["-f"], options["--target"], args)
    for name, spec in compose_builds().items():
        assert name in documented, f"deploy/README.md has no build command of {name}"
        dockerfile, target, args = documented[name]
        assert (dockerfile, target) == (spec["dockerfile"], spec["target"]), name
        assert args == {str(k): str(v) for k, v in spec["args"].items()}, name
