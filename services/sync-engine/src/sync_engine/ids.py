"""Deterministic identifiers and time conversions (replaying the streams must reproduce every id)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def meeting_id(uid: str) -> str:
    """Id of the meeting of an iCalendar UID: 32 hex digits of SHA-256(uid)."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:32]


def occurrence_id(meeting: str, original_start: datetime | None) -> str:
    """ "<meeting_id>" for a single meeting, "<meeting_id>@<original start, unix seconds>" in a series."""
    if original_start is None:
        return meeting
    return f"{meeting}@{int(original_start.timestamp())}"


#: The instants a Timestamp may hold (0001-01-01 … 9999-12-31); outside them ToDatetime reports the error.
_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799


def to_datetime(stamp: Timestamp) -> datetime:
    """The aware UTC datetime of `stamp`: what Timestamp.ToDatetime(tzinfo=UTC) returns, without its slow path."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if _FIRST_SECOND <= seconds <= _LAST_SECOND and 0 <= nanos < 1_000_000_000:
        return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    return stamp.ToDatetime(tzinfo=UTC)


def to_timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def set_timestamp(stamp: Timestamp, moment: datetime) -> None:
    """`stamp` = `moment` (an aware datetime); what Timestamp.FromDatetime does, without its slow path."""
    delta = moment - EPOCH
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000
