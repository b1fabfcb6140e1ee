"""Dead letters of the engine's consumers: listed and replayed for `tc-calendar dead-letters` (SyncService
ListDeadLetters / ReplayDeadLetters, admin calls).

`tccal.bus.consume` copies a message it gave up on to `dlq.<stream>.<durable>` in the DEADLETTER stream, with
`Tc-Dlq-Stream`, `Tc-Dlq-Durable`, `Tc-Dlq-Subject` and `Tc-Dlq-Error` headers. The engine owns the dead letters of
its two durables (`sync-engine-calendar`, `sync-engine-results`); their id is their DEADLETTER sequence.

A replay happens **in the engine itself**: the dead letter's change (or result) is applied with its original
headers (trace context included) exactly as the consumer would apply it — waiting, not failing, while PostgreSQL
cannot take writes — and then deleted from DEADLETTER. It is not published back into CALENDAR or TCS_RESULTS, so
sync-engine's NATS user may not publish there at all (tccal.nats_auth): it cannot forge calendar changes or
TrueConf results, and a replayed result does not reach ews-ingest's write-back a second time. One that fails
again stays under its id, and the call says why. A calendar change replayed is applied as if it came late: stale
sequences stay ignored; a crash between applying and deleting leaves a dead letter whose replay is then stale.

The listing shows every consumer's dead letters, so none is out of sight; only the engine's are replayed. The
others: ews-ingest's `ews-ingest-writeback` (TCS_RESULTS) dead-letters a conference result whose join link it could
not write into the organizer's Exchange item `nats.maxDeliver` times (Exchange refused or unreachable), or could
not decode. Replaying it needs what only the ews-ingest that published the organizer's item holds, in memory (which
item of which mailbox wants that link), so neither the engine nor a republished result could do it: the listing
gives the command id and reason, the link is in the conference (`ListConferences`), and the organizer's item can
be given it by hand; graph-ingest's `graph-ingest-writeback` likewise for an organizer's Exchange Online event
(Graph refused, or kept answering 412). tcs-gateway's command consumers never dead-letter (`max_deliver=-1`: every
command gets a result; a calendar command waits for its TrueConf Server).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from sync_engine.bus import CALENDAR_DURABLE, RESULTS_DURABLE
from sync_engine.engine import Engine
from tccal.bus import Bus
from tccal.subjects import CALENDAR, DEADLETTER, TCS_RESULTS, deadletter_subject, unescape_token
from trueconf.calendar.v1 import calendar_pb2, commands_pb2

log = logging.getLogger(__name__)

#: Why another consumer's dead letters are listed but not replayed, by durable.
NOT_REPLAYABLE = {
    "ews-ingest-writeback": (
        "ews-ingest's join-link write-back: which organizer's item wants the link is known only to the ews-ingest "
        "that published it (in memory), so it cannot be replayed; put the conference's link (ListConferences) into "
        "the organizer's item by hand"
    ),
    "graph-ingest-writeback": (
        "graph-ingest's join-link write-back: which organizer's event wants the link is known only to the "
        "graph-ingest that published it (in memory), so it cannot be replayed; put the conference's link "
        "(ListConferences) into the organizer's event by hand"
    ),
}

#: The dead-letter subjects of the engine's consumers, and the stream each came from.
ENGINE_SUBJECTS = {
    deadletter_subject(CALENDAR, CALENDAR_DURABLE): CALENDAR,
    deadletter_subject(TCS_RESULTS, RESULTS_DURABLE): TCS_RESULTS,
}
_DLQ_HEADERS = ("Tc-Dlq-Stream", "Tc-Dlq-Durable", "Tc-Dlq-Subject", "Tc-Dlq-Error")


class UnknownDeadLetterError(LookupError):
    """An id that is not a dead letter of the engine's consumers (never was, or replayed already)."""

    def __init__(self, dead_letter_id: int, owner: str = "") -> None:
        durable = owner.rsplit(".", 1)[-1]
        why = f": {NOT_REPLAYABLE[durable]}" if durable in NOT_REPLAYABLE else ""
        what = f"is a dead letter of {owner}, not sync-engine's{why}" if owner else "is not there"
        super().__init__(
            f"no dead letter with id {dead_letter_id}: {dead_letter_id} {what}"
            " (list them with `tc-calendar dead-letters list`)"
        )
        self.dead_letter_id = dead_letter_id


@dataclass(frozen=True)
class DeadLetter:
    id: int
    stream: str
    durable: str
    subject: str
    mailbox: str
    reason: str
    message_id: str
    at: datetime | None
    payload: bytes
    headers: dict[str, str]
    #: Its subject in DEADLETTER, `dlq.<stream>.<durable>`.
    dead_letter_subject: str = ""


class DeadLetters:
    """The engine's dead letters in DEADLETTER, over one NATS connection; replayed into `engine`."""

    def __init__(self, bus: Bus, engine: Engine | None = None) -> None:
        self.bus = bus
        self.engine = engine

    async def listing(self, limit: int) -> tuple[list[DeadLetter], int]:
        """Up to `limit` dead letters of every consumer (the engine's are the replayable ones), oldest first, and
        how many there are."""
        info = await self.bus.js.stream_info(DEADLETTER, subjects_filter="dlq.>")
        counts = {str(subject): int(count) for subject, count in (info.state.subjects or {}).items()}
        found: list[DeadLetter] = []
        for subject in sorted(set(counts) | set(ENGINE_SUBJECTS)):
            sequence, taken = 1, 0
            while taken < limit:  # the oldest `limit` of each subject hold the oldest `limit` of all
                try:
                    raw = await self.bus.js.get_msg(DEADLETTER, seq=sequence, subject=subject, next=True)
                except NotFoundError:
                    break
                found.append(_letter(raw))
                taken += 1
                sequence = int(raw.seq or sequence) + 1
        found.sort(key=lambda letter: letter.id)
        return found[:limit], sum(counts.values())

    async def get(self, dead_letter_id: int) -> DeadLetter:
        try:
            raw = await self.bus.js.get_msg(DEADLETTER, seq=dead_letter_id)
        except NotFoundError:
            raise UnknownDeadLetterError(dead_letter_id) from None
        if raw.subject not in ENGINE_SUBJECTS:  # another service's dead letter: not the engine's to replay
            raise UnknownDeadLetterError(dead_letter_id, str(raw.subject))
        return _letter(raw)

    async def replay(self, ids: list[int] | None) -> tuple[list[DeadLetter], list[DeadLetter]]:
        """Apply the dead letters `ids` (every one of the engine's when None) again in the engine, in id order;
        (replayed and deleted, failed again and kept with the new reason). Every id is looked up before anything
        is replayed: an unknown one raises UnknownDeadLetterError and nothing is replayed."""
        if self.engine is None:
            raise RuntimeError("dead letters are replayed into the engine, and none was given")
        if ids is None:
            listed, _ = await self.listing(limit=1 << 31)
            letters = [letter for letter in listed if letter.dead_letter_subject in ENGINE_SUBJECTS]
        else:
            letters = [await self.get(i) for i in sorted(set(ids))]
        replayed, failed = [], []
        for letter in letters:
            headers = {k: v for k, v in letter.headers.items() if k not in _DLQ_HEADERS and not k.startswith("Nats-")}
            headers["Tc-Replayed-From"] = str(letter.id)
            try:
                await self._apply(self.engine, letter, headers)
            except Exception as exc:  # fails again (its data): it stays where it is, the caller is told why
                failed.append(replace(letter, reason=repr(exc)[:1000]))
                log.warning(
                    "dead letter failed again, kept",
                    extra={"id": letter.id, "subject": letter.subject, "mailbox": letter.mailbox, "error": repr(exc)},
                )
                continue
            try:
                await self.bus.js.delete_msg(DEADLETTER, letter.id)
            except NotFoundError:  # replayed by another replica at the same time (applying twice changes nothing)
                log.info("dead letter replayed elsewhere meanwhile", extra={"id": letter.id})
            log.info(
                "dead letter replayed",
                extra={"id": letter.id, "subject": letter.subject, "mailbox": letter.mailbox},
            )
            replayed.append(letter)
        return replayed, failed

    @staticmethod
    async def _apply(engine: Engine, letter: DeadLetter, headers: dict[str, str]) -> None:
        if letter.stream == CALENDAR:
            await engine.apply_change(calendar_pb2.CalendarChange.FromString(letter.payload), headers)
        elif letter.stream == TCS_RESULTS:
            await engine.apply_result(commands_pb2.TcsCommandResult.FromString(letter.payload), headers)
        else:
            raise ValueError(f"dead letter {letter.id} came from {letter.stream or 'no stream'}, not the engine's")


def _letter(raw: RawStreamMsg) -> DeadLetter:
    headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
    stream = headers.get("Tc-Dlq-Stream") or ENGINE_SUBJECTS.get(str(raw.subject), "")
    origin = headers.get("Tc-Dlq-Subject", "")
    payload = bytes(raw.data or b"")
    mailbox, message_id = "", ""
    try:
        if stream == CALENDAR:
            change = calendar_pb2.CalendarChange.FromString(payload)
            mailbox, message_id = change.mailbox, change.change_id
        elif stream == TCS_RESULTS:
            result = commands_pb2.TcsCommandResult.FromString(payload)
            mailbox, message_id = result.server_id, result.command_id
    except DecodeError:
        pass
    if not mailbox and origin:
        mailbox = unescape_token(origin.rsplit(".", 1)[-1])
    at = raw.time.astimezone(UTC) if raw.time is not None else None
    return DeadLetter(
        id=int(raw.seq or 0),
        stream=stream,
        durable=headers.get("Tc-Dlq-Durable") or str(raw.subject or "").split(".", 2)[-1],
        subject=origin,
        mailbox=mailbox,
        reason=headers.get("Tc-Dlq-Error", ""),
        message_id=message_id,
        at=at,
        payload=payload,
        headers=headers,
        dead_letter_subject=str(raw.subject or ""),
    )
