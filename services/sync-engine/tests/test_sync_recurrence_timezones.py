"""Windows time-zone ids (as Exchange gives them) resolved to IANA zones (docs/architecture.md §5.3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tzlocal.windows_tz import win_tz

from sync_engine.timezones import UnknownTimeZoneError, resolve_zone, windows_to_iana

COMMON_EXCHANGE_IDS = [
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Russian Standard Time", "Europe/Moscow"),
    ("Eastern Standard Time", "America/New_York"),
    ("UTC", "Etc/UTC"),
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("Central Standard Time", "America/Chicago"),
    ("Mountain Standard Time", "America/Denver"),
    ("GMT Standard Time", "Europe/London"),
    ("Romance Standard Time", "Europe/Paris"),
    ("Central European Standard Time", "Europe/Warsaw"),
    ("Ekaterinburg Standard Time", "Asia/Yekaterinburg"),
    ("China Standard Time", "Asia/Shanghai"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
    ("tzone://Microsoft/Utc", "Etc/UTC"),
]


@pytest.mark.parametrize(("windows_id", "iana"), COMMON_EXCHANGE_IDS)
def test_common_exchange_ids_map_to_their_iana_zone(windows_id: str, iana: str) -> None:
    assert windows_to_iana(windows_id) == iana
    assert resolve_zone(windows_id).key == iana


@pytest.mark.parametrize(
    ("name", "winter_offset", "summer_offset"),
    [
        ("W. Europe Standard Time", 1, 2),
        ("Eastern Standard Time", -5, -4),
        ("Russian Standard Time", 3, 3),
        ("India Standard Time", 5.5, 5.5),
        ("AUS Eastern Standard Time", 11, 10),  # southern hemisphere: DST in January
        ("UTC", 0, 0),
    ],
)
def test_resolved_zones_have_the_expected_offsets(name: str, winter_offset: float, summer_offset: float) -> None:
    zone = resolve_zone(name)
    january = datetime(2025, 1, 15, 12, tzinfo=UTC).astimezone(zone)
    july = datetime(2025, 7, 15, 12, tzinfo=UTC).astimezone(zone)
    assert january.utcoffset() == timedelta(hours=winter_offset)
    assert july.utcoffset() == timedelta(hours=summer_offset)


@pytest.mark.parametrize("name", ["Europe/Berlin", "America/New_York", "Europe/Moscow", "Asia/Kolkata", "Etc/UTC"])
def test_iana_names_are_accepted_as_given(name: str) -> None:
    assert windows_to_iana(name) is None
    assert resolve_zone(name).key == name


def test_ids_are_matched_ignoring_case_and_surrounding_blanks() -> None:
    assert resolve_zone("w. europe standard time").key == "Europe/Berlin"
    assert resolve_zone("  Russian Standard Time ").key == "Europe/Moscow"
    assert resolve_zone("europe/berlin").key == "Europe/Berlin"


def test_every_cldr_windows_id_resolves_with_the_installed_tz_database() -> None:
    unresolved = []
    for windows_id, iana in win_tz.items():
        try:
            assert resolve_zone(windows_id).key == iana
        except UnknownTimeZoneError:
            unresolved.append(windows_id)
    assert unresolved == []
    assert len(win_tz) > 100


@pytest.mark.parametrize(
    "name",
    [
        "Mars Standard Time",
        "Customized Time Zone",
        "Europe/Nowhere",
        "Europe",  # a directory of the tz database, not a zone
        "zone.tab",  # a file of the tz database, not a zone
        "../etc/passwd",
        "/etc/localtime",
        "W. Europe Standard Time\x00",
    ],
)
def test_unknown_zones_raise_naming_the_id(name: str) -> None:
    with pytest.raises(UnknownTimeZoneError) as caught:
        resolve_zone(name)
    assert caught.value.zone_id == name
    assert repr(name) in str(caught.value)
    assert isinstance(caught.value, LookupError)


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_zone_ids_are_unknown(name: str) -> None:
    with pytest.raises(UnknownTimeZoneError, match="empty time-zone id"):
        resolve_zone(name)
