"""The emulator's REST API driven by TrueConf's own published client, trueconf-eraser (PyPI; nobody here wrote
it): its token request (JSON body at /api/v4/oauth2/token), its refresh on 401, the conference list with a state
filter, participants, sessions and stop - over HTTPS, since it refuses any other scheme - and its reading of
created_at (app.core.parse_timestamp), exactly as it works against a real TrueConf Server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from app.core import parse_timestamp
from app.trueconf_client import TrueConfClient

from trueconf_emulator.testing import EmulatorProcess, self_signed_certificate, start_emulator

START = int((datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0).timestamp())


@pytest.fixture(scope="module")
def tcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    handle = start_emulator(extra={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def eraser(tcs: EmulatorProcess) -> Iterator[TrueConfClient]:
    tcs.admin("POST", "/reset", {})
    assert tcs.base_url.startswith("https://")
    server = tcs.base_url.removeprefix("https://")  # what an administrator types: the host, https:// is added
    with TrueConfClient(server, tcs.client_id, tcs.client_secret, verify_ssl=False) as client:
        yield client


def test_the_eraser_finds_stops_and_dates_a_running_conference(tcs: EmulatorProcess, eraser: TrueConfClient) -> None:
    schedule = {"type": "once", "start_time": START, "duration": 3600, "special_time_offset": 180}
    schedule["time"] = datetime.fromtimestamp(START, UTC).strftime("%H:%M")
    created = eraser.client.post(
        "/conferences", json={"topic": "Weekly", "owner": "alice", "mode": "PxP", "schedule": schedule}
    )
    assert created.status_code == 200, created.text
    conference = created.json()["conference"]
    assert eraser.client.post(f"/conferences/{conference['id']}/run").status_code == 200

    running = eraser.get_conferences(state="running")
    assert [c["id"] for c in running] == [conference["id"]]
    assert eraser.get_conferences(state="stopped") == []
    assert eraser.get_participants(conference["id"]) == []
    sessions = eraser.build_session_start_map()
    assert set(sessions) == {conference["id"]}
    now = datetime.now(UTC)
    for stamp in (running[0]["created_at"], sessions[conference["id"]]):
        assert isinstance(stamp, str)
        assert abs((now - parse_timestamp(stamp)).total_seconds()) < 60
    assert running[0]["schedule"]["start_time"] == START and "time" not in running[0]["schedule"]

    assert eraser.stop_conference(conference["id"]) is True
    assert eraser.get_conferences(state="running") == []
    assert eraser.build_session_start_map() == {}


def test_the_eraser_gets_a_new_token_after_a_401(tcs: EmulatorProcess, eraser: TrueConfClient) -> None:
    assert eraser.get_conferences() == []
    first = eraser.auth.get_token()
    tcs.admin("POST", "/tokens/expire")
    assert eraser.get_conferences() == []  # 401, then a fresh token at /api/v4/oauth2/token, then 200
    assert eraser.auth.get_token() != first
    paths = [(e["method"], e["path"], e["status"]) for e in tcs.inspect("/rest-log")]
    assert ("GET", "/api/v4/conferences", 401) in paths
    assert [p for p in paths if p[1] == "/api/v4/oauth2/token"] == [("POST", "/api/v4/oauth2/token", 200)] * 2


def test_the_eraser_is_refused_what_the_server_refuses(tcs: EmulatorProcess, eraser: TrueConfClient) -> None:
    with pytest.raises(httpx.HTTPStatusError, match="404"):
        eraser.stop_conference("no_such_conference")
    wrong = TrueConfClient(tcs.base_url.removeprefix("https://"), tcs.client_id, "wrong-secret", verify_ssl=False)
    with pytest.raises(httpx.HTTPStatusError, match="400"):
        wrong.get_conferences()
    wrong.close()
