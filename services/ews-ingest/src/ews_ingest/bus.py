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

import logging
from collections.abc import Sequence

from tccal.bus import Bus
from tccal.ingest.control import ControlError, ControlRequest, parse_control
from tccal.subjects import calendar_subject
from trueconf.calendar.v1 import calendar_pb2

__all__ = ["ChangePublisher", "ControlError", "ControlRequest", "parse_control"]

log = logging.getLogger(__name__)


class ChangePublisher:
    """Publish CalendarChanges to calendar.v1.changes.<provider>.<mailbox-key>, each with its dedupe id.

    A sync hands over a page's changes at once: they go out pipelined (one socket write, acks awaited together)
    instead of one round trip each; JetStream stores them in the given order."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def __call__(self, changes: Sequence[tuple[calendar_pb2.CalendarChange, str]]) -> list[bool]:
        """Publish `changes` ((change, msg_id), in order); per change True if stored, False if a duplicate."""
        if len(changes) == 1:
            change, msg_id = changes[0]
            subject = calendar_subject(change.provider, change.mailbox)
            return [await self.bus.publish(subject, change.SerializeToString(), msg_id=msg_id)]
        return await self.bus.publish_batch(
            [
                (calendar_subject(change.provider, change.mailbox), change.SerializeToString(), msg_id, {})
                for change, msg_id in changes
            ]
        )
