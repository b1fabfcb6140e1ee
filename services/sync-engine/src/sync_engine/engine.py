"""The sync-engine's transactions: apply a calendar change, apply a command result, launch due conferences,
roll the cache window, clear a mailbox for a resync. Each is one PostgreSQL transaction whose decisions go to
the outbox in that same transaction (the relay publishes them).

Locking (no cycles): a batch of changes takes the mailbox-set lock (exclusive if it adds mailboxes, else shared),
locks its mailbox rows, then its item rows, then the meetings it touches (advisory locks, sorted), and allocates
per-user seqs last (users sorted). Results lock their outbox row, then the
meeting. The scheduler takes due launch rows with FOR UPDATE SKIP LOCKED and only *tries* the meeting lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg
from opentelemetry import trace

from sync_engine.ids import to_datetime
from sync_engine.items import Incoming, ItemState, ItemWrites
from sync_engine.metrics import METRICS
from sync_engine.outbox import (
    FAILED,
    OK,
    RECOVERED,
    RETRYING,
    SUPERSEDED,
    Cause,
    CommandBatch,
    run_target,
)
from sync_engine.reconcile import (
    Moment,
    delete_command,
    lock_meetings,
    next_conference_command,
    reconcile_meeting,
    run_command,
    try_lock_meeting,
)
from sync_engine.settings import EngineSettings
from sync_engine.window import cache_window, window_key
from sync_engine.workspace import MeetingRows, Workspace
from tccal import telemetry
from tccal.bus import Bus
from tccal.clock import Clock
from tccal.retry import backoff_delay
from tccal.subjects import resync_subject
from trueconf.calendar.v1 import calendar_pb2, commands_pb2, ingest_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Taken first by every batch of calendar changes: exclusively by one that adds mailboxes, shared by the others.
#: A batch that adds mailbox X shows X the meetings it takes part in (meeting_people); a concurrent batch writing
#: a new meeting of X, not seeing X yet, would leave it out, and the first would not see that meeting: so a batch
#: adding mailboxes runs alone, and every other sees the mailboxes it added.
MAILBOX_SET_LOCK_KEY = int.from_bytes(b"tcsyncmb", "big") & 0x7FFF_FFFF_FFFF_FFFF
LOCK_MAILBOX_SET = (
    "SELECT CASE WHEN (SELECT count(*) FROM mailboxes WHERE mailbox = ANY($1::text[])) < cardinality($1::text[])"
    " THEN (SELECT 'exclusive' FROM pg_advisory_xact_lock($2))"
    " ELSE (SELECT 'shared' FROM pg_advisory_xact_lock_shared($2)) END"
)
ROLL_LOCK_KEY = int.from_bytes(b"tcsyncrl", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: Errors that mean "PostgreSQL is briefly unavailable or the transaction lost a race": retry it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)


class Engine:
    """The decisions of the sync-engine, over one PostgreSQL pool and one NATS connection."""

    def __init__(self, settings: EngineSettings, pool: asyncpg.Pool, bus: Bus, clock: Clock) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.clock = clock
        self.tracer = telemetry.tracer("sync_engine")

    def moment(self) -> Moment:
        now = self.clock.now()
        return Moment(now=now, window=cache_window(now, self.settings))

    def batch(self, cause: Cause) -> CommandBatch:
        return CommandBatch(cause=cause, calendar_servers=self.settings.calendar_servers)

    def workspace(self, connection: asyncpg.Connection) -> Workspace:
        return Workspace(connection, self.settings.configured_users)

    async def transaction(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run `work` in a transaction; transient failures (PostgreSQL down, deadlock) are retried with backoff
        until it succeeds or `stop` is set (then the last error is raised)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.pool.acquire() as connection, connection.transaction():
                    return await work(connection)
            except TRANSIENT_ERRORS as exc:
                if stop is not None and stop.is_set():
                    raise
                if stop is None and attempt >= 8:
                    raise
                delay = backoff_delay(attempt, base=0.1, cap=5.0)
                log.warning("transaction failed, retrying", extra={"attempt": attempt, "error": repr(exc)})
                if on_wait is not None:
                    await on_wait()
                await asyncio.sleep(delay)

    # -----------------------------------------------------------------------------------------------------
    # Calendar changes
    # -----------------------------------------------------------------------------------------------------

    async def apply_change(
        self,
        change: calendar_pb2.CalendarChange,
        headers: Mapping[str, str] | None = None,
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Apply one change; True if it changed the state, False if it was stale (or malformed, and logged)."""
        (applied,) = await self.apply_changes([(change, headers)], stop=stop, on_wait=on_wait)
        return applied

    async def apply_changes(
        self,
        changes: Sequence[tuple[calendar_pb2.CalendarChange, Mapping[str, str] | None]],
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> list[bool]:
        """Apply changes in stream order in one transaction; per change, True if it changed the state, False if
        it was stale (or malformed, and logged). Every meeting they touch is reconciled once, after all of them."""
        incoming: list[Incoming] = []
        positions: list[int] = []
        for position, (change, headers) in enumerate(changes):
            checked = self._incoming(change, headers)
            if checked is not None:
                incoming.append(checked)
                positions.append(position)
        results = [False] * len(changes)
        if not incoming:
            return results
        with self.tracer.start_as_current_span("apply calendar changes") as span:
            span.set_attribute("calendar.changes", len(incoming))
            if len(incoming) == 1:
                span.set_attribute("calendar.mailbox", incoming[0].mailbox)
                span.set_attribute("calendar.sequence", incoming[0].change.sequence)
            applied = await self.transaction(
                lambda connection: self._apply_changes(connection, incoming), stop=stop, on_wait=on_wait
            )
        stale = 0
        for position, one, ok in zip(positions, incoming, applied, strict=True):
            results[position] = ok
            if not ok:
                stale += 1
                log.info(
                    "stale calendar change ignored",
                    extra={"mailbox": one.mailbox, "item_id": one.item_id, "sequence": one.change.sequence},
                )
        if len(applied) > stale:
            METRICS.changes_applied.add(len(applied) - stale)
        if stale:
            METRICS.changes_stale.add(stale)
        return results

    def _incoming(self, change: calendar_pb2.CalendarChange, headers: Mapping[str, str] | None) -> Incoming | None:
        mailbox = change.mailbox.strip().lower()
        item_id = change.item_id or change.event.item_id
        if not mailbox or not item_id:
            log.error(
                "calendar change without mailbox or item id dropped",
                extra={"change_id": change.change_id, "mailbox": change.mailbox, "item_id": item_id},
            )
            return None
        if change.type not in (calendar_pb2.CHANGE_TYPE_UPSERT, calendar_pb2.CHANGE_TYPE_DELETE):
            log.error(
                "calendar change of unknown type dropped",
                extra={"change_id": change.change_id, "type": int(change.type)},
            )
            return None
        observed = to_datetime(change.observed_at) if change.HasField("observed_at") else self.clock.now()
        cause = Cause(
            created_at=observed,
            traceparent=(headers or {}).get("traceparent", ""),
            tracestate=(headers or {}).get("tracestate", ""),
        )
        return Incoming(change, mailbox, item_id, cause)

    async def _apply_changes(self, connection: asyncpg.Connection, incoming: list[Incoming]) -> list[bool]:
        """Lock the changes' mailboxes, then their items (both in key order), store what is not stale, then lock,
        reconcile and write every meeting touched."""
        providers = {one.mailbox: one.change.provider for one in incoming}
        mailboxes = sorted(providers)
        await connection.execute(LOCK_MAILBOX_SET, mailboxes, MAILBOX_SET_LOCK_KEY)
        new_rows = await connection.fetch(
            "INSERT INTO mailboxes (mailbox, provider, last_sequence)"
            " SELECT m, p, 0 FROM unnest($1::text[], $2::text[]) AS t (m, p) ORDER BY m"
            " ON CONFLICT (mailbox) DO NOTHING RETURNING mailbox",
            mailboxes,
            [providers[m] for m in mailboxes],
        )
        floors = {
            str(r["mailbox"]): int(r["resync_floor"])
            for r in await connection.fetch(
                "SELECT mailbox, resync_floor FROM mailboxes WHERE mailbox = ANY($1::text[]) ORDER BY mailbox"
                " FOR UPDATE",
                mailboxes,
            )
        }
        keys = sorted({(one.mailbox, one.item_id) for one in incoming})
        stored = {
            (str(r["mailbox"]), str(r["item_id"])): ItemState(str(r["meeting_id"]), int(r["sequence"]))
            for r in await connection.fetch(
                "SELECT mailbox, item_id, meeting_id, sequence FROM items WHERE (mailbox, item_id) IN"
                " (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY mailbox, item_id FOR UPDATE",
                [m for m, _ in keys],
                [i for _, i in keys],
            )
        }
        writes = ItemWrites()
        affected: dict[str, Cause] = {}
        applied: list[bool] = []
        for one in incoming:
            key = (one.mailbox, one.item_id)
            sequence = int(one.change.sequence)
            item = stored.get(key)
            if sequence <= floors.get(one.mailbox, 0) or (item is not None and sequence <= item.sequence):
                applied.append(False)
                continue
            applied.append(True)
            writes.touch_mailbox(one, sequence)
            if one.change.type == calendar_pb2.CHANGE_TYPE_UPSERT:
                meeting = writes.upsert(one, sequence)
                affected[meeting] = one.cause
                if item is not None and item.meeting_id and item.meeting_id != meeting:
                    affected[item.meeting_id] = one.cause
                stored[key] = ItemState(meeting, sequence)
            else:
                writes.delete(one, sequence, known=item is not None)
                if item is not None and item.meeting_id:
                    affected[item.meeting_id] = one.cause
                stored[key] = ItemState(item.meeting_id if item is not None else "", sequence)
        created = await writes.flush(connection)
        new_mailboxes = sorted({str(r["mailbox"]) for r in new_rows})
        if new_mailboxes:
            # Newly synced users: the meetings they take part in now show in their calendars too.
            first_cause: dict[str, Cause] = {}
            for one in incoming:
                first_cause.setdefault(one.mailbox, one.cause)
            for row in await connection.fetch(
                "SELECT meeting_id, email FROM meeting_people WHERE email = ANY($1::text[])", new_mailboxes
            ):
                affected.setdefault(str(row["meeting_id"]), first_cause[str(row["email"])])
        if affected:
            await lock_meetings(connection, affected)
            workspace = self.workspace(connection)
            for meeting, (uid, items) in writes.stored(created).items():
                workspace.adopt(meeting, uid, items)
            await workspace.load(affected)
            moment = self.moment()
            batch = self.batch(incoming[-1].cause)
            for meeting in sorted(affected):
                batch.cause = affected[meeting]
                await reconcile_meeting(workspace, self.settings, meeting, batch, moment)
            await workspace.flush()
            await batch.flush(connection)
        return applied

    # -----------------------------------------------------------------------------------------------------
    # Command results
    # -----------------------------------------------------------------------------------------------------

    async def apply_result(
        self,
        result: commands_pb2.TcsCommandResult,
        headers: Mapping[str, str] | None = None,
        *,
        stop: asyncio.Event | None = None,
    ) -> None:
        cause = Cause(
            created_at=self.clock.now(),
            traceparent=(headers or {}).get("traceparent", ""),
            tracestate=(headers or {}).get("tracestate", ""),
        )
        METRICS.results.add(1, {"status": commands_pb2.CommandStatus.Name(result.status)})
        with self.tracer.start_as_current_span("apply command result") as span:
            span.set_attribute("tcs.command_id", result.command_id)
            await self.transaction(lambda connection: self._apply_result(connection, result, cause), stop=stop)

    async def _apply_result(
        self, connection: asyncpg.Connection, result: commands_pb2.TcsCommandResult, cause: Cause
    ) -> None:
        row = await connection.fetchrow(
            "SELECT id, command_id, server_id, kind, target, meeting_id, payload, attempt, chain_id, result_status"
            " FROM outbox WHERE command_id = $1 FOR UPDATE",
            result.command_id,
        )
        if row is None:
            log.warning("result for an unknown command ignored", extra={"command_id": result.command_id})
            return
        if int(row["result_status"]) != 0:
            return  # the same result delivered again
        meeting = str(row["meeting_id"])
        workspace = self.workspace(connection)
        if meeting:
            await lock_meetings(connection, [meeting])
            await workspace.load([meeting])
        rows = workspace.meetings.get(meeting)
        conference = rows.conference if rows is not None else None
        completed = to_datetime(result.completed_at) if result.HasField("completed_at") else cause.created_at
        kind = str(row["kind"])
        command = commands_pb2.TcsCommand.FromString(bytes(row["payload"]))
        chain = str(row["chain_id"])
        batch = self.batch(cause)
        status = result.status
        error = result.error or commands_pb2.CommandStatus.Name(status)
        if status == commands_pb2.COMMAND_STATUS_OK:
            await self._set_status(connection, row["id"], OK, status, "", completed)
            await connection.execute(
                "UPDATE outbox SET status = $2 WHERE chain_id = $1 AND status = $3", chain, RECOVERED, RETRYING
            )
            if kind == "conference_upsert":
                await self._conference_confirmed(workspace, rows, command, result, batch)
            elif kind in ("conference_run", "invitations_sync") and rows is not None and conference is not None:
                conference.last_error = ""
                workspace.conference_changed(rows)
        elif status == commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR:
            await self._retry(connection, workspace, row, command, error, completed, batch)
        else:
            await self._set_status(connection, row["id"], FAILED, status, error, completed)
            await connection.execute(
                "UPDATE outbox SET status = 'retried' WHERE chain_id = $1 AND status = $2", chain, RETRYING
            )
            log.error(
                "command failed permanently",
                extra={"command_id": result.command_id, "kind": kind, "error": error},
            )
            if (kind.startswith("conference") or kind == "invitations_sync") and rows and conference is not None:
                conference.last_error = error
                if kind == "conference_upsert" and not command.conference_upsert.conference_id:
                    conference.state = "failed" if conference.state == "pending" else conference.state
                workspace.conference_changed(rows)
        await workspace.flush()
        await batch.flush(connection)

    async def _set_status(
        self, connection: asyncpg.Connection, row_id: int, status: str, result: int, error: str, at: datetime
    ) -> None:
        await connection.execute(
            "UPDATE outbox SET status = $2, result_status = $3, last_error = $4, result_at = $5 WHERE id = $1",
            row_id,
            status,
            result,
            error,
            at,
        )

    async def _conference_confirmed(
        self,
        workspace: Workspace,
        rows: MeetingRows | None,
        command: commands_pb2.TcsCommand,
        result: commands_pb2.TcsCommandResult,
        batch: CommandBatch,
    ) -> None:
        upsert = command.conference_upsert
        created_id = result.conference.id
        conference = rows.conference if rows is not None else None
        if rows is None or conference is None:
            return
        if upsert.conference_id or not created_id:
            conference.last_error = ""
            workspace.conference_changed(rows)
            return
        if conference.state in ("pending", "failed") and not conference.linked:
            conference.state, conference.conference_id, conference.last_error = "created", created_id, ""
            conference.url = result.conference.url or f"https://{command.server_id.split('#', 1)[0]}/c/{created_id}"
            workspace.conference_changed(rows)
            # Every user's occurrences are pushed again, now with the conference (turquoise, Join).
            await reconcile_meeting(workspace, self.settings, upsert.meeting_id, batch, self.moment())
        elif conference.state == "created" and conference.conference_id == created_id:
            return  # a retried create answered with the same conference
        else:
            # Created while the meeting stopped wanting it (cancelled, or linked elsewhere): delete it.
            counter = workspace.next_command(rows)
            batch.conference(
                "conference_delete",
                command.server_id,
                upsert.meeting_id,
                counter,
                delete_command(upsert.meeting_id, created_id),
            )

    async def _retry(
        self,
        connection: asyncpg.Connection,
        workspace: Workspace,
        row: asyncpg.Record,
        command: commands_pb2.TcsCommand,
        error: str,
        completed: datetime,
        batch: CommandBatch,
    ) -> None:
        status = commands_pb2.COMMAND_STATUS_RETRYABLE_ERROR
        kind = str(row["kind"])
        chain = str(row["chain_id"])
        attempt = int(row["attempt"])
        newer = await connection.fetchval(
            "SELECT command_id FROM outbox WHERE target = $1 AND server_id = $2 AND id > $3 ORDER BY id LIMIT 1",
            row["target"],
            row["server_id"],
            row["id"],
        )
        meeting = str(row["meeting_id"])
        rows = workspace.meetings.get(meeting)
        if (kind.startswith("conference") or kind == "invitations_sync") and rows and rows.conference is not None:
            rows.conference.last_error = error
            workspace.conference_changed(rows)
        if newer is not None:
            await self._set_status(
                connection, row["id"], SUPERSEDED, status, f"{error} (superseded by {newer})", completed
            )
            await connection.execute(
                "UPDATE outbox SET status = $2 WHERE chain_id = $1 AND status = $3", chain, SUPERSEDED, RETRYING
            )
            log.info("failed command superseded by a newer one", extra={"command_id": row["command_id"]})
            return
        if attempt >= self.settings.max_attempts:
            await self._set_status(
                connection, row["id"], FAILED, status, f"{error} (gave up after {attempt} attempts)", completed
            )
            await connection.execute(
                "UPDATE outbox SET status = 'retried' WHERE chain_id = $1 AND status = $2", chain, RETRYING
            )
            log.error("command failed after all attempts", extra={"command_id": row["command_id"], "error": error})
            return
        now = self.clock.now()
        if kind == "conference_run":
            still_on = await connection.fetchval(
                "SELECT end_at > $2 FROM launches WHERE occurrence_id = $1", row["target"].split(":", 1)[1], now
            )
            if not still_on:
                await self._set_status(
                    connection, row["id"], FAILED, status, f"{error} (the occurrence is over; not retried)", completed
                )
                return
        await connection.execute(
            "UPDATE outbox SET status = 'retried' WHERE chain_id = $1 AND status = $2", chain, RETRYING
        )
        await self._set_status(connection, row["id"], RETRYING, status, error, completed)
        retry = commands_pb2.TcsCommand()
        retry.CopyFrom(command)
        delay = backoff_delay(attempt, base=self.settings.retry_base_seconds, cap=self.settings.retry_cap_seconds)
        batch.retry(
            kind=kind,
            server_id=str(row["server_id"]),
            meeting_id=meeting,
            target=str(row["target"]),
            command=retry,
            chain_id=chain,
            attempt=attempt + 1,
            available_at=now + timedelta(seconds=delay),
        )
        log.warning(
            "command failed, retrying",
            extra={"command_id": row["command_id"], "attempt": attempt + 1, "delay": delay, "error": error},
        )

    # -----------------------------------------------------------------------------------------------------
    # launchConference and series re-pointing
    # -----------------------------------------------------------------------------------------------------

    async def launch_due(self) -> int:
        """Launch every due occurrence (at most 100 per call); returns how many rows it settled."""
        return await self.transaction(self._launch_due)

    async def _launch_due(self, connection: asyncpg.Connection) -> int:
        now = self.clock.now()
        # Due rows whose conference exists (or that are over): one still waiting for its conference must not
        # hold back the others.
        rows = await connection.fetch(
            "SELECT l.occurrence_id, l.meeting_id, l.start_at, l.end_at FROM launches l"
            " LEFT JOIN conferences c ON c.meeting_id = l.meeting_id"
            " WHERE l.state = 'planned' AND l.start_at <= $1"
            " AND (l.end_at <= $1 OR (c.state = 'created' AND c.conference_id <> ''))"
            " ORDER BY l.start_at, l.occurrence_id LIMIT 100 FOR UPDATE OF l SKIP LOCKED",
            now,
        )
        settled = 0
        batch = self.batch(Cause(created_at=now))
        for row in rows:
            occurrence = str(row["occurrence_id"])
            meeting = str(row["meeting_id"])
            if row["end_at"] <= now:
                await connection.execute("UPDATE launches SET state = 'missed' WHERE occurrence_id = $1", occurrence)
                METRICS.launches.add(1, {"outcome": "missed"})
                log.warning("occurrence finished before it could be launched", extra={"occurrence_id": occurrence})
                settled += 1
                continue
            if not await try_lock_meeting(connection, meeting):
                continue  # being re-planned right now; looked at again on the next tick
            conference = await connection.fetchrow(
                "SELECT server_id, state, conference_id, run_invitations FROM conferences WHERE meeting_id = $1",
                meeting,
            )
            if conference is None or conference["state"] != "created" or not conference["conference_id"]:
                continue  # no conference yet: launched as soon as it exists, while the occurrence is on
            counter = await next_conference_command(connection, meeting)
            server = str(conference["server_id"])
            command = run_command(
                meeting,
                str(conference["conference_id"]),
                row["start_at"],
                bytes(conference["run_invitations"]) if conference["run_invitations"] is not None else None,
                self.settings.temporal_conf_participants_mode,
            )
            batch.conference("conference_run", server, meeting, counter, command, target=run_target(occurrence))
            await connection.execute(
                "UPDATE launches SET state = 'launched', launched_at = $2, command_id = $3 WHERE occurrence_id = $1",
                occurrence,
                now,
                f"{server}/conference/{meeting}/{counter}",
            )
            await connection.execute("UPDATE conferences SET last_launch = $2 WHERE meeting_id = $1", meeting, now)
            METRICS.launches.add(1, {"outcome": "launched"})
            log.info("conference launched", extra={"occurrence_id": occurrence, "meeting_id": meeting})
            settled += 1
        await batch.flush(connection)
        return settled

    async def repoint_series(self) -> int:
        """Point series conferences whose scheduled occurrence has passed at their next occurrence."""
        now = self.clock.now()
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT meeting_id FROM conferences WHERE repoint_at <= $1 AND state IN ('created', 'pending')"
                " ORDER BY meeting_id LIMIT 100",
                now,
            )
        for row in rows:
            await self.reconcile(str(row["meeting_id"]), clear_repoint_before=now)
        return len(rows)

    async def reconcile(self, meeting: str, *, clear_repoint_before: datetime | None = None) -> None:
        """Recompute one meeting in its own transaction (window roll, re-pointing)."""

        async def work(connection: asyncpg.Connection) -> None:
            await lock_meetings(connection, [meeting])
            workspace = self.workspace(connection)
            await workspace.load([meeting])
            moment = self.moment()
            batch = self.batch(Cause(created_at=moment.now))
            await reconcile_meeting(workspace, self.settings, meeting, batch, moment)
            rows = workspace.meetings.get(meeting)
            conference = rows.conference if rows is not None else None
            if (
                rows is not None
                and conference is not None
                and clear_repoint_before is not None
                and conference.repoint_at is not None
                and conference.repoint_at <= clear_repoint_before
            ):
                conference.repoint_at = None
                workspace.conference_changed(rows)
            await workspace.flush()
            await batch.flush(connection)

        await self.transaction(work)

    # -----------------------------------------------------------------------------------------------------
    # The daily window roll
    # -----------------------------------------------------------------------------------------------------

    async def roll_window(self) -> bool:
        """When the cache window moved (a new day, or new cache settings), re-expand every meeting so that
        occurrences entering the window are pushed and those leaving it are removed. True if it ran."""
        moment = self.moment()
        key = window_key(moment.window)
        async with self.pool.acquire() as connection:
            stored = await connection.fetchval("SELECT value FROM engine_state WHERE key = 'cache_window'")
            if stored == key:
                return False
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", ROLL_LOCK_KEY):
                return False
            try:
                log.info("cache window moved; re-expanding meetings", extra={"window": key, "was": stored})
                meetings = [
                    str(r["meeting_id"])
                    for r in await connection.fetch("SELECT meeting_id FROM meetings ORDER BY meeting_id")
                ]
                for meeting in meetings:
                    await self.reconcile(meeting)
                await connection.execute(
                    "DELETE FROM launches WHERE end_at < $1 AND state <> 'planned'", moment.window.start
                )
                await connection.execute(
                    "DELETE FROM outbox WHERE status IN ('ok', 'recovered', 'superseded', 'retried')"
                    " AND created_at < $1",
                    moment.window.start,
                )
                await connection.execute(
                    "INSERT INTO engine_state (key, value) VALUES ('cache_window', $1)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    key,
                )
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", ROLL_LOCK_KEY)
        return True

    # -----------------------------------------------------------------------------------------------------
    # Resync
    # -----------------------------------------------------------------------------------------------------

    async def resync_mailbox(self, mailbox: str) -> int:
        """Forget the mailbox's stored items and ask ews-ingest to publish them again.

        The live items are deleted (tombstones stay: they remember "this attendee deleted their copy") and
        changes at or below the mailbox's last sequence are ignored from now on (older changes still in flight
        cannot resurrect anything). Derived state — what users were shown, conferences, launches — is left as
        it is, so nothing flickers and no conference is deleted: the resync's changes rebuild the items and only
        real differences are pushed; an item the resync does not bring back is gone from the mailbox. The
        request is a core NATS message on `calendar.v1.control.resync.<mailbox-key>` (tccal.subjects.subject_token)
        carrying a `trueconf.calendar.v1.ResyncMailboxRequest`. Returns the number of items cleared.
        """
        mailbox = mailbox.strip().lower()

        async def work(connection: asyncpg.Connection) -> int:
            await connection.execute("SELECT 1 FROM mailboxes WHERE mailbox = $1 FOR UPDATE", mailbox)
            cleared = await connection.fetchval(
                "WITH gone AS (DELETE FROM items WHERE mailbox = $1 AND NOT deleted RETURNING 1)"
                " SELECT count(*) FROM gone",
                mailbox,
            )
            await connection.execute("UPDATE mailboxes SET resync_floor = last_sequence WHERE mailbox = $1", mailbox)
            return int(cleared)

        with self.tracer.start_as_current_span("resync mailbox", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("calendar.mailbox", mailbox)
            cleared = await self.transaction(work)
            headers: dict[str, str] = {}
            telemetry.inject_context(headers)
            request = ingest_pb2.ResyncMailboxRequest(mailbox=mailbox)
            await self.bus.nc.publish(resync_subject(mailbox), request.SerializeToString(), headers=headers or None)
            await self.bus.nc.flush(timeout=5)
        log.info("mailbox resync requested", extra={"mailbox": mailbox, "items_cleared": cleared})
        return cleared
