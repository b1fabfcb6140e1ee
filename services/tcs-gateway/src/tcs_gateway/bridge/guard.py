"""What a peer of the bridge may cost before it authenticates (docs/bridge-protocol.md §11, tcs.bridgeLimits).

Everything is counted per remote address (the IP address of the TCP peer), so one address cannot use up what
another needs — as RFC 6455 §4.1 foresees: "Servers can refuse to accept connections from hosts/IP addresses
with an excessive number of existing connections or disconnect resource-hogging connections when suffering high
load."

- **Unauthenticated connections.** A TCP connection counts from the moment it is accepted (before its HTTP
  upgrade request has arrived, so a slowloris counts too) until it authenticates or ends. One address may hold
  `max_unauthenticated_per_address`; all addresses together `max_unauthenticated`, except that an address which
  authenticated within `known_address_ttl` is held only to its own cap — a flood from many addresses does not
  lock out a TrueConf Server that has connected before. A connection over a cap is closed as it is accepted.
- **Failed auths.** Each refused `auth` counts against the pair (address, claimed server id): a wrong secret for a
  whitelisted id against that id, every id that is not whitelisted against one shared key of the address (so
  inventing ids buys no fresh attempts). From the `auth_failures_before_backoff`-th failure on, the pair is backed
  off for `auth_backoff_initial`, doubling with every further failure up to `auth_backoff_max`; meanwhile `auth`
  frames for that id from that address are refused without the secret being looked at. A successful auth clears
  the pair. Keying by the claimed id keeps a hostile client behind the same NAT address as a real TrueConf Server
  from locking that server out by guessing another id's secret (or an unknown id's); the per-address cap on
  unauthenticated connections still bounds what the address may hold open. Only guessing the real server's own
  id delays that server — nothing on the wire tells the two apart before the secret is checked.
- **Logging.** Refusals are counted, not logged one by one: at most one line per address per
  `refusal_log_interval`, saying how many were refused and why (`flush` writes what is left of a burst).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tcs_gateway.settings import GatewaySettings

log = logging.getLogger("tcs_gateway.bridge.guard")

# Reasons a connection or an auth was refused, as counted and logged.
OVER_ADDRESS_CAP = "over the per-address cap of unauthenticated connections"
OVER_TOTAL_CAP = "over the total cap of unauthenticated connections"
BACKED_OFF = "backed off after failed auths"
NOT_WHITELISTED = "server id not whitelisted"
BAD_SECRET = "wrong secret"
NO_AUTH = "no successful auth in time"


#: The back-off key of every claimed server id that is not whitelisted (one per address, however many ids).
UNLISTED_ID = "(not whitelisted)"


@dataclass
class _Address:
    pending: int = 0
    last_event: float = 0.0
    last_line: float | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class _Failures:
    count: int = 0
    blocked_until: float = 0.0


class BridgeGuard:
    def __init__(self, settings: GatewaySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._addresses: dict[str, _Address] = {}
        #: Failed auths per (address, back-off key of the claimed server id).
        self._failures: dict[tuple[str, str], _Failures] = {}
        self._known: dict[str, float] = {}
        self.pending_total = 0
        #: Refusals per reason since start (tests and metrics read it).
        self.refused: collections.Counter[str] = collections.Counter()
        self.lines_logged = 0

    def _entry(self, address: str) -> _Address:
        entry = self._addresses.get(address)
        if entry is None:
            entry = self._addresses[address] = _Address()
        entry.last_event = self.clock()
        return entry

    # ------------------------------------------------------------------ connections
    def admit(self, address: str) -> str | None:
        """A TCP connection from `address` was accepted: None when it may stay (it then counts as unauthenticated
        until `release`), else the reason to close it, already counted."""
        entry = self._entry(address)
        if entry.pending >= self.settings.max_unauthenticated_per_address:
            reason: str | None = OVER_ADDRESS_CAP
        elif self.pending_total >= self.settings.max_unauthenticated and not self.is_known(address):
            reason = OVER_TOTAL_CAP
        else:
            reason = None
        if reason is not None:
            self.note(address, reason)
            return reason
        entry.pending += 1
        self.pending_total += 1
        return None

    def release(self, address: str) -> None:
        """An admitted connection authenticated or ended: it no longer counts."""
        entry = self._addresses.get(address)
        if entry is not None and entry.pending > 0:
            entry.pending -= 1
            self.pending_total -= 1

    def is_known(self, address: str) -> bool:
        seen = self._known.get(address)
        return seen is not None and self.clock() - seen < self.settings.known_address_ttl

    # ------------------------------------------------------------------ auth
    def backoff_key(self, server_id: str) -> str:
        """What a failed auth claiming `server_id` counts against: the id itself when whitelisted, else the one
        key shared by every unlisted id."""
        return server_id.lower() if self.settings.is_whitelisted(server_id) else UNLISTED_ID

    def backed_off(self, address: str, server_id: str) -> float:
        """Seconds an auth claiming `server_id` from `address` stays refused (0: it is not)."""
        failures = self._failures.get((address, self.backoff_key(server_id)))
        if failures is None:
            return 0.0
        return max(0.0, failures.blocked_until - self.clock())

    def auth_failed(self, address: str, server_id: str, reason: str) -> None:
        self._entry(address)
        key = (address, self.backoff_key(server_id))
        failures = self._failures.setdefault(key, _Failures())
        failures.count += 1
        beyond = failures.count - self.settings.auth_failures_before_backoff
        if beyond >= 0:
            backoff = min(self.settings.auth_backoff_max, self.settings.auth_backoff_initial * 2 ** min(beyond, 40))
            failures.blocked_until = self.clock() + backoff
        self.note(address, reason, backed_off=max(0.0, failures.blocked_until - self.clock()))

    def auth_succeeded(self, address: str, server_id: str) -> None:
        self._entry(address)
        self._failures.pop((address, self.backoff_key(server_id)), None)
        self._known[address] = self.clock()

    # ------------------------------------------------------------------ logging
    def note(self, address: str, reason: str, *, backed_off: float = 0.0) -> None:
        """Count one refusal; log when this address has had no line for `refusal_log_interval`."""
        entry = self._entry(address)
        entry.counts[reason] += 1
        self.refused[reason] += 1
        now = self.clock()
        if entry.last_line is None or now - entry.last_line >= self.settings.refusal_log_interval:
            self._emit(address, entry, now, backed_off)

    def _emit(self, address: str, entry: _Address, now: float, backed_off: float = 0.0) -> None:
        total = sum(entry.counts.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in entry.counts.most_common())
        log.warning(
            "bridge refused unauthenticated connections from %s: %d (%s)%s",
            address,
            total,
            reasons,
            f"; backed off for {backed_off:.0f} s" if backed_off > 0 else "",
            extra={
                "address": address,
                "refused": total,
                "reasons": dict(entry.counts),
                "interval_sec": self.settings.refusal_log_interval,
                "backed_off_sec": round(backed_off, 1),
            },
        )
        self.lines_logged += 1
        entry.counts.clear()
        entry.last_line = now

    def flush(self) -> None:
        """Log what is left of each address's burst once its interval is over; forget quiet addresses."""
        now = self.clock()
        interval = self.settings.refusal_log_interval
        quiet_for = max(2 * self.settings.auth_backoff_max, 2 * interval)
        for address, entry in list(self._addresses.items()):
            if entry.counts and (entry.last_line is None or now - entry.last_line >= interval):
                self._emit(address, entry, now)
            if entry.pending == 0 and not entry.counts and now - entry.last_event >= quiet_for:
                del self._addresses[address]
        for key, failures in list(self._failures.items()):
            if failures.blocked_until <= now and key[0] not in self._addresses:
                del self._failures[key]
        for address, seen in list(self._known.items()):
            if now - seen >= self.settings.known_address_ttl:
                del self._known[address]

    async def run(self) -> None:
        """Flush periodically until cancelled."""
        tick = max(0.05, min(5.0, self.settings.refusal_log_interval / 4))
        while True:
            await asyncio.sleep(tick)
            self.flush()
