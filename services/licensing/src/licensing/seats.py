"""Seat allocation (pure).

A *seat* is a lease: a mailbox granted a seat holds it until ``expires_at``; every AllocateSeats call that
names the mailbox renews the lease. Mailboxes that nobody asks for any more free their seat when the lease
runs out, so several ews-ingest replicas can each ask for their own share.

Order of priority for the ``capacity`` seats, among live holders and the mailboxes asked for now:

1. configured ``users`` (whitelist priority), those already holding a seat first, then in the order asked;
2. on-demand mailboxes, those already holding a seat first (oldest grant first), then in the order asked.

The first ``capacity`` get (or keep) a seat. A holder that falls off the end loses its seat (``revoked``);
its ews-ingest learns it at its next call. Mailbox addresses are compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class SeatAsk:
    mailbox: str
    configured: bool


@dataclass(frozen=True)
class Holding:
    mailbox: str
    configured: bool
    granted_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Refusal:
    mailbox: str
    reason: str


@dataclass
class Allocation:
    granted: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    holdings: dict[str, Holding] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)

    @property
    def seats_used(self) -> int:
        return len(self.holdings)


def normalize_mailbox(mailbox: str) -> str:
    return mailbox.strip().lower()


def _invalid_reason(mailbox: str) -> str | None:
    if not mailbox:
        return "empty mailbox address"
    local, at, domain = mailbox.partition("@")
    if not at or not local or not domain or any(ch.isspace() for ch in mailbox):
        return f"{mailbox!r} is not an e-mail address"
    return None


def live_holdings(holdings: Mapping[str, Holding], now: datetime) -> dict[str, Holding]:
    return {m: h for m, h in holdings.items() if h.expires_at > now}


def refuse_all(asks: Iterable[SeatAsk], reason: str) -> list[Refusal]:
    seen: set[str] = set()
    out = []
    for ask in asks:
        mailbox = normalize_mailbox(ask.mailbox)
        if mailbox in seen:
            continue
        seen.add(mailbox)
        out.append(Refusal(mailbox, _invalid_reason(mailbox) or reason))
    return out


def allocate(
    asks: Iterable[SeatAsk],
    holdings: Mapping[str, Holding],
    capacity: int,
    now: datetime,
    lease: timedelta,
) -> Allocation:
    """Grant seats to ``asks`` against the current ``holdings``; returns the new holdings in full."""
    result = Allocation()
    order: dict[str, int] = {}
    wanted: dict[str, bool] = {}
    for ask in asks:
        mailbox = normalize_mailbox(ask.mailbox)
        bad = _invalid_reason(mailbox)
        if bad is not None:
            if mailbox not in order:
                order[mailbox] = len(order)
                result.refused.append(Refusal(mailbox, bad))
            continue
        if mailbox not in order:
            order[mailbox] = len(order)
        wanted[mailbox] = wanted.get(mailbox, False) or ask.configured

    live = live_holdings(holdings, now)

    def is_configured(mailbox: str) -> bool:
        return wanted[mailbox] if mailbox in wanted else live[mailbox].configured

    def rank(mailbox: str) -> tuple[int, int, datetime, int, str]:
        held = live.get(mailbox)
        return (
            0 if is_configured(mailbox) else 1,
            0 if held is not None else 1,
            held.granted_at if held is not None else now,
            order.get(mailbox, len(order)),
            mailbox,
        )

    ranked = sorted(set(wanted) | set(live), key=rank)
    winners = set(ranked[: max(capacity, 0)])
    configured_total = sum(1 for m in ranked if is_configured(m))

    for mailbox in ranked:
        held = live.get(mailbox)
        if mailbox in winners:
            if mailbox in wanted:
                result.holdings[mailbox] = Holding(
                    mailbox=mailbox,
                    configured=wanted[mailbox],
                    granted_at=held.granted_at if held is not None else now,
                    expires_at=now + lease,
                )
            elif held is not None:
                result.holdings[mailbox] = held
        elif held is not None and mailbox not in wanted:
            result.revoked.append(mailbox)

    for mailbox in sorted(wanted, key=order.__getitem__):
        if mailbox in winners:
            result.granted.append(mailbox)
        elif wanted[mailbox]:
            result.refused.append(
                Refusal(
                    mailbox,
                    f"seat limit reached: the license allows {capacity} accounts and "
                    f"{configured_total} configured users ask for them; configured users listed earlier "
                    "or already synced keep their seats",
                )
            )
        else:
            result.refused.append(
                Refusal(
                    mailbox,
                    f"seat limit reached: all {capacity} accounts of the license are taken "
                    "(configured users first, then on-demand users already synced)",
                )
            )
    result.refused.sort(key=lambda r: order[r.mailbox])
    return result
