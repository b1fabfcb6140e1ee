"""Seats: nothing of a mailbox without a licensing seat reaches TrueConf (docs/architecture.md §5.5).

licensing owns the seats. The engine asks it every `poll_seconds` (`LicensingService/ListSeats`, with
sync-engine's own service token: only licensing answers, over the same gRPC as every other call, TLS when
configured) and keeps the answer in the `seats` table: lease_until = the engine's clock when it asked + the lease
remaining. A mailbox is seated while its lease_until is ahead of the clock, so when licensing stops answering,
seats run out at the end of their leases here too, as they do in ews-ingest; the next answer brings them back.

Every replica asks and stores its answer, in the order asked: one asked before the stored one is dropped
(`ASKED_KEY`), so a slow answer never overwrites a newer one.

Decisions read the table (`Workspace.seated`, `known_users`): a mailbox without a seat is nobody's TrueConf user,
its copies count for nothing, and a meeting it organizes is held (reconcile.py). Each round one engine at a
time (a session advisory lock) looks for mailboxes whose seated state differs from what the shown state was
last brought in line with (`seats.applied`), recomputes their meetings - their own copies', those they are
organizer or attendee of, those their calendar shows - and then records the new state.

Until licensing has answered once (ever: `engine_state` 'seats_answered'), the engine decides nothing
(runtime.py): a first start cannot empty every calendar for want of an answer.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
import grpc

from sync_engine.context import EngineContext
from sync_engine.recompute import recompute_meeting
from tccal.grpckit import GrpcCaller
from trueconf.calendar.v1 import licensing_pb2, licensing_pb2_grpc

log = logging.getLogger(__name__)

#: How often licensing is asked (seconds of real time).
POLL_SECONDS = 5.0
SEATS_LOCK_KEY = int.from_bytes(b"tcsyncst", "big") & 0x7FFF_FFFF_FFFF_FFFF
ANSWERED_KEY = "seats_answered"
#: engine_state: when the stored answer was asked for (ISO 8601); an answer asked earlier is not stored over it.
ASKED_KEY = "seats_asked_at"


class SeatSource(Protocol):
    async def leases(self) -> dict[str, timedelta]:
        """Every seated mailbox and how long its lease still runs; raises when the answer cannot be had."""
        ...

    async def close(self) -> None: ...


class LicensingSeats:
    """The seats as licensing's ListSeats answers them, asked with sync-engine's identity."""

    def __init__(self, address: str, caller: GrpcCaller, timeout: float = 10.0) -> None:
        self.address = address
        self.caller = caller
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> Any:
        """The aio stub (grpc-stubs types only the blocking one, hence Any)."""
        if self._channel is None:
            self._channel = self.caller.aio_channel(self.address)
        return licensing_pb2_grpc.LicensingServiceStub(self._channel)

    async def leases(self) -> dict[str, timedelta]:
        reply = await self._stub().ListSeats(
            licensing_pb2.ListSeatsRequest(), timeout=self.timeout, metadata=self.caller.metadata()
        )
        return {seat.mailbox.strip().lower(): seat.remaining.ToTimedelta() for seat in reply.seats}

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


class SeatKeeper:
    """Keeps the `seats` table in line with licensing and the shown state in line with the table."""

    def __init__(self, context: EngineContext, source: SeatSource) -> None:
        self.context = context
        self.source = source
        self.answers = 0
        self._unreachable_since: datetime | None = None

    async def answered(self) -> bool:
        """Whether licensing has answered this installation's engine at least once."""
        async with self.context.pool.acquire() as connection:
            value = await connection.fetchval("SELECT value FROM engine_state WHERE key = $1", ANSWERED_KEY)
        return value is not None

    async def refresh(self) -> bool:
        """Ask licensing and store its answer; False (the stored leases stay as they are) when it cannot answer."""
        asked_at = self.context.clock.now()
        try:
            leases = await self.source.leases()
        except grpc.aio.AioRpcError as exc:
            if self._unreachable_since is None:
                self._unreachable_since = asked_at
                log.warning(
                    "licensing does not answer ListSeats; seats run out at the end of their leases",
                    extra={"error": f"{exc.code().name}: {exc.details()}"},
                )
            return False
        if self._unreachable_since is not None:
            log.info("licensing answers ListSeats again", extra={"since": self._unreachable_since.isoformat()})
            self._unreachable_since = None
        mailboxes = sorted(leases)
        until = [asked_at + leases[m] for m in mailboxes]
        async with self.context.pool.acquire() as connection, connection.transaction():
            # Every replica asks; answers are stored one at a time (the row lock on ASKED_KEY) and only one asked
            # later than the one stored: a slow answer committed after a newer one would bring back seats
            # licensing has since taken away (and their meetings would be shown and removed again).
            newer = await connection.fetchval(
                "INSERT INTO engine_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE"
                " SET value = EXCLUDED.value WHERE engine_state.value::timestamptz <= EXCLUDED.value::timestamptz"
                " RETURNING key",
                ASKED_KEY,
                asked_at.isoformat(),
            )
            if newer is None:
                log.debug("a newer seat answer is stored already; this one is dropped")
                self.answers += 1
                return True
            # A lease licensing did not renew ends at the same moment each poll, give or take the call's latency:
            # written again only when it moved by more than a second (no row churn every poll).
            await connection.execute(
                "INSERT INTO seats (mailbox, lease_until) SELECT * FROM unnest($1::text[], $2::timestamptz[])"
                " ON CONFLICT (mailbox) DO UPDATE SET lease_until = EXCLUDED.lease_until"
                " WHERE abs(extract(epoch FROM seats.lease_until - EXCLUDED.lease_until)) > 1",
                mailboxes,
                until,
            )
            # licensing no longer names them: their seats ended now
            await connection.execute(
                "UPDATE seats SET lease_until = $2 WHERE lease_until > $2 AND NOT (mailbox = ANY($1::text[]))",
                mailboxes,
                asked_at,
            )
            await connection.execute(
                "INSERT INTO engine_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                ANSWERED_KEY,
                asked_at.isoformat(),
            )
        self.answers += 1
        return True

    async def apply(self) -> int:
        """Recompute the meetings of every mailbox whose seat came or went since the last round; returns how many
        mailboxes changed (0 when another engine is at it)."""
        async with self.context.pool.acquire() as connection:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", SEATS_LOCK_KEY):
                return 0
            try:
                return await self._apply(connection)
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", SEATS_LOCK_KEY)

    async def _apply(self, connection: asyncpg.Connection) -> int:
        now = self.context.clock.now()
        rows = await connection.fetch(
            "SELECT mailbox, lease_until > $1 AS seated FROM seats WHERE (lease_until > $1) <> applied"
            " ORDER BY mailbox",
            now,
        )
        if not rows:
            return 0
        changed = [str(r["mailbox"]) for r in rows]
        seated = [bool(r["seated"]) for r in rows]
        meetings = [
            str(r["meeting_id"])
            for r in await connection.fetch(
                "SELECT meeting_id FROM items WHERE mailbox = ANY($1::text[]) AND meeting_id <> ''"
                " UNION SELECT meeting_id FROM meeting_people WHERE email = ANY($1::text[])"
                " UNION SELECT meeting_id FROM shown WHERE user_email = ANY($1::text[])"
                " ORDER BY 1",
                changed,
            )
        ]
        gained = [m for m, s in zip(changed, seated, strict=True) if s]
        lost = [m for m, s in zip(changed, seated, strict=True) if not s]
        log.info(
            "seats changed; recomputing their meetings",
            extra={"gained": ",".join(gained[:20]), "lost": ",".join(lost[:20]), "meetings": len(meetings)},
        )
        for meeting in meetings:
            await recompute_meeting(self.context, meeting)
        await connection.execute(
            "UPDATE seats SET applied = u.seated FROM unnest($1::text[], $2::boolean[]) AS u(mailbox, seated)"
            " WHERE seats.mailbox = u.mailbox",
            changed,
            seated,
        )
        await connection.execute("DELETE FROM seats WHERE NOT applied AND lease_until <= $1", now)
        return len(changed)

    async def round(self) -> None:
        """One poll: ask licensing, then bring the shown state in line (also when licensing did not answer: leases
        run out by the clock)."""
        await self.refresh()
        await self.apply()
