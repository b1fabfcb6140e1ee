"""config.json: the guide's file as written, precise errors, environment overrides, `config check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tccal import secrets
from tccal.config import ConfigError, load_config
from tccal.config.loader import parse_config_text
from tccal.config.schema import SERVICE_NAMES
from tccal_sandbox.testing import repo_root

GUIDE = repo_root() / "docs" / "examples" / "config.guide.json"
CLI = [sys.executable, "-m", "tccal.cli"]


def guide_config(tmp_path: Path, password: str | None = None) -> Path:
    text = GUIDE.read_text().replace("PASSWORD_PLACEHOLDER", password or secrets.encrypt("Exch4nge!"))
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


def test_the_guide_config_is_accepted_as_written(tmp_path: Path) -> None:
    config = load_config(guide_config(tmp_path))
    assert config.ws_port == 4315
    assert config.db_connection_config.port == 5441
    assert config.cache.backward == 2 and config.cache.forward == 3 and config.cache.auto_sync is False
    assert config.product_whitelist.tcs == ["server.trueconf.name#vcs"]
    provider = config.calendar_providers[0]
    assert provider.autodiscover_path == "/autodiscover/autodiscover.svc"
    assert provider.users == ["name1@example.com", "name2@example.com", "name3@example.com"]
    assert secrets.reveal(provider.credentials[0].password) == "Exch4nge!"


def test_defaults_when_keys_are_absent() -> None:
    config = load_config(None, environ={})
    assert config.ws_port == 4315
    assert config.launch_conference is True
    assert config.sync_conference_participants is True
    assert config.temporal_conf_participants_mode is False
    assert config.db_connection_config.database == "calendar"
    assert config.grpc.address_of("licensing") == "127.0.0.1:50064"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


def test_three_mistakes_give_three_precise_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """{
          "wsPort": 70000,
          "launchConference": "yes", // a string, not a boolean
          "calendarProviders": [{"host": "ex", "port": "abc",
                                 "credentials": [{"login": "svc", "password": ""}]}]
        }""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = [str(p) for p in caught.value.problems]
    assert lines == [
        "wsPort: 70000 is not a port (1-65535)",
        'launchConference: "yes" is not a boolean (true or false)',
        'calendarProviders[0].port: "abc" is not a port (1-65535)',
    ]


def test_unknown_keys_are_reported_not_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, '{"wsPrt": 4315, "cache": {"autosync": true}}')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = sorted(str(p) for p in caught.value.problems)
    assert len(lines) == 2
    assert lines[1].startswith("wsPrt: unknown key (expected one of: wsPort,")
    assert lines[0] == "cache.autosync: unknown key (expected one of: autoSync, backward, forward)"


def test_plaintext_password_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = guide_config(tmp_path, password="plain-secret")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.path == "calendarProviders[0].credentials[0].password"
    assert "plain-secret" not in str(problem)
    assert "--hash_pass" in str(problem)
    allowed = load_config(path, environ={"TC_CALENDAR__ALLOWPLAINTEXTPASSWORDS": "true"})
    assert allowed.allow_plaintext_passwords is True


def test_password_from_another_machine_key_is_reported(tmp_path: Path) -> None:
    secrets.load_key()  # this machine has its own key
    foreign = secrets.encrypt("x", key=b"\x01" * 32)
    path = guide_config(tmp_path, password=foreign)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "another machine key" in str(caught.value.problems[0])


def test_environment_overrides_every_level(tmp_path: Path) -> None:
    environ = {
        "TC_CALENDAR__WSPORT": "4400",
        "TC_CALENDAR__CACHE__FORWARD": "6",
        "TC_CALENDAR__CALENDARPROVIDERS__0__HOST": "mail.corp.local",
        "TC_CALENDAR__NATS__URL": "nats://nats:4222",
    }
    config = load_config(guide_config(tmp_path), environ=environ)
    assert config.ws_port == 4400
    assert config.cache.forward == 6
    assert config.calendar_providers[0].host == "mail.corp.local"
    assert config.nats.url == "nats://nats:4222"


def test_environment_overrides_name_services_as_shells_can(tmp_path: Path) -> None:
    """Service names have a dash, which POSIX shells do not allow in a variable name: `_` stands for it, and case
    does not matter (`TC_CALENDAR__GRPC__SERVICES__EWS_INGEST__GRPCPORT` and the spelling with the dash alike)."""
    environ = {
        "TC_CALENDAR__GRPC__SERVICES__EWS_INGEST__GRPCPORT": "51061",
        "TC_CALENDAR__GRPC__SERVICES__SYNC-ENGINE__HOST": "0.0.0.0",
        "TC_CALENDAR__GRPC__SERVICES__Tcs_Gateway__HTTPPORT": "9063",
        "TC_CALENDAR__GRPC__ADMINTOKEN": secrets.encrypt("admin-token"),
    }
    config = load_config(guide_config(tmp_path), environ=environ)
    assert config.grpc.services["ews-ingest"].grpc_port == 51061
    assert config.grpc.services["sync-engine"].host == "0.0.0.0"
    assert config.grpc.services["tcs-gateway"].http_port == 9063
    assert config.grpc.endpoint("licensing").grpc_port == 50064  # untouched: the default
    with pytest.raises(ConfigError) as caught:
        load_config(guide_config(tmp_path), environ={"TC_CALENDAR__GRPC__SERVICES__MAIL_INGEST__GRPCPORT": "1"})
    assert "MAIL_INGEST" in str(caught.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(guide_config(tmp_path), environ={"TC_CALENDAR__WSPORT": "port"})
    assert str(caught.value.problems[0]) == (
        'wsPort: "port" is not a port (1-65535) (from environment variable TC_CALENDAR__WSPORT)'
    )


def test_broken_json_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '{"wsPort": 4315,,}'))
    assert "is not valid JSON" in str(caught.value)


def test_config_check_command(tmp_path: Path) -> None:
    # The guide's file whitelists a TrueConf Server but (being the original product's) has no tcs.servers entry
    # for it: every service would start, but no TrueConf Server could ever connect - a problem, exit code 2.
    guide = guide_config(tmp_path)
    unusable = subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True)
    assert unusable.returncode == 2, unusable.stderr
    assert unusable.stdout == ""
    assert unusable.stderr.splitlines() == [
        f"{guide}: tcs.servers: no TrueConf Server can connect: tcs.servers is empty (each server needs its id, "
        "bridge secret and REST API v4 client there)",
        f"{guide}: warning: productWhitelist.tcs[0]: 'server.trueconf.name#vcs' has no tcs.servers entry "
        "(bridge secret, REST API client): that TrueConf Server cannot connect",
    ]
    server = {
        "id": "server.trueconf.name#vcs",
        "secret": secrets.encrypt("bridge"),
        "restUrl": "https://server.trueconf.name/api/v4",
        "clientId": "connector",
        "clientSecret": secrets.encrypt("client"),
    }
    environ = {**os.environ, "TC_CALENDAR__TCS__SERVERS": json.dumps([server])}
    good = subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True, env=environ)
    assert good.returncode == 0, good.stderr
    assert "OK (1 calendar provider(s), 3 user(s), wsPort 4315)" in good.stdout
    # EWS over plain http: with Basic authentication the password crosses the network in every request.
    document = parse_config_text(guide.read_text())
    for auth in ("basic", "ntlm"):
        document["calendarProviders"][0].update({"scheme": "http", "auth": auth})
        clear = tmp_path / f"http-{auth}.json"
        clear.write_text(json.dumps(document))
        warned = subprocess.run([*CLI, "config", "check", str(clear)], capture_output=True, text=True, env=environ)
        assert warned.returncode == 1, warned.stderr
        [line] = warned.stderr.splitlines()
        assert line.startswith(f"{clear}: warning: calendarProviders[0].scheme: ")
        assert ("password in clear" in line) == (auth == "basic") and "use scheme https" in line
    # A service bound beyond loopback without an admin token refuses to start: so does the check.
    exposed = {**environ, "TC_CALENDAR__GRPC__SERVICES__SYNC_ENGINE__HOST": "0.0.0.0"}
    refused = subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True, env=exposed)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"{guide}: grpc.services.sync-engine.host: '0.0.0.0' is beyond loopback, so grpc.adminToken must be set "
        "(the service refuses to start without it: its calls would be open to the network)"
    ]
    # gRPC TLS files the services could not read stop them too
    no_ca = {**environ, "TC_CALENDAR__GRPC__TLS__CAFILE": str(tmp_path / "missing-ca.pem")}
    refused = subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True, env=no_ca)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"{guide}: grpc.tls.caFile: cannot read {tmp_path / 'missing-ca.pem'}: No such file or directory"
    ]
    bad = write(tmp_path, '{"wsPort": "x", "cache": {"backward": -1}, "nope": 1}')
    result = subprocess.run([*CLI, "config", "check", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{bad}: wsPort: "x" is not a port (1-65535)',
        f"{bad}: cache.backward: -1 is too small (minimum 0)",
        f"{bad}: nope: unknown key" + result.stderr.splitlines()[2].split("nope: unknown key")[1],
    ]


def test_service_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    bad = write(tmp_path, '{"wsPort": "x"}')
    result = subprocess.run(
        [sys.executable, "-m", "licensing", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert 'wsPort: "x" is not a port (1-65535)' in result.stderr


def test_a_mis_shaped_section_never_shows_its_password(tmp_path: Path) -> None:
    """`credentials` written as an object instead of a list: the error shows the object, without its password."""
    text = '{"calendarProviders": [{"host": "mail", "credentials": {"login": "svc", "password": "PlainSecret123"}}]}'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert str(caught.value) == (
        'calendarProviders[0].credentials: {"login": "svc", "password": "(hidden)"} is not a list'
    )


def test_absurdly_nested_json_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    for depth in (40, 100_000):
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, '{"a":' * depth + "1" + "}" * depth))
        [problem] = caught.value.problems
        assert "nests" in problem.message and "deep" in problem.message, problem
    result = subprocess.run(
        [*CLI, "config", "check", str(write(tmp_path, "[" * 100_000 + "]" * 100_000))], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_config_check_refuses_a_file_no_trueconf_server_can_connect_with(tmp_path: Path) -> None:
    """Each way of configuring no reachable TrueConf Server is an error naming the setting: the connector would
    run and sync nothing to anyone."""
    guide = guide_config(tmp_path)

    def server(server_id: str, secret: str) -> dict[str, str]:
        return {
            "id": server_id,
            "secret": secret,
            "restUrl": "https://server.trueconf.name/api/v4",
            "clientId": "connector",
            "clientSecret": secrets.encrypt("client"),
        }

    def check(whitelist: list[str], servers: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "TC_CALENDAR__PRODUCTWHITELIST__TCS": json.dumps(whitelist),
            "TC_CALENDAR__TCS__SERVERS": json.dumps(servers),
        }
        return subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True, env=environ)

    ours = "server.trueconf.name#vcs"
    nobody_whitelisted = check([], [server(ours, secrets.encrypt("bridge"))])
    assert nobody_whitelisted.returncode == 2
    assert nobody_whitelisted.stderr.splitlines()[0] == (
        f"{guide}: tcs.servers: no TrueConf Server can connect: productWhitelist.tcs is empty (list the id of each "
        "TrueConf Server there)"
    )
    no_secret = check([ours], [server(ours, "")])
    assert no_secret.returncode == 2
    assert no_secret.stderr.splitlines() == [
        f"{guide}: tcs.servers[0].secret: is empty: the bridge refuses '{ours}' whatever it presents (set the "
        "secret TrueConf Server's calendar integration uses, encrypted with tc-calendar --hash_pass)",
        f"{guide}: tcs.servers: no TrueConf Server can connect: none is both in productWhitelist.tcs and in "
        "tcs.servers with a bridge secret",
    ]
    elsewhere = check(["other.example#vcs"], [server(ours, secrets.encrypt("bridge"))])
    assert elsewhere.returncode == 2
    assert f"{guide}: tcs.servers: no TrueConf Server can connect: none is both" in elsewhere.stderr
    assert f"{guide}: warning: tcs.servers[0].id: '{ours}' is not in productWhitelist.tcs" in elsewhere.stderr
    # one server that can connect is enough; the other one's mismatch is a warning
    one_of_two = check([ours, "other.example#vcs"], [server(ours, secrets.encrypt("bridge"))])
    assert one_of_two.returncode == 1, one_of_two.stderr
    assert one_of_two.stderr.splitlines() == [
        f"{guide}: warning: productWhitelist.tcs[1]: 'other.example#vcs' has no tcs.servers entry (bridge secret, "
        "REST API client): that TrueConf Server cannot connect"
    ]


def test_config_check_refuses_a_missing_admin_token_with_every_service_exposed(tmp_path: Path) -> None:
    """As Compose and Helm run it (every service bound to 0.0.0.0 by overrides): one error per service that would
    refuse to start, naming its setting and grpc.adminToken."""
    guide = guide_config(tmp_path)
    environ = {
        **os.environ,
        "TC_CALENDAR__TCS__SERVERS": json.dumps(
            [
                {
                    "id": "server.trueconf.name#vcs",
                    "secret": secrets.encrypt("bridge"),
                    "restUrl": "https://server.trueconf.name/api/v4",
                    "clientId": "connector",
                    "clientSecret": secrets.encrypt("client"),
                }
            ]
        ),
        **{f"TC_CALENDAR__GRPC__SERVICES__{name.upper().replace('-', '_')}__HOST": "0.0.0.0" for name in SERVICE_NAMES},
    }
    refused = subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True, env=environ)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"{guide}: grpc.services.{name}.host: '0.0.0.0' is beyond loopback, so grpc.adminToken must be set (the "
        "service refuses to start without it: its calls would be open to the network)"
        for name in SERVICE_NAMES
    ]
    environ["TC_CALENDAR__GRPC__ADMINTOKEN"] = secrets.encrypt("admin-token")
    accepted = subprocess.run([*CLI, "config", "check", str(guide)], capture_output=True, text=True, env=environ)
    assert accepted.returncode == 0, accepted.stderr


def test_upper_case_override_of_a_service_the_file_names_keeps_its_other_keys(tmp_path: Path) -> None:
    """`TC_CALENDAR__GRPC__SERVICES__EWS_INGEST__…` lands on the file's own `ews-ingest` entry (not a second one
    named `EWS_INGEST`, which the schema would refuse), and the keys the file set there stay."""
    path = write(tmp_path, '{"grpc": {"services": {"ews-ingest": {"grpcPort": 51000}, "Licensing": {}}}}')
    environ = {
        "TC_CALENDAR__GRPC__SERVICES__EWS_INGEST__HTTPPORT": "9061",
        "TC_CALENDAR__GRPC__SERVICES__LICENSING__GRPCPORT": "51064",
    }
    with pytest.raises(ConfigError) as caught:  # the file's own key must be spelt as the schema spells it
        load_config(path, environ=environ)
    assert "grpc.services.Licensing" in str(caught.value)
    path = write(tmp_path, '{"grpc": {"services": {"ews-ingest": {"grpcPort": 51000}}}}')
    config = load_config(path, environ=environ)
    assert (config.grpc.services["ews-ingest"].grpc_port, config.grpc.services["ews-ingest"].http_port) == (51000, 9061)
    assert config.grpc.endpoint("licensing").grpc_port == 51064
    assert set(config.grpc.services) == {"ews-ingest", "licensing"}
