"""Scale-out on one machine, for the fault suite (tests/scale/test_scale_faults.py) and the benchmark
(bench/bench_scale.py) of issue #18: more processes of a running sandbox's services, steady changes written through
EWS the way Outlook writes them, and what reached TrueConf (the emulator's inspection API), by subject.

Nothing here mocks anything: replicas are `python -m <service>` processes with the sandbox's config (own ports),
changes are exchangelib CreateItem calls against the Exchange emulator, arrivals are read from TrueConf's
`/inspect/calendars` (a summary with each user's last sequence number, then only the users whose number moved).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient


# ------------------------------------------------------------------------------------------ HTTP helpers
def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def bridge(ready: Mapping[str, Any]) -> dict[str, Any]:
    """The TrueConf emulator's bridge inspection (GET /inspect/bridge): state, connected_url, counters."""
    inspected: dict[str, Any] = http_json(f"{ready['trueconf']['inspect_url']}/bridge")
    return inspected


def point_bridge(ready: Mapping[str, Any], url: str, fallbacks: Iterable[str]) -> None:
    """Make TrueConf Server connect to `url`, and to the `fallbacks` in turn when it cannot (what a Kubernetes
    Service in front of the gateway replicas does for a reconnect)."""
    http_json(
        f"{ready['trueconf']['admin_url']}/bridge/target",
        "PUT",
        {"gateway_url": url, "gateway_fallback_urls": list(fallbacks)},
    )


def conferences(ready: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = http_json(
        f"{ready['trueconf']['inspect_url']}/conferences?prefix={urllib.parse.quote(prefix)}"
    )
    return found


def owners_report(ready: Mapping[str, Any]) -> dict[str, Any]:
    """The Exchange emulator's GET /_emulator/owners: streams and SyncFolderItems runs per mailbox at once."""
    report: dict[str, Any] = http_json(f"{ready['exchange']['admin_url']}/owners")
    return report


# ------------------------------------------------------------------------------------------ leases (NATS KV)
def _owner_name(value: bytes | None) -> str | None:
    """A lease value's owner as its replica name (`<replica>-<instance>` -> `<replica>`)."""
    if not value:
        return None
    return str(json.loads(value)["owner"]).rsplit("-", 1)[0]


async def ingest_lease_owners(nc: NatsClient) -> tuple[int, dict[int, str]]:
    """The installation's shard count and each held shard's owner (its EWS_INGEST_REPLICA name)."""
    from ews_ingest.ownership import SHARD_PREFIX, SHARDS_KEY
    from tccal.subjects import INGEST_LEASES_BUCKET, INGEST_STATE_BUCKET

    js = nc.jetstream()
    state = await js.key_value(INGEST_STATE_BUCKET)
    shards = int(json.loads((await state.get(SHARDS_KEY)).value or b"{}")["shards"])
    leases = await js.key_value(INGEST_LEASES_BUCKET)
    owners: dict[int, str] = {}
    for shard in range(shards):
        try:
            entry = await leases.get(f"{SHARD_PREFIX}{shard}")
        except Exception:  # no key (or deleted): nobody holds the shard
            continue
        owner = _owner_name(entry.value)
        if owner:
            owners[shard] = owner
    return shards, owners


async def gateway_lease_owner(nc: NatsClient, server_id: str) -> str | None:
    """The tcs-gateway replica (its TCS_GATEWAY_REPLICA name) holding TrueConf Server `server_id`'s lease."""
    from tccal.subjects import GATEWAY_LEASES_BUCKET
    from tcs_gateway.server_lease import lease_key

    kv = await nc.jetstream().key_value(GATEWAY_LEASES_BUCKET)
    try:
        entry = await kv.get(lease_key(server_id))
    except Exception:  # no key: nobody holds it
        return None
    return _owner_name(entry.value)


# ------------------------------------------------------------------------------------- NATS cluster nodes
def restart_nats_node(node: Mapping[str, Any]) -> subprocess.Popen[bytes]:
    """Start a node of the sandbox's NATS cluster again after it was killed (one of the ready-file's
    `nats.nodes`): the same config file, so the same ports, server name, routes and store directory. The caller
    owns the process (stop it at the end); it dies with the caller too. Returns once the node takes clients."""
    from tccal_sandbox.embedded import die_with_parent, nats_server_binary

    store = Path(node["store_dir"])
    config = node.get("config") or str(store / "nats-server.conf")
    with open(store / "nats-server.log", "ab") as log_file:
        process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    host, port = urllib.parse.urlsplit(node["url"]).hostname or "127.0.0.1", urllib.parse.urlsplit(node["url"]).port
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}; see {store / 'nats-server.log'}")
        try:
            with socket.create_connection((host, int(port or 4222)), timeout=0.5):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"the restarted NATS node {node['url']} did not listen within 60 s") from None
            time.sleep(0.1)


async def stream_clusters(nc: NatsClient) -> dict[str, dict[str, Any]]:
    """Every JetStream stream (KV buckets included) as its leader reports it: `leader`, `replicas` (server name ->
    `{current, offline, lag}` of each follower) and `last_seq`."""
    found: dict[str, dict[str, Any]] = {}
    for info in await nc.jetstream().streams_info():
        cluster = info.cluster
        peers = (cluster.replicas or []) if cluster is not None else []
        found[str(info.config.name)] = {
            "leader": cluster.leader if cluster is not None else None,
            "replicas": {
                str(p.name): {"current": bool(p.current), "offline": bool(p.offline), "lag": int(p.lag or 0)}
                for p in peers
            },
            "last_seq": int(info.state.last_seq),
        }
    return found


def node_last_sequences(monitor: str) -> dict[str, int]:
    """The streams one NATS node stores and the last sequence it holds of each (its monitoring endpoint /jsz)."""
    data: dict[str, Any] = http_json(f"{monitor}/jsz?accounts=true&streams=true", timeout=10)
    return {
        str(stream["name"]): int(stream["state"]["last_seq"])
        for account in data.get("account_details") or []
        for stream in account.get("stream_detail") or []
    }


def tcs_server_id(ready: Mapping[str, Any]) -> str:
    config = json.loads(Path(ready["services"]["tcs-gateway"]["config"]).read_text())
    return str(config["tcs"]["servers"][0]["id"])


# ------------------------------------------------------------------------------------- Outlook's writes
class Outlook:
    """Writes meetings through EWS as Outlook does (exchangelib, impersonation by the sandbox's service account)."""

    def __init__(self, ready: Mapping[str, Any], connections: int = 4) -> None:
        from exchangelib import NTLM, Configuration, Credentials

        account = ready["exchange"]["service_account"]
        self.config = Configuration(
            service_endpoint=ready["exchange"]["ews_url"],
            credentials=Credentials(account["username"], account["password"]),
            auth_type=NTLM,
            max_connections=connections,
        )
        self._accounts: dict[str, Any] = {}
        self._lock = threading.Lock()

    def account(self, mailbox: str) -> Any:
        from exchangelib import IMPERSONATION, Account

        with self._lock:
            if mailbox not in self._accounts:
                self._accounts[mailbox] = Account(
                    primary_smtp_address=mailbox, config=self.config, autodiscover=False, access_type=IMPERSONATION
                )
            return self._accounts[mailbox]

    def meeting(self, mailbox: str, subject: str, *, location: str = "", attendees: Iterable[str] = ()) -> Any:
        """CreateItem of a meeting in two days (invitations sent when there are attendees); returns the item."""
        from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
        from exchangelib.properties import Attendee, Mailbox

        account = self.account(mailbox)
        start = EWSDateTime.from_datetime(dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=2))
        start = start.astimezone(EWSTimeZone("UTC"))
        invited = [Attendee(mailbox=Mailbox(email_address=a)) for a in attendees]
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject=subject,
            start=start,
            end=start + dt.timedelta(minutes=30),
            location=location or None,
            required_attendees=invited or None,
        )
        item.save(send_meeting_invitations="SendToAllAndSaveCopy" if invited else "SendToNone")
        return item

    def meetings(self, subjects: Mapping[str, str], concurrency: int = 4) -> dict[str, tuple[Any, float]]:
        """subject -> mailbox, written `concurrency` at once; returns subject -> (the item, monotonic time of the
        response)."""
        written: dict[str, tuple[Any, float]] = {}

        def one(subject: str) -> None:
            item = self.meeting(subjects[subject], subject)
            written[subject] = (item, time.monotonic())

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, subjects))
        return written

    @staticmethod
    def retitle(items: Mapping[str, Any], concurrency: int = 4) -> dict[str, float]:
        """new subject -> item: UpdateItem of each item's subject, `concurrency` at once; returns new subject ->
        monotonic time of each response."""
        written: dict[str, float] = {}

        def one(subject: str) -> None:
            item = items[subject]
            item.subject = subject
            item.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
            written[subject] = time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, items))
        return written


@dataclass
class SteadyChanges:
    """A change every 1/rate seconds, round-robin over `mailboxes`, from a thread, until stopped: in even rounds a
    new meeting (CreateItem), in odd rounds that meeting's subject changed (UpdateItem: the same item changing again
    after its mailbox moved between replicas). `sent` is subject -> (mailbox, monotonic time of the EWS response); a
    failed write is kept in `errors` (Exchange is not the one failing in the scale-out suite, so any error is a
    finding)."""

    outlook: Outlook
    mailboxes: list[str]
    rate: float
    prefix: str = "steady"
    sent: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: subject -> the subject an update replaced it with (the same meeting's later state)
    superseded: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _items: dict[str, Any] = field(default_factory=dict)  #: mailbox -> the meeting its next update changes
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="steady-changes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        k = 0
        while not self._stop.is_set():
            delay = began + k / self.rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            mailbox = self.mailboxes[k % len(self.mailboxes)]
            subject = f"{self.prefix} {k} {mailbox}"
            try:
                item = self._items.get(mailbox)
                if item is not None and (k // len(self.mailboxes)) % 2 == 1:
                    self.superseded[str(item.subject)] = subject
                    item.subject = subject
                    item.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
                else:
                    self._items[mailbox] = self.outlook.meeting(mailbox, subject)
                self.sent[subject] = (mailbox, time.monotonic())
            except Exception as exc:  # kept and reported: the test fails on it
                self.errors.append(f"{subject}: {type(exc).__name__}: {exc}")
            k += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


# -------------------------------------------------------------------------------- what reached TrueConf
class TrueConfCalendars:
    """What TrueConf Server's users see, by subject: polled from a thread (GET /inspect/calendars for each user's
    last sequence number, then /inspect/calendars/{email} of the users whose number moved)."""

    def __init__(self, ready: Mapping[str, Any], interval: float = 0.05) -> None:
        self.inspect = ready["trueconf"]["inspect_url"]
        self.interval = interval
        #: user -> Counter(subject) of the events that user's calendar shows now (two alike = a duplicate)
        self.calendars: dict[str, Counter[str]] = {}
        #: subject -> monotonic time it was first seen
        self.first_seen: dict[str, float] = {}
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trueconf-calendars", daemon=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(4)

    def __enter__(self) -> TrueConfCalendars:
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except OSError:  # the emulator is busy: the next round reads it again
                continue

    def _read(self, user: str) -> tuple[str, Counter[str]]:
        events: list[dict[str, Any]] = http_json(f"{self.inspect}/calendars/{user}")
        return user, Counter(str(e.get("subject")) for e in events if not e.get("cancelled"))

    def poll(self) -> None:
        summary: dict[str, dict[str, Any]] = http_json(f"{self.inspect}/calendars")
        moved = [u for u, s in summary.items() if self._seqs.get(u) != s.get("last_seq")]
        seqs = {u: int(summary[u].get("last_seq") or 0) for u in moved}
        for user, subjects in self._pool.map(self._read, moved):
            at = time.monotonic()
            with self._lock:
                self.calendars[user] = subjects
                self._seqs[user] = seqs[user]
                for subject in subjects:
                    self.first_seen.setdefault(subject, at)

    def arrived(self, subjects: Iterable[str]) -> bool:
        with self._lock:
            return all(s in self.first_seen for s in subjects)

    def missing(self, subjects: Iterable[str], superseded: Mapping[str, str] | None = None) -> list[str]:
        """Subjects never shown; with `superseded` (subject -> the one an update replaced it with), a subject whose
        meeting was shown in a later state is not missing: TrueConf shows a meeting's latest state, and a mailbox
        synced after both writes (one whose replica was killed in between) rightly never shows the earlier one."""
        later = superseded or {}

        def shown(subject: str) -> bool:
            while subject not in self.first_seen:
                if subject not in later:
                    return False
                subject = later[subject]
            return True

        with self._lock:
            return sorted(s for s in subjects if not shown(s))

    def duplicates(self, subjects: Iterable[str]) -> dict[str, int]:
        """Subjects shown more than once in one user's calendar (a meeting TrueConf got twice)."""
        wanted = set(subjects)
        with self._lock:
            return {
                f"{user}: {s}": n for user, c in self.calendars.items() for s, n in c.items() if s in wanted and n > 1
            }
