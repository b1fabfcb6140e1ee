"""Benchmarks of the connector against its baseline, measured side by side in one run (see bench/README.md).

    .venv/bin/python bench/bench.py live --mailboxes 50 [--rate 5] [--duration 130] [--idle 60]
    .venv/bin/python bench/bench.py initial-sync --mailboxes 20 [--meetings 25] [--concurrency 8]
    .venv/bin/python bench/bench.py smoke            # smallest configuration of each, for `make test`

`live` = propagation (1), Exchange load at idle (2) and footprint (5) in one sandbox; `initial-sync` = (3).
Every run starts `tc-calendar sandbox` (embedded PostgreSQL + NATS, emulators, the four services) on
127.0.0.1, stops it afterwards, and writes bench/results/<name>-<utc>.json and .md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from tccal_sandbox.testing import running_sandbox, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOMAIN = "sandbox.test"
SERVICES = ("ews-ingest", "sync-engine", "tcs-gateway", "licensing")


# ---------------------------------------------------------------------------------------------- helpers
def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 4)}


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def rss(ready: dict[str, Any]) -> dict[str, float]:
    """RSS in MiB of every process named in the ready-file (services, emulators, postgres, nats)."""
    found: dict[str, float] = {}
    for name, pid in ready.get("processes", {}).items():
        try:
            process = psutil.Process(pid)
            total = process.memory_info().rss
            if name == "postgres":  # its work happens in backend children
                total += sum(c.memory_info().rss for c in process.children(recursive=True))
            found[name] = round(total / 2**20, 1)
        except psutil.Error:
            continue
    return found


def cpu_seconds(pids: Mapping[str, int | None], with_children: Collection[str] = ()) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process; for the names in `with_children` also by
    its children, live and reaped (PostgreSQL's backends). Diff two readings for a phase."""
    used: dict[str, float] = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            total = times.user + times.system
            if name in with_children:
                total += times.children_user + times.children_system
                total += sum(sum(c.cpu_times()[:2]) for c in process.children(recursive=True))
        except psutil.Error:
            continue
        used[name] = total
    return used


def product_cpu_seconds(ready: dict[str, Any]) -> dict[str, float]:
    """cpu_seconds of every process in the ready-file and of this benchmark process (the baselines' client)."""
    return cpu_seconds({**ready.get("processes", {}), "bench (baseline client)": os.getpid()}, {"postgres"})


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    used = {name: round(seconds - before.get(name, 0.0), 2) for name, seconds in after.items()}
    return {name: seconds for name, seconds in used.items() if seconds > 0}


def write_result(name: str, result: dict[str, Any], table: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"written: {path}")
    return path


@contextmanager
def sandbox(
    extra_mailboxes: int,
    *,
    seats: int,
    configured: str = "all",
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
) -> Iterator[dict]:
    """`tc-calendar sandbox --no-demo` (tccal_sandbox.testing.running_sandbox), yielding its ready-file with the
    start-up time in `_startup_s`; SIGTERM (then SIGKILL) on the way out."""
    args = ["--no-demo", "--extra-mailboxes", str(extra_mailboxes), "--configured-users", configured]
    args += ["--seats", str(seats), "--timeout", str(timeout)]
    t0 = time.monotonic()
    with running_sandbox(*args, prefix="tcb-", env=env, timeout=timeout, stop_timeout=90.0) as process:
        ready = dict(process.ready)
        ready["_startup_s"] = round(time.monotonic() - t0, 1)
        yield ready


def ews_config(ready: dict[str, Any], connections: int) -> Any:
    from exchangelib import NTLM, Configuration, Credentials

    account = ready["exchange"]["service_account"]
    return Configuration(
        service_endpoint=ready["exchange"]["ews_url"],
        credentials=Credentials(account["username"], account["password"]),
        auth_type=NTLM,
        max_connections=connections,
    )


def ews_account(config: Any, mailbox: str) -> Any:
    from exchangelib import IMPERSONATION, Account

    return Account(primary_smtp_address=mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


def ews_requests(ready: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = http_json(f"{ready['exchange']['admin_url']}/requests")
    return result


def op_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    ops = set(after["operations"]) | set(before["operations"])
    delta = {op: after["operations"].get(op, 0) - before["operations"].get(op, 0) for op in sorted(ops)}
    return {op: n for op, n in delta.items() if n}


def ingest_tuning() -> dict[str, float]:
    from ews_ingest.settings import Tuning

    tuning = Tuning.from_env()
    return {
        "safety_sync_seconds": tuning.safety_sync_seconds,
        "stream_minutes": tuning.stream_minutes,
        "stream_group_size": tuning.stream_group_size,
    }


def scheduled_per_mailbox_hour(tuning: dict[str, float], n: int) -> float:
    """EWS calls per mailbox-hour that ews-ingest schedules at idle (bench/README.md, "Idle load").

    A streaming connection is renewed every P = stream_minutes: one GetStreamingEvents per group of
    stream_group_size per P. A renewal after the full ConnectionTimeout catches nobody up (streaming.py: the
    subscriptions keep their events), so the only syncs are the safety net, one SyncFolderItems per mailbox per
    safety_sync_seconds. (`bench.py idle` measures this with compressed timings.)
    """
    period = tuning["stream_minutes"] * 60
    groups = -(-n // int(tuning["stream_group_size"]))
    return float(3600 / tuning["safety_sync_seconds"] + (3600 / period) * groups / n)


# ------------------------------------------------------------------------------------- the polling baseline
class PollingBaseline:
    """What a plain exchangelib script does: CalendarView of every mailbox every `period` seconds.

    It reports a change when the subject it sees differs from the last one; its latency is measured from the
    same EWS-response timestamps (time.monotonic in this process) as the connector's.
    """

    def __init__(self, config: Any, mailboxes: list[str], period: float, concurrency: int) -> None:
        self.mailboxes = mailboxes
        self.period = period
        self.pool = concurrent.futures.ThreadPoolExecutor(concurrency)
        self.accounts = {m: ews_account(config, m) for m in mailboxes}
        self.seen: dict[str, str] = {}  # item id -> subject
        self.requests = 0
        self.polls = 0
        self.on_seen: Callable[[str, float], None] = lambda subject, at: None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="polling-baseline", daemon=True)
        self._lock = threading.Lock()

    def _poll_one(self, mailbox: str) -> None:
        from exchangelib import EWSDateTime, EWSTimeZone

        utc = EWSTimeZone("UTC")
        now = EWSDateTime.now(utc)
        items = list(
            self.accounts[mailbox].calendar.view(start=now - dt.timedelta(days=60), end=now + dt.timedelta(days=90))
        )
        at = time.monotonic()
        with self._lock:
            self.requests += 1
            for item in items:
                key = f"{mailbox}|{item.uid}|{item.start}"
                if self.seen.get(key) != item.subject:
                    self.seen[key] = item.subject
                    self.on_seen(item.subject or "", at)

    def poll_all(self) -> None:
        list(self.pool.map(self._poll_one, self.mailboxes))
        self.polls += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.poll_all()

    def start(self) -> None:
        self.poll_all()  # the starting picture
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.period + 30)
        self.pool.shutdown(wait=True)


# -------------------------------------------------------------------------- 1, 2, 5: propagation, idle, RSS
def wait_synced(ready: dict[str, Any], mailboxes: list[str], timeout: float) -> None:
    """Every mailbox has been through SyncFolderItems and is subscribed (the product follows it)."""

    def done() -> bool:
        counts = ews_requests(ready)["mailboxes"]
        subs = http_json(f"{ready['exchange']['admin_url']}/subscriptions")
        subscribed = {s["mailbox"].lower() for s in subs if not s.get("expired")}
        return all(counts.get(m, 0) >= 2 for m in mailboxes) and all(m in subscribed for m in mailboxes)

    wait_for(done, timeout, 1.0, "every mailbox to be synced and subscribed")


def run_live(args: argparse.Namespace) -> Path:
    # One mailbox more than the burst: the lone meeting made while the burst is under way.
    with sandbox(args.mailboxes + 1, seats=args.mailboxes + 100) as ready:
        return live_in(ready, args)


class CalendarWatcher:
    """First sight of expected subjects in the TrueConf emulator, in a thread: each round reads the calendars'
    summary (`/inspect/calendars`, one request) and then only the calendars of pending users whose `last_seq`
    moved, so a round stays short while thousands of meetings are awaited."""

    def __init__(self, inspect: str) -> None:
        self.inspect = inspect
        self.arrived: dict[str, float] = {}  # subject -> monotonic time of first sight
        self.pending: dict[str, str] = {}  # subject -> user
        self.lock = threading.Lock()
        self._seen_seq: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def expect(self, subject: str, user: str) -> None:
        with self.lock:
            self.pending[subject] = user
            self._seen_seq.pop(user, None)  # look at this user's calendar again in the next round

    def waiting(self) -> int:
        with self.lock:
            return len(self.pending)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                summary = http_json(f"{self.inspect}/calendars")
            except OSError:
                continue
            with self.lock:
                users = sorted(set(self.pending.values()))
            for user in users:
                seq = int(summary.get(user, {}).get("last_seq", -1))
                if self._seen_seq.get(user) == seq:
                    continue
                try:
                    events = http_json(f"{self.inspect}/calendars/{user}")
                except OSError:
                    continue
                at = time.monotonic()
                subjects = {e.get("subject") for e in events}
                with self.lock:
                    for subject in [s for s, u in self.pending.items() if u == user and s in subjects]:
                        self.arrived[subject] = at
                        del self.pending[subject]
                    self._seen_seq[user] = seq
            time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def live_in(ready: dict[str, Any], args: argparse.Namespace) -> Path:
    from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone

    n = args.mailboxes
    mailboxes = [f"user{i:03d}@{DOMAIN}" for i in range(1, n + 1)]
    lone = f"user{n + 1:03d}@{DOMAIN}"  # gets one meeting while the burst into the others is under way
    t_sync = time.monotonic()
    wait_synced(ready, [*mailboxes, lone], 60 + n * 0.5)
    first_sync_s = time.monotonic() - t_sync
    rss_idle = rss(ready)

    # 2. Idle: no change anywhere; count every EWS request the connector makes over args.idle seconds.
    time.sleep(3)
    before = ews_requests(ready)
    t_idle = time.monotonic()
    time.sleep(args.idle)
    idle_s = time.monotonic() - t_idle
    after = ews_requests(ready)
    idle_ops = op_delta(after, before)
    idle_total = sum(idle_ops.values())
    tuning = ingest_tuning()
    measured_rate = idle_total / ((n + 1) * idle_s / 3600)
    # Scheduled calls too rare for a short window, from ews-ingest's own timings (GetItem follows changes only).
    extrapolated = scheduled_per_mailbox_hour(tuning, n + 1)

    # One meeting per mailbox (CreateItem), written the way Outlook does, a burst at `concurrency`; when half of
    # it is sent, one meeting in the lone mailbox (a user's new meeting that must not queue behind the burst).
    config = ews_config(ready, args.concurrency + 2)
    writers = {m: ews_account(config, m) for m in [*mailboxes, lone]}
    tz = EWSTimeZone("UTC")
    start = EWSDateTime.now(tz).replace(microsecond=0) + dt.timedelta(days=2)
    items: dict[str, Any] = {}
    sent: dict[str, float] = {}  # subject -> monotonic time of the EWS response
    kinds: dict[str, str] = {}
    watcher = CalendarWatcher(ready["trueconf"]["inspect_url"])
    watcher.start()

    def create(mailbox: str, kind: str = "create") -> None:
        subject = f"bench c {mailbox}"
        watcher.expect(subject, mailbox)
        item = CalendarItem(
            account=writers[mailbox],
            folder=writers[mailbox].calendar,
            subject=subject,
            start=start,
            end=start + dt.timedelta(minutes=30),
        )
        item.save(send_meeting_invitations="SendToNone")
        sent[subject] = time.monotonic()
        kinds[subject] = kind
        items[mailbox] = item

    t_burst = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        burst = pool.map(create, mailboxes)
        wait_for(lambda: len(sent) >= n // 2, 60 + n * 0.5, 0.01, "half of the burst")
        create(lone, "lone")
        list(burst)
    burst_s = time.monotonic() - t_burst
    wait_for(lambda: not watcher.waiting(), 60 + n * 0.5, 0.2, "the created meetings in TrueConf")

    baseline = PollingBaseline(config, mailboxes, args.poll_period, args.concurrency)
    baseline_arrived: dict[str, float] = {}

    def baseline_seen(subject: str, at: float) -> None:
        if subject in sent and subject not in baseline_arrived:
            baseline_arrived[subject] = at

    baseline.start()  # initial picture (its creates are already known) - latencies below are updates only
    baseline.on_seen = baseline_seen

    # 1. UpdateItem at a steady rate, round-robin over the mailboxes.
    rss_load: dict[str, float] = {}
    load_before = ews_requests(ready)
    interval = 1.0 / args.rate
    t_begin = time.monotonic()
    k = 0
    while time.monotonic() - t_begin < args.duration:
        due = t_begin + k * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        mailbox = mailboxes[k % n]
        subject = f"bench u{k} {mailbox}"
        item = items[mailbox]
        item.subject = subject
        watcher.expect(subject, mailbox)
        item.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
        sent[subject] = time.monotonic()
        kinds[subject] = "update"
        k += 1
        if not rss_load and time.monotonic() - t_begin > args.duration / 2:
            rss_load = rss(ready)
    # 60 s + JetStream's ack_wait (30 s): one CI run under load saw the last updates arrive after 60 s, following a
    # CALENDAR fetch that failed with a timeout; the cause is not known, a change redelivered after ack_wait fits it
    wait_for(lambda: not watcher.waiting(), 90, 0.2, "the last updates in TrueConf")
    watcher.stop()
    arrived = watcher.arrived
    # let the baseline make one more poll after the last update so that every update it can see is seen
    time.sleep(max(0.0, args.poll_period - (time.monotonic() - t_begin - args.duration)) + 2)
    baseline.stop()
    load_ops = op_delta(ews_requests(ready), load_before)

    def latencies(seen: dict[str, float], kind: str) -> list[float]:
        return [seen[s] - sent[s] for s in seen if kinds.get(s) == kind and s in sent]

    # A baseline poll sees only the newest subject of an item; earlier updates of the same item in the
    # same period are never delivered to it: count them as missed.
    updates = [s for s in sent if kinds[s] == "update"]
    product_update = latencies(arrived, "update")
    product_create = latencies(arrived, "create")
    product_lone = latencies(arrived, "lone")
    baseline_update = latencies(baseline_arrived, "update")
    result = {
        "benchmark": "live",
        "utc": dt.datetime.now(dt.UTC).isoformat(),
        "machine": machine(),
        "mailboxes": n,
        "sandbox_startup_s": ready["_startup_s"],
        "first_sync_s": round(first_sync_s, 1),
        "propagation": {
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "updates_sent": len(updates),
            "connector": {
                "update": percentiles(product_update),
                "create": percentiles(product_create),
                "burst": {"creates": n, "concurrency": args.concurrency, "sent_in_s": round(burst_s, 2)},
                "lone_create_during_burst_s": round(product_lone[0], 3) if product_lone else None,
                "delivered": len(product_update),
            },
            "baseline_polling": {
                "period_s": args.poll_period,
                "update": percentiles(baseline_update),
                "delivered": len(baseline_update),
                "missed_intermediate_versions": len(updates) - len(baseline_update),
            },
            "ews_requests_during_load": load_ops,
            "measurement": "monotonic time after the EWS UpdateItem/CreateItem response -> first sight of "
            "the subject in the TrueConf emulator's /inspect/calendars/{user} (its summary polled every ~5 ms, "
            "then the calendars whose last_seq moved; the watcher runs during the burst too) "
            "or in the baseline's CalendarView answer",
            "target": {"p50_s": 0.2, "p99_s": 1.0, "burst_create_p99_s": 5.0, "lone_create_during_burst_s": 1.0},
        },
        "idle": {
            "window_s": round(idle_s, 1),
            "connector_requests": idle_ops,
            "connector_measured_per_mailbox_hour": round(measured_rate, 4),
            "connector_scheduled_per_mailbox_hour": round(extrapolated, 4),
            "connector_per_mailbox_hour": round(max(measured_rate, extrapolated), 4),
            "extrapolation": f"measured window scaled to an hour, and the calls scheduled by ews-ingest's "
            f"Tuning {tuning} (scheduled_per_mailbox_hour: a catch-up SyncFolderItems per mailbox at every stream "
            f"renewal, safety syncs in between, one GetStreamingEvents per group per renewal); the larger is reported",
            "baseline_requests": baseline.requests,
            "baseline_polls": baseline.polls,
            "baseline_per_mailbox_hour": round(3600 / args.poll_period, 1),
            "target_per_mailbox_hour": 0.05,
        },
        "rss_mib": {"idle": rss_idle, "load": rss_load},
    }
    table = live_table(result)
    return write_result(f"live-{n}", result, table, Path(args.out))


def live_table(r: dict[str, Any]) -> str:
    p = r["propagation"]
    c, b = p["connector"]["update"], p["baseline_polling"]["update"]
    i = r["idle"]

    def ms(v: Any) -> str:
        return "—" if v is None else f"{v * 1000:.0f}"

    lines = [
        f"### live — {r['mailboxes']} mailboxes, {r['machine']['cores']} cores, {r['utc'][:19]}Z",
        "",
        f"Propagation: {p['updates_sent']} UpdateItem at {p['rate_per_s']}/s for {p['duration_s']} s",
        "",
        "| | n | p50 ms | p95 ms | p99 ms | max ms | target |",
        "|---|---|---|---|---|---|---|",
        f"| connector (UpdateItem) | {c['n']} | {ms(c['p50'])} | {ms(c['p95'])} | {ms(c['p99'])} | {ms(c['max'])} "
        f"| p50 ≤ 200, p99 ≤ 1000 |",
    ]
    cc = p["connector"]["create"]
    burst = p["connector"].get("burst", {})
    lines.append(
        f"| connector (burst of {cc['n']} CreateItem, sent in {burst.get('sent_in_s', '—')} s) | {cc['n']} "
        f"| {ms(cc['p50'])} | {ms(cc['p95'])} | {ms(cc['p99'])} | {ms(cc['max'])} | p99 ≤ 5000 |"
    )
    lone = p["connector"].get("lone_create_during_burst_s")
    lines.append(f"| connector (one new meeting in another mailbox during the burst) | 1 | {ms(lone)} | | | | ≤ 1000 |")
    lines += [
        f"| baseline: CalendarView every {p['baseline_polling']['period_s']:.0f} s | {b['n']} | {ms(b['p50'])} "
        f"| {ms(b['p95'])} | {ms(b['p99'])} | {ms(b['max'])} | "
        f"({p['baseline_polling']['missed_intermediate_versions']} versions never seen) |",
        "",
        f"Idle load ({i['window_s']} s window): connector {i['connector_requests'] or 'no requests'}",
        "",
        "| | EWS requests per mailbox-hour | target |",
        "|---|---|---|",
        f"| connector, measured window | {i['connector_measured_per_mailbox_hour']} | ≤ 0.05 |",
        f"| connector, with scheduled safety sync + stream renewals | {i['connector_scheduled_per_mailbox_hour']} "
        f"| ≤ 0.05 |",
        f"| baseline polling | {i['baseline_per_mailbox_hour']} | |",
        "",
        "RSS MiB (idle / under load):",
        "",
        "| process | idle | load |",
        "|---|---|---|",
    ]
    for name in r["rss_mib"]["idle"]:
        lines.append(f"| {name} | {r['rss_mib']['idle'][name]} | {r['rss_mib']['load'].get(name, '—')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ 2b: idle load, compressed timings
def run_idle(args: argparse.Namespace) -> Path:
    """Check the idle extrapolation: the same sandbox with stream renewals every minute (EWS_INGEST_* knobs)."""
    n = args.mailboxes
    compressed = {"stream_minutes": 1.0, "safety_sync_seconds": args.safety_seconds, "stream_group_size": 200.0}
    env = {"EWS_INGEST_STREAM_MINUTES": "1", "EWS_INGEST_SAFETY_SYNC_SECONDS": str(args.safety_seconds)}
    with sandbox(n, seats=n + 100, env=env) as ready:
        mailboxes = [f"user{i:03d}@{DOMAIN}" for i in range(1, n + 1)]
        wait_synced(ready, mailboxes, 60 + n * 0.5)
        time.sleep(5)
        before = ews_requests(ready)
        t0 = time.monotonic()
        time.sleep(args.idle)
        window = time.monotonic() - t0
        ops = op_delta(ews_requests(ready), before)
    # demo people (alice ... erin) are synced too: count per synced mailbox
    synced = n + 5
    measured = sum(ops.values()) / (synced * window / 3600)
    predicted = scheduled_per_mailbox_hour(compressed, synced)
    real_tuning = ingest_tuning()
    real = scheduled_per_mailbox_hour(real_tuning, synced)
    result = {
        "benchmark": "idle-compressed",
        "utc": dt.datetime.now(dt.UTC).isoformat(),
        "machine": machine(),
        "mailboxes_synced": synced,
        "tuning": compressed,
        "window_s": round(window, 1),
        "requests": ops,
        "measured_per_mailbox_hour": round(measured, 2),
        "predicted_per_mailbox_hour": round(predicted, 2),
        "scaled_to_default_tuning_per_mailbox_hour": round(real * measured / predicted, 3) if predicted else None,
        "baseline_polling_per_mailbox_hour": 60.0,
        "target_per_mailbox_hour": 0.05,
    }
    table = "\n".join(
        [
            f"### idle load, compressed timings — {synced} mailboxes, stream renewal every 60 s, safety sync "
            f"{args.safety_seconds:.0f} s, {window:.0f} s window, {result['machine']['cores']} cores",
            "",
            "| | EWS requests per mailbox-hour | target |",
            "|---|---|---|",
            f"| connector, measured (compressed) | {result['measured_per_mailbox_hour']} | |",
            f"| connector, predicted (compressed) | {result['predicted_per_mailbox_hour']} | |",
            f"| connector, scaled to default tuning ({real_tuning['stream_minutes']:.0f}-min renewals, "
            f"{real_tuning['safety_sync_seconds']:.0f} s safety) "
            f"| {result['scaled_to_default_tuning_per_mailbox_hour']} | ≤ 0.05 |",
            "| baseline polling every 60 s | 60.0 | |",
            "",
            f"Requests in the window: {ops}",
            "",
        ]
    )
    return write_result(f"idle-{synced}", result, table, Path(args.out))


# ------------------------------------------------------------------------------------------- 3: initial sync
def run_initial_sync(args: argparse.Namespace) -> Path:
    with sandbox(0, seats=args.mailboxes + 100, configured="demo") as ready:
        return initial_sync_in(ready, args)


def initial_sync_in(ready: dict[str, Any], args: argparse.Namespace) -> Path:
    m, per = args.mailboxes, args.meetings
    admin, inspect = ready["exchange"]["admin_url"], ready["trueconf"]["inspect_url"]
    tc_admin = ready["trueconf"]["admin_url"]
    seeded = http_json(
        f"{admin}/seed",
        "POST",
        {
            "mailboxes": m,
            "meetings_per_mailbox": per,
            "recurring_fraction": 0.1,
            "attendees_per_meeting": 0,
            "domain": DOMAIN,
            "prefix": "seed",
            "days": 28,
        },
        timeout=600,
    )
    mailboxes = [f"seed{i:05d}@{DOMAIN}" for i in range(m)]
    expected = {mb: {it["uid"] for it in http_json(f"{admin}/mailboxes/{mb}/items")} for mb in mailboxes}

    # Baseline: raw exchangelib read of the same items (FindItem + GetItem of every field), same concurrency.
    config = ews_config(ready, args.concurrency)
    before = ews_requests(ready)
    cpu_before = product_cpu_seconds(ready)
    t0 = time.monotonic()

    def read(mailbox: str) -> int:
        return len(list(ews_account(config, mailbox).calendar.all()))

    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        counts = list(pool.map(read, mailboxes))
    raw_s = time.monotonic() - t0
    raw_cpu = cpu_delta(product_cpu_seconds(ready), cpu_before)
    raw_ops = op_delta(ews_requests(ready), before)
    product_ops = {"Subscribe", "SyncFolderItems", "GetStreamingEvents"} & set(raw_ops)
    if product_ops:  # the connector was already at work: the baseline was not measured alone
        raise RuntimeError(f"the connector made {sorted(product_ops)} calls during the baseline: {raw_ops}")
    assert sum(counts) == sum(len(v) for v in expected.values()), (counts, seeded)

    # The connector: TrueConf asks for each user's calendar (getCalendarList), which makes ews-ingest sync
    # the mailbox on demand; done when every seeded meeting (by UID) is in the TrueConf emulator.
    # The users enter the TrueConf directory only now (not timed: TrueConf knows its users before they log in);
    # nothing asks for their calendars before t0, so the connector does not start before the baseline is done.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: http_json(
                    f"{tc_admin}/users", "POST", {"id": f"seed{i:05d}", "email": mailboxes[i], "display_name": f"S {i}"}
                ),
                range(m),
            )
        )
    before = ews_requests(ready)
    cpu_before = product_cpu_seconds(ready)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda mb: http_json(f"{tc_admin}/bridge/request-calendar", "POST", {"user": mb}), mailboxes))

    missing = set(mailboxes)

    def complete() -> bool:
        for mb in sorted(missing):
            got = {e.get("uid") for e in http_json(f"{inspect}/calendars/{mb}")}
            if not expected[mb] <= got:
                return False
            missing.discard(mb)
        return True

    wait_for(complete, args.timeout, 0.5, "every seeded meeting in TrueConf")
    connector_s = time.monotonic() - t0
    connector_cpu = cpu_delta(product_cpu_seconds(ready), cpu_before)
    connector_ops = op_delta(ews_requests(ready), before)
    result = {
        "benchmark": "initial-sync",
        "utc": dt.datetime.now(dt.UTC).isoformat(),
        "machine": machine(),
        "mailboxes": m,
        "meetings_per_mailbox": per,
        "seeded": seeded,
        "concurrency": args.concurrency,
        "connector_s": round(connector_s, 2),
        "baseline_raw_exchangelib_s": round(raw_s, 2),
        "ratio": round(connector_s / raw_s, 2),
        "target_ratio": 1.1,
        "connector_ews_requests": connector_ops,
        "baseline_ews_requests": raw_ops,
        "connector_cpu_s": connector_cpu,
        "baseline_cpu_s": raw_cpu,
        "measurement": "connector: first getCalendarList asked by the TrueConf emulator -> every seeded UID in "
        "/inspect/calendars (polled every 0.5 s); baseline: calendar.all() (FindItem + GetItem) of every "
        "mailbox with a thread pool of the same size as the connector's maxConcurrency",
    }
    table = "\n".join(
        [
            f"### initial sync — {m} mailboxes × {per} meetings ({seeded['meetings']} items), "
            f"{result['machine']['cores']} cores, {result['utc'][:19]}Z",
            "",
            "| | wall s | EWS requests | ratio | target |",
            "|---|---|---|---|---|",
            f"| connector (until all in TrueConf) | {result['connector_s']} | {sum(connector_ops.values())} "
            f"| {result['ratio']} | ≤ 1.1 |",
            f"| raw exchangelib read, concurrency {args.concurrency} | {result['baseline_raw_exchangelib_s']} "
            f"| {sum(raw_ops.values())} | 1 | |",
            "",
        ]
    )
    return write_result(f"initial-sync-{m}", result, table, Path(args.out))


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON and Markdown results")
    sub = parser.add_subparsers(dest="command", required=True)
    live = sub.add_parser("live", help="propagation, idle load and footprint")
    live.add_argument("--mailboxes", type=int, default=50)
    live.add_argument("--rate", type=float, default=5.0, help="UpdateItem per second")
    live.add_argument("--duration", type=float, default=130.0, help="seconds of steady updates")
    live.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    live.add_argument("--poll-period", type=float, default=60.0, help="the baseline's CalendarView period")
    live.add_argument("--concurrency", type=int, default=8)
    initial = sub.add_parser("initial-sync", help="bulk-seeded mailboxes until all is in TrueConf")
    initial.add_argument("--mailboxes", type=int, default=20)
    initial.add_argument("--meetings", type=int, default=25)
    initial.add_argument("--concurrency", type=int, default=8, help="as calendarProviders[].maxConcurrency")
    initial.add_argument("--timeout", type=float, default=900.0)
    idle = sub.add_parser("idle", help="idle load with compressed ews-ingest timings (checks the extrapolation)")
    idle.add_argument("--mailboxes", type=int, default=50)
    idle.add_argument("--idle", type=float, default=185.0)
    idle.add_argument("--safety-seconds", type=float, default=120.0)
    sub.add_parser("smoke", help="smallest configuration of each benchmark (for make test)")
    args = parser.parse_args(argv)
    if args.command == "live":
        run_live(args)
    elif args.command == "idle":
        run_idle(args)
    elif args.command == "initial-sync":
        run_initial_sync(args)
    else:
        # One sandbox for both EWS benchmarks (its start-up dominates), then the engine alone.
        import bench_engine

        out = args.out
        with sandbox(3, seats=100) as ready:  # 2 for the burst, 1 for the lone meeting during it
            live_in(
                ready,
                argparse.Namespace(
                    mailboxes=2, rate=4.0, duration=2.0, idle=1.0, poll_period=2.0, concurrency=2, out=out
                ),
            )
            initial_sync_in(ready, argparse.Namespace(mailboxes=2, meetings=3, concurrency=2, timeout=60.0, out=out))
        bench_engine.main(["--out", out, "--changes", "30", "--mailboxes", "3", "--timeout", "60"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
