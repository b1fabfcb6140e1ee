"""The payload of a control request (`calendar.v1.control.resync.<mailbox>` / `.ondemand.<mailbox>`), read the same
way by ews-ingest and graph-ingest: JSON `{"mailbox", "since", "provider"}`, a serialized
`trueconf.calendar.v1.ResyncMailboxRequest` (what sync-engine and tcs-gateway send), or else the mailbox named by
the subject's last token."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from tccal.subjects import unescape_token
from trueconf.calendar.v1 import ingest_pb2


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
