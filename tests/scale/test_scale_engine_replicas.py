"""sync-engine and licensing replicas (issue #18 point 3): three sync-engine processes and two licensing processes
on one PostgreSQL and one NATS, driven through Exchange (EWS) as Outlook would, seen in TrueConf (the emulator).

The sandbox runs its own sync-engine and licensing; the tests start two more engines ("b", "c") and one more
licensing ("b") with the sandbox's configs (`tccal_sandbox.testing.start_service_replica`).

Asserted through real interfaces only:
* one engine at a time consumes CALENDAR (its log says it leads; the others stand by), kill -9 of that engine
  while meetings are being written loses nothing: every meeting's conference is created in TrueConf, once (the
  emulator's conferences and its REST log: one POST /conferences per meeting), every command of the outbox is in
  TCS_COMMANDS exactly once (the relay's Nats-Msg-Id), and a meeting starting now is launched once (one POST
  .../run in the REST log) although three schedulers look at it; the takeover time is printed (TAKEOVER ...);
* licensing: concurrent AllocateSeats to both replicas never grant more seats than the license has (the union
  of what was granted, and licensing.seats), and both replicas' ListSeats name the same seats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.properties import Attendee, Mailbox

from sync_engine.bus import CALENDAR_LOCK_KEY
from tccal.grpckit import service_token
from tccal.subjects import TCS_COMMANDS
from tccal_sandbox.demo import Ews
from tccal_sandbox.testing import (
    SandboxProcess,
    ServiceReplica,
    connect_nats,
    running_sandbox,
    start_service_replica,
    wait_for,
    wait_for_async,
)
from trueconf.calendar.v1 import licensing_pb2, licensing_pb2_grpc

DOMAIN = "sandbox.test"
SEATS = 20
#: After kill -9 of the consuming engine another takes the lock at once (PostgreSQL drops the dead session's
#: lock), waits for the changes the dead one had fetched (JetStream's ack_wait, 30 s) and applies them; then the
#: commands go through the relay and the gateway to TrueConf.
TAKEOVER_BOUND_SECONDS = 30 + 2 + 60
LEADS = "calendar consumer: this engine leads"
LOST = "calendar consumer: the lock's PostgreSQL connection broke"
#: pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32 bits), objsubid 1.
HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND classid::bigint = $1 AND objid::bigint = $2"
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with running_sandbox("--no-demo", "--seats", str(SEATS), timeout=300) as running:
        yield running


@dataclass
class Engine:
    """One sync-engine process: the sandbox's own ("s") or a replica started here."""

    name: str
    pid: int
    log_path: Path
    kill: Callable[[], None]

    def leads(self) -> bool:
        """Its log says it took the calendar lock and has not said since that it lost it (and it is alive)."""
        log = self.log_path.read_text(errors="replace")
        return log.rfind(LEADS) > log.rfind(LOST) and alive(self.pid)


def sandbox_engine(sandbox: SandboxProcess) -> Engine:
    pid = int(sandbox.ready["processes"]["sync-engine"])

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)

    return Engine("s", pid, sandbox.state_dir / "logs" / "sync-engine.log", kill)


def replica_engine(replica: ServiceReplica) -> Engine:
    return Engine(replica.name, replica.process.pid, replica.log_path, replica.kill)


async def move_leadership_away(sandbox: SandboxProcess, holder: Engine) -> None:
    """Cut the calendar lock holder's PostgreSQL session (pg_terminate_backend, as a PostgreSQL failover would) while
    the holding engine is stopped (SIGSTOP), until a standing-by engine took the lock; then let it go on (SIGCONT):
    it finds its session gone and stands by. (Giving the lock back to whichever engine asked first, as this did
    before, was a race the old holder kept winning: it asked again at the same moment after every cut, 12 times
    in a row in one CI run.)"""
    key = CALENDAR_LOCK_KEY
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        connection = await asyncpg.connect(sandbox.ready["postgres"]["dsn"])
        try:
            cut = await connection.fetchval(HOLDER, key >> 32, key & 0xFFFF_FFFF)
            if cut is not None:
                await connection.execute("SELECT pg_terminate_backend($1)", cut)

            async def taken_by_another() -> bool:
                now = await connection.fetchval(HOLDER, key >> 32, key & 0xFFFF_FFFF)
                return now is not None and now != cut

            await wait_for_async(taken_by_another, 30, interval=0.05, what="a standing-by engine takes the lock")
        finally:
            await connection.close()
    finally:
        os.kill(holder.pid, signal.SIGCONT)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    return True


def inspect(sandbox: SandboxProcess, what: str) -> Any:
    with urllib.request.urlopen(f"{sandbox.ready['trueconf']['inspect_url']}/{what}", timeout=10) as response:
        return json.loads(response.read())


def conference_topics(sandbox: SandboxProcess) -> Counter[str]:
    return Counter(str(c.get("topic")) for c in inspect(sandbox, "conferences"))


def rest_calls(sandbox: SandboxProcess, method: str, suffix: str) -> list[str]:
    """Paths of the REST API v4 calls TrueConf logged with this method whose path ends in `suffix`."""
    return [
        str(e["path"])
        for e in inspect(sandbox, "rest-log")
        if e["method"] == method and str(e["path"]).rstrip("/").endswith(suffix)
    ]


class Outlook:
    """Carol invites Bob to meetings with "@trueconf" as the location (a conference with the defaults)."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        account = sandbox.ready["exchange"]["service_account"]
        self.carol = Ews(sandbox.ready["exchange"]["ews_url"], account["username"], account["password"]).account(
            f"carol@{DOMAIN}"
        )

    def meeting(self, subject: str, starts_in: timedelta) -> None:
        start = EWSDateTime.from_datetime(datetime.now(UTC) + starts_in).astimezone(EWSTimeZone("UTC"))
        CalendarItem(
            account=self.carol,
            folder=self.carol.calendar,
            subject=subject,
            start=start,
            end=start + timedelta(minutes=30),
            location="@trueconf",
            required_attendees=[Attendee(mailbox=Mailbox(email_address=f"bob@{DOMAIN}"))],
        ).save(send_meeting_invitations="SendToAllAndSaveCopy")


async def outbox_commands(sandbox: SandboxProcess) -> tuple[int, int]:
    """(commands in the outbox, those still pending)."""
    connection = await asyncpg.connect(sandbox.ready["postgres"]["dsn"])
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS p FROM outbox"
        )
    finally:
        await connection.close()
    return int(row["n"]), int(row["p"])


async def commands_in_stream(sandbox: SandboxProcess) -> int:
    nc = await connect_nats(sandbox.ready)
    try:
        return int((await nc.jetstream().stream_info(TCS_COMMANDS)).state.messages)
    finally:
        await nc.close()


def test_engine_replicas_apply_each_change_once_and_survive_kill9_of_the_consuming_one(
    sandbox: SandboxProcess,
) -> None:
    replicas = [start_service_replica(sandbox, "sync-engine", name) for name in ("b", "c")]
    engines = [sandbox_engine(sandbox), *(replica_engine(r) for r in replicas)]
    try:
        leader = wait_for(lambda: next((e for e in engines if e.leads()), None), 30, what="an engine leads")
        # The sandbox stops when one of its own processes dies: the engine to kill is one started here.
        if leader.name == "s":
            asyncio.run(move_leadership_away(sandbox, leader))
            wait_for(lambda: not engines[0].leads(), 30, what="the sandbox's engine noticed it lost the lock")
            leader = wait_for(lambda: next((e for e in engines if e.leads()), None), 30, what="an engine leads")
        assert leader.name != "s", "the sandbox's engine kept the lock"
        assert [e.name for e in engines if e.leads()] == [leader.name], "more than one engine consumes CALENDAR"
        outlook = Outlook(sandbox)
        launch = "Replicas launch now"
        outlook.meeting(launch, timedelta(seconds=5))  # on by the time its conference exists: launched at once
        subjects = [f"Replicas {n}" for n in range(10)]
        for subject in subjects[:4]:
            outlook.meeting(subject, timedelta(days=2))
        wait_for(lambda: conference_topics(sandbox)[subjects[0]], 90, what="the first conference in TrueConf")

        killed_at = time.monotonic()
        leader.kill()  # mid-stream: meetings keep coming while no engine consumes
        for subject in subjects[4:]:
            outlook.meeting(subject, timedelta(days=2))
        survivors = [e for e in engines if e is not leader]
        successor = wait_for(lambda: next((e for e in survivors if e.leads()), None), 15, what="another engine leads")
        wait_for(
            lambda: all(conference_topics(sandbox)[s] for s in [*subjects, launch]),
            TAKEOVER_BOUND_SECONDS,
            interval=0.5,
            what="every meeting's conference after the kill",
        )
        takeover = time.monotonic() - killed_at
        print(
            f"\nTAKEOVER: {successor.name} took over from {leader.name}; all conferences {takeover:.1f} s after kill -9"
        )
        wait_for(lambda: rest_calls(sandbox, "POST", "/run"), 60, what="the launch")

        async def published_all() -> tuple[int, int, int]:
            total, pending = await outbox_commands(sandbox)
            return total, pending, await commands_in_stream(sandbox)

        def settled() -> tuple[int, int, int] | None:
            total, pending, stored = asyncio.run(published_all())
            return (total, pending, stored) if pending == 0 and stored == total else None

        total, _, stored = wait_for(settled, 30, interval=0.5, what="every outbox command in TCS_COMMANDS once")
        time.sleep(3)  # several scheduler ticks of the two engines left after the launch
        topics = conference_topics(sandbox)
        assert {s: topics[s] for s in [*subjects, launch] if topics[s] != 1} == {}, "a meeting without one conference"
        assert len(rest_calls(sandbox, "POST", "/conferences")) == len(subjects) + 1, "a conference created twice"
        runs = rest_calls(sandbox, "POST", "/run")
        assert len(runs) == 1, f"launched {len(runs)} times: {runs}"
        print(f"COMMANDS: {total} in the outbox, {stored} in TCS_COMMANDS")
        assert all(alive(e.pid) for e in survivors)
    finally:
        for replica in replicas:
            replica.stop()


def bearer_metadata(token: str) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_two_licensing_replicas_never_grant_more_seats_than_the_license_has(sandbox: SandboxProcess) -> None:
    replica = start_service_replica(sandbox, "licensing", "b")
    admin = str(sandbox.ready["grpc"]["admin_token"])
    ingest = bearer_metadata(service_token(admin, "ews-ingest"))
    engine = bearer_metadata(service_token(admin, "sync-engine"))
    addresses = [str(sandbox.ready["services"]["licensing"]["grpc"]), replica.grpc]
    channels = [grpc.insecure_channel(a) for a in addresses]
    stubs = [licensing_pb2_grpc.LicensingServiceStub(c) for c in channels]
    try:
        asked = [f"walk-in{n:02d}@{DOMAIN}" for n in range(3 * SEATS)]

        async def allocate_concurrently() -> list[licensing_pb2.AllocateSeatsResponse]:
            calls = []
            for n in range(12):  # twelve callers at once, half on each replica, overlapping asks
                stub = stubs[n % 2]
                mailboxes = asked[n * 4 : n * 4 + 2 * SEATS]
                request = licensing_pb2.AllocateSeatsRequest(
                    mailboxes=[licensing_pb2.SeatRequest(mailbox=m) for m in mailboxes], providers=1
                )
                calls.append(asyncio.to_thread(stub.AllocateSeats, request, metadata=ingest, timeout=30))
            return list(await asyncio.gather(*calls))

        answers = asyncio.run(allocate_concurrently())
        granted = {m for a in answers for m in a.granted}
        assert granted, [a.refused[:1] for a in answers]
        leases = [
            {s.mailbox for s in stub.ListSeats(licensing_pb2.ListSeatsRequest(), metadata=engine, timeout=30).seats}
            for stub in stubs
        ]
        assert leases[0] == leases[1], "the two replicas name different seats"
        held = leases[0]
        # every walk-in granted by any call still holds its seat (none was taken back: only configured users
        # outrank, and they were seated before), and the seats held never exceed the license's
        assert granted <= held, sorted(granted - held)[:5]
        assert len(held) <= SEATS, f"{len(held)} seats held of {SEATS}"
        print(f"\nSEATS: {len(granted)} walk-ins granted by 12 concurrent calls, {len(held)} held of {SEATS}")

        async def seats_in_database() -> int:
            connection = await asyncpg.connect(sandbox.ready["postgres"]["dsn"])
            try:
                return int(await connection.fetchval("SELECT count(*) FROM licensing.seats WHERE expires_at > now()"))
            finally:
                await connection.close()

        assert asyncio.run(seats_in_database()) <= SEATS
        # one registration (the sandbox's tc_calendar --register), seen alike by both: one installation, one license
        administrator = bearer_metadata(admin)
        first, second = (
            stub.GetLicense(licensing_pb2.GetLicenseRequest(), metadata=administrator, timeout=30) for stub in stubs
        )
        assert first.license_id == second.license_id != ""
        assert first.installation_id == second.installation_id != ""
        assert first.seats == second.seats == SEATS
    finally:
        for channel in channels:
            channel.close()
        replica.stop()
