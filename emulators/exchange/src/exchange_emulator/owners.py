"""Who works on a mailbox at once: streaming connections and sync runs per mailbox (inspection only).

Exchange itself does not refuse a mailbox synced by two clients, but a connector that scales out must never do it
(twice the load, and two subscriptions competing for one mailbox's budget). The emulator says whether it happened:

* streaming: the GetStreamingEvents connections open now whose subscriptions cover a mailbox, and the most there
  ever were at once, and the most distinct clients (User-Agents) with one open at once - above 1 means two owners
  (`overlaps` names the clients each time). A connection counts until its client's socket closes (a killed
  client's socket closes with it);
* syncs: a SyncFolderItems run is one client (its User-Agent) walking a mailbox's pages, open from its first page
  until the answer with IncludesLastItemInRange true. Runs of two clients open at once on one mailbox are concurrent
  syncs. A run left unfinished (its client stopped or was killed) stops counting `idle_seconds` after its last page.

Served at GET /_emulator/owners (cleared by POST /_emulator/reset).
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any


class OwnerWatch:
    def __init__(self, idle_seconds: float = 5.0) -> None:
        self.idle_seconds = idle_seconds
        self.streams_now: collections.Counter[str] = collections.Counter()
        self.streams_peak: collections.Counter[str] = collections.Counter()
        self.runs: dict[str, dict[str, float]] = {}  # mailbox -> client -> monotonic time of its latest page
        self.syncs_peak: collections.Counter[str] = collections.Counter()
        self.sync_clients: dict[str, set[str]] = {}  # mailbox -> every client that ever synced it
        self.stream_clients: dict[str, collections.Counter[str]] = {}  # mailbox -> client -> its open streams
        #: The most clients (User-Agents) with a stream open on the mailbox at once: above 1 = two owners.
        self.stream_owners_peak: collections.Counter[str] = collections.Counter()
        #: Every moment a mailbox got a second stream or sync run: {mailbox, kind, clients, at (UTC)}.
        self.overlaps: list[dict[str, Any]] = []

    def stream_opened(self, mailboxes: Iterable[str], client: str = "") -> None:
        for mailbox in mailboxes:
            self.streams_now[mailbox] += 1
            self.streams_peak[mailbox] = max(self.streams_peak[mailbox], self.streams_now[mailbox])
            clients = self.stream_clients.setdefault(mailbox, collections.Counter())
            clients[client] += 1
            self.stream_owners_peak[mailbox] = max(self.stream_owners_peak[mailbox], len(clients))
            if len(clients) > 1:
                self._overlap(mailbox, "stream", clients)
            elif clients[client] > 1:  # one client, two connections on one mailbox (no second owner)
                self._overlap(mailbox, "stream-same-client", clients)

    def stream_closed(self, mailboxes: Iterable[str], client: str = "") -> None:
        for mailbox in mailboxes:
            self.streams_now[mailbox] -= 1
            if self.streams_now[mailbox] <= 0:
                del self.streams_now[mailbox]
            clients = self.stream_clients.get(mailbox)
            if clients is not None:
                clients[client] -= 1
                if clients[client] <= 0:
                    del clients[client]

    def _overlap(self, mailbox: str, kind: str, clients: Iterable[str]) -> None:
        at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        self.overlaps.append({"mailbox": mailbox, "kind": kind, "clients": sorted(clients), "at": at})

    def sync_page(self, mailbox: str, client: str, *, last: bool) -> None:
        now = time.monotonic()
        runs = self.runs.setdefault(mailbox, {})
        for other, at in list(runs.items()):
            if now - at > self.idle_seconds:
                del runs[other]
        runs[client] = now
        self.syncs_peak[mailbox] = max(self.syncs_peak[mailbox], len(runs))
        if len(runs) > 1:
            self._overlap(mailbox, "sync", runs)
        self.sync_clients.setdefault(mailbox, set()).add(client)
        if last:
            del runs[client]

    def report(self) -> dict[str, Any]:
        mailboxes = sorted(set(self.streams_peak) | set(self.syncs_peak))
        return {
            "mailboxes": {
                m: {
                    "streams_now": self.streams_now.get(m, 0),
                    "streams_peak": self.streams_peak.get(m, 0),
                    "stream_owners_peak": self.stream_owners_peak.get(m, 0),
                    "syncs_peak": self.syncs_peak.get(m, 0),
                    "sync_clients": sorted(self.sync_clients.get(m, set())),
                }
                for m in mailboxes
            },
            "max_streams_per_mailbox": max(self.streams_peak.values(), default=0),
            "max_stream_owners_per_mailbox": max(self.stream_owners_peak.values(), default=0),
            "max_syncs_per_mailbox": max(self.syncs_peak.values(), default=0),
            "idle_seconds": self.idle_seconds,
            "overlaps": self.overlaps[-100:],
        }
