"""ews-ingest on NATS: CalendarChange producer (stream CALENDAR) and the control subjects other services use.

Control subjects are plain NATS core subjects (no JetStream); `<mailbox-key>` is tccal.subjects.subject_token(mailbox):

* `calendar.v1.control.resync.<mailbox-key>` - re-read the mailbox and publish every item again (sync-engine's
  ResyncMailbox). Payload: JSON `{"mailbox": "...", "since": "2026-01-01T00:00:00Z"}` (`since` optional) or a
  serialized `trueconf.calendar.v1.ResyncMailboxRequest` (what sync-engine sends).
* `calendar.v1.control.ondemand.<mailbox-key>` - TrueConf asked for a user not synced yet (tcs-gateway): sync it
  if licensing grants a seat. Payload: JSON `{"mailbox": "...", "provider": "exchange.example.com"}` (`provider`
  optional: found by probing the providers).
* `calendar.v1.control.seats` - ask licensing for seats again now (payload ignored).

An empty or unreadable payload falls back to the mailbox named by the subject's last token. A request with a reply
subject gets `{"mailbox", "accepted", "detail"}` back.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from tccal.bus import Bus
from tccal.subjects import calendar_subject, unescape_token
from trueconf.calendar.v1 import calendar_pb2, ingest_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlRequest:
    mailbox: str
    since: dt.datetime | None = None
    provider: str | None = None


class ControlError(ValueError):
    pass


def parse_control(subject: str, data: bytes) -> ControlRequest:
    """The mailbox (and options) of a control message: JSON, a ResyncMailboxRequest, or the subject's token."""
    from_subject = unescape_token(subject.rsplit(".", 1)[-1]).strip().lower()
    text = data.strip()
    if text.startswith(b"{"):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ControlError(f"control payload on {subject} is not JSON: {exc.msg}") from None
        if not isinstance(payload, dict):
            raise ControlError(f"control payload on {subject} is not a JSON object")
        mailbox = str(payload.get("mailbox") or from_subject).strip().lower()
        since = _parse_time(payload.get("since"), subject)
        provider = payload.get("provider")
        return ControlRequest(mailbox, since, str(provider) if provider else None)
    if text:
        request = ingest_pb2.ResyncMailboxRequest()
        try:
            request.ParseFromString(bytes(data))
        except DecodeError:
            request = ingest_pb2.ResyncMailboxRequest()
        if request.mailbox:
            since = request.since.ToDatetime(tzinfo=dt.UTC) if request.HasField("since") else None
            return ControlRequest(request.mailbox.strip().lower(), since)
    if "@" not in from_subject:
        raise ControlError(f"control message on {subject} names no mailbox")
    return ControlRequest(from_subject)


def _parse_time(value: object, subject: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ControlError(f"'since' on {subject} must be an ISO 8601 time, got {value!r}")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ControlError(f"'since' on {subject} is not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class ChangePublisher:
    """Publish one CalendarChange to calendar.v1.changes.<provider>.<mailbox-key> with its dedupe id."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def __call__(self, change: calendar_pb2.CalendarChange, msg_id: str) -> bool:
        subject = calendar_subject(change.provider, change.mailbox)
        return await self.bus.publish(subject, change.SerializeToString(), msg_id=msg_id)
