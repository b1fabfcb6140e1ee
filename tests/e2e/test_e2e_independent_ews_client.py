"""Guide §4 "Working with the calendar" written by a client nobody here wrote: ews-javascript-api (npm; the
JavaScript port of Microsoft's EWS Managed API), logged in over NTLM with a mailbox's own account - not the
impersonation account and not exchangelib. Every change it makes must reach TrueConf like one made in Outlook.
Its project is tests/interop/ews-js (installed by `make install`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from e2e_support import Product, email

CLIENT = Path(__file__).resolve().parents[1] / "interop" / "ews-js"


def ews_js(product: Product, who: str, command: str, **args: Any) -> Any:
    """Run one command of tests/interop/ews-js/calendar.js as `who` (password: the sandbox's `<name>-password`)."""
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (make install installs the client's packages with npm)"
    assert (CLIENT / "node_modules" / "ews-javascript-api").is_dir(), "run make install: npm packages missing"
    url = product.ready["exchange"]["ews_url"]
    done = subprocess.run(
        [node, str(CLIENT / "calendar.js"), url, email(who), f"{who}-password", command, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"ews-javascript-api {command}: {done.stderr}"
    return json.loads(done.stdout)


def at(days: int, hour: int) -> datetime:
    moment = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=days)
    return moment.replace(hour=hour)


def text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_4_1_another_ews_client_creates_changes_and_cancels_a_meeting(product: Product) -> None:
    start = at(2, 9)
    made = ews_js(
        product,
        "carol",
        "create",
        subject="Made by another client",
        start=text(start),
        end=text(start + timedelta(minutes=45)),
        attendees=[email("erin")],
        location="@trueconf",
    )
    for who in ("carol", "erin"):
        # The event shows first, then again with its conference (the @trueconf keyword) once TrueConf made it.
        [event] = product.wait_events(who, "Made by another client", lambda found: found[0]["conference"] is not None)
        assert event["start"] == text(start) and event["end"] == text(start + timedelta(minutes=45))
        assert event["organizer"] == email("carol") and not event["cancelled"]
        assert event["conference"]["url"]
    listed = ews_js(product, "carol", "list", start=text(at(0, 0)), end=text(at(7, 0)))
    assert made["id"] in [entry["id"] for entry in listed]

    ews_js(product, "carol", "update", id=made["id"], subject="Renamed by another client")
    product.wait_events("erin", "Renamed by another client")
    assert product.events("erin", "Made by another client") == []

    ews_js(product, "carol", "cancel", id=made["id"])
    product.wait_events("erin", "Renamed by another client", lambda found: all(e["cancelled"] for e in found))


def test_4_2_1_another_ews_client_writes_a_series_with_a_moved_occurrence(product: Product) -> None:
    first = at(3, 10)
    series = ews_js(
        product,
        "dave",
        "create-weekly",
        subject="Weekly from another client",
        start=text(first),
        end=text(first + timedelta(hours=1)),
        attendees=[email("bob")],
        occurrences=4,
    )
    moved = first + timedelta(days=7, hours=2)
    ews_js(
        product,
        "dave",
        "move-occurrence",
        id=series["id"],
        index=2,
        start=text(moved),
        end=text(moved + timedelta(hours=1)),
    )
    expected = [*(text(first + timedelta(days=7 * n)) for n in (0, 2, 3)), text(moved)]

    def four_with_the_move(found: list[dict[str, Any]]) -> bool:
        return sorted(e["start"] for e in found) == sorted(expected)

    for who in ("dave", "bob"):
        events = product.wait_events(who, "Weekly from another client", four_with_the_move)
        assert all(e["recurring"] for e in events)

    ews_js(product, "dave", "delete", id=series["id"])
    product.wait_events("bob", "Weekly from another client", lambda found: all(e["cancelled"] for e in found))
