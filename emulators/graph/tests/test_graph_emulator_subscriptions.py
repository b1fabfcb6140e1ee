"""Subscriptions through msgraph-sdk: the validation handshake, a change notification with clientState received by a
test HTTPS endpoint, renewal, a lifecycle notification, and a failed validation."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from graph_emulator_support import graph_client
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.subscription import Subscription

from graph_emulator.testing import EmulatorProcess, build_config, start_emulator
from graph_emulator.tls import self_signed_certificate


class Receiver:
    """An HTTPS webhook endpoint: answers validation, records notifications."""

    def __init__(self, echo_token: bool = True, fail_notifications: bool = False, answer: bool = True) -> None:
        self.answer = answer
        self.released = asyncio.Event()
        self.echo_token = echo_token
        self.fail_notifications = fail_notifications
        self.validations: list[str] = []
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append(token)
            if not self.answer:
                await self.released.wait()
            return web.Response(text=token if self.echo_token else "wrong", content_type="text/plain")
        payload = await request.json()
        if self.fail_notifications and request.path != "/lifecycle":
            return web.Response(status=503)
        for item in payload["value"]:
            await self.notifications.put(item)
        return web.Response(status=202)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("receiver-tls"))


@pytest.fixture(scope="module")
def emu(tls_files: tuple[Path, Path]) -> Iterator[EmulatorProcess]:
    subscriptions = {"ca_file": str(tls_files[0]), "retry_delays_s": [0.05, 0.05], "validation_timeout_s": 2}
    with start_emulator(build_config(extra={"subscriptions": subscriptions})) as handle:
        yield handle


async def _serve(receiver: Receiver, tls_files: tuple[Path, Path]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"https://127.0.0.1:{port}"


@pytest.fixture
async def receiver(tls_files: tuple[Path, Path]) -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver()
    runner, url = await _serve(hook, tls_files)
    yield hook, url
    await runner.cleanup()


def _expiry(minutes: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)


async def test_subscription_validates_then_notifies_with_client_state(
    emu: EmulatorProcess, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    client = graph_client(emu)
    sub = await client.subscriptions.post(
        Subscription(
            change_type="created,updated,deleted",
            notification_url=f"{url}/notify",
            lifecycle_notification_url=f"{url}/lifecycle",
            resource="users/alice@contoso.test/events",
            expiration_date_time=_expiry(60),
            client_state="s3cret-state",
        )
    )
    assert sub is not None and sub.id
    assert len(hook.validations) == 2  # notificationUrl and lifecycleNotificationUrl
    created = await client.users.by_user_id("alice@contoso.test").events.post(
        Event(
            subject="notify me",
            start=DateTimeTimeZone(date_time="2034-01-01T09:00:00", time_zone="UTC"),
            end=DateTimeTimeZone(date_time="2034-01-01T10:00:00", time_zone="UTC"),
        )
    )
    assert created is not None and created.id
    note = await asyncio.wait_for(hook.notifications.get(), 30)
    assert note["subscriptionId"] == sub.id
    assert note["clientState"] == "s3cret-state"
    assert note["changeType"] == "created"
    assert note["resourceData"]["id"] == created.id
    events = client.users.by_user_id("alice@contoso.test").events
    await events.by_event_id(created.id).patch(Event(subject="notify me again"))
    await events.by_event_id(created.id).delete()
    later = [await asyncio.wait_for(hook.notifications.get(), 30) for _ in range(2)]
    assert sorted((n["changeType"], n["resourceData"]["id"], n["clientState"]) for n in later) == [
        ("deleted", created.id, "s3cret-state"),
        ("updated", created.id, "s3cret-state"),
    ]

    renewed = await client.subscriptions.by_subscription_id(sub.id).patch(
        Subscription(expiration_date_time=_expiry(3 * 24 * 60))
    )
    assert renewed is not None and renewed.expiration_date_time is not None
    assert renewed.expiration_date_time > _expiry(2 * 24 * 60)

    emu.control("POST", f"/subscriptions/{sub.id}/lifecycle", {"event": "reauthorizationRequired"})
    lifecycle = await asyncio.wait_for(hook.notifications.get(), 30)
    assert (lifecycle["lifecycleEvent"], lifecycle["subscriptionId"], lifecycle["clientState"]) == (
        "reauthorizationRequired",
        sub.id,
        "s3cret-state",
    )


async def test_expiration_beyond_10080_minutes_is_refused(emu: EmulatorProcess, receiver: tuple[Receiver, str]) -> None:
    _, url = receiver
    client = graph_client(emu, max_retries=0)
    with pytest.raises(ODataError) as caught:
        await client.subscriptions.post(
            Subscription(
                change_type="created",
                notification_url=url,
                resource="users/bob@contoso.test/events",
                expiration_date_time=_expiry(10080 + 5),
            )
        )
    assert caught.value.response_status_code == 400


async def test_endpoint_that_does_not_echo_the_token_fails_validation(
    emu: EmulatorProcess, tls_files: tuple[Path, Path]
) -> None:
    hook = Receiver(echo_token=False)
    runner, url = await _serve(hook, tls_files)
    try:
        client = graph_client(emu, max_retries=0)
        with pytest.raises(ODataError) as caught:
            await client.subscriptions.post(
                Subscription(
                    change_type="created",
                    notification_url=url,
                    resource="users/bob@contoso.test/events",
                    expiration_date_time=_expiry(60),
                )
            )
        assert caught.value.response_status_code == 400
        assert hook.validations
    finally:
        await runner.cleanup()


async def test_undeliverable_notifications_end_in_a_missed_lifecycle_notification(
    emu: EmulatorProcess, tls_files: tuple[Path, Path]
) -> None:
    hook = Receiver(fail_notifications=True)
    runner, url = await _serve(hook, tls_files)
    try:
        client = graph_client(emu)
        sub = await client.subscriptions.post(
            Subscription(
                change_type="created",
                notification_url=f"{url}/notify",
                lifecycle_notification_url=f"{url}/lifecycle",
                resource="users/carol@contoso.test/events",
                expiration_date_time=_expiry(60),
                client_state="c",
            )
        )
        assert sub is not None and sub.id
        await client.users.by_user_id("carol@contoso.test").events.post(
            Event(
                subject="lost",
                start=DateTimeTimeZone(date_time="2034-02-01T09:00:00", time_zone="UTC"),
                end=DateTimeTimeZone(date_time="2034-02-01T10:00:00", time_zone="UTC"),
            )
        )
        missed = await asyncio.wait_for(hook.notifications.get(), 30)
        assert (missed["lifecycleEvent"], missed["subscriptionId"]) == ("missed", sub.id)
        deliveries = [d for d in emu.control("GET", "/subscriptions")["deliveries"] if d["subscriptionId"] == sub.id]
        assert [(d["attempts"], d["status"]) for d in deliveries if d["url"].endswith("/notify")] == [(3, 503)]

        emu.control("POST", f"/subscriptions/{sub.id}/lifecycle", {"event": "subscriptionRemoved"})
        removed = await asyncio.wait_for(hook.notifications.get(), 30)
        assert removed["lifecycleEvent"] == "subscriptionRemoved"
        with pytest.raises(ODataError) as caught:
            await graph_client(emu, max_retries=0).subscriptions.by_subscription_id(sub.id).get()
        assert caught.value.response_status_code == 404
    finally:
        await runner.cleanup()


async def test_endpoint_that_does_not_answer_validation_in_time_fails(
    emu: EmulatorProcess, tls_files: tuple[Path, Path]
) -> None:
    hook = Receiver(answer=False)
    runner, url = await _serve(hook, tls_files)
    try:
        client = graph_client(emu, max_retries=0)
        with pytest.raises(ODataError) as caught:
            await client.subscriptions.post(
                Subscription(
                    change_type="created",
                    notification_url=url,
                    resource="users/bob@contoso.test/events",
                    expiration_date_time=_expiry(60),
                )
            )
        assert caught.value.response_status_code == 400
        assert caught.value.error is not None and "validation" in (caught.value.error.message or "")
        assert emu.control("GET", "/subscriptions")["subscriptions"] == [] or all(
            s["notificationUrl"] != url for s in emu.control("GET", "/subscriptions")["subscriptions"]
        )
    finally:
        hook.released.set()
        await runner.cleanup()
