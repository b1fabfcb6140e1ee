"""Custom TimeZoneDefinitions (Outlook's "Customized Time Zone") in EWS items become the IANA zone with their rules."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from exchangelib import CalendarItem
from lxml import etree

from ews_ingest.conference_marker import MarkerParser, register_marker_property
from ews_ingest.normalize import normalize
from ews_ingest.normalize_tz import (
    DefinedZone,
    TimeZoneDefinitionError,
    YearlyRule,
    fixed_offset_zone,
    parse_definition,
    resolve_definition,
)
from exchange_emulator.schema import SchemaValidator
from tccal.config.schema import ConferenceDefaults

FIXTURES = Path(__file__).parent / "fixtures"
SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
TYPES = "{http://schemas.microsoft.com/exchange/services/2006/types}"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
MARKER = MarkerParser(frozenset({"video.example.com"}), ConferenceDefaults.model_validate({}))


def master_with_zone(replace: Any) -> Any:
    """The recurring-master fixture (Pacific time, 09:00 weekly) with its StartTimeZone/EndTimeZone rewritten."""
    text = (FIXTURES / "getitem_recurring_master.xml").read_text()
    text = replace(text)
    root = etree.fromstring(text.encode())
    response = root.find(f"{SOAP}Body")[0]  # type: ignore[index]
    assert SchemaValidator().errors(response) == [], "the rewritten fixture is not schema-valid EWS"
    register_marker_property()
    (item,) = [CalendarItem.from_xml(elem=e, account=None) for e in response.iter(f"{TYPES}CalendarItem")]
    return item


def definition(tz_id: str, bias: str, daylight: str | None = None, rules: str = "") -> Any:
    periods = f'<t:Period Bias="{bias}" Name="Standard" Id="S"/>'
    group = '<t:Transition><t:To Kind="Period">S</t:To></t:Transition>'
    if daylight is not None:
        periods += f'<t:Period Bias="{daylight}" Name="Daylight" Id="D"/>'
        group = rules
    return etree.fromstring(
        f'<t:StartTimeZone xmlns:t="{T_NS}" Id="{tz_id}"><t:Periods>{periods}</t:Periods><t:TransitionsGroups>'
        f'<t:TransitionsGroup Id="0">{group}</t:TransitionsGroup></t:TransitionsGroups><t:Transitions>'
        '<t:Transition><t:To Kind="Group">0</t:To></t:Transition></t:Transitions></t:StartTimeZone>'
    )


def rule(to: str, month: int, day: str, occurrence: int, offset: str) -> str:
    return (
        f'<t:RecurringDayTransition><t:To Kind="Period">{to}</t:To><t:TimeOffset>{offset}</t:TimeOffset>'
        f"<t:Month>{month}</t:Month><t:DayOfWeek>{day}</t:DayOfWeek><t:Occurrence>{occurrence}</t:Occurrence>"
        "</t:RecurringDayTransition>"
    )


def test_customized_time_zone_of_an_item_becomes_the_iana_zone_with_its_rules() -> None:
    item = master_with_zone(
        lambda text: re.sub(
            r'(<t:(?:Start|End)TimeZone) Id="Pacific Standard Time"', r'\1 Id="Customized Time Zone"', text
        )
    )
    event = normalize(item, marker=MARKER)
    assert (event.time_zone, event.windows_time_zone) == ("America/Los_Angeles", "Customized Time Zone")
    # 09:00 local before the US switch of 8 March 2026 is 17:00 UTC (EWS Start is UTC either way)
    assert event.start.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 3, 2, 17, 0, tzinfo=dt.UTC)


def test_an_unknown_id_without_definition_keeps_the_item_in_utc_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ews_ingest")
    item = master_with_zone(
        lambda text: re.sub(
            r"<t:(Start|End)TimeZone Id=\"Pacific Standard Time\".*?</t:\1TimeZone>",
            r'<t:\1TimeZone Id="Mars Standard Time"/>',
            text,
            flags=re.S,
        )
    )
    event = normalize(item, marker=MARKER)  # never dropped
    assert (event.time_zone, event.windows_time_zone) == ("UTC", "Mars Standard Time")
    assert event.start.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 3, 2, 17, 0, tzinfo=dt.UTC)
    assert any("'Mars Standard Time'" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize(
    ("bias", "daylight", "rules", "expected"),
    [
        ("-PT60M", "-PT120M", rule("D", 3, "Sunday", -1, "PT2H") + rule("S", 10, "Sunday", -1, "PT3H"), "Europe/"),
        ("-P0DT10H0M0.0S", "-PT11H", rule("D", 10, "Sunday", 1, "PT2H") + rule("S", 4, "Sunday", 1, "PT3H"), "Aus"),
        ("PT5H", None, "", "Etc/GMT+5"),
        ("-PT5H30M", None, "", "Asia/"),
        ("PT0M", None, "", "UTC"),
    ],
)
def test_definitions_map_to_a_zone_with_the_same_offsets(
    bias: str, daylight: str | None, rules: str, expected: str
) -> None:
    node = definition("Customized Time Zone", bias, daylight, rules)
    zone = resolve_definition(node)
    assert zone.key.startswith(expected), zone.key
    assert zone.ms_id == "Customized Time Zone"
    defined = parse_definition(node)
    for month in range(1, 13):
        for year in (2025, 2026, 2027):
            instant = dt.datetime(year, month, 3, 12, tzinfo=dt.UTC)
            assert instant.astimezone(ZoneInfo(zone.key)).utcoffset() == defined.offset_at(instant), (year, month)


def test_an_uninterpretable_definition_falls_back_to_its_fixed_offset_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ews_ingest")
    odd = rule("D", 2, "Tuesday", 1, "PT4H") + rule("S", 9, "Friday", 2, "PT1H")  # no IANA zone has this rule
    zone = resolve_definition(definition("Odd Custom Time", "-PT1H", "-PT2H", odd))
    assert zone.key == "Etc/GMT-1"
    broken = resolve_definition(definition("Broken Custom Time", "-PT3H", "-PT4H", rule("D", 13, "Sunday", 1, "PT2H")))
    assert broken.key == "Etc/GMT-3"  # two transitions expected, one given: the standard offset
    garbage = resolve_definition(definition("Garbage Time", "three hours"))
    assert garbage.key == "UTC"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for tz_id in ("'Odd Custom Time'", "'Broken Custom Time'", "'Garbage Time'"):
        assert any(tz_id in m and "cannot be interpreted" in m for m in messages), (tz_id, messages)
    assert any("'three hours' is not an xs:duration" in m for m in messages), messages


def test_parse_errors_name_the_bad_value() -> None:
    bad_month = rule("D", 13, "Sunday", 1, "PT2H") + rule("S", 10, "Sunday", -1, "PT3H")
    with pytest.raises(TimeZoneDefinitionError, match="Month '13'"):
        parse_definition(definition("X", "-PT1H", "-PT2H", bad_month))
    bad_day = rule("D", 3, "Caturday", 1, "PT2H") + rule("S", 10, "Sunday", -1, "PT3H")
    with pytest.raises(TimeZoneDefinitionError, match="'Caturday'"):
        parse_definition(definition("X", "-PT1H", "-PT2H", bad_day))
    bad_target = rule("Q", 3, "Sunday", 1, "PT2H") + rule("S", 10, "Sunday", -1, "PT3H")
    with pytest.raises(TimeZoneDefinitionError, match="unknown Period 'Q'"):
        parse_definition(definition("X", "-PT1H", "-PT2H", bad_target))


def test_southern_hemisphere_daylight_spans_the_new_year() -> None:
    zone = DefinedZone(
        "Custom Sydney",
        dt.timedelta(hours=10),
        dt.timedelta(hours=11),
        YearlyRule(10, 6, 1, dt.timedelta(hours=2)),
        YearlyRule(4, 6, 1, dt.timedelta(hours=3)),
    )
    assert zone.offset_at(dt.datetime(2027, 1, 10, tzinfo=dt.UTC)) == dt.timedelta(hours=11)
    assert zone.offset_at(dt.datetime(2027, 6, 10, tzinfo=dt.UTC)) == dt.timedelta(hours=10)
    # 5 October 2026, 02:00 local standard time = 4 October 16:00 UTC
    assert zone.offset_at(dt.datetime(2026, 10, 3, 15, 59, tzinfo=dt.UTC)) == dt.timedelta(hours=10)
    assert zone.offset_at(dt.datetime(2026, 10, 3, 16, 1, tzinfo=dt.UTC)) == dt.timedelta(hours=11)
    assert fixed_offset_zone(dt.timedelta(hours=5, minutes=45)) is not None
