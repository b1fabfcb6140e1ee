"""The systemd install (deploy/systemd): the units rendered by install.sh pass `systemd-analyze verify` and its
offline security review, start what the guide's `trueconf-calendar.service` names, and the rendered NATS
configuration is taken by a real NATS server with one user per service and JetStream on."""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from tccal.nats_auth import IDENTITIES, password_variable
from tccal_sandbox.embedded import free_port, nats_server_binary
from tccal_sandbox.testing import short_tmpdir, wait_for

from .conftest import CONNECTOR_SERVICES, OPTIONAL_SERVICES, ROOT

INSTALL = ROOT / "deploy/systemd/install.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it where apt-get can)",
)
ALL_SERVICES = {**CONNECTOR_SERVICES, **OPTIONAL_SERVICES}
SERVICE_UNITS = [f"trueconf-calendar-{name}.service" for name in ALL_SERVICES]
#: Wanted by trueconf-calendar.target itself; the optional ones (graph-ingest) only once enabled.
CORE_UNITS = [f"trueconf-calendar-{name}.service" for name in CONNECTOR_SERVICES]
UNITS = ["trueconf-calendar.service", "trueconf-calendar.target", *SERVICE_UNITS]
#: The executables ExecStart names must exist for `verify`: the venv of this test run stands for /opt/trueconf-calendar.
PREFIX = Path(sys.prefix)


def render(directory: Path, **settings: str) -> Path:
    env = {**os.environ, "PREFIX": str(PREFIX), "CONFDIR": "/etc/trueconf-calendar", **settings}
    subprocess.run(["sh", str(INSTALL), "render", str(directory)], env=env, check=True, timeout=60)
    return directory


def unit(path: Path) -> configparser.RawConfigParser:
    """A unit file's sections; keys that repeat (Environment=, Wants=, ...) keep every value, one per line."""

    class MultiDict(dict[str, str]):
        def __setitem__(self, key: str, value: str) -> None:
            if key in self and isinstance(value, list):
                self[key].extend(value)  # type: ignore[attr-defined]
            else:
                super().__setitem__(key, value)

    parser = configparser.RawConfigParser(dict_type=MultiDict, strict=False, interpolation=None)  # type: ignore[arg-type]
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def values(parser: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    raw = parser.get(section, key, fallback="")
    return [word for line in raw.splitlines() for word in line.split()]


@needs_systemd_analyze
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = render(tmp_path / "units")
    assert sorted(p.name for p in units.glob("trueconf-calendar*")) == sorted(UNITS)
    for path in units.rglob("*"):
        if path.is_file():
            assert re.search(r"@[A-Z_]+@", path.read_text()) is None, f"{path.name}: a placeholder was left unrendered"
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *UNITS],
        cwd=units,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # no error, and no warning either (an unknown or misspelt key is only a warning to systemd)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    broken = units / "trueconf-calendar-licensing.service"
    broken.write_text(broken.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", broken.name], cwd=units, capture_output=True, text=True, timeout=60
    )
    assert "Unknown key 'ProtectHomes'" in result.stderr  # so the empty output above means something


@needs_systemd_analyze
def test_services_are_hardened(tmp_path: Path) -> None:
    """`systemd-analyze security` rates each unit's exposure 0 (none) to 10; 2.0 and below is "OK"."""
    units = render(tmp_path / "units")
    for name in ["trueconf-calendar.service", *SERVICE_UNITS]:
        result = subprocess.run(
            [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--threshold=20", "--no-pager", name],
            cwd=units,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{name}: {result.stdout[-600:]}{result.stderr}"
        parsed = unit(units / name)
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
            "User": "tccal",
        }.items():
            assert parsed.get("Service", key) == value, (name, key)


def test_the_guide_s_service_starts_and_stops_the_four(tmp_path: Path) -> None:
    """`systemctl start|stop|restart trueconf-calendar.service` (the guide's commands) act on every service; each
    service waits for PostgreSQL and NATS where it uses them and is handed only its own NATS password."""
    units = render(tmp_path / "units")
    main = unit(units / "trueconf-calendar.service")
    assert values(main, "Unit", "Wants") == ["trueconf-calendar.target", "network-online.target"]
    assert (
        main.get("Service", "ExecStart") == f"{PREFIX}/bin/tc-calendar config check /etc/trueconf-calendar/config.json"
    )
    assert values(main, "Install", "WantedBy") == ["multi-user.target"]
    target = unit(units / "trueconf-calendar.target")
    assert sorted(values(target, "Unit", "Wants")) == sorted(CORE_UNITS)
    assert values(target, "Unit", "Requires") == ["trueconf-calendar.service"]
    uses_postgres = {"sync-engine", "licensing"}
    for name, module in ALL_SERVICES.items():
        service = unit(units / f"trueconf-calendar-{name}.service")
        assert service.get("Service", "ExecStart") == f"{PREFIX}/bin/python -m {module}"
        # stopped and restarted with trueconf-calendar.service (Requires=) and the target (PartOf=)
        assert values(service, "Unit", "Requires") == ["trueconf-calendar.service"]
        assert values(service, "Unit", "PartOf") == ["trueconf-calendar.target"]
        after = values(service, "Unit", "After")
        assert {"trueconf-calendar.service", "nats-server.service"} <= set(after)
        assert ("postgresql.service" in after) == (name in uses_postgres)
        assert set(after) - {"trueconf-calendar.service", "network-online.target"} <= set(
            values(service, "Unit", "Wants")
        )
        environment = values(service, "Service", "Environment")
        assert f"TC_CALENDAR__NATS__USER={name}" in environment
        assert "TC_CALENDAR__NATS__PASSWORDFILE=%d/nats-password" in environment
        assert "TC_CALENDAR_PRODUCTION=1" in environment
        assert values(service, "Service", "LoadCredential") == [
            "machine.key:/etc/trueconf-calendar/machine.key",
            f"nats-password:/etc/trueconf-calendar/nats/{name}.password",
        ]
        assert service.get("Service", "RestartPreventExitStatus") == "2"  # a refused config.json: restarts can't help
        assert values(service, "Install", "WantedBy") == ["trueconf-calendar.target"]


SYSTEMCTL = shutil.which("systemctl")


@pytest.mark.skipif(SYSTEMCTL is None, reason="systemctl is not installed (Debian package systemd)")
def test_graph_ingest_joins_the_target_only_when_enabled(tmp_path: Path) -> None:
    """The optional graph-ingest (Exchange Online) is not wanted by trueconf-calendar.target until
    `systemctl enable trueconf-calendar-graph-ingest.service`, which links it into the target's wants (the
    deploy/README.md step); `disable` takes it out again. Done offline on a root directory (systemctl --root)."""
    root = tmp_path / "root"
    unit_dir = root / "etc/systemd/system"
    render(unit_dir)
    graph = "trueconf-calendar-graph-ingest.service"
    wants = unit_dir / "trueconf-calendar.target.wants"
    assert graph not in values(unit(unit_dir / "trueconf-calendar.target"), "Unit", "Wants")

    def systemctl(*args: str) -> None:
        subprocess.run([str(SYSTEMCTL), f"--root={root}", *args], check=True, capture_output=True, timeout=60)

    systemctl("enable", graph)
    assert [p.name for p in wants.iterdir()] == [graph]
    assert os.readlink(wants / graph) == f"/{(unit_dir / graph).relative_to(root)}"  # a link inside the root
    systemctl("disable", graph)
    assert not (wants / graph).exists()


def test_install_sh_makes_a_nats_password_for_every_identity() -> None:
    """install.sh writes one password per NATS identity into passwords.env; `tc-calendar nats-auth` names one
    $TCCAL_NATS_<IDENTITY>_PASSWORD per identity of tccal.nats_auth, and NATS refuses to start on an unset one."""
    (line,) = [x for x in INSTALL.read_text().splitlines() if x.startswith("IDENTITIES=")]
    listed = line.split("=", 1)[1].split("#", 1)[0].strip().strip('"').split()
    assert sorted(listed) == sorted(IDENTITIES)
    assert "graph-ingest" in listed


def test_the_rendered_nats_configuration_runs_with_a_user_per_service(tmp_path: Path) -> None:
    """nats.conf as install.sh writes it, with the `authorization` block of `tc-calendar nats-auth` and the
    passwords in the server's environment (passwords.env): every service gets in with its own password only."""
    store = short_tmpdir("tcsysd")
    rendered = render(tmp_path / "units", NATS_STORE_DIR=str(store / "jetstream"))
    conf_dir = rendered / "nats"
    authorization = subprocess.run(
        [str(PREFIX / "bin/tc-calendar"), "nats-auth"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    (conf_dir / "authorization.conf").write_text(authorization)
    passwords = {identity: f"pw-{identity}-{os.urandom(6).hex()}" for identity in IDENTITIES}
    environment = {**os.environ, **{password_variable(i): p for i, p in passwords.items()}}
    port, http_port = free_port(), free_port()
    log = tmp_path / "nats.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf_dir / "nats.conf"), "-p", str(port), "-m", str(http_port)],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _accepts(port) or server.poll() is not None, 20, what="NATS listening")
        assert server.poll() is None, log.read_text()
        asyncio.run(every_user_gets_in_with_its_own_password_only(port, passwords))
        assert (store / "jetstream").is_dir()
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(store, ignore_errors=True)


async def every_user_gets_in_with_its_own_password_only(port: int, passwords: dict[str, str]) -> None:
    for identity, password in passwords.items():
        client = await connect(port, identity, password)
        await client.close()
    admin = await connect(port, "admin", passwords["admin"])
    try:
        info = await admin.jetstream().account_info()  # JetStream is on, its store where the drop-in says
        assert info.streams == 0
    finally:
        await admin.close()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(port, "licensing", passwords["admin"])


async def connect(port: int, user: str, password: str) -> nats.NATS:
    async def quiet(error: Exception) -> None:
        return None

    return await asyncio.wait_for(
        nats.connect(f"nats://127.0.0.1:{port}", user=user, password=password, allow_reconnect=False, error_cb=quiet),
        20,
    )


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_nats_drop_in_points_debian_s_unit_at_the_rendered_configuration(tmp_path: Path) -> None:
    drop_in = unit(render(tmp_path / "units") / "nats-server.service.d/trueconf-calendar.conf")
    assert drop_in.get("Service", "ExecStart").splitlines() == [
        "",
        "/usr/sbin/nats-server -c /etc/trueconf-calendar/nats/nats.conf",
    ]
    assert drop_in.get("Service", "EnvironmentFile") == "/etc/trueconf-calendar/nats/passwords.env"
    assert drop_in.get("Service", "StateDirectory") == "nats"
