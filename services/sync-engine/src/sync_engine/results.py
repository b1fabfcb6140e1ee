"""Command results (TCS_RESULTS): OK, retry (a new command of the same chain after a backoff, unless a newer
command for the same target superseded it, or the attempts are used up), superseded (the gateway did not run it: a
newer conference command of the meeting had run, or a snapshot of the user carries the calendar push instead) or
failed for good; a confirmed create records the conference and pushes every user's occurrences again.

Locking: the result's outbox row, then its meeting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

import asyncpg

from sync_engine.context import EngineContext
from sync_engine.ids import to_datetime
from sync_engine.metrics import METRICS
from sync_engine.outbox import FAILED, OK, RECOVERED, RETRYING, SUPERSEDED, Cause, CommandBatch
from sync_engine.reconcile import delete_command, lock_meetings, reconcile_meeting
from sync_engine.workspace import MeetingRows, Workspace
from tccal.retry import backoff_delay
from trueconf.calendar.v1 import commands_pb2

log = logging.getLogger(__name__)


class ResultApplier:
    """Applies TrueConf Server's results of the commands the relay published."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    async def apply_result(
        self,
        result: commands_pb2.TcsCommandResult,
        headers: Mapping[str, str] | None = None,
        *,
        stop: asyncio.Event | None = None,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        cause = Cause(
            created_at=self.context.clock.now(),
            traceparent=(headers or {}).get("traceparent", ""),
            tracestate=(headers or {}).get("tracestate", ""),
        )
        METRICS.results.add(1, {"status": commands_pb2.CommandStatus.Name(result.status)})
        with self.context.tracer.start_as_current_span("apply command result") as span:
            span.set_attribute("tcs.command_id", result.command_id)
            await self.context.transaction(
                lambda connection: self._apply_result(connection, result, cause), stop=stop, on_wait=on_wait
            )

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
        workspace = self.context.workspace(connection)
        if meeting:
            await lock_meetings(connection, [meeting])
            await workspace.load([meeting])
        rows = workspace.meetings.get(meeting)
        conference = rows.conference if rows is not None else None
        completed = to_datetime(result.completed_at) if result.HasField("completed_at") else cause.created_at
        kind = str(row["kind"])
        command = commands_pb2.TcsCommand.FromString(bytes(row["payload"]))
        chain = str(row["chain_id"])
        batch = self.context.batch(cause)
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
        elif status == commands_pb2.COMMAND_STATUS_SUPERSEDED:
            # Not run: a newer command of the meeting ran first (a redelivery), whose result decides; or a calendar
            # push the gateway gave up for a snapshot of its user, which carries its change.
            await self._set_status(connection, row["id"], SUPERSEDED, status, error, completed)
            await connection.execute(
                "UPDATE outbox SET status = $2 WHERE chain_id = $1 AND status = $3", chain, SUPERSEDED, RETRYING
            )
            log.info("command not run: superseded", extra={"command_id": result.command_id, "reason": error})
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
        await batch.flush(connection, workspace.take_writes())

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
            await reconcile_meeting(workspace, self.context.settings, upsert.meeting_id, batch, self.context.moment())
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
        if attempt >= self.context.settings.max_attempts:
            await self._set_status(
                connection, row["id"], FAILED, status, f"{error} (gave up after {attempt} attempts)", completed
            )
            await connection.execute(
                "UPDATE outbox SET status = 'retried' WHERE chain_id = $1 AND status = $2", chain, RETRYING
            )
            log.error("command failed after all attempts", extra={"command_id": row["command_id"], "error": error})
            return
        now = self.context.clock.now()
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
        delay = backoff_delay(
            attempt, base=self.context.settings.retry_base_seconds, cap=self.context.settings.retry_cap_seconds
        )
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
