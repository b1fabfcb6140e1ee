"""`python -m graph_ingest` as a real process exports its metrics at /metrics (tccal.metric_names): Graph requests
by status, delta rounds by outcome, the subscriptions it keeps, and change notifications by verdict — scraped as
Prometheus scrapes them while the Graph emulator and this test post to its receiver."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from graph_ingest_support import NotifyEndpoint, SeatServer, graph_config, new_mailboxes, notifying_emulator
from prometheus_client.parser import text_string_to_metric_families
from test_graph_ingest_process import _get, _spawn, _write_config

from graph_emulator.testing import EmulatorProcess
from tccal.metric_names import EXPORTED
from tccal_sandbox.embedded import EmbeddedNats
from tccal_sandbox.testing import wait_for_async

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def emu(notify_endpoint: NotifyEndpoint) -> Iterator[EmulatorProcess]:
    """The Graph emulator trusting the receiver's certificate (overrides conftest's plain one)."""
    with notifying_emulator(notify_endpoint) as handle:
        yield handle


async def scrape(http_port: int) -> Samples:
    status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s series having `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def test_metrics_count_requests_rounds_subscriptions_and_notifications_by_verdict(
    emu: EmulatorProcess,
    notify_endpoint: NotifyEndpoint,
    nats_server: EmbeddedNats,
    seats: SeatServer,
    tmp_path: Path,
) -> None:
    (mailbox,) = new_mailboxes(emu, "mets")
    provider = notify_endpoint.provider(emu, [mailbox], name="m365")
    path, http_port = _write_config(tmp_path, graph_config(seats.address, [provider]), nats_server)
    log_path = tmp_path / "graph-ingest.log"
    process: subprocess.Popen[bytes] = await asyncio.to_thread(_spawn, path, log_path)
    try:

        async def subscribed() -> Samples | None:
            if process.poll() is not None:
                raise AssertionError(f"graph-ingest exited with {process.returncode}: {log_path.read_text()}")
            status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/readyz")
            if status != 200:
                return None
            samples = await scrape(http_port)
            done = value(samples, "graph_ingest_subscriptions_active", provider="m365") == 1
            rounds = value(samples, "graph_ingest_delta_rounds_total", provider="m365", outcome="ok")
            return samples if done and rounds >= 1 else None

        before = await wait_for_async(subscribed, timeout=60, what="a subscription and a delta round")
        assert value(before, "graph_ingest_graph_requests_total", provider="m365", status="200") >= 1
        assert value(before, "graph_ingest_graph_requests_total", method="POST", status="201") >= 1  # subscribed
        [sub] = [s for s in emu.control("GET", "/subscriptions")["subscriptions"] if mailbox in s["resource"]]

        notification: dict[str, Any] = {
            "subscriptionId": sub["id"],
            "clientState": sub["clientState"],
            "changeType": "updated",
            "resource": f"Users/{mailbox}/Events/AAMk",
            "tenantId": "x",
        }
        posts = [
            {"value": [notification, {**notification, "clientState": "guessed"}]},
            {"value": [{**notification, "subscriptionId": "not-ours"}]},
        ]
        async with aiohttp.ClientSession() as http:
            for body in posts:
                async with http.post(notify_endpoint.url, json=body, ssl=notify_endpoint.ssl_context()) as resp:
                    assert resp.status == 202
            async with http.post(notify_endpoint.url, data=b"[1]", ssl=notify_endpoint.ssl_context()) as resp:
                assert resp.status == 400
        after = await scrape(http_port)

        def moved(verdict: str) -> float:
            name = "graph_ingest_notifications_total"
            return value(after, name, verdict=verdict) - value(before, name, verdict=verdict)

        assert {v: moved(v) for v in ("accepted", "wrong_client_state", "unknown_subscription", "malformed")} == {
            "accepted": 1,
            "wrong_client_state": 1,
            "unknown_subscription": 1,
            "malformed": 1,
        }
        # the accepted notification starts a round at once: the round counter moves
        rounds = value(before, "graph_ingest_delta_rounds_total", outcome="ok")

        async def another_round() -> bool:
            return value(await scrape(http_port), "graph_ingest_delta_rounds_total", outcome="ok") > rounds

        await wait_for_async(another_round, timeout=30, what="the round the notification asked for")
        # everything of graph-ingest's is a name tccal.metric_names lists
        ours = {name for name, _ in after if name.startswith("graph_ingest_")}
        unlisted = ours - set(EXPORTED)
        assert not unlisted, f"exported but not in tccal.metric_names: {unlisted}"
        assert ours >= {n for n, (_, owner) in EXPORTED.items() if owner == "graph-ingest"} - {
            "graph_ingest_throttled_waits_total",  # counted once Graph throttles, which this test does not provoke
            "graph_ingest_throttled_wait_seconds_total",
        }
    finally:
        if process.poll() is None:
            process.terminate()
            await asyncio.to_thread(process.wait, 30)
