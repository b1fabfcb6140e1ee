"""The whole product under faults: start it, load it through EWS, break a part, check what TrueConf holds.

Builds on tests/e2e/e2e_support.py (same sandbox, same EWS and inspection helpers). The sandbox supervisor
stops the whole product as soon as one of its children exits, so a test that kills a process first freezes
the supervisor (SIGSTOP) and from then on restarts what it killed itself, with the argv read from
/proc/<pid>/cmdline and the environment the sandbox gives its services (machine key and config in the state
dir). Everything restarted here is stopped here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from e2e_support import SEND, Product, email, http_json, wait_until

from tccal import secrets
from tccal_sandbox.embedded import die_with_parent
from tccal_sandbox.testing import disk_full_statements, running_sandbox, short_tmpdir

LOAD = int(os.environ.get("TC_FAULTS_LOAD", "150"))  # changes per scenario; `make faults` raises it
CONVERGE_S = float(os.environ.get("TC_FAULTS_CONVERGE_S", str(max(120.0, LOAD * 0.06))))  # after the last write
SERVICE_MODULES = {"ews-ingest", "sync-engine", "tcs-gateway", "licensing"}
RESULTS: list[dict[str, Any]] = []  # one row per scenario, printed at the end of the session
ADMIN_TOKEN = "flt-admin-" + os.urandom(12).hex()  # the gRPC admin token of the guarded product (abuse tests)
PAIRS = [("alice", "bob"), ("bob", "carol"), ("carol", "erin")]


@dataclass
class FaultProduct:
    """A running sandbox (e2e Product) plus the processes this suite restarted in it."""

    product: Product
    frozen: bool = False
    postgres_restarted: bool = False
    restarted: list[subprocess.Popen[bytes]] = field(default_factory=list)
    runs_seen: int = 0  # the REST log read so far (its last seq) and the successful conference runs in it
    runs: dict[str, int] = field(default_factory=dict)

    @property
    def ready(self) -> dict[str, Any]:
        return self.product.ready

    @property
    def state_dir(self) -> Path:
        return self.product.state_dir

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TC_CALENDAR_KEY", None)
        env["TC_CALENDAR_KEY_FILE"] = str(self.state_dir / "machine.key")
        env["TC_CALENDAR_CONFIG"] = str(self.state_dir / "config.json")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def freeze_supervisor(self) -> None:
        """Stop the sandbox's own watchdog (it would tear everything down when a child dies)."""
        if not self.frozen:
            os.kill(self.product.process.pid, signal.SIGSTOP)
            self.frozen = True

    def kill9_and_restart(self, name: str, down_s: float = 1.0, while_down: Callable[[], None] | None = None) -> None:
        """kill -9 one of the four services and start it again with the same argv and environment (after
        `down_s`, and after `while_down` ran)."""
        assert name in SERVICE_MODULES, name
        self.freeze_supervisor()
        pid = int(self.ready["processes"][name])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 20, f"{name} ({pid}) gone after SIGKILL")
        time.sleep(down_s)
        if while_down is not None:
            while_down()
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [a.decode() for a in argv], stdout=log, stderr=subprocess.STDOUT, env=self.env(), preexec_fn=die_with_parent
        )
        log.close()
        self.restarted.append(process)
        self.ready["processes"][name] = process.pid
        http = self.ready["services"][name]["http"]
        wait_until(lambda: _http_ok(f"{http}/readyz"), 90, f"{name} ready again after restart")

    def restart_nats(self, down_s: float = 2.0) -> None:
        """kill -9 nats-server and start it again on the same port and store directory."""
        self.freeze_supervisor()
        pid = int(self.ready["processes"]["nats-server"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 20, "nats-server gone")
        time.sleep(down_s)
        log = open(self.state_dir / "nats" / "nats-server.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [a.decode() for a in argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.restarted.append(process)
        self.ready["processes"]["nats-server"] = process.pid

    def restart_postgres(self, down_s: float = 2.0) -> None:
        """Crash-stop the embedded PostgreSQL (pg_ctl stop -m immediate) and start it on the same data dir."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        data = self.state_dir / "pg"
        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, user=user, timeout=30)
        time.sleep(down_s)
        self.postgres_restarted = True
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {data}", "-l", str(data / "restart.log"), "start"],
            pgdata=data,
            user=user,
            timeout=60,
        )

    def stop_restarted(self) -> None:
        for process in reversed(self.restarted):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.restarted):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # fault injection in the emulators
    def exchange_admin(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(f"{self.ready['exchange']['admin_url']}{path}", method, body)

    def trueconf_admin(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(f"{self.ready['trueconf']['admin_url']}{path}", method, body)

    def bridge(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.ready['trueconf']['inspect_url']}/bridge")
        return result

    def scan_runs(self) -> None:
        """Count the successful conference runs in the REST calls made since the last scan.

        The emulator keeps only its last 10,000 calls, so the load writers scan as they go; a gap means calls
        went unread and the duplicate-launch check would be blind: that fails the test instead.
        """
        entries = self.rest_log(since=self.runs_seen)
        if entries and int(entries[0]["seq"]) != self.runs_seen + 1:
            raise RuntimeError(f"REST log calls {self.runs_seen + 1}..{entries[0]['seq'] - 1} were dropped unread")
        for entry in entries:
            self.runs_seen = int(entry["seq"])
            path = str(entry.get("path", ""))
            if entry.get("method") == "POST" and path.endswith("/run") and int(entry.get("status", 0)) < 300:
                self.runs[path] = self.runs.get(path, 0) + 1

    def rest_log(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = http_json(f"{self.ready['trueconf']['inspect_url']}/rest-log?since={since}")
        return result


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def launch(*args: str, admin_token: str | None = None, timeout: float = 240.0) -> Iterator[FaultProduct]:
    """`tc-calendar sandbox --no-demo *args` in a fresh state dir; with `admin_token`, gRPC admin calls need it.

    The machine key is made in the state dir first, so the token can be encrypted with the product's own key.
    """
    state = short_tmpdir("tcflt")
    if admin_token is not None:
        key_file = state / "machine.key"
        previous = os.environ.get("TC_CALENDAR_KEY_FILE")
        os.environ["TC_CALENDAR_KEY_FILE"] = str(key_file)
        try:
            encrypted = secrets.encrypt(admin_token, secrets.load_key(create=True))
        finally:
            if previous is None:
                os.environ.pop("TC_CALENDAR_KEY_FILE", None)
            else:
                os.environ["TC_CALENDAR_KEY_FILE"] = previous
        args = (*args, "--config-override", json.dumps({"grpc": {"adminToken": encrypted}}))
    running: FaultProduct | None = None
    try:
        with running_sandbox("--no-demo", *args, state_dir=state, timeout=timeout) as sandbox:
            running = FaultProduct(Product(sandbox.ready, state, sandbox.process))
            try:
                yield running
            finally:
                running.stop_restarted()
                if running.frozen:
                    os.kill(sandbox.process.pid, signal.SIGCONT)
    finally:
        if running is not None and running.postgres_restarted and (state / "pg" / "postmaster.pid").exists():
            stop_postgres(state / "pg")  # the one we started is not the sandbox's to stop
        SECRET_SOURCES.append(state)


def stop_postgres(data: Path) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data, user="pgserver" if os.geteuid() == 0 else None, timeout=60)


SECRET_SOURCES: list[Path] = []  # state dirs of every product this session started (for the secrets scan)


# --- load -------------------------------------------------------------------------------------------------
@dataclass
class Meeting:
    subject: str
    organizer: str
    attendee: str
    start: datetime
    conference: bool
    item: Any = None
    deleted: bool = False
    launch: bool = False  # starts during the scenario: its conference must be run exactly once


@dataclass
class Load:
    """Exactly `changes` EWS writes: 65 % creates, then 25 % reschedules (+1 h, even-numbered meetings), then
    deletes (odd-numbered) for the rest."""

    tag: str
    changes: int
    meetings: list[Meeting] = field(default_factory=list)
    written: int = 0

    def plan(self) -> list[tuple[str, int]]:
        creates = max(3, round(self.changes * 0.65))
        ops: list[tuple[str, int]] = [("create", i) for i in range(creates)]
        ops += [("move", i) for i in range(0, creates, 2)][: max(0, round(self.changes * 0.25))]
        ops += [("delete", i) for i in range(1, creates, 2)][: max(0, self.changes - len(ops))]
        return ops


def write_load(fp: FaultProduct, load: Load, ops: list[tuple[str, int]]) -> None:
    """Apply `ops` through EWS (bulk creates, item-by-item updates and deletes), as Outlook would."""
    from exchangelib import CalendarItem, EWSDateTime
    from exchangelib.properties import Attendee, Mailbox

    product = fp.product
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    creates: dict[str, list[Meeting]] = {}
    for op, index in ops:
        if op == "create":
            organizer, attendee = PAIRS[index % len(PAIRS)]
            start = base + timedelta(days=(index // 24) % 40, hours=index % 24 // 2, minutes=(index % 2) * 30)
            meeting = Meeting(f"{load.tag}-{index:05d}", organizer, attendee, start, index % 5 == 0)
            load.meetings.append(meeting)
            creates.setdefault(organizer, []).append(meeting)
    for organizer, meetings in creates.items():
        account = product.account(organizer)
        for chunk in range(0, len(meetings), 50):
            batch = meetings[chunk : chunk + 50]
            items = [
                CalendarItem(
                    account=account,
                    folder=account.calendar,
                    subject=m.subject,
                    start=EWSDateTime.from_datetime(m.start),
                    end=EWSDateTime.from_datetime(m.start + timedelta(minutes=25)),
                    location="@trueconf" if m.conference else "Room 1",
                    required_attendees=[Attendee(mailbox=Mailbox(email_address=email(m.attendee)))],
                )
                for m in batch
            ]
            results = account.bulk_create(folder=account.calendar, items=items, send_meeting_invitations=SEND)
            for meeting, result in zip(batch, results, strict=True):
                assert not isinstance(result, Exception), f"EWS refused {meeting.subject}: {result!r}"
                meeting.item = result
                load.written += 1
            fp.scan_runs()
    by_index = {int(m.subject.rsplit("-", 1)[1]): m for m in load.meetings if not m.launch}
    for op, index in ops:
        if op == "create":
            continue
        meeting = by_index[index]
        item = product.account(meeting.organizer).calendar.get(id=meeting.item.id)
        if op == "move":
            meeting.start += timedelta(hours=1)
            item.start = EWSDateTime.from_datetime(meeting.start)
            item.end = EWSDateTime.from_datetime(meeting.start + timedelta(minutes=25))
            item.save(update_fields=["start", "end"], send_meeting_invitations=SEND)
        else:
            item.delete(send_meeting_cancellations=SEND)
            meeting.deleted = True
        load.written += 1
        if load.written % 250 == 0:
            fp.scan_runs()


def write_soon(fp: FaultProduct, load: Load, count: int = 2, lead_s: float = 25.0) -> None:
    """`count` conference meetings starting `lead_s` from now: the scheduler must launch each exactly once."""
    from exchangelib import CalendarItem, EWSDateTime
    from exchangelib.properties import Attendee, Mailbox

    start = (datetime.now(UTC) + timedelta(seconds=lead_s)).replace(microsecond=0)
    for index in range(count):
        organizer, attendee = PAIRS[index % len(PAIRS)]
        meeting = Meeting(f"{load.tag}-soon{index}", organizer, attendee, start, True, launch=True)
        account = fp.product.account(organizer)
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject=meeting.subject,
            start=EWSDateTime.from_datetime(start),
            end=EWSDateTime.from_datetime(start + timedelta(minutes=30)),
            location="@trueconf",
            required_attendees=[Attendee(mailbox=Mailbox(email_address=email(attendee)))],
        )
        item.save(send_meeting_invitations=SEND)
        meeting.item = item
        load.meetings.append(meeting)
        load.written += 1


def verdict(fp: FaultProduct, load: Load) -> dict[str, Any]:
    """Compare what TrueConf shows with what was written: missing, duplicated, wrong, conference counts.

    Reads only this load's events and conferences (subject prefix) and only the REST calls made since the last
    look, and indexes them by subject: one pass, so polling it at 10,000 changes does not starve the product.
    """
    from urllib.parse import quote

    inspect = fp.ready["trueconf"]["inspect_url"]
    prefix = quote(load.tag + "-")
    missing: list[str] = []
    duplicated: list[str] = []
    wrong: list[str] = []
    conferences: list[dict[str, Any]] = http_json(f"{inspect}/conferences?prefix={prefix}")
    topics: dict[str, list[dict[str, Any]]] = {}
    for conference in conferences:
        topics.setdefault(conference["topic"], []).append(conference)
    calendars: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for who in {m.organizer for m in load.meetings} | {m.attendee for m in load.meetings}:
        by_subject: dict[str, list[dict[str, Any]]] = {}
        for event in http_json(f"{inspect}/calendars/{quote(email(who))}?prefix={prefix}"):
            by_subject.setdefault(event["subject"], []).append(event)
        calendars[who] = by_subject
    for meeting in load.meetings:
        for who in (meeting.organizer, meeting.attendee):
            found = calendars[who].get(meeting.subject, [])
            live = [e for e in found if not e["cancelled"]]
            if meeting.deleted:
                if live:
                    wrong.append(f"{meeting.subject} still live for {who}")
                if len(found) > 1:
                    duplicated.append(f"{meeting.subject} x{len(found)} for {who}")
                continue
            if not found:
                missing.append(f"{meeting.subject} for {who}")
            elif len(found) > 1:
                duplicated.append(f"{meeting.subject} x{len(found)} for {who}")
            elif datetime.fromisoformat(found[0]["start"].replace("Z", "+00:00")) != meeting.start:
                wrong.append(f"{meeting.subject} for {who} starts {found[0]['start']}, expected {meeting.start}")
            elif meeting.conference and found[0]["conference"] is None:
                missing.append(f"join link of {meeting.subject} for {who}")
        made = topics.get(meeting.subject, [])
        if meeting.launch and datetime.now(UTC) < meeting.start + timedelta(seconds=5):
            missing.append(f"launch of {meeting.subject} (not due yet)")
        elif meeting.launch and made and made[0].get("state") != "running":
            missing.append(f"launch of {meeting.subject} (state {made[0].get('state')})")
        if meeting.conference and not meeting.deleted and not made:
            missing.append(f"conference of {meeting.subject}")
        if len(made) > 1:
            duplicated.append(f"conference {meeting.subject} x{len(made)}")
        if (not meeting.conference or meeting.deleted) and made:
            wrong.append(f"conference of {meeting.subject} should not exist")
    fp.scan_runs()
    duplicated += [f"launch {p} x{n}" for p, n in fp.runs.items() if n > 1]
    return {"missing": missing, "duplicated": duplicated, "wrong": wrong, "conferences": len(conferences)}


def converge(fp: FaultProduct, load: Load, started: float, scenario: str, faults: str) -> dict[str, Any]:
    """Wait (bounded) until TrueConf shows exactly what was written; record and return the row."""
    last: dict[str, Any] = {}
    written = time.monotonic() - started

    def clean() -> bool:
        nonlocal last
        began = time.monotonic()
        last = verdict(fp, load)
        done = not (last["missing"] or last["duplicated"] or last["wrong"])
        if not done:  # a slow look (a big load) waits as long again: the product keeps most of the CPU
            time.sleep(time.monotonic() - began)
        return done

    try:
        wait_until(clean, CONVERGE_S, f"{scenario}: TrueConf to show every change exactly once", interval=2.0)
        converged: float | None = time.monotonic() - started
    except AssertionError:
        converged = None
    row = {
        "scenario": scenario,
        "load": load.written,
        "faults": faults,
        "lost": len(last.get("missing", [])),
        "duplicated": len(last.get("duplicated", [])),
        "wrong": len(last.get("wrong", [])),
        "writes_s": round(written, 1),
        "converge_s": None if converged is None else round(converged, 1),
    }
    RESULTS.append(row)
    assert converged is not None, (
        f"{scenario} did not converge within {CONVERGE_S:.0f}s: "
        f"missing {last['missing'][:10]}, duplicated {last['duplicated'][:10]}, wrong {last['wrong'][:10]}"
    )
    return row


# --- report -----------------------------------------------------------------------------------------------
def report_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The session's rows with what is needed to read them: when, on how many cores, at which bound."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "load_per_scenario": LOAD,
        "converge_bound_s": CONVERGE_S,
        "bound_note": "converge_bound_s counts from the last write; converge_s from the scenario's first write",
        "rows": rows,
    }


def markdown_of(report: dict[str, Any]) -> str:
    lines = [
        f"### Fault scenarios — {report['load_per_scenario']} changes each, {report['cores']} cores, {report['date']}",
        "",
        f"Bound: every scenario must show every change exactly once within {report['converge_bound_s']:.0f} s of its "
        "last write. Time to converge counts from the scenario's first write (so it includes writing the load); "
        "lag is the part after the last write.",
        "",
        "| scenario | load | faults injected | lost | duplicated | wrong | writes s | lag s | time to converge s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        converged = row["converge_s"]
        lag = None if converged is None or row.get("writes_s") is None else round(converged - row["writes_s"], 1)
        lines.append(
            f"| {row['scenario']} | {row['load']} | {row['faults']} | {row['lost']} | {row['duplicated']} | "
            f"{row['wrong']} | {row.get('writes_s', '')} | {'' if lag is None else lag} | "
            f"{'did not converge' if converged is None else converged} |"
        )
    return "\n".join(lines) + "\n"


# --- PostgreSQL that cannot take writes (issue #17) ----------------------------------------------------------
#: How long PostgreSQL refuses writes in the read-only and disk-full scenarios: 60 s at the issue's size
#: (`make faults`), 10 s at `make test`'s; TC_FAULTS_PG_FAULT_S overrides.
PG_FAULT_S = float(os.environ.get("TC_FAULTS_PG_FAULT_S", "60" if LOAD >= 1000 else "10"))
#: nats.maxDeliver of the product these scenarios run: with the old nak-and-redeliver a change refused 3 times
#: (about 2 s of backoff) was dead-lettered, so even the 10 s fault of `make test` would lose changes.
PG_FAULT_MAX_DELIVER = 3


def pg_execute(fp: FaultProduct, *statements: str) -> list[Any]:
    """Run statements on the product's PostgreSQL (its own database), each outside a transaction block; the
    session is made read-write first, so the statements that end read-only mode run in read-only mode too."""
    import asyncio

    import asyncpg

    async def run() -> list[Any]:
        connection = await asyncpg.connect(fp.ready["postgres"]["dsn"])
        try:
            await connection.execute("SET default_transaction_read_only = off")
            return [await connection.fetch(statement) for statement in statements]
        finally:
            await connection.close()

    return asyncio.run(run())


def set_read_only(fp: FaultProduct, on: bool) -> None:
    """The whole PostgreSQL server read-only (or not) for every session, as a hot standby is: ALTER SYSTEM and a
    reload; sessions already open take the new default at their next statement (checked: 25006 at once)."""
    change = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    pg_execute(fp, f"ALTER SYSTEM {change}", "SELECT pg_reload_conf()")


def set_disk_full(fp: FaultProduct, on: bool) -> None:
    """Every write to the engine's tables answered with what PostgreSQL sends when its disk is full: an
    ErrorResponse with SQLSTATE 53100 disk_full, 'could not extend file "base/<db>/<rel>": No space left on
    device', HINT 'Check free disk space.' — raised by PostgreSQL itself from a statement trigger on each table
    (tests/faults/README.md says why not a real full disk)."""
    (tables,) = pg_execute(fp, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    names = [str(row["tablename"]) for row in tables]
    pg_execute(fp, *disk_full_statements(names, on))


def readiness(fp: FaultProduct, service: str) -> dict[str, Any]:
    """The service's /readyz answer (503 included)."""
    import urllib.error
    import urllib.request

    url = f"{fp.ready['services'][service]['http']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    return body


def metric(fp: FaultProduct, service: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) on the service's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{fp.ready['services'][service]['http']}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def dead_letters(fp: FaultProduct) -> dict[str, Any]:
    """`tc-calendar dead-letters list --json` against the product, as an administrator runs it."""
    import sys

    result = subprocess.run(
        [str(Path(sys.executable).parent / "tc-calendar"), "dead-letters", "list", "--json"],
        env=fp.env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"tc-calendar dead-letters list failed: {result.stderr.decode()}"
    listed: dict[str, Any] = json.loads(result.stdout)
    return listed
