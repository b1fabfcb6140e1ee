"""Bad input from every side: each gets a clear error, the rest keeps working, nothing stored is lost.

One product whose gRPC admin calls need a bearer token (grpc.adminToken, encrypted with its own machine key).
Before the abuse a meeting is made; after it, that meeting is still shown and a new one flows end to end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import grpc
import pytest
import requests
from e2e_support import SEND, email, local_time, wait_until
from exchangelib import CalendarItem
from exchangelib.properties import Attendee, Mailbox
from faults_support import ADMIN_TOKEN, FaultProduct, launch
from lxml import etree

from trueconf.calendar.v1 import ingest_pb2, ingest_pb2_grpc, licensing_pb2, licensing_pb2_grpc

MAX_FRAME = 1_048_576


@pytest.fixture(scope="module")
def guarded() -> Iterator[FaultProduct]:
    with launch(admin_token=ADMIN_TOKEN) as running:
        before = meeting(running, "alice", "Abuse: stored before", "bob", days=4)
        running.product.wait_events("bob", "Abuse: stored before", lambda f: f[0]["conference"] is not None)
        yield running
        # nothing stored is lost, and a normal meeting still flows after all the abuse
        (kept,) = running.product.wait_events("bob", "Abuse: stored before")
        assert kept["cancelled"] is False and kept["conference"] is not None, kept
        assert before.subject == kept["subject"]
        meeting(running, "carol", "Abuse: flows afterwards", "alice", days=5)
        running.product.wait_events("alice", "Abuse: flows afterwards", lambda f: f[0]["conference"] is not None)


def meeting(fp: FaultProduct, organizer: str, subject: str, attendee: str, days: int = 3, **fields: Any) -> Any:
    account = fp.product.account(organizer)
    start = fields.pop("start", local_time(days, 11))
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject=subject,
        start=start,
        end=fields.pop("end", start + timedelta(minutes=30)),
        location=fields.pop("location", "@trueconf"),
        required_attendees=[Attendee(mailbox=Mailbox(email_address=email(attendee)))],
        **fields,
    )
    item.save(send_meeting_invitations=SEND)
    return item


def env_of(fp: FaultProduct, **extra: str) -> dict[str, str]:
    return {**fp.env(), **extra}


# --- raw EWS, as a client other than exchangelib writes it -------------------------------------------------------
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ews_soap(fp: FaultProduct, mailbox: str, body: str) -> etree._Element:
    """POST one SOAP request to the product's Exchange as the impersonating service account (Basic auth)."""
    exchange = fp.ready["exchange"]
    account = exchange["service_account"]
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="{M_NS}" xmlns:t="{T_NS}">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/>'
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{email(mailbox)}</t:PrimarySmtpAddress>"
        f"</t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
    response = requests.post(
        exchange["ews_url"],
        data=envelope.encode(),
        auth=(account["username"], account["password"]),
        headers={"Content-Type": "text/xml; charset=utf-8"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:2000]
    return etree.fromstring(response.content)


def calendar_item_xml(
    subject: str, attendee: str, start: datetime, minutes: int = 30, recurrence: str = "", time_zone: str = ""
) -> str:
    """A t:CalendarItem in schema order. `time_zone` is a TimeZoneDefinition written as <TZ ...>...</TZ>: it becomes
    both StartTimeZone and EndTimeZone."""
    begin = datetime.fromtimestamp(start.timestamp(), UTC)  # also for exchangelib's EWSDateTime
    end = begin + timedelta(minutes=minutes)
    zones = (
        "".join(
            time_zone.replace("<TZ", f"<t:{tag}TimeZone").replace("</TZ>", f"</t:{tag}TimeZone>")
            for tag in ("Start", "End")
        )
        if time_zone
        else ""
    )
    return (
        f'<t:CalendarItem xmlns:t="{T_NS}"><t:Subject>{subject}</t:Subject>'
        f"<t:Start>{begin:%Y-%m-%dT%H:%M:%SZ}</t:Start><t:End>{end:%Y-%m-%dT%H:%M:%SZ}</t:End>"
        "<t:Location>@trueconf</t:Location>"
        f"<t:RequiredAttendees><t:Attendee><t:Mailbox><t:EmailAddress>{email(attendee)}</t:EmailAddress>"
        "</t:Mailbox></t:Attendee></t:RequiredAttendees>"
        + (f"<t:Recurrence>{recurrence}</t:Recurrence>" if recurrence else "")
        + zones
        + "</t:CalendarItem>"
    )


def create_raw(fp: FaultProduct, organizer: str, item_xml: str) -> etree._Element:
    """CreateItem (SendToAllAndSaveCopy) with a hand-written CalendarItem; the ResponseMessage."""
    root = ews_soap(
        fp,
        organizer,
        '<m:CreateItem SendMeetingInvitations="SendToAllAndSaveCopy"><m:SavedItemFolderId>'
        f'<t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items>{item_xml}</m:Items></m:CreateItem>',
    )
    (message,) = root.iter(f"{{{M_NS}}}CreateItemResponseMessage")
    return message


def response_code(message: etree._Element) -> str:
    return str(message.findtext(f"{{{M_NS}}}ResponseCode"))


def seed_raw_item(
    fp: FaultProduct, organizer: str, subject: str, attendee: str, start: datetime, recurrence: str
) -> dict[str, Any]:
    """Store an item past CreateItem's checks (emulator admin API): what a broken server could hand out."""
    item_xml = calendar_item_xml(subject, attendee, start, recurrence=recurrence)
    result: dict[str, Any] = fp.exchange_admin(
        "POST", f"/mailboxes/{email(organizer)}/items", {"calendar_item": item_xml}
    )
    return result


# --- gRPC ---------------------------------------------------------------------------------------------------
def test_grpc_admin_calls_without_token_are_refused(guarded: FaultProduct) -> None:
    product = guarded.product
    with product.channel("ews-ingest", authorized=False) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", ADMIN_TOKEN),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ResyncMailbox(
                    ingest_pb2.ResyncMailboxRequest(mailbox=email("alice")), metadata=metadata, timeout=10
                )
            assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            assert "adminToken" in (refused.value.details() or ""), refused.value.details()
        stub.ResyncMailbox(
            ingest_pb2.ResyncMailboxRequest(mailbox=email("alice")),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=30,
        )
        # queries reveal mailboxes and their errors: they take the token too (issue #17)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListMailboxes(ingest_pb2.ListMailboxesRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        assert stub.ListMailboxes(ingest_pb2.ListMailboxesRequest(), metadata=admin, timeout=10).mailboxes
    with product.channel("licensing", authorized=False) as channel:
        licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
        before = licensing.GetLicense(licensing_pb2.GetLicenseRequest(), metadata=admin, timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            licensing.RegisterOnline(licensing_pb2.RegisterOnlineRequest(key="FREE-ANYTHING"), timeout=10)
        assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        after = licensing.GetLicense(licensing_pb2.GetLicenseRequest(), metadata=admin, timeout=10)
        assert (after.tier, after.seats) == (before.tier, before.seats), "the refused call changed the license"


# --- the calendar bridge ------------------------------------------------------------------------------------
async def bridge_client(url: str, frames: list[Any]) -> tuple[int | None, list[Any], bool]:
    """Connect as a would-be TrueConf Server, send `frames`, collect replies until the gateway closes (≤ 15 s).

    Returns the close code, the replies and whether sending broke off: the gateway refuses an oversized frame while
    reading its header and closes at once, so the client may still be writing it; the reset that follows can take
    the close frame with it (1006)."""
    replies: list[Any] = []
    broken = False
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        try:
            for frame in frames:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
        except (ConnectionError, aiohttp.ClientError):
            broken = True  # the gateway closed while a frame was still being written: its close may still be read
        try:
            async with asyncio.timeout(15):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        replies.append(json.loads(message.data))
        except TimeoutError:
            return None, replies, broken
        return ws.close_code, replies, broken


def auth(server_id: str, secret: str) -> dict[str, Any]:
    payload = {"serverId": server_id, "secret": secret, "protocolVersion": 1, "serverVersion": "5.5.3"}
    return {"type": 1, "id": 1, "method": "auth", "payload": payload}


def test_bridge_refuses_malformed_oversized_and_foreign_clients(guarded: FaultProduct) -> None:
    url = guarded.ready["services"]["tcs-gateway"]["ws"]
    server_id = guarded.ready["trueconf"]["server_id"]
    real_secret = (guarded.state_dir / "secrets" / "bridge-secret").read_text().strip()
    cases: list[tuple[str, list[Any], set[int]]] = [
        ("not whitelisted", [auth("rogue.example.test#vcs", real_secret)], {4003}),
        ("wrong secret", [auth(server_id, "not-the-secret")], {4001}),
        ("binary frame", [b"\x00\xff" * 100], {1003}),
        ("oversized frame", ["x" * (MAX_FRAME + 1024)], {4009}),
        ("never authenticates", ["{not json", json.dumps([1, 2, 3])], {4008}),
    ]
    for name, frames, codes in cases:
        for _attempt in range(5):  # again only when the write broke off and the reset took the close frame with it
            code, replies, broken = asyncio.run(bridge_client(url, frames))
            if not (broken and code == 1006):
                break
        assert code in codes, f"{name}: closed with {code}, expected {codes}; replies {replies}"
        if name == "never authenticates":
            assert [r["payload"]["errorCode"] for r in replies][:2] == [1, 1], replies
    bridge = guarded.bridge()
    assert bridge["state"] == "connected" and bridge["authenticated_connections"] >= 1
    assert "rogue.example.test#vcs" not in json.dumps(bridge.get("users", []))


# --- bad calendar data through EWS ---------------------------------------------------------------------------
@contextmanager
def client_checks_lifted() -> Iterator[None]:
    """exchangelib refuses these values before sending; a less careful EWS client would not (xs:int in the schema)."""
    from exchangelib.recurrence import DailyPattern, EndDatePattern, NumberedPattern

    number = NumberedPattern.get_field_by_fieldname("number")
    interval = DailyPattern.get_field_by_fieldname("interval")
    saved = (number.max, interval.min, EndDatePattern.clean)
    number.max, interval.min = None, None
    EndDatePattern.clean = lambda self, version=None: None
    try:
        yield
    finally:
        number.max, interval.min, EndDatePattern.clean = saved


def test_absurd_recurrences(guarded: FaultProduct) -> None:
    """Exchange refuses interval 0 and an end before the start (ErrorCalendarInvalidRecurrence); a count of 10^9 it
    takes, and the engine caps it. Served anyway (a broken or third-party server), the engine shows the first
    occurrence, logs the bad value, and the mailbox keeps flowing."""
    from exchangelib.errors import ErrorCalendarInvalidRecurrence
    from exchangelib.recurrence import DailyPattern, Recurrence

    product = guarded.product
    start = local_time(3, 8)
    cases: dict[str, Callable[[], Any]] = {
        "count 1e9": lambda: Recurrence(pattern=DailyPattern(interval=1), start=start.date(), number=10**9),
        "interval 0": lambda: Recurrence(pattern=DailyPattern(interval=0), start=start.date(), number=3),
        "end before start": lambda: Recurrence(
            pattern=DailyPattern(interval=1), start=start.date(), end=start.date() - timedelta(days=30)
        ),
    }
    refused: dict[str, Exception] = {}
    with client_checks_lifted():
        meeting(guarded, "alice", "Abuse: count 1e9", "bob", start=start, recurrence=cases["count 1e9"]())
        for label in ("interval 0", "end before start"):
            with pytest.raises(ErrorCalendarInvalidRecurrence) as error:
                meeting(guarded, "alice", f"Abuse: {label}", "bob", start=start, recurrence=cases[label]())
            refused[label] = error.value
    assert "Interval" in str(refused["interval 0"]) and "'0'" in str(refused["interval 0"]), refused
    assert (start.date() - timedelta(days=30)).isoformat() in str(refused["end before start"]), refused
    # sync-engine caps a series at 10,000 occurrences and logs "recurrence cannot be expanded" naming the value
    (capped,) = product.wait_events("bob", "Abuse: count 1e9", timeout=120)
    assert instant(capped["start"]) == start, capped
    wait_until(lambda: "1000000000" in product.log("sync-engine"), 60, "the engine naming the count of 10^9")

    # The same values served by a server that does not check them: stored past CreateItem's validation.
    day = start.date().isoformat()
    before = (start.date() - timedelta(days=30)).isoformat()
    seeded = {
        "Abuse: served interval 0": "<t:DailyRecurrence><t:Interval>0</t:Interval></t:DailyRecurrence>"
        f"<t:NumberedRecurrence><t:StartDate>{day}</t:StartDate><t:NumberOfOccurrences>3</t:NumberOfOccurrences>"
        "</t:NumberedRecurrence>",
        "Abuse: served end before start": "<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence>"
        f"<t:EndDateRecurrence><t:StartDate>{day}</t:StartDate><t:EndDate>{before}</t:EndDate>"
        "</t:EndDateRecurrence>",
    }
    for subject, recurrence in seeded.items():
        seed_raw_item(guarded, "alice", subject, "bob", start, recurrence=recurrence)
    meeting(guarded, "alice", "Abuse: after the served recurrences", "bob", start=start + timedelta(hours=3))
    product.wait_events("bob", "Abuse: after the served recurrences", timeout=90)
    for subject in seeded:
        # the first occurrence, everything else intact (its @trueconf conference too)
        (shown,) = product.wait_events("bob", subject, lambda f: f[0]["conference"] is not None, timeout=60)
        assert instant(shown["start"]) == start and shown["cancelled"] is False, shown
    engine = product.log("sync-engine")
    assert "interval must be at least 1, got 0" in engine, "the engine did not name interval 0"
    assert f"end_date {before} is before start_date {day}" in engine, "the engine did not name the end date"
    assert "Traceback" not in engine and "Traceback" not in product.log("ews-ingest")
    for subject in seeded:  # shown once, not re-published in a loop
        assert len(product.events("bob", subject)) == 1


# Time zone definitions as Outlook writes a "Customized Time Zone": (IANA zone with the same rules, definition).
DstRule = tuple[int, str, int, str]  # Month, DayOfWeek, Occurrence, TimeOffset (local time before the switch)
DST_RULES: dict[str, tuple[int, int, DstRule, DstRule]] = {  # bias minutes standard/daylight, to daylight, to standard
    "Europe/Berlin": (-60, -120, (3, "Sunday", -1, "PT2H"), (10, "Sunday", -1, "PT3H")),
    "America/New_York": (300, 240, (3, "Sunday", 2, "PT2H"), (11, "Sunday", 1, "PT2H")),
    "Australia/Sydney": (-600, -660, (10, "Sunday", 1, "PT2H"), (4, "Sunday", 1, "PT3H")),
    "Pacific/Auckland": (-720, -780, (9, "Sunday", -1, "PT2H"), (4, "Sunday", 1, "PT3H")),
}


def tz_definition(tz_id: str, bias: int, daylight: tuple[int, DstRule, DstRule] | None = None) -> str:
    """A full TimeZoneDefinition (the caller's tag is TZ); biases in minutes, as EWS writes them (-offset)."""

    def duration(minutes: int) -> str:
        return f"{'-' if minutes < 0 else ''}PT{abs(minutes)}M"

    def rule(to: str, r: DstRule) -> str:
        return (
            f'<t:RecurringDayTransition><t:To Kind="Period">{to}</t:To><t:TimeOffset>{r[3]}</t:TimeOffset>'
            f"<t:Month>{r[0]}</t:Month><t:DayOfWeek>{r[1]}</t:DayOfWeek><t:Occurrence>{r[2]}</t:Occurrence>"
            "</t:RecurringDayTransition>"
        )

    std, dst = f"trule:Custom/{tz_id}/Standard", f"trule:Custom/{tz_id}/Daylight"
    periods = f'<t:Period Bias="{duration(bias)}" Name="Standard" Id="{std}"/>'
    group = f'<t:Transition><t:To Kind="Period">{std}</t:To></t:Transition>'
    if daylight is not None:
        periods += f'<t:Period Bias="{duration(daylight[0])}" Name="Daylight" Id="{dst}"/>'
        group = rule(dst, daylight[1]) + rule(std, daylight[2])
    return (
        f'<TZ Id="{tz_id}" Name="({tz_id})"><t:Periods>{periods}</t:Periods><t:TransitionsGroups>'
        f'<t:TransitionsGroup Id="0">{group}</t:TransitionsGroup></t:TransitionsGroups>'
        '<t:Transitions><t:Transition><t:To Kind="Group">0</t:To></t:Transition></t:Transitions></TZ>'
    )


def next_switch(zone: ZoneInfo, today: date) -> date | None:
    """The first day in [today - 21 d, today + 60 d] on which `zone` changes its offset: a weekly series from a week
    before it to three weeks after lies inside the cache window (1 month back, 3 ahead)."""
    for offset in range(-21, 61):
        day = today + timedelta(days=offset)
        noon = datetime.combine(day, time(12), zone)
        if noon.utcoffset() != datetime.combine(day - timedelta(days=1), time(12), zone).utcoffset():
            return day
    return None


def test_unknown_time_zone_is_refused_and_custom_definitions_are_shown_at_their_instants(guarded: FaultProduct) -> None:
    product = guarded.product
    # (a) an id Exchange does not know, without a definition: ErrorTimeZone, naming the id
    unknown = '<TZ Id="Mars Standard Time"/>'
    refused = create_raw(
        guarded, "alice", calendar_item_xml("Abuse: Mars time", "bob", local_time(4, 9), time_zone=unknown)
    )
    assert response_code(refused) == "ErrorTimeZone", etree.tostring(refused).decode()
    assert "Mars Standard Time" in str(refused.findtext(f"{{{M_NS}}}MessageText")), etree.tostring(refused).decode()

    # (b) custom definitions Exchange accepts and hands out. A fixed +05:30 zone, 02:00 local = the day before in UTC.
    india = ZoneInfo("Asia/Kolkata")
    single_start = datetime.combine(datetime.now(india).date() + timedelta(days=4), time(2), india)
    single = calendar_item_xml(
        "Abuse: custom zone single", "bob", single_start, time_zone=tz_definition("Customized Time Zone", -330)
    )
    assert response_code(create_raw(guarded, "alice", single)) == "NoError"

    # A weekly series in a custom copy of a DST zone whose switch falls inside the series (when one is near),
    # at a local time on another UTC date: expanded in UTC it would land on the wrong weekday and hour.
    today = datetime.now(UTC).date()
    reference = next((name for name in DST_RULES if next_switch(ZoneInfo(name), today)), "Europe/Berlin")
    zone = ZoneInfo(reference)
    switch = next_switch(zone, today)
    first_day = switch - timedelta(days=7) if switch else today + timedelta(days=3)
    std_bias, dst_bias, to_dst, to_std = DST_RULES[reference]
    local_at = time(0, 30) if std_bias < 0 else time(23, 30)
    series_start = datetime.combine(first_day, local_at, zone)
    weekly = (
        f"<t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>{first_day:%A}</t:DaysOfWeek>"
        f"</t:WeeklyRecurrence><t:NumberedRecurrence><t:StartDate>{first_day.isoformat()}</t:StartDate>"
        "<t:NumberOfOccurrences>5</t:NumberOfOccurrences></t:NumberedRecurrence>"
    )
    custom = tz_definition("Customized Time Zone", std_bias, (dst_bias, to_dst, to_std))
    series = calendar_item_xml("Abuse: custom zone weekly", "bob", series_start, recurrence=weekly, time_zone=custom)
    assert response_code(create_raw(guarded, "alice", series)) == "NoError"

    # A definition whose DST rule no IANA zone has: the standard offset, a WARNING naming the id, the meeting shown.
    odd = tz_definition("Odd Custom Time", -60, (-120, (2, "Tuesday", 1, "PT4H"), (9, "Friday", 2, "PT1H")))
    odd_start = local_time(5, 10)
    odd_series = (
        f"<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence><t:NumberedRecurrence><t:StartDate>"
        f"{odd_start.date().isoformat()}</t:StartDate><t:NumberOfOccurrences>3</t:NumberOfOccurrences>"
        "</t:NumberedRecurrence>"
    )
    odd_item = calendar_item_xml("Abuse: odd custom zone", "bob", odd_start, recurrence=odd_series, time_zone=odd)
    assert response_code(create_raw(guarded, "alice", odd_item)) == "NoError"
    meeting(guarded, "alice", "Abuse: after the custom zones", "bob", days=6)

    product.wait_events("bob", "Abuse: after the custom zones", timeout=90)
    (shown,) = product.wait_events("bob", "Abuse: custom zone single", timeout=60)
    assert instant(shown["start"]) == single_start, (shown["start"], single_start.astimezone(UTC))
    assert instant(shown["end"]) == single_start + timedelta(minutes=30)
    expected = {datetime.combine(first_day + timedelta(weeks=k), local_at, zone).astimezone(UTC) for k in range(5)}
    occurrences = product.wait_events("bob", "Abuse: custom zone weekly", lambda f: len(f) >= 4, timeout=60)
    starts = {instant(e["start"]) for e in occurrences}
    assert starts <= expected, f"{reference} rules: shown {sorted(starts)}, expected {sorted(expected)}"
    if switch is not None:  # both sides of the DST switch are shown at their own UTC offsets
        offsets = {s.astimezone(zone).utcoffset() for s in starts}
        assert len(offsets) == 2, f"{reference}: the series did not cross the switch of {switch}: {sorted(starts)}"
    odd_shown = product.wait_events("bob", "Abuse: odd custom zone", lambda f: len(f) == 3, timeout=60)
    assert min(instant(e["start"]) for e in odd_shown) == odd_start
    log = product.log("ews-ingest")
    assert "Odd Custom Time" in log and "cannot be interpreted" in log, "no warning naming the odd time zone"
    assert "Traceback" not in log


def test_malformed_and_schema_invalid_ews_answers_are_retried_and_nothing_is_lost(guarded: FaultProduct) -> None:
    """Exchange (or what stands in front of it) answers garbage for one mailbox: an error naming the mailbox, retries
    with back-off, the other mailboxes keep flowing, and the item arrives once the answers are sound again."""
    product = guarded.product
    bad = {"carol": ("malformed_xml", "GetItem"), "erin": ("schema_invalid", "SyncFolderItems")}
    rules = [
        guarded.exchange_admin("POST", "/faults", {"kind": kind, "operation": op, "mailbox": email(who), "count": 3})
        for who, (kind, op) in bad.items()
    ]
    for who, (kind, op) in bad.items():  # alone in the meeting: it can only arrive through the broken mailbox
        meeting(guarded, who, f"Abuse: behind {kind} {op}", who, days=7)
    meeting(guarded, "bob", "Abuse: beside the bad answers", "alice", days=7)
    product.wait_events("alice", "Abuse: beside the bad answers", timeout=60)

    def served() -> bool:
        remaining = {rule["id"] for rule in guarded.exchange_admin("GET", "/faults")}
        return not any(rule["id"] in remaining for rule in rules)

    wait_until(served, 180, "every injected bad answer to be served")
    for who, (kind, op) in bad.items():
        product.wait_events(who, f"Abuse: behind {kind} {op}", timeout=180)
    log = product.log("ews-ingest").splitlines()
    for who in bad:
        # each bad answer failed a sync (or a pooled EWS call) of that mailbox, logged with the mailbox and cause
        failures = [
            line
            for line in log
            if email(who) in line and ("failed to getCalendarList" in line or "EWS call failed, retrying" in line)
        ]
        assert len(failures) >= 2, f"{who}: bad answers not reported and retried: {failures}"
        # ... and named for what they are: an unreadable answer of the operation that got it
        kind, op = bad[who]
        clear = [line for line in failures if "GetItem answered" in line or f"{op}: unreadable EWS response" in line]
        assert clear, f"{who}: the {kind} {op} answer is not named as such: {failures}"
    assert not any("Traceback" in line for line in log)


def test_huge_body_is_shown_and_does_not_block_the_mailbox() -> None:
    with launch() as fresh:
        huge = "Agenda " + "lorem ipsum " * 200_000  # ~2.4 MB plain-text body
        meeting(fresh, "bob", "Abuse: huge body", "carol", body=huge)
        meeting(fresh, "bob", "Abuse: after the huge body", "carol")
        fresh.product.wait_events("carol", "Abuse: after the huge body", timeout=60)
        (big,) = fresh.product.wait_events("carol", "Abuse: huge body", timeout=30)
        assert big["body"].startswith("Agenda lorem ipsum")


# --- configuration and licenses ------------------------------------------------------------------------------
def test_config_with_every_key_wrong_is_refused_naming_keys(guarded: FaultProduct, tmp_path: Path) -> None:
    bad = {
        "wsPort": "four-three-one-five",
        "dbConnectionConfig": {"host": 5, "port": -1, "user": [], "database": {}},
        "launchConference": "yes",
        "syncConferenceParticipants": 3,
        "temporalConfParticipantsMode": "no",
        "cache": {"autoSync": "sometimes", "backward": -4, "forward": "many"},
        "productWhitelist": {"tcs": "not-a-list"},
        "calendarProviders": [{"host": 7, "port": "x", "type": "gmail", "credentials": "none", "users": 5}],
        "nats": {"url": 12},
        "grpc": {"adminToken": 5},
        "telemetry": {"logLevel": "LOUD"},
        "noSuchKey": True,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(bad))
    result = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env=env_of(guarded),
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for key in ("wsPort", "launchConference", "cache", "productWhitelist"):
        assert key in output, f"{key} not named in: {output}"
    assert "four-three-one-five" in output, output


def test_tampered_license_is_refused_and_the_license_in_force_stays(guarded: FaultProduct) -> None:
    from licensing.offline import OfflineResponse
    from registration_emulator.offline import write_response
    from tccal_sandbox.embedded import free_port

    work = guarded.state_dir / "tamper"
    work.mkdir()
    registration = str(guarded.state_dir / "registration")
    authority = [sys.executable, "-m", "registration_emulator", "--state-dir", registration]
    key = subprocess.run(
        [*authority, "issue-key", "--tier", "standard", "--seats", "20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    unreachable = env_of(guarded, TC_CALENDAR__LICENSE__REGISTRATIONURL=f"http://127.0.0.1:{free_port()}")
    cli = [sys.executable, "-m", "tccal.cli"]
    asked = subprocess.run([*cli, "--register", key], capture_output=True, text=True, env=unreachable, cwd=work)
    assert asked.returncode != 0 and (work / "regoffline.crg").exists(), asked.stderr
    subprocess.run(
        [*authority, "sign-offline", str(work / "regoffline.crg"), "-o", str(work / "regoffline2.crg")],
        capture_output=True,
        text=True,
        check=True,
    )
    response = OfflineResponse.decode((work / "regoffline2.crg").read_bytes())
    envelope: dict[str, Any] = json.loads(json.dumps(response.envelope))
    envelope["license"]["seats"] = 100000
    (work / "tampered.crg").write_bytes(write_response(response.request_id, envelope))
    with guarded.product.channel("licensing") as channel:
        before = licensing_pb2_grpc.LicensingServiceStub(channel).GetLicense(licensing_pb2.GetLicenseRequest())
    refused = subprocess.run(
        [*cli, "--offline_reg", "tampered.crg"], capture_output=True, text=True, env=unreachable, cwd=work, timeout=60
    )
    assert refused.returncode != 0 and "modified after the authority signed it" in refused.stderr, refused.stderr
    with guarded.product.channel("licensing") as channel:
        after = licensing_pb2_grpc.LicensingServiceStub(channel).GetLicense(licensing_pb2.GetLicenseRequest())
    assert (after.tier, after.seats, after.license_id) == (before.tier, before.seats, before.license_id)
