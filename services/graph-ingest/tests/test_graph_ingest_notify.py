"""Change notifications: graph-ingest subscribes each seated mailbox at the Graph emulator (a subprocess), which
validates graph-ingest's HTTPS receiver and posts notifications and lifecycle events to it; a notification starts a
delta round at once (polling set to 300 s, so nothing else explains a change seen within the test's waits)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from graph_ingest_support import FAST, GraphTestbed, NotifyEndpoint, graph_provider, new_mailboxes, notifying_emulator

from graph_emulator.testing import EmulatorProcess
from tccal import secrets
from tccal.config import Config
from tccal.config.checks import notification_problems
from tccal.ingest.kv_state import SEATS_KEY
from tccal.subjects import GRAPH_STATE_BUCKET
from tccal_sandbox.testing import wait_for_async

NOTIFIED = dataclasses.replace(FAST, poll_seconds=300.0, notified_poll_seconds=300.0)


@pytest.fixture(scope="module")
def emu(notify_endpoint: NotifyEndpoint) -> Iterator[EmulatorProcess]:
    """The Graph emulator trusting the receiver's certificate (overrides conftest's plain one)."""
    with notifying_emulator(notify_endpoint) as handle:
        yield handle


def notified_mailboxes(
    testbed: GraphTestbed, endpoint: NotifyEndpoint, *names: str
) -> tuple[list[str], dict[str, Any]]:
    """New mailboxes at the emulator and a Graph provider entry for them with notifications to `endpoint`."""
    mailboxes = new_mailboxes(testbed.emu, *names)
    return mailboxes, endpoint.provider(testbed.emu, mailboxes, name="m365")


def subscriptions_of(emu: EmulatorProcess, mailbox: str) -> list[dict[str, Any]]:
    found = emu.control("GET", "/subscriptions")["subscriptions"]
    return [s for s in found if s["resource"] == f"/users/{mailbox}/events"]


async def test_a_new_event_arrives_by_notification_long_before_the_next_poll(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    emu, collector, writer = testbed.emu, testbed.collector, testbed.writer
    caplog.set_level(logging.DEBUG)
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "nora")
    async with testbed.running([notified], NOTIFIED) as graph:
        record = await graph.subscribed(mailbox)
        [sub] = subscriptions_of(emu, mailbox)
        assert sub["id"] == record.id and sub["notificationUrl"] == notify_endpoint.url
        assert sub["changeType"] == "created,updated,deleted" and sub["clientState"] == record.clientState
        assert sub["lifecycleNotificationUrl"] == notify_endpoint.url
        assert graph.runtime.poll_seconds(graph.status(mailbox)) == 300.0
        await collector.start()
        created = await writer.create(mailbox, "Posted, not polled")
        change = await collector.wait(lambda c: c.item_id == created["id"], timeout=60, what="the new event")
        assert change.event.subject == "Posted, not polled"
        assert graph.keeper(mailbox).stats.notifications >= 1
        await writer.update(mailbox, created["id"], {"subject": "Renamed by notification"})
        await collector.wait(lambda c: c.event.subject == "Renamed by notification", timeout=60, what="the update")
    # the clientState is a secret of the subscription: in KV and at Graph, never in a log record
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "subscription created" in logged and record.clientState not in logged


async def test_the_receiver_answers_validation_and_ignores_forged_or_oversized_notifications(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "olga")
    tuning = dataclasses.replace(NOTIFIED, notification_max_body_bytes=4096)
    async with testbed.running([notified], tuning) as graph, aiohttp.ClientSession() as http:
        record = await graph.subscribed(mailbox)
        keeper, status = graph.keeper(mailbox), graph.status(mailbox)
        tls = notify_endpoint.ssl_context()
        token = "Validation: Testing client application reachability <&> 1"
        async with http.post(notify_endpoint.url, params={"validationToken": token}, ssl=tls) as resp:
            assert (resp.status, resp.content_type, await resp.text()) == (200, "text/plain", token)
        rounds = status.rounds
        forged = {
            "subscriptionId": record.id,
            "clientState": "guessed",
            "changeType": "created",
            "resource": f"Users/{mailbox}/Events/AAMk",
            "tenantId": "x",
        }
        async with http.post(notify_endpoint.url, json={"value": [forged]}, ssl=tls) as resp:
            assert resp.status == 202
        assert (keeper.stats.forged, keeper.stats.notifications) == (1, 0)
        stranger = {**forged, "subscriptionId": "not-ours", "clientState": record.clientState}
        async with http.post(notify_endpoint.url, json={"value": [stranger]}, ssl=tls) as resp:
            assert resp.status == 202
        assert keeper.stats.unknown == 1
        huge = {"value": [{**forged, "clientState": record.clientState, "pad": "x" * 8192}]}
        async with http.post(notify_endpoint.url, json=huge, ssl=tls) as resp:
            assert resp.status == 413
        async with http.post(notify_endpoint.url, data=b"[1, 2]", ssl=tls) as resp:
            assert resp.status == 400
        assert not status.busy and status.rounds == rounds  # nothing above started a round
        genuine = {**forged, "clientState": record.clientState}
        async with http.post(notify_endpoint.url, json={"value": [genuine]}, ssl=tls) as resp:
            assert resp.status == 202
        assert keeper.stats.notifications == 1
        await graph.rounds(mailbox, rounds + 1)


async def test_lifecycle_events_recreate_reauthorize_and_catch_up(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    emu = testbed.emu
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "pavel")
    async with testbed.running([notified], NOTIFIED) as graph:
        first = await graph.subscribed(mailbox)
        keeper, status = graph.keeper(mailbox), graph.status(mailbox)

        rounds = status.rounds
        emu.control("POST", f"/subscriptions/{first.id}/lifecycle", {"event": "missed"})
        await graph.rounds(mailbox, rounds + 1)
        assert keeper.stats.lifecycle == {"missed": 1}

        emu.control("POST", f"/subscriptions/{first.id}/lifecycle", {"event": "reauthorizationRequired"})
        await wait_for_async(lambda: keeper.stats.reauthorized == 1, timeout=30, what="the reauthorization")
        assert keeper.records[mailbox].id == first.id

        rounds = status.rounds
        emu.control("POST", f"/subscriptions/{first.id}/lifecycle", {"event": "subscriptionRemoved"})
        second = await wait_for_async(
            lambda: (r := keeper.records.get(mailbox)) is not None and r.id != first.id and r,
            timeout=30,
            what="a new subscription",
        )
        assert [s["id"] for s in subscriptions_of(emu, mailbox)] == [second.id]
        assert second.clientState != first.clientState
        await graph.rounds(mailbox, rounds + 1)  # what happened while unsubscribed is read by delta
        assert (keeper.stats.created, keeper.stats.lifecycle["subscriptionRemoved"]) == (2, 1)


async def test_subscriptions_are_renewed_before_they_expire(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    emu = testbed.emu
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "rita")
    # 20-second subscriptions renewed 10 s before they expire (a margin above half the lifetime is cut to half)
    tuning = dataclasses.replace(NOTIFIED, subscription_minutes=20 / 60, subscription_renew_margin_seconds=3600.0)
    async with testbed.running([notified], tuning) as graph:
        record = await graph.subscribed(mailbox)
        first_expiry = record.expires
        keeper = graph.keeper(mailbox)
        await wait_for_async(lambda: keeper.stats.renewed >= 2, timeout=60, what="two renewals")
        assert keeper.stats.renewed == 2  # once per half lifetime, not on every pass of the keeper's loop
        [sub] = subscriptions_of(emu, mailbox)
        assert sub["id"] == record.id and keeper.stats.created == 1
        renewed = dt.datetime.fromisoformat(sub["expirationDateTime"].replace("Z", "+00:00"))
        assert renewed > first_expiry


async def test_a_mailbox_that_loses_its_seat_loses_its_subscription(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    emu, seats = testbed.emu, testbed.seats
    [kept, dropped], notified = notified_mailboxes(testbed, notify_endpoint, "sasha", "tanya")
    async with testbed.running([notified], dataclasses.replace(NOTIFIED, seat_refresh_seconds=0.5)) as graph:
        await graph.subscribed(kept)
        await graph.subscribed(dropped)
        keeper = graph.keeper(dropped)
        seats.denied.add(dropped)
        # counted once the keeper is done with it: deleted at Graph, then dropped from its records and KV
        await wait_for_async(lambda: keeper.stats.deleted == 1, timeout=30, what="the subscription deleted")
        assert dropped not in keeper.records and not subscriptions_of(emu, dropped)
        assert len(subscriptions_of(emu, kept)) == 1


async def test_a_restart_keeps_using_the_subscription_it_stored(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "vera")
    async with testbed.running([notified], NOTIFIED) as graph:
        first = await graph.subscribed(mailbox)
    async with testbed.running([notified], NOTIFIED) as graph:
        again = await graph.subscribed(mailbox)
        assert (again.id, again.clientState) == (first.id, first.clientState)  # read back from KV
        await testbed.collector.start()
        created = await testbed.writer.create(mailbox, "After the restart")
        await testbed.collector.wait(
            lambda c: c.item_id == created["id"], timeout=60, what="the event, by notification"
        )
        keeper = graph.keeper(mailbox)
        assert (keeper.stats.created, keeper.stats.notifications) == (0, 1)
    assert [s["id"] for s in subscriptions_of(testbed.emu, mailbox)] == [first.id]


async def test_a_restart_that_does_not_know_the_seats_yet_keeps_the_subscription_it_stored(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    """Down longer than a seat lease, graph-ingest restarts with no seat answer to restore, and licensing answers
    late: until it does, the mailbox's seat is unknown, not refused, so its subscription is neither deleted nor made
    again. (Every restart raced the keeper's first look at its mailboxes against the seat restore from KV; when the
    keeper won, it deleted the stored subscription and made a new one.)"""
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "xenia")
    async with testbed.running([notified], NOTIFIED) as graph:
        first = await graph.subscribed(mailbox)
    await age_the_stored_seat_answer(testbed.nats_url, dt.timedelta(hours=2))
    testbed.seats.answering.clear()
    async with testbed.running([notified], NOTIFIED) as graph:
        keeper, seats = graph.keeper(mailbox), graph.runtime.seats
        # the keeper looks at every mailbox as soon as its records are loaded, before it yields again
        await wait_for_async(keeper.loaded.is_set, timeout=30, what="the stored subscriptions loaded")
        assert mailbox not in seats.granted and mailbox not in seats.refused  # its seat is not known yet
        testbed.seats.answering.set()
        again = await graph.subscribed(mailbox)
        assert (again.id, again.clientState) == (first.id, first.clientState)
        assert (keeper.stats.created, keeper.stats.deleted) == (0, 0)
    assert [s["id"] for s in subscriptions_of(testbed.emu, mailbox)] == [first.id]


async def age_the_stored_seat_answer(nats_url: str, by: dt.timedelta) -> None:
    """Make graph-ingest's stored seat answer (KV `v1.seats`) `by` older, as if it had been down that long."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(GRAPH_STATE_BUCKET)
        stored = json.loads((await kv.get(SEATS_KEY)).value or b"{}")
        stored["at"] = (dt.datetime.fromisoformat(stored["at"]) - by).isoformat()
        await kv.put(SEATS_KEY, json.dumps(stored).encode())
    finally:
        await nc.close()


async def test_without_notification_url_it_polls_as_before_and_drops_earlier_subscriptions(
    testbed: GraphTestbed, notify_endpoint: NotifyEndpoint
) -> None:
    [mailbox], notified = notified_mailboxes(testbed, notify_endpoint, "uma")
    async with testbed.running([notified], NOTIFIED) as graph:
        await graph.subscribed(mailbox)
    assert len(subscriptions_of(testbed.emu, mailbox)) == 1  # kept over a clean shutdown
    async with testbed.running([graph_provider(testbed.emu, [mailbox], name="m365")], FAST) as graph:
        assert graph.runtime.receivers == []
        await graph.rounds(mailbox)
        await wait_for_async(
            lambda: not subscriptions_of(testbed.emu, mailbox), timeout=30, what="the old subscription gone"
        )
        assert graph.keeper(mailbox).stats.deleted == 1
        assert graph.runtime.poll_seconds(graph.status(mailbox)) == FAST.poll_seconds
        await testbed.collector.start()
        created = await testbed.writer.create(mailbox, "Only polling sees me")
        await graph.poll(mailbox)
        await testbed.collector.wait(lambda c: c.item_id == created["id"], what="the polled event")
        assert graph.keeper(mailbox).stats.created == 0 and not subscriptions_of(testbed.emu, mailbox)


def test_config_explains_bad_notification_settings() -> None:
    base = {"type": "graph", "tenantId": "6b4c1b7e-0f1d-4c55-9a3e-2f4b8c0d1e2f"}
    entry = {**base, "clientId": "0c1e4f0a-1b2c-4d3e-8f90-a1b2c3d4e5f6", "clientSecret": "s", "users": []}
    with pytest.raises(ValueError, match=r"notificationUrl\n.*is not an https:// URL"):
        Config.model_validate({"calendarProviders": [{**entry, "notificationUrl": "http://hooks.example.com/graph"}]})
    config = Config.model_validate(
        {
            "calendarProviders": [
                {**entry, "name": "a", "notificationListen": {"port": 9443}},
                {
                    **entry,
                    "name": "b",
                    "notificationUrl": "https://hooks.example.com/b",
                    "notificationListen": {"port": 9444, "certFile": "/nonexistent/cert.pem"},
                },
                {**entry, "name": "c", "notificationUrl": "https://hooks.example.com/c"},
                {**entry, "name": "d", "notificationUrl": "https://hooks.example.com/d"},
            ]
        }
    )
    assert [str(p) for p in notification_problems(config)] == [
        "calendarProviders[0].notificationListen: is set but notificationUrl is not: Graph posts only to a "
        "notificationUrl (the public https:// URL that reaches this address); set it, or drop notificationListen "
        "to poll only",
        "calendarProviders[1].notificationListen.keyFile: is missing: certFile is set, HTTPS needs both",
        "calendarProviders[1].notificationListen.certFile: '/nonexistent/cert.pem' cannot be read",
        "calendarProviders[3].notificationListen.port: 0.0.0.0:8066 is already the receiver of calendarProviders[2]: "
        "give each Graph provider its own port",
    ]


def test_config_check_names_a_non_https_notification_url(tmp_path: Path) -> None:
    entry = {
        "type": "graph",
        "tenantId": "6b4c1b7e-0f1d-4c55-9a3e-2f4b8c0d1e2f",
        "clientId": "0c1e4f0a-1b2c-4d3e-8f90-a1b2c3d4e5f6",
        "clientSecret": secrets.encrypt("app-secret"),
        "users": ["wanda@contoso.test"],
        "notificationUrl": "http://hooks.example.com/graph",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"productWhitelist": {"tcs": ["video.example.com#vcs"]}, "calendarProviders": [entry]}))
    refused = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "config", "check", str(path)], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f'{path}: calendarProviders[0].notificationUrl: "http://hooks.example.com/graph" is not an https:// URL'
    ]
