"""On-demand sync requests: TCS asked for the calendar of a mailbox the connector has not synced yet.

Published as a core NATS message on `calendar.v1.control.ondemand.<mailbox-key>` (mailbox-key as in the CALENDAR
subjects: tccal.subjects.subject_token of the lower-cased address), payload `trueconf.calendar.v1.ResyncMailboxRequest`
with `mailbox` set and `since` unset, headers `traceparent`, `Tc-Server-Id` (the asking TrueConf Server) and
`Tc-Requested-By: tcs-gateway`. ews-ingest starts syncing the mailbox while seats remain (licensing decides).
A mailbox is asked for at most once per `ondemand_interval` by this gateway. Asked when a list finds nothing of
the user in the engine, and when a list fails for want of SyncService for a user that TrueConf Server never had
listed (bridge/calendar_list.py): the sync can start without the sync-engine.

The request is a core NATS request (ews-ingest answers `{"mailbox", "accepted", "detail"}`), sent in the
background. While nobody subscribes (ews-ingest not started yet, or restarting: NATS answers "no responders") it
is sent again with back-off for up to `ondemand_interval`; a core message would be lost, and TrueConf Server asks
for a user's calendar once, when it connects. A request received but not answered in time counts as delivered.

A request ews-ingest refused (`"accepted": false`: no license installed yet, no seat left) is sent again as soon as
a license change is announced on `calendar.v1.control.seats` (licensing's CLI after a registration), not after
`ondemand_interval`: TrueConf Server will not ask for that user again on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from tccal import telemetry
from tccal.bus import Bus
from tccal.subjects import SEATS_SUBJECT, ondemand_subject
from trueconf.calendar.v1 import ingest_pb2

log = logging.getLogger(__name__)
#: How long one request waits for ews-ingest's answer (it answers after an EWS probe and the seat check).
ANSWER_TIMEOUT = 30.0


class OnDemandRequests:
    def __init__(self, bus: Bus, interval: float, configured: tuple[str, ...]) -> None:
        self.bus = bus
        self.interval = interval
        self.configured = frozenset(user.lower() for user in configured)
        self._last: dict[str, float] = {}
        self.published = 0
        self.resent = 0
        #: mailbox -> the TrueConf Server that asked, for requests ews-ingest answered `"accepted": false`.
        self.refused: dict[str, str] = {}
        self.asked_again = 0
        self._deliveries: set[asyncio.Task[None]] = set()
        self._seats_subscription: Any = None

    async def listen_for_license_changes(self) -> None:
        """Subscribe to `calendar.v1.control.seats`: each announcement sends every refused request again."""
        if self._seats_subscription is None:
            self._seats_subscription = await self.bus.nc.subscribe(SEATS_SUBJECT, cb=self._on_seats)

    async def _on_seats(self, _msg: Any) -> None:
        refused, self.refused = self.refused, {}
        if refused:
            log.info("license change announced: asking again for refused mailboxes", extra={"mailboxes": len(refused)})
        for mailbox, server_id in refused.items():
            self._last.pop(mailbox, None)
            if await self.request(mailbox, server_id):
                self.asked_again += 1

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
        self._last[mailbox] = now
        self.published += 1
        log.info("on-demand sync requested", extra={"mailbox": mailbox, "server": server_id})
        task = asyncio.get_running_loop().create_task(
            self._deliver(mailbox, server_id, request.SerializeToString(), headers)
        )
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return True

    async def _deliver(self, mailbox: str, server_id: str, data: bytes, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + self.interval
        attempt = 0
        while True:
            try:
                reply: Any = await self.bus.nc.request(
                    ondemand_subject(mailbox), data, timeout=ANSWER_TIMEOUT, headers=headers
                )
            except NoRespondersError:
                attempt += 1
                pause = min(0.25 * 2**attempt, 10.0)
                if time.monotonic() + pause > deadline:
                    log.warning(
                        "on-demand sync request not delivered: nobody serves it (is ews-ingest running?)",
                        extra={"mailbox": mailbox, "attempts": attempt},
                    )
                    self._last.pop(mailbox, None)  # TrueConf's next list asks again
                    return
                self.resent += 1
                await asyncio.sleep(pause)
                continue
            except NatsTimeoutError:
                return  # received, not answered in time: ews-ingest is at work on it
            except Exception as exc:  # NATS trouble: TCS's next getCalendarList asks again
                log.warning("on-demand sync request failed", extra={"mailbox": mailbox, "error": repr(exc)})
                self._last.pop(mailbox, None)
                return
            log.info(
                "on-demand sync answered",
                extra={"mailbox": mailbox, "answer": reply.data[:300].decode(errors="replace")},
            )
            if not _accepted(reply.data):
                self.refused[mailbox] = server_id
            return

    async def close(self) -> None:
        if self._seats_subscription is not None:
            with contextlib.suppress(Exception):
                await self._seats_subscription.unsubscribe()
            self._seats_subscription = None
        for task in list(self._deliveries):
            task.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)


def _accepted(answer: bytes) -> bool:
    """ews-ingest's answer `{"mailbox", "accepted", "detail"}`; an unreadable one counts as accepted (not retried)."""
    try:
        return bool(json.loads(answer).get("accepted", True))
    except (ValueError, AttributeError):
        return True
