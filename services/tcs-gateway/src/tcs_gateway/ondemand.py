"""On-demand sync requests: TCS asked for the calendar of a mailbox the connector has not synced yet.

Published as a core NATS message on `calendar.v1.control.ondemand.<mailbox-key>` (mailbox-key as in the CALENDAR
subjects: tccal.bus.subject_token of the lower-cased address), payload `trueconf.calendar.v1.ResyncMailboxRequest`
with `mailbox` set and `since` unset, headers `traceparent`, `Tc-Server-Id` (the asking TrueConf Server) and
`Tc-Requested-By: tcs-gateway`. ews-ingest starts syncing the mailbox while seats remain (licensing decides).
A mailbox is asked for at most once per `ondemand_interval` by this gateway.
"""

from __future__ import annotations

import logging
import time

from tccal import telemetry
from tccal.bus import Bus, subject_token
from trueconf.calendar.v1 import ingest_pb2

log = logging.getLogger(__name__)
SUBJECT_PREFIX = "calendar.v1.control.ondemand"


def ondemand_subject(mailbox: str) -> str:
    return f"{SUBJECT_PREFIX}.{subject_token(mailbox)}"


class OnDemandRequests:
    def __init__(self, bus: Bus, interval: float, configured: tuple[str, ...]) -> None:
        self.bus = bus
        self.interval = interval
        self.configured = frozenset(user.lower() for user in configured)
        self._last: dict[str, float] = {}
        self.published = 0

    async def request(self, mailbox: str, server_id: str) -> bool:
        """Ask for `mailbox` to be synced; False when not sent (configured user, asked recently, no NATS)."""
        mailbox = mailbox.lower()
        if mailbox in self.configured:
            return False
        now = time.monotonic()
        last = self._last.get(mailbox)
        if last is not None and now - last < self.interval:
            return False
        if not self.bus.connected:
            log.warning("on-demand sync not requested: NATS is not connected", extra={"mailbox": mailbox})
            return False
        headers = {"Tc-Server-Id": server_id, "Tc-Requested-By": "tcs-gateway"}
        telemetry.inject_context(headers)
        request = ingest_pb2.ResyncMailboxRequest(mailbox=mailbox)
        try:
            await self.bus.nc.publish(ondemand_subject(mailbox), request.SerializeToString(), headers=headers)
        except Exception as exc:  # NATS trouble: TCS asks again on its next getCalendarList
            log.warning("on-demand sync request failed", extra={"mailbox": mailbox, "error": repr(exc)})
            return False
        self._last[mailbox] = now
        self.published += 1
        log.info("on-demand sync requested", extra={"mailbox": mailbox, "server": server_id})
        return True
