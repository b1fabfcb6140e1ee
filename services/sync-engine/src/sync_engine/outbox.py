"""Commands decided in a transaction, written to the `outbox` table in that same transaction.

Command ids are deterministic (replaying the streams reproduces them):
* calendar commands: ``<server id>/calendar/<user>/<seq>`` (``seq`` is the user's push sequence),
* conference commands (upsert, delete, run, invitations): ``<server id>/conference/<meeting id>/<n>`` with
  ``n`` the meeting's own command counter,
* a retry: ``<first attempt's id>/attempt/<attempt>``.
The relay publishes rows in id order with the command id as Nats-Msg-Id, so JetStream drops a re-publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from sync_engine import bulk
from sync_engine.ids import set_timestamp
from sync_engine.metrics import METRICS
from trueconf.calendar.v1 import calendar_pb2, commands_pb2

OUTBOX_COLUMNS = bulk.columns(
    "command_id text, server_id text, kind text, target text, meeting_id text, payload bytea, traceparent text,"
    " tracestate text, attempt integer, chain_id text, available_at timestamptz, created_at timestamptz"
)
_OUTBOX_NAMES = ", ".join(c.name for c in OUTBOX_COLUMNS)
#: Ids follow the order commands were planned in (the relay publishes in id order).
INSERT_OUTBOX = (
    f"INSERT INTO outbox ({_OUTBOX_NAMES}, status) SELECT {_OUTBOX_NAMES}, 'pending'"
    f" FROM {bulk.unnest(OUTBOX_COLUMNS, ordered=True)} ORDER BY n"
)
SHOWN_COLUMNS = bulk.columns(
    "user_email text, occurrence_id text, meeting_id text, start_at timestamptz, end_at timestamptz,"
    " cancelled boolean, seq bigint, occurrence bytea"
)
UPSERT_SHOWN = bulk.upsert_sql("shown", SHOWN_COLUMNS, ("user_email", "occurrence_id"))
SHOWN_KEY_COLUMNS = bulk.columns("user_email text, occurrence_id text")
DROP_SHOWN = (
    "DELETE FROM shown WHERE (user_email, occurrence_id) IN"
    f" (SELECT user_email, occurrence_id FROM {bulk.unnest(SHOWN_KEY_COLUMNS)})"
)
RESEQ_COLUMNS = bulk.columns("user_email text, occurrence_id text, seq bigint")
RESEQ_SHOWN = bulk.update_sql("shown", RESEQ_COLUMNS, ("user_email", "occurrence_id"), "seq = u.seq")

#: Per-user push seqs: each user's row is advanced by the number of pushes (rows locked in user order).
ALLOCATE_SEQS = (
    "INSERT INTO user_seq (user_email, seq) SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 1"
    " ON CONFLICT (user_email) DO UPDATE SET seq = user_seq.seq + EXCLUDED.seq RETURNING user_email, seq"
)

PENDING = "pending"
PUBLISHED = "published"
OK = "ok"
RETRYING = "retrying"
RECOVERED = "recovered"
SUPERSEDED = "superseded"
FAILED = "failed"


@dataclass(frozen=True)
class Cause:
    """What a transaction's decisions stem from: their time, and the trace to continue."""

    created_at: datetime
    traceparent: str = ""
    tracestate: str = ""


@dataclass
class _ShownWrite:
    user: str
    occurrence_id: str
    meeting_id: str
    occurrence: calendar_pb2.Occurrence | None
    start: datetime | None = None
    end: datetime | None = None


@dataclass
class _Planned:
    kind: str
    meeting_id: str
    target: str
    command: commands_pb2.TcsCommand
    server_id: str = ""
    user: str = ""
    shown: _ShownWrite | None = None
    counter: int = 0
    command_id: str = ""
    attempt: int = 1
    chain_id: str = ""
    available_at: datetime | None = None
    cause: Cause | None = None


def calendar_target(user: str, occurrence_id: str) -> str:
    return f"calendar:{user}:{occurrence_id}"


def conference_target(meeting_id: str) -> str:
    return f"conference:{meeting_id}"


def run_target(occurrence_id: str) -> str:
    return f"run:{occurrence_id}"


@dataclass
class CommandBatch:
    """The commands of one transaction; `flush` numbers them and writes them (and `shown`) to the database.

    `cause` is what the commands planned next stem from (a transaction applying several changes sets it before
    the meetings of each): their time and trace.
    """

    cause: Cause
    calendar_servers: tuple[str, ...]
    planned: list[_Planned] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.planned)

    def _plan(self, planned: _Planned) -> None:
        planned.cause = self.cause
        self.planned.append(planned)

    def upsert(self, user: str, occurrence: calendar_pb2.Occurrence, start: datetime, end: datetime) -> None:
        command = commands_pb2.TcsCommand()
        command.calendar_upsert.user = user
        command.calendar_upsert.occurrence.CopyFrom(occurrence)
        set_timestamp(command.calendar_upsert.occurrence.updated_at, self.cause.created_at)
        shown = _ShownWrite(user, occurrence.id, occurrence.meeting_id, occurrence, start, end)
        self._calendar("calendar_upsert", user, occurrence.id, occurrence.meeting_id, command, shown)

    def cancel(self, user: str, occurrence: calendar_pb2.Occurrence, start: datetime, end: datetime) -> None:
        command = commands_pb2.TcsCommand()
        command.calendar_cancel.user = user
        command.calendar_cancel.occurrence_id = occurrence.id
        stamped = calendar_pb2.Occurrence()
        stamped.CopyFrom(occurrence)
        set_timestamp(stamped.updated_at, self.cause.created_at)
        command.calendar_cancel.occurrence.CopyFrom(stamped)
        command.calendar_cancel.occurrence.cancelled = True
        shown = _ShownWrite(user, occurrence.id, occurrence.meeting_id, stamped, start, end)
        self._calendar("calendar_cancel", user, occurrence.id, occurrence.meeting_id, command, shown)

    def delete(self, user: str, occurrence_id: str, meeting_id: str) -> None:
        command = commands_pb2.TcsCommand()
        command.calendar_delete.user = user
        command.calendar_delete.occurrence_id = occurrence_id
        shown = _ShownWrite(user, occurrence_id, meeting_id, None)
        self._calendar("calendar_delete", user, occurrence_id, meeting_id, command, shown)

    def _calendar(
        self,
        kind: str,
        user: str,
        occurrence_id: str,
        meeting_id: str,
        command: commands_pb2.TcsCommand,
        shown: _ShownWrite,
    ) -> None:
        for index, server in enumerate(self.calendar_servers):
            if index > 0:  # every planned command is its own message: flush numbers it in place
                copy = commands_pb2.TcsCommand()
                copy.CopyFrom(command)
                command = copy
            self._plan(
                _Planned(
                    kind=kind,
                    meeting_id=meeting_id,
                    target=calendar_target(user, occurrence_id),
                    command=command,
                    server_id=server,
                    user=user,
                    shown=shown if index == 0 else None,
                )
            )

    def conference(
        self,
        kind: str,
        server_id: str,
        meeting_id: str,
        counter: int,
        command: commands_pb2.TcsCommand,
        *,
        target: str = "",
    ) -> None:
        """A conference command; `counter` is the meeting's command number (unique per meeting)."""
        target = target or conference_target(meeting_id)
        self._plan(
            _Planned(
                kind=kind,
                meeting_id=meeting_id,
                target=target,
                command=command,
                server_id=server_id,
                counter=counter,
                command_id=f"{server_id}/conference/{meeting_id}/{counter}",
            )
        )

    def retry(
        self,
        *,
        kind: str,
        server_id: str,
        meeting_id: str,
        target: str,
        command: commands_pb2.TcsCommand,
        chain_id: str,
        attempt: int,
        available_at: datetime,
    ) -> None:
        """Another attempt of a failed command (a calendar command gets a fresh seq)."""
        user = ""
        which = command.WhichOneof("command")
        if which in ("calendar_upsert", "calendar_cancel", "calendar_delete"):
            user = getattr(command, which).user
        self._plan(
            _Planned(
                kind=kind,
                meeting_id=meeting_id,
                target=target,
                command=command,
                server_id=server_id,
                user=user,
                command_id=f"{chain_id}/attempt/{attempt}",
                attempt=attempt,
                chain_id=chain_id,
                available_at=available_at,
            )
        )

    async def flush(
        self, connection: asyncpg.Connection, prior: Mapping[str, bulk.Statement | None] | None = None
    ) -> list[commands_pb2.TcsCommand]:
        """Write `prior` (`Workspace.take_writes`: the writes decided before the commands, one statement), then
        allocate per-user seqs (users in sorted order: no lock cycles) and write the shown rows and the outbox (one
        statement each, whatever the number of commands).

        A user's `user_seq` row stays locked from the allocation to the commit, so a concurrent transaction pushing
        to the same user waits there (seqs are gap-free and in commit order per user): everything that does not need
        the seqs - `prior`, the shown occurrences' serialization, the commands' other fields - is done before the
        allocation, so that the other transaction waits only for what does.
        """
        before = {name: part for name, part in (prior or {}).items() if part is not None}
        if before:
            write = bulk.combined(before)
            await connection.execute(write.sql, *write.args)
        pushes: dict[str, int] = {}
        for planned in self.planned:
            if planned.user and (planned.shown is not None or planned.attempt > 1):
                pushes[planned.user] = pushes.get(planned.user, 0) + 1
        serialized = _serialized_shown(self.planned)
        for planned in self.planned:  # the commands' fields that do not depend on the seqs
            command = planned.command
            command.server_id = planned.server_id
            command.attempt = planned.attempt
            if planned.counter:  # a retry keeps its command's order (its payload carries it)
                command.conference_order = planned.counter
            set_timestamp(command.created_at, (planned.cause or self.cause).created_at)
        next_seq: dict[str, int] = {}
        if pushes:
            users = sorted(pushes)
            rows = await connection.fetch(ALLOCATE_SEQS, users, [pushes[u] for u in users])
            next_seq = {str(r["user_email"]): int(r["seq"]) - pushes[str(r["user_email"])] + 1 for r in rows}
        if not self.planned:
            return []
        current: dict[str, int] = {}
        shown_rows: dict[tuple[str, str], tuple[_ShownWrite, int]] = {}
        reseq: dict[tuple[str, str], int] = {}
        outbox: list[tuple[object, ...]] = []
        written: list[commands_pb2.TcsCommand] = []
        emitted: dict[str, int] = {}
        for planned in self.planned:
            cause = planned.cause or self.cause
            command = planned.command
            if planned.user:
                if planned.shown is not None or planned.attempt > 1:
                    current[planned.user] = next_seq[planned.user]
                    next_seq[planned.user] += 1
                seq = current[planned.user]
                which = command.WhichOneof("command")
                assert which is not None
                getattr(command, which).seq = seq
                if planned.shown is not None:
                    shown_rows[(planned.shown.user, planned.shown.occurrence_id)] = (planned.shown, seq)
                elif planned.attempt > 1:
                    reseq[(planned.user, planned.target.rsplit(":", 1)[-1])] = seq
                if not planned.command_id:
                    planned.command_id = f"{planned.server_id}/calendar/{planned.user}/{seq}"
            command.command_id = planned.command_id
            outbox.append(
                (
                    planned.command_id,
                    planned.server_id,
                    planned.kind,
                    planned.target,
                    planned.meeting_id,
                    command.SerializeToString(deterministic=True),
                    cause.traceparent,
                    cause.tracestate,
                    planned.attempt,
                    planned.chain_id or planned.command_id,
                    planned.available_at or cause.created_at,
                    cause.created_at,
                )
            )
            emitted[planned.kind] = emitted.get(planned.kind, 0) + 1
            written.append(command)
        # One round trip: what users are shown, the commands, the relay's wake-up (delivered at commit). A retry's
        # new seq is written after it (the same shown row may be pushed again in this batch: the retry's seq wins,
        # as it did row by row).
        gone, shown = _shown_parts(list(shown_rows.values()), serialized)
        parts = {
            "shown_gone": gone,
            "shown_put": shown,
            "commands": bulk.statement(INSERT_OUTBOX, outbox, len(OUTBOX_COLUMNS)),
        }
        write = bulk.combined(parts, "SELECT pg_notify('sync_engine_outbox', '')")
        await connection.execute(write.sql, *write.args)
        await bulk.write(connection, RESEQ_SHOWN, [(*k, v) for k, v in reseq.items()], len(RESEQ_COLUMNS))
        for kind, count in emitted.items():
            METRICS.commands_emitted.add(count, {"kind": kind})
        self.planned.clear()
        return written


def _serialized_shown(planned: list[_Planned]) -> dict[int, bytes]:
    """The occurrences the planned commands show, serialized once each (users shown the same shared, read-only
    message), by id()."""
    serialized: dict[int, bytes] = {}
    for one in planned:
        shown = one.shown
        if shown is not None and shown.occurrence is not None and id(shown.occurrence) not in serialized:
            serialized[id(shown.occurrence)] = shown.occurrence.SerializeToString(deterministic=True)
    return serialized


def _shown_parts(
    writes: list[tuple[_ShownWrite, int]], serialized: dict[int, bytes]
) -> tuple[bulk.Statement | None, bulk.Statement | None]:
    """What each user's calendar now shows (the last write per user and occurrence): the rows removed, the rows
    put (different keys); `serialized`: the occurrences' bytes (`_serialized_shown`)."""
    gone = [(shown.user, shown.occurrence_id) for shown, _ in writes if shown.occurrence is None]
    rows = []
    for shown, seq in writes:
        if shown.occurrence is None:
            continue
        assert shown.start is not None and shown.end is not None
        rows.append(
            (
                shown.user,
                shown.occurrence_id,
                shown.meeting_id,
                shown.start,
                shown.end,
                shown.occurrence.cancelled,
                seq,
                serialized[id(shown.occurrence)],
            )
        )
    return bulk.statement(DROP_SHOWN, gone, len(SHOWN_KEY_COLUMNS)), bulk.statement(
        UPSERT_SHOWN, rows, len(SHOWN_COLUMNS)
    )
