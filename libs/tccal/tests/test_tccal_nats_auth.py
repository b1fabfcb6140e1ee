"""NATS as the connector ships it (issue #17 High 1): no anonymous client, one least-privilege user per service
(tccal.nats_auth), a service that refuses a NATS taking anonymous clients. Against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from tccal import secrets
from tccal.bus import AnonymousNatsError, Bus, BusSettings, accepts_anonymous, consume
from tccal.config import Config
from tccal.nats_auth import IDENTITIES, SERVICE_IDENTITIES, password_variable, server_authorization
from tccal.service import ServiceApp
from tccal.subjects import (
    CALENDAR,
    GATEWAY_STATE_BUCKET,
    INGEST_STATE_BUCKET,
    SEATS_SUBJECT,
    TCS_COMMANDS,
    calendar_subject,
    commands_subject,
    ondemand_subject,
    results_subject,
    resync_subject,
)
from tccal_sandbox.embedded import EmbeddedNats, free_ports, nats_server_binary
from tccal_sandbox.testing import connect_nats, nats_settings, short_tmpdir, wait_for, wait_for_async

MAILBOX = "alice@example.com"
SERVER = "video.example.com#vcs"


class Violations:
    """The permission errors nats-server sent one connection."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    def about(self, kind: str, subject: str) -> bool:
        # nats-py lower-cases the server's message
        return any(f'permissions violation for {kind} to "{subject.lower()}"' in e.lower() for e in self.errors)


class Seen:
    """Every core message the admin identity sees (it may subscribe to '>')."""

    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def record(self, msg: Msg) -> None:
        self.subjects.append(msg.subject)


@pytest.fixture
async def watcher(nats_server: EmbeddedNats) -> Seen:
    connection = await connect_nats(nats_server)
    seen = Seen()
    await connection.subscribe(">", cb=seen.record)
    await connection.flush()
    yield seen  # type: ignore[misc]
    await connection.close()


async def as_identity(server: EmbeddedNats, identity: str) -> tuple[Client, Violations]:
    violations = Violations()
    return await connect_nats(server, identity, error_cb=violations.record), violations


# --------------------------------------------------------------------------------------------- no anonymous


async def test_a_client_without_credentials_is_refused(nats_server: EmbeddedNats) -> None:
    with pytest.raises((NatsError, OSError)) as refused:
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    assert "authorization" in str(refused.value).lower() or isinstance(refused.value, nats.errors.NoServersError)
    assert not await accepts_anonymous(BusSettings(url=nats_server.url))
    with pytest.raises(NatsError):  # nor with a wrong password
        await nats.connect(
            nats_server.url, user="ews-ingest", password="guess", allow_reconnect=False, max_reconnect_attempts=0
        )


async def test_the_anonymous_probe_does_see_an_open_nats() -> None:
    """The check above can fail: the same probe says yes to a nats-server without users."""
    directory = short_tmpdir("tcnopen")
    server = EmbeddedNats(directory, auth=False)
    server.start()
    try:
        assert await accepts_anonymous(BusSettings(url=server.url))
        connection = await nats.connect(server.url)  # anyone gets in
        await connection.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------- least privilege


@pytest.mark.parametrize(
    ("identity", "forbidden"),
    [
        ("ews-ingest", SEATS_SUBJECT),
        ("ews-ingest", resync_subject(MAILBOX)),
        ("ews-ingest", commands_subject(SERVER)),
        ("ews-ingest", results_subject(SERVER)),
        ("tcs-gateway", calendar_subject("ews", MAILBOX)),
        ("tcs-gateway", commands_subject(SERVER)),
        ("tcs-gateway", resync_subject(MAILBOX)),
        ("sync-engine", SEATS_SUBJECT),
        ("sync-engine", ondemand_subject(MAILBOX)),
        # dead letters are replayed in the engine itself: it cannot forge a change or a TrueConf result
        ("sync-engine", calendar_subject("ews", MAILBOX)),
        ("sync-engine", results_subject(SERVER)),
        ("licensing", calendar_subject("ews", MAILBOX)),
        ("licensing", commands_subject(SERVER)),
        ("licensing", resync_subject(MAILBOX)),
        # graph-ingest answers control requests of its mailboxes; it never asks for one
        ("graph-ingest", resync_subject(MAILBOX)),
        ("graph-ingest", ondemand_subject(MAILBOX)),
    ],
)
async def test_a_service_cannot_publish_what_it_does_not_own(
    nats_server: EmbeddedNats, watcher: Seen, identity: str, forbidden: str
) -> None:
    own = {
        "ews-ingest": calendar_subject("ews", MAILBOX),
        "tcs-gateway": results_subject(SERVER),
        "sync-engine": resync_subject(MAILBOX),
        "licensing": SEATS_SUBJECT,
        "graph-ingest": calendar_subject("graph", MAILBOX),
    }[identity]
    connection, violations = await as_identity(nats_server, identity)
    try:
        await connection.publish(forbidden, b"forged")
        await connection.publish(own, b"allowed")  # the control: the same connection can publish what it owns
        await connection.flush()
        await wait_for_async(lambda: own in watcher.subjects, what=f"{identity}'s own {own}")
        await wait_for_async(lambda: violations.about("publish", forbidden), what=f"a violation for {forbidden}")
        assert forbidden not in watcher.subjects, f"{identity} published {forbidden}"
    finally:
        await connection.close()


async def test_a_forged_change_or_command_never_reaches_jetstream(nats_server: EmbeddedNats) -> None:
    admin = Bus(nats_settings(nats_server))
    await admin.connect(attempts=1)
    gateway = Bus(nats_settings(nats_server, "tcs-gateway"))
    ingest = Bus(nats_settings(nats_server, "ews-ingest"))
    await gateway.connect(attempts=1)
    await ingest.connect(attempts=1)
    try:
        with pytest.raises((NatsError, asyncio.TimeoutError)):  # the publish is dropped: no ack ever comes
            await asyncio.wait_for(gateway.publish(calendar_subject("ews", MAILBOX), b"x", msg_id="forged-1"), 5)
        with pytest.raises((NatsError, asyncio.TimeoutError)):
            await asyncio.wait_for(ingest.publish(commands_subject(SERVER), b"x", msg_id="forged-2"), 5)
        assert await ingest.publish(calendar_subject("ews", MAILBOX), b"real", msg_id="real-1")  # the control
        calendar = await admin.js.stream_info(CALENDAR)
        commands = await admin.js.stream_info(TCS_COMMANDS)
        assert (calendar.state.messages, commands.state.messages) == (1, 0)
    finally:
        for bus in (admin, gateway, ingest):
            await bus.close()


@pytest.mark.parametrize(
    ("identity", "forbidden"),
    [
        ("tcs-gateway", "calendar.v1.changes.>"),  # reading every mailbox's changes off the wire
        ("sync-engine", "calendar.v1.control.>"),
        ("licensing", ">"),
        ("tcs-gateway", "_INBOX.ews-ingest.>"),  # another service's replies (JetStream fetches, KV reads)
        ("ews-ingest", "_INBOX.>"),
        ("ews-ingest", f"$KV.{GATEWAY_STATE_BUCKET}.>"),
    ],
)
async def test_a_service_cannot_subscribe_to_what_it_does_not_own(
    nats_server: EmbeddedNats, identity: str, forbidden: str
) -> None:
    connection, violations = await as_identity(nats_server, identity)
    try:
        await connection.subscribe(forbidden)
        await connection.subscribe(f"{IDENTITIES[identity].inbox_prefix}.control")  # the control: its own inbox
        await connection.flush()
        await wait_for_async(lambda: violations.about("subscription", forbidden), what=f"a violation for {forbidden}")
        assert not violations.about("subscription", IDENTITIES[identity].inbox_prefix), violations.errors
    finally:
        await connection.close()


async def test_jetstream_access_is_per_stream_consumer_and_bucket(nats_server: EmbeddedNats) -> None:
    """tcs-gateway cannot read CALENDAR or ews-ingest's KV; ews-ingest cannot read TrueConf commands."""
    admin = Bus(nats_settings(nats_server))
    await admin.connect(attempts=1)  # declares every stream and INGEST_STATE
    gateway = Bus(nats_settings(nats_server, "tcs-gateway"))
    ingest = Bus(nats_settings(nats_server, "ews-ingest"))
    await gateway.connect(attempts=1)
    await ingest.connect(attempts=1)
    try:
        stop = asyncio.Event()

        async def ignore(_: Msg) -> None:
            return None

        with pytest.raises((NatsError, asyncio.TimeoutError)):
            await asyncio.wait_for(consume(gateway, CALENDAR, "sync-engine-calendar", ignore, stop=stop), 5)
        with pytest.raises((NatsError, asyncio.TimeoutError)):
            await asyncio.wait_for(consume(ingest, TCS_COMMANDS, "tcs-gateway-x", ignore, stop=stop), 5)
        with pytest.raises((NatsError, asyncio.TimeoutError)):
            await asyncio.wait_for(gateway.js.key_value(INGEST_STATE_BUCKET), 5)
        kv = await asyncio.wait_for(ingest.key_value(), 5)  # the control: ews-ingest uses its own bucket
        await kv.put("probe", b"1")
        assert (await kv.get("probe")).value == b"1"
    finally:
        for bus in (admin, gateway, ingest):
            await bus.close()


async def test_each_service_identity_connects_and_declares_what_it_uses(nats_server: EmbeddedNats) -> None:
    for name in ("ews-ingest", "sync-engine", "tcs-gateway"):
        bus = Bus(nats_settings(nats_server, name))
        await bus.connect(attempts=1)  # ensure_topology with this user's streams: refused would raise
        await bus.close()


def test_the_server_configuration_names_every_identity_and_no_anonymous_user() -> None:
    text = server_authorization({name: f"pw-{name}" for name in IDENTITIES})
    assert "no_auth_user" not in text
    for name in (*SERVICE_IDENTITIES, "admin"):
        assert f'user: "{name}"' in text


# ------------------------------------------------------------------------------------ refusing an open NATS


@pytest.fixture
def open_nats() -> Iterator[EmbeddedNats]:
    directory = short_tmpdir("tcnopen")
    server = EmbeddedNats(directory, auth=False)
    server.start()
    yield server
    server.stop()


async def test_the_bus_refuses_a_nats_that_takes_anonymous_clients(open_nats: EmbeddedNats) -> None:
    bus = Bus(BusSettings(url=open_nats.url))
    with pytest.raises(AnonymousNatsError, match=r"nats\.allowAnonymous"):
        await bus.connect(attempts=1)
    assert not bus.connected
    allowed = Bus(BusSettings(url=open_nats.url, allow_anonymous=True))  # the test-only setting
    await allowed.connect(attempts=1)
    assert allowed.connected
    await allowed.close()


async def test_a_service_app_stops_itself_on_an_open_nats(open_nats: EmbeddedNats) -> None:
    grpc_port, http_port = free_ports(2)
    config = Config.model_validate(
        {
            "nats": {"url": open_nats.url},
            "grpc": {"services": {"sync-engine": {"grpcPort": grpc_port, "httpPort": http_port}}},
        }
    )
    app = ServiceApp("sync-engine", config)
    bus = app.new_bus()
    app.task(bus.connect)
    await asyncio.wait_for(app.run(), 30)
    assert app.refused is not None and "TC_CALENDAR__NATS__ALLOWANONYMOUS" in app.refused


def test_a_service_process_exits_2_naming_the_setting(open_nats: EmbeddedNats, tmp_path: Path) -> None:
    grpc_port, http_port, pg_port = free_ports(3)
    config = {
        "dbConnectionConfig": {"host": "127.0.0.1", "port": pg_port, "user": "postgres", "database": "x"},
        "productWhitelist": {"tcs": [SERVER]},
        "nats": {"url": open_nats.url},
        "grpc": {"services": {"sync-engine": {"grpcPort": grpc_port, "httpPort": http_port}}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "sync_engine", "--config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "accepts clients without credentials" in result.stderr
    assert "nats.allowAnonymous" in result.stderr


def test_a_service_process_starts_on_an_authenticated_nats(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """The control of the test above: the same service with its own user does not refuse."""
    grpc_port, http_port, pg_port = free_ports(3)
    config = {
        "dbConnectionConfig": {"host": "127.0.0.1", "port": pg_port, "user": "postgres", "database": "x"},
        "productWhitelist": {"tcs": [SERVER]},
        "nats": {
            "url": nats_server.url,
            "user": "sync-engine",
            "password": secrets.encrypt(nats_server.passwords["sync-engine"]),
        },
        "grpc": {"services": {"sync-engine": {"grpcPort": grpc_port, "httpPort": http_port}}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_engine", "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        # sync-engine declares its streams only once connected and past the anonymous check
        wait_for(lambda: process.poll() is not None or asyncio.run(_has_stream(nats_server, CALENDAR)), 60)
        assert process.poll() is None, process.stdout.read().decode()[-3000:] if process.stdout else ""
    finally:
        process.kill()
        process.wait(30)


async def _has_stream(server: EmbeddedNats, stream: str) -> bool:
    connection = await connect_nats(server)
    try:
        await connection.jetstream().stream_info(stream)
    except NatsError:
        return False
    finally:
        await connection.close()
    return True


def test_the_cli_block_takes_passwords_from_the_servers_environment(tmp_path: Path) -> None:
    """`tc-calendar nats-auth` for an administrator's own NATS: passwords are environment variables of the server."""
    printed = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "nats-auth"], capture_output=True, text=True, check=True
    ).stdout
    (port,) = free_ports(1)
    config = tmp_path / "nats.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\n{printed}")
    passwords = {name: f"pw-{name}-{port}" for name in IDENTITIES}
    env = {password_variable(name): password for name, password in passwords.items()}
    process = subprocess.Popen([nats_server_binary(), "-c", str(config)], env=env)
    url = f"nats://127.0.0.1:{port}"

    async def connects(user: str, password: str) -> bool:
        try:
            connection = await connect_nats(BusSettings(url=url, user=user, password=password))
        except (NatsError, OSError):
            return False
        await connection.close()
        return True

    try:
        wait_for(lambda: process.poll() is not None or asyncio.run(connects("ews-ingest", passwords["ews-ingest"])), 20)
        assert process.poll() is None, "nats-server refused the printed block"
        assert not asyncio.run(accepts_anonymous(BusSettings(url=url)))
        assert not asyncio.run(connects("ews-ingest", passwords["admin"]))  # another identity's password
    finally:
        process.terminate()
        process.wait(20)
