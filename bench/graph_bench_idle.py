"""Graph requests per mailbox-hour at idle (bench_graph.py idle; bench/README.md, "Graph idle load").

N mailboxes with nothing changing, graph-ingest with change notifications (safety-net poll and subscription renewals)
and then with delta polling. Each run uses compressed timings, counts the requests at the Graph emulator
(`GET /_emulator/requests`) over a window, and scales the measured rate back to the default Tuning as `bench.py idle`
does for EWS: default-schedule rate × measured / compressed-schedule rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from graph_ingest_support import NotifyEndpoint, SeatServer, graph_config, graph_provider, new_mailboxes, running_graph

from bench import RESULTS
from graph_emulator.testing import EmulatorProcess
from graph_ingest.settings import Tuning
from tccal_sandbox.embedded import EmbeddedNats

#: Token requests go to the identity platform, not to Graph; MSAL keeps a token until 5 minutes before it expires.
TOKEN_REFRESH_MARGIN_S = 300.0
#: expires_in of the emulator's tokens (its default, as Entra ID's app tokens: about an hour).
TOKEN_LIFETIME_S = 3599.0
#: The Tuning fields the idle runs compress.
COMPRESSED_KNOBS = (
    "poll_seconds",
    "notified_poll_seconds",
    "subscription_minutes",
    "subscription_renew_margin_seconds",
)


def scheduled_per_mailbox_hour(tuning: Tuning, notifying: bool) -> dict[str, float]:
    """Graph requests per mailbox-hour graph-ingest schedules at idle: one delta GET (the stored deltaLink, one page)
    per poll, and with notifications one subscription PATCH per renewal (every lifetime − margin; the margin is at
    most half the lifetime, as subscriptions.py renews)."""
    if not notifying:
        return {"delta": 3600.0 / tuning.poll_seconds, "renewal": 0.0}
    lifetime = tuning.subscription_minutes * 60.0
    margin = min(tuning.subscription_renew_margin_seconds, lifetime / 2)
    return {"delta": 3600.0 / tuning.notified_poll_seconds, "renewal": 3600.0 / (lifetime - margin)}


def requests(emu: EmulatorProcess) -> dict[str, Any]:
    answer: dict[str, Any] = emu.control("GET", "/requests")
    return answer


def difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    def minus(new: dict[str, int], old: dict[str, int]) -> dict[str, int]:
        return {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0)}

    return {
        "total": after["total"] - before["total"],
        "http": minus(after["http"], before["http"]),
        "operations": minus(after["operations"], before["operations"]),
    }


async def measure(
    label: str,
    provider: dict[str, Any],
    mailboxes: list[str],
    compressed: Tuning,
    window: float,
    emu: EmulatorProcess,
    nats: EmbeddedNats,
    seats: SeatServer,
) -> dict[str, Any]:
    notifying = bool(provider.get("notificationUrl"))
    async with running_graph(graph_config(seats.address, [provider]), nats, compressed) as graph:
        for mailbox in mailboxes:
            await (graph.subscribed(mailbox, timeout=120) if notifying else graph.rounds(mailbox, timeout=120))
        before, started = requests(emu), time.monotonic()
        rounds_before = sum(graph.status(m).rounds for m in mailboxes)
        await asyncio.sleep(window)
        after, elapsed = requests(emu), time.monotonic() - started
        rounds = sum(graph.status(m).rounds for m in mailboxes) - rounds_before
        renewed = graph.keeper(mailboxes[0]).stats.renewed if notifying else 0
    seen = difference(after, before)
    measured = seen["total"] * 3600.0 / (len(mailboxes) * elapsed)
    predicted = sum(scheduled_per_mailbox_hour(compressed, notifying).values())
    default = scheduled_per_mailbox_hour(Tuning(), notifying)
    tokens_per_hour = 3600.0 / (TOKEN_LIFETIME_S - TOKEN_REFRESH_MARGIN_S)
    return {
        "label": label,
        "compressed_tuning": {k: v for k, v in dataclasses.asdict(compressed).items() if k in COMPRESSED_KNOBS},
        "window_s": round(elapsed, 1),
        "requests": seen,
        "delta_rounds": rounds,
        "subscriptions_renewed_total": renewed,
        "measured_per_mailbox_hour": round(measured, 2),
        "predicted_per_mailbox_hour": round(predicted, 2),
        "default_schedule_per_mailbox_hour": {k: round(v, 4) for k, v in default.items()},
        "scaled_to_default_tuning_per_mailbox_hour": round(sum(default.values()) * measured / predicted, 3),
        "token_requests_per_provider_hour": round(tokens_per_hour, 3),
    }


def latest_ews_idle(results: Path = RESULTS) -> dict[str, Any] | None:
    """The newest `idle-*` result of bench.py (by its UTC stamp), for the EWS figure beside Graph's."""
    files = sorted(results.glob("idle-*.json"), key=lambda p: p.stem.rsplit("-", 1)[-1])
    if not files:
        return None
    data = json.loads(files[-1].read_text())
    return {"file": files[-1].name, "per_mailbox_hour": data.get("scaled_to_default_tuning_per_mailbox_hour")}


async def run_idle(
    args: argparse.Namespace, emu: EmulatorProcess, nats: EmbeddedNats, seats: SeatServer, endpoint: NotifyEndpoint
) -> dict[str, Any]:
    base = Tuning(seat_refresh_seconds=3600.0, error_backoff_base_seconds=0.2)
    notified = new_mailboxes(emu, *[f"idle-n{i}" for i in range(args.mailboxes)])
    polled = new_mailboxes(emu, *[f"idle-p{i}" for i in range(args.mailboxes)])
    with_notifications = await measure(
        "change notifications",
        endpoint.provider(emu, notified, name="idle-notified"),
        notified,
        dataclasses.replace(
            base,
            poll_seconds=3600.0,
            notified_poll_seconds=args.idle_poll,
            subscription_minutes=args.subscription_minutes,
            subscription_renew_margin_seconds=args.subscription_minutes * 30.0,
        ),
        args.idle,
        emu,
        nats,
        seats,
    )
    with_polling = await measure(
        "delta polling",
        graph_provider(emu, polled, name="idle-polled"),
        polled,
        dataclasses.replace(base, poll_seconds=args.idle_poll),
        args.idle,
        emu,
        nats,
        seats,
    )
    return {
        "mailboxes": args.mailboxes,
        "notifications": with_notifications,
        "polling": with_polling,
        "ews_reference": latest_ews_idle(Path(args.out)) or latest_ews_idle(),
        "extrapolation": "requests counted at the Graph emulator over the window with compressed timings, per "
        "mailbox-hour, scaled by (default schedule / compressed schedule) as bench.py idle does for EWS",
    }


def idle_table(result: dict[str, Any]) -> str:
    n, ews = result["mailboxes"], result["ews_reference"]
    notified, polled = result["notifications"], result["polling"]
    nt, pt = notified["compressed_tuning"], polled["compressed_tuning"]
    renewal = nt["subscription_minutes"] * 60 - nt["subscription_renew_margin_seconds"]
    lines = [
        f"### Graph requests per mailbox-hour at idle — {n} mailboxes per mode, {notified['window_s']:.0f} s windows",
        "",
        "| graph-ingest mode | compressed timings | requests in window | measured | predicted | scaled to defaults |",
        "|---|---|---|---|---|---|",
        f"| change notifications | safety poll {nt['notified_poll_seconds']:g} s, renewal every {renewal:g} s "
        f"| {notified['requests']['total']} "
        f"| {notified['measured_per_mailbox_hour']} | {notified['predicted_per_mailbox_hour']} "
        f"| **{notified['scaled_to_default_tuning_per_mailbox_hour']}** (poll 900 s, renewal ~7 days) |",
        f"| delta polling | poll {pt['poll_seconds']:g} s | {polled['requests']['total']} "
        f"| {polled['measured_per_mailbox_hour']} | {polled['predicted_per_mailbox_hour']} "
        f"| **{polled['scaled_to_default_tuning_per_mailbox_hour']}** (poll 60 s) |",
    ]
    if ews:
        lines.append(f"| EWS ews-ingest, for reference ({ews['file']}) | | | | | {ews['per_mailbox_hour']} |")
    lines += [
        "",
        f"Operations in the windows: notifications {notified['requests']['operations']}, "
        f"polling {polled['requests']['operations']}. Token requests (identity platform, not Graph): "
        f"{notified['token_requests_per_provider_hour']} per provider-hour.",
        "",
    ]
    return "\n".join(lines)
