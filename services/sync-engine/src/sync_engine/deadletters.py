"""Dead letters of the engine's consumers: listed and replayed for `tc-calendar dead-letters` (SyncService
ListDeadLetters / ReplayDeadLetters, admin calls).

`tccal.bus.consume` copies a message it gave up on to `dlq.<stream>.<durable>` in the DEADLETTER stream, with
`Tc-Dlq-Stream`, `Tc-Dlq-Durable`, `Tc-Dlq-Subject` and `Tc-Dlq-Error` headers. The engine owns the dead letters of
its two durables (`sync-engine-calendar`, `sync-engine-results`); their id is their DEADLETTER sequence. A replay
publishes the original payload and headers (trace context included) to the original subject with the message id
`dlq-replay/<id>` — a replay repeated after a crash is dropped by JetStream's duplicate window — and then deletes
the dead letter. A calendar change replayed is applied as if it came late: stale sequences stay ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from sync_engine.bus import CALENDAR_DURABLE, RESULTS_DURABLE
from tccal.bus import Bus
from tccal.subjects import CALENDAR, DEADLETTER, TCS_RESULTS, deadletter_subject, unescape_token
from trueconf.calendar.v1 import calendar_pb2, commands_pb2

log = logging.getLogger(__name__)

#: The dead-letter subjects of the engine's consumers, and the stream each came from.
ENGINE_SUBJECTS = {
    deadletter_subject(CALENDAR, CALENDAR_DURABLE): CALENDAR,
    deadletter_subject(TCS_RESULTS, RESULTS_DURABLE): TCS_RESULTS,
}
_DLQ_HEADERS = ("Tc-Dlq-Stream", "Tc-Dlq-Durable", "Tc-Dlq-Subject", "Tc-Dlq-Error")


class UnknownDeadLetterError(LookupError):
    """An id that is not a dead letter of the engine's consumers (never was, or replayed already)."""

    def __init__(self, dead_letter_id: int, owner: str = "") -> None:
        what = f"is a dead letter of {owner}, not sync-engine's" if owner else "is not there"
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


class DeadLetters:
    """The engine's dead letters in DEADLETTER, over one NATS connection."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def listing(self, limit: int) -> tuple[list[DeadLetter], int]:
        """Up to `limit` dead letters, oldest first, and how many there are."""
        found: list[DeadLetter] = []
        for subject in ENGINE_SUBJECTS:
            sequence, taken = 1, 0
            while taken < limit:  # the oldest `limit` of each subject hold the oldest `limit` of both
                try:
                    raw = await self.bus.js.get_msg(DEADLETTER, seq=sequence, subject=subject, next=True)
                except NotFoundError:
                    break
                found.append(_letter(raw))
                taken += 1
                sequence = int(raw.seq or sequence) + 1
        found.sort(key=lambda letter: letter.id)
        info = await self.bus.js.stream_info(DEADLETTER, subjects_filter="dlq.>")
        counts = info.state.subjects or {}
        total = sum(int(counts.get(subject, 0)) for subject in ENGINE_SUBJECTS)
        return found[:limit], total

    async def get(self, dead_letter_id: int) -> DeadLetter:
        try:
            raw = await self.bus.js.get_msg(DEADLETTER, seq=dead_letter_id)
        except NotFoundError:
            raise UnknownDeadLetterError(dead_letter_id) from None
        if raw.subject not in ENGINE_SUBJECTS:  # another service's dead letter: not the engine's to replay
            raise UnknownDeadLetterError(dead_letter_id, str(raw.subject))
        return _letter(raw)

    async def replay(self, ids: list[int] | None) -> list[DeadLetter]:
        """Replay the dead letters `ids` (every one of the engine's when None), in id order. Every id is looked up
        before anything is replayed: an unknown one raises UnknownDeadLetterError and nothing is replayed."""
        if ids is None:
            letters, _ = await self.listing(limit=1 << 31)
        else:
            letters = [await self.get(i) for i in sorted(set(ids))]
        replayed = []
        for letter in letters:
            headers = {k: v for k, v in letter.headers.items() if k not in _DLQ_HEADERS and not k.startswith("Nats-")}
            headers["Nats-Msg-Id"] = f"dlq-replay/{letter.id}"
            headers["Tc-Replayed-From"] = str(letter.id)
            await self.bus.js.publish(letter.subject, letter.payload, headers=headers)
            await self.bus.js.delete_msg(DEADLETTER, letter.id)
            log.info(
                "dead letter replayed",
                extra={"id": letter.id, "subject": letter.subject, "mailbox": letter.mailbox},
            )
            replayed.append(letter)
        return replayed


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
        durable=headers.get("Tc-Dlq-Durable", ""),
        subject=origin,
        mailbox=mailbox,
        reason=headers.get("Tc-Dlq-Error", ""),
        message_id=message_id,
        at=at,
        payload=payload,
        headers=headers,
    )
