"""`tc-calendar status`, `mailboxes`, `resync`, `events`, `test exchange|trueconf` and `sync progress` as an
administrator runs them: processes against the running sandbox, with its config.json and machine key only.

The sandbox gets a second impersonation account with a wrong password (TC_CALENDAR__ overrides, encrypted with the
sandbox's key): ews-ingest spreads the mailboxes over both accounts, so the mailboxes served by the wrong one fail
and the others sync.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tccal_sandbox.demo import Ews
from tccal_sandbox.testing import SandboxProcess, free_port, running_sandbox, short_tmpdir, wait_for

WRONG_LOGIN = "svc-wrong@sandbox.test"
DOMAIN = "sandbox.test"


@dataclass
class Admin:
    """The sandbox as an administrator's shell sees it: config.json, the machine key, the wrong credential."""

    sandbox: SandboxProcess
    env: dict[str, str]

    def run(self, *args: str, config: Path | None = None, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tccal.cli", *args]
        env = {**self.env, "TC_CALENDAR_CONFIG": str(config or self.sandbox.ready["config"])}
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.stdout, result.stderr
        return json.loads(result.stdout)

    def ews(self) -> Ews:
        exchange = self.sandbox.ready["exchange"]
        account = exchange["service_account"]
        return Ews(exchange["ews_url"], account["username"], account["password"])

    def exchange_requests(self) -> dict[str, Any]:
        url = f"{self.sandbox.ready['exchange']['admin_url']}/requests"
        with urllib.request.urlopen(url, timeout=10) as answer:
            data: dict[str, Any] = json.loads(answer.read())
        return data

    def wrong_mailboxes(self) -> set[str]:
        """The mailboxes ews-ingest serves with the wrong password (as ListMailboxes says)."""
        return {m["mailbox"] for m in self.json("mailboxes") if m["credential"] == WRONG_LOGIN}


@pytest.fixture(scope="module")
def admin() -> Iterator[Admin]:
    state = short_tmpdir("tcops")
    key_env = {**os.environ, "TC_CALENDAR_KEY_FILE": str(state / "machine.key")}
    key_env.pop("TC_CALENDAR_KEY", None)
    hashed = subprocess.run(
        [sys.executable, "-m", "tccal.cli", "hash-pass", "not-the-password"],
        capture_output=True,
        text=True,
        env=key_env,
        check=True,
    ).stdout
    wrong = hashed.strip().removeprefix("Your encrypted data: ")
    overrides = {
        "TC_CALENDAR__CALENDARPROVIDERS__0__CREDENTIALS__1__LOGIN": WRONG_LOGIN,
        "TC_CALENDAR__CALENDARPROVIDERS__0__CREDENTIALS__1__PASSWORD": wrong,
    }
    with running_sandbox("--no-demo", prefix="tcops", env=overrides, state_dir=state) as sandbox:
        yield Admin(sandbox, {**key_env, **overrides})


def _settled(admin: Admin) -> dict[str, Any] | None:
    """The sync progress once no mailbox waits for its first sync (done, or failed with the wrong password)."""
    progress: dict[str, Any] = admin.json("sync", "progress")
    pending = progress["mailboxes_total"] - progress["mailboxes_done"] - progress["mailboxes_failed"]
    return progress if progress["mailboxes_total"] and pending == 0 else None


def test_sync_progress_counts_done_and_failing_mailboxes_as_plain_lines_json_and_metrics(admin: Admin) -> None:
    progress = wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    wrong = admin.wrong_mailboxes()
    everyone = set(admin.sandbox.ready["exchange"]["mailboxes"])
    assert wrong and wrong < everyone
    assert progress["mailboxes_total"] == len(everyone)
    assert progress["mailboxes_failed"] == len(wrong)
    assert progress["mailboxes_done"] == len(everyone - wrong)
    assert progress["seconds_left"] == 0

    plain = admin.run("sync", "progress")  # not a terminal: plain lines, and it returns once nothing is pending
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith(f"first sync: {len(everyone - wrong)}/{len(everyone)} mailboxes"), plain.stdout
    assert f"{len(wrong)} failing" in plain.stdout

    metrics_url = f"{admin.sandbox.ready['services']['ews-ingest']['http']}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        metrics = answer.read().decode()
    found = {
        line.split('state="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ews_ingest_first_sync_mailboxes{")
    }
    assert found == {"done": len(everyone - wrong), "failed": len(wrong), "pending": 0}
    assert "ews_ingest_first_sync_items_total" in metrics
    assert "ews_ingest_first_sync_remaining_seconds" in metrics


def test_mailboxes_failed_lists_exactly_the_mailboxes_with_the_wrong_password(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    wrong = admin.wrong_mailboxes()
    failed = admin.json("mailboxes", "--failed")
    assert {m["mailbox"] for m in failed} == wrong
    assert all(m["state"] == "error" and "UnauthorizedError" in m["last_error"] for m in failed)
    text = admin.run("mailboxes", "--failed")
    assert text.returncode == 0, text.stderr
    listed = {line.split()[0] for line in text.stdout.splitlines() if "@" in line.split()[0]}
    assert listed == wrong


def test_status_shows_services_license_bridge_mailboxes_and_the_last_errors(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    wrong = admin.wrong_mailboxes()
    everyone = set(admin.sandbox.ready["exchange"]["mailboxes"])
    result = admin.run("status", "--json")
    assert result.returncode == 1, result.stderr  # a mailbox failed
    report = json.loads(result.stdout)
    assert {name: s["health"] for name, s in report["services"].items()} == {
        "ews-ingest": "SERVING",
        "licensing": "SERVING",
        "sync-engine": "SERVING",
        "tcs-gateway": "SERVING",
    }
    assert report["license"]["tier"] == "LICENSE_TIER_STANDARD"
    assert report["license"]["seats"] == 100 and report["license"]["seats_used"] == len(everyone)
    [server] = report["servers"]
    assert server["server_id"] == admin.sandbox.ready["trueconf"]["server_id"] and server["connected"] is True
    assert report["mailboxes"]["total"] == len(everyone)
    assert report["mailboxes"]["by_state"]["error"] == len(wrong)
    assert report["mailboxes"]["by_state"]["syncing"] == len(everyone - wrong)
    assert {e["mailbox"] for e in report["last_errors"]} == wrong
    assert all("Invalid credentials" in e["cause"] for e in report["last_errors"])
    assert report["sync_progress"]["mailboxes_failed"] == len(wrong)

    screen = admin.run("status")
    assert screen.returncode == 1
    assert "licensing" in screen.stdout and "SERVING" in screen.stdout
    assert f"{len(everyone)} of 100 seats used" in screen.stdout
    assert "bridge connected since" in screen.stdout
    for mailbox in wrong:
        assert f"{mailbox} (error): UnauthorizedError" in screen.stdout


def test_status_shows_a_service_that_is_down_as_down(admin: Admin, tmp_path: Path) -> None:
    config = json.loads(Path(admin.sandbox.ready["config"]).read_text())
    config["grpc"]["services"]["licensing"]["grpcPort"] = free_port()  # nothing listens there
    moved = tmp_path / "config.json"
    moved.write_text(json.dumps(config))
    result = admin.run("status", "--json", config=moved)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["services"]["licensing"]["health"].startswith("DOWN")
    assert report["services"]["sync-engine"]["health"] == "SERVING"
    assert "licensing is down" in report["license"]["error"]
    screen = admin.run("status", config=moved)
    assert "Traceback" not in screen.stderr
    assert "License     unknown: licensing is down" in screen.stdout


def test_test_exchange_fails_at_auth_with_the_fix_for_a_wrong_password(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    mailbox = sorted(admin.wrong_mailboxes())[0]
    result = admin.run("test", "exchange", mailbox)
    assert result.returncode == 1
    assert "FAIL  auth" in result.stdout
    assert "calendarProviders[0].credentials[1].password" in result.stdout and "hash-pass" in result.stdout
    report = admin.json("test", "exchange", mailbox)
    outcomes = {s["name"]: s["outcome"] for s in report["steps"]}
    assert outcomes == {
        "dns": "OK",
        "tcp": "OK",
        "tls": "SKIP",  # the emulator speaks http
        "auth": "FAIL",
        "impersonation": "SKIP",
        "read": "SKIP",
    }
    assert report["credential"] == WRONG_LOGIN and report["result"] == "FAIL at auth"


def test_test_exchange_passes_for_a_mailbox_of_the_right_password_and_names_a_missing_mailbox(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    good = sorted(set(admin.sandbox.ready["exchange"]["mailboxes"]) - admin.wrong_mailboxes())[0]
    result = admin.run("test", "exchange", good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK    auth" in result.stdout and "OK    impersonation" in result.stdout and "OK    read" in result.stdout
    assert result.stdout.rstrip().endswith("Result: OK")
    missing = admin.json("test", "exchange", f"nobody@{DOMAIN}")
    [impersonation] = [s for s in missing["steps"] if s["name"] == "impersonation"]
    assert impersonation["outcome"] == "FAIL" and "ErrorNonExistentMailbox" in impersonation["detail"]
    assert "primary SMTP address" in impersonation["fix"]


def _meeting(admin: Admin, mailbox: str, subject: str) -> None:
    from exchangelib import UTC, CalendarItem, EWSDateTime

    start = EWSDateTime.now(UTC).replace(microsecond=0) + dt.timedelta(days=2)
    account = admin.ews().account(mailbox)
    CalendarItem(account=account, folder=account.calendar, subject=subject, start=start,
                 end=start + dt.timedelta(minutes=30)).save()  # fmt: skip


def _subjects(admin: Admin, mailbox: str) -> set[str]:
    return {o.get("subject", "") for o in admin.json("events", mailbox)}


def test_resync_from_a_date_reads_again_only_what_changed_since(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    mailbox = sorted(set(admin.sandbox.ready["exchange"]["mailboxes"]) - admin.wrong_mailboxes())[0]
    _meeting(admin, mailbox, "Before the outage")
    wait_for(lambda: "Before the outage" in _subjects(admin, mailbox), 60, 0.5, "the first meeting synced")
    time.sleep(1.1)  # Exchange keeps LastModifiedTime to the second
    outage = dt.datetime.now(dt.UTC).replace(microsecond=0)
    time.sleep(1.1)
    _meeting(admin, mailbox, "During the outage")
    wait_for(lambda: "During the outage" in _subjects(admin, mailbox), 60, 0.5, "the second meeting synced")

    before = admin.exchange_requests()
    since = admin.run("resync", mailbox, "--from", outage.strftime("%Y-%m-%dT%H:%M:%S"))
    assert since.returncode == 0, since.stderr
    assert "1 item(s) published" in since.stdout, since.stdout
    after = admin.exchange_requests()
    assert after["operations"]["SyncFolderItems"] > before["operations"]["SyncFolderItems"]  # walked again
    assert after["operations"]["GetItem"] > before["operations"]["GetItem"]  # and read what changed
    assert after["mailboxes"][mailbox] > before["mailboxes"][mailbox]

    whole = admin.run("resync", mailbox)
    assert whole.returncode == 0, whole.stderr
    assert "(the whole mailbox), 2 item(s) published" in whole.stdout, whole.stdout
    assert {"Before the outage", "During the outage"} <= _subjects(admin, mailbox)

    text = admin.run("events", mailbox)
    assert "During the outage" in text.stdout and "meeting(s) of" in text.stdout

    refused = admin.run("resync", mailbox, "--from", "2026-13-01")
    assert refused.returncode == 2 and "'2026-13-01' is not a date" in refused.stderr
    unknown = admin.run("resync", f"nobody@{DOMAIN}")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "Traceback" not in unknown.stderr


def test_the_try_lines_the_sandbox_prints_work_as_printed(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    printed = admin.sandbox.output().splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("Try"))
    block = []
    for line in printed[start + 1 :]:
        if not line.strip():
            break
        block.append(line.strip())
    export, *commands = block
    assert export.startswith("export ") and "grpcurl" not in "\n".join(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_CALENDAR")}
    env.update(dict(pair.split("=", 1) for pair in shlex.split(export)[1:]))
    assert len(commands) >= 4
    for command in commands:
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env, timeout=120)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        # status says 1 here: the mailboxes of the wrong password fail (each other command succeeds)
        assert result.returncode == (1 if command.endswith(" status") else 0), (command, result.stdout, result.stderr)
        assert result.stdout.strip(), command


def test_sync_progress_draws_a_bar_on_a_terminal(admin: Admin) -> None:
    wait_for(lambda: _settled(admin), 90, 1.0, "every mailbox synced or failed")
    leader, follower = pty.openpty()
    env = {**admin.env, "TC_CALENDAR_CONFIG": str(admin.sandbox.ready["config"]), "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tccal.cli", "sync", "progress"], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(60) == 0
    os.close(leader)
    text = output.decode(errors="replace")
    everyone = len(admin.sandbox.ready["exchange"]["mailboxes"])
    done = everyone - len(admin.wrong_mailboxes())
    assert "first sync" in text and "━" in text  # rich's bar
    assert f"{done}/{everyone}" in text and "mailbox(es) failing: tc-calendar mailboxes --failed" in text


def _bridge(admin: Admin, action: str) -> None:
    request = urllib.request.Request(f"{admin.sandbox.ready['trueconf']['admin_url']}/bridge/{action}", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def _connected(admin: Admin) -> bool:
    servers = admin.json("status")["servers"]
    return bool(servers[0]["connected"])


def test_a_disconnected_bridge_is_shown_by_status_and_test_trueconf_says_where_to_point_it(admin: Admin) -> None:
    _bridge(admin, "disconnect")  # TrueConf Server closes its calendar bridge and stays away
    try:
        wait_for(lambda: not _connected(admin), 30, 0.5, "the gateway to see the bridge gone")
        screen = admin.run("status")
        assert screen.returncode == 1 and "bridge NOT connected" in screen.stdout
        result = admin.run("test", "trueconf")
        assert result.returncode == 1
        report = admin.json("test", "trueconf")
        steps = {s["name"]: s for s in report["servers"][0]["steps"]}
        assert [steps[n]["outcome"] for n in ("oauth", "rest-api", "bridge", "bridge-ping")] == [
            "OK",
            "OK",
            "FAIL",
            "SKIP",
        ]
        ws_port = json.loads(Path(admin.sandbox.ready["config"]).read_text())["wsPort"]
        assert f":{ws_port}/bridge/v1" in steps["bridge"]["fix"] and "tcs.servers[0].secret" in steps["bridge"]["fix"]
    finally:
        _bridge(admin, "connect")
    wait_for(lambda: _connected(admin), 60, 0.5, "the bridge back")


def test_test_trueconf_passes_then_fails_with_the_fix_while_trueconf_server_is_stopped(admin: Admin) -> None:
    # Last in the module: the bridge may be dropped and reconnect after TrueConf Server was stopped.
    healthy = admin.json("test", "trueconf")
    [server] = healthy["servers"]
    assert server["result"] == "OK", server
    assert [s["name"] for s in server["steps"]] == ["dns", "tcp", "tls", "oauth", "rest-api", "bridge", "bridge-ping"]

    pid = admin.sandbox.ready["processes"]["trueconf-emulator"]
    os.kill(pid, signal.SIGSTOP)  # stopped: its sockets stay open, nothing answers
    try:
        stopped = admin.run("test", "trueconf")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stopped.returncode == 1
    assert "FAIL  oauth" in stopped.stdout and "does not answer" in stopped.stdout
    assert "FAIL  bridge-ping" in stopped.stdout and "no answer to a ping" in stopped.stdout
    assert "SKIP  rest-api" in stopped.stdout
