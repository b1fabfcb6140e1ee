"""Who may do what on NATS: one identity per service, least privilege, in NATS server's own terms.

Every name comes from tccal.subjects. Each identity is a NATS server user (user + password, in the
`authorization { users = [...] }` block) with publish/subscribe allow-lists (docs/architecture.md §4.6):

* its own reply inbox only: a service connects with the inbox prefix `_INBOX.<identity>` (`inbox_prefix`) and
  may subscribe to `_INBOX.<identity>.>` - never to another service's replies;
* JetStream API subjects (`$JS.API.…`) only for the streams it declares, the durable consumers it owns and its
  own KV bucket (a bucket B is the stream KV_B with subjects `$KV.B.>`);
* acks (`$JS.ACK.<stream>.<durable>.>`) only of its own consumers;
* the dead-letter subject of its own consumers only.

`admin` is the operator's identity (the `nats` CLI, reading dead letters, the tests' harness): everything.
`server_authorization()` renders the block NATS server reads; the sandbox, docker-compose and the Helm chart
serve it (tests/deploy checks that the files they ship say the same).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tccal.subjects import (
    CALENDAR,
    CONFERENCE_ORDER_BUCKET,
    DEADLETTER,
    GATEWAY_LEASES_BUCKET,
    GATEWAY_STATE_BUCKET,
    GRAPH_STATE_BUCKET,
    INGEST_LEASES_BUCKET,
    INGEST_STATE_BUCKET,
    ONDEMAND_SUBJECTS,
    RESYNC_SUBJECTS,
    SEATS_SUBJECT,
    STREAM_SUBJECTS,
    TCS_COMMANDS,
    TCS_RESULTS,
    deadletter_subject,
)

ADMIN = "admin"
#: The durable consumers each service owns (`None`: any name - tcs-gateway makes one per TrueConf Server).
_CONSUMERS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "ews-ingest": ((TCS_RESULTS, "ews-ingest-writeback"),),
    "sync-engine": ((CALENDAR, "sync-engine-calendar"), (TCS_RESULTS, "sync-engine-results")),
    "tcs-gateway": ((TCS_COMMANDS, None),),
    "licensing": (),
    "graph-ingest": ((TCS_RESULTS, "graph-ingest-writeback"),),
}


@dataclass(frozen=True)
class Identity:
    """One NATS user: what it may publish and subscribe to, and what it declares at connect."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: May answer requests it received (NATS server `allow_responses`): ews-ingest answering on-demand requests.
    allow_responses: bool = False
    #: Streams it declares (creates or updates) at connect: those it publishes to or consumes from.
    streams: tuple[str, ...] = ()
    #: KV buckets it owns (declared at connect by tccal.bus when listed here, else by the service itself).
    buckets: tuple[str, ...] = ()

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.name)

    def permissions(self) -> dict[str, object]:
        """The `permissions` object of this user in NATS server's configuration."""
        granted: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            granted["allow_responses"] = True
        return granted


def inbox_prefix(identity: str) -> str:
    """Replies to `identity` come to `_INBOX.<identity>.…` (nats-py `inbox_prefix`)."""
    return f"_INBOX.{identity}"


def _declare(stream: str) -> list[str]:
    return [f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE")]


def _consumer(stream: str, durable: str | None) -> list[str]:
    name = durable or "*"
    api = "$JS.API.CONSUMER"
    return [
        f"{api}.CREATE.{stream}.{name}",
        f"{api}.CREATE.{stream}.{name}.>",  # nats-py appends the filter subject
        f"{api}.DURABLE.CREATE.{stream}.{name}",
        f"{api}.INFO.{stream}.{name}",
        f"{api}.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    ]


def _bucket(bucket: str) -> list[str]:
    """A KV bucket: its stream KV_<bucket> (declare, read, watch/keys through ephemeral consumers), its subjects."""
    stream = f"KV_{bucket}"
    api = "$JS.API"
    return [
        *_declare(stream),
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$KV.{bucket}.>",
    ]


def _service(
    name: str,
    *,
    publish: Iterable[str] = (),
    subscribe: Iterable[str] = (),
    streams: tuple[str, ...] = (),
    buckets: tuple[str, ...] = (),
    allow_responses: bool = False,
) -> Identity:
    allowed = list(publish)
    if streams or buckets:
        allowed.append("$JS.API.INFO")
    for stream in streams:
        allowed += _declare(stream)
    for stream, durable in _CONSUMERS[name]:
        allowed += _consumer(stream, durable)
        if durable is not None:  # consume() dead-letters what it gives up on (tcs-gateway never does)
            allowed.append(deadletter_subject(stream, durable))
    for bucket in buckets:
        allowed += _bucket(bucket)
    return Identity(
        name=name,
        publish=tuple(dict.fromkeys(allowed)),
        subscribe=(*subscribe, f"{inbox_prefix(name)}.>"),
        allow_responses=allow_responses,
        streams=streams,
        buckets=buckets,
    )


def _subjects(stream: str) -> str:
    return STREAM_SUBJECTS[stream]


IDENTITIES: dict[str, Identity] = {
    "ews-ingest": _service(
        "ews-ingest",
        publish=[_subjects(CALENDAR)],
        subscribe=[RESYNC_SUBJECTS, ONDEMAND_SUBJECTS, SEATS_SUBJECT],
        streams=(CALENDAR, TCS_RESULTS, DEADLETTER),
        buckets=(INGEST_STATE_BUCKET, INGEST_LEASES_BUCKET),
        allow_responses=True,  # the answer to tcs-gateway's on-demand request
    ),
    "sync-engine": _service(
        "sync-engine",
        publish=[
            _subjects(TCS_COMMANDS),
            RESYNC_SUBJECTS,
            # `tc-calendar dead-letters` (SyncService List/ReplayDeadLetters): read and delete the dead letters
            # of its own consumers. A replay is applied in the engine itself (sync_engine.deadletters), never
            # published: sync-engine may not publish calendar changes or TrueConf results.
            f"$JS.API.STREAM.MSG.GET.{DEADLETTER}",
            f"$JS.API.DIRECT.GET.{DEADLETTER}",
            f"$JS.API.DIRECT.GET.{DEADLETTER}.>",
            f"$JS.API.STREAM.MSG.DELETE.{DEADLETTER}",
        ],
        streams=(CALENDAR, TCS_COMMANDS, TCS_RESULTS, DEADLETTER),
    ),
    "tcs-gateway": _service(
        "tcs-gateway",
        publish=[_subjects(TCS_RESULTS), ONDEMAND_SUBJECTS],
        subscribe=[SEATS_SUBJECT],
        streams=(TCS_COMMANDS, TCS_RESULTS),
        buckets=(GATEWAY_STATE_BUCKET, GATEWAY_LEASES_BUCKET, CONFERENCE_ORDER_BUCKET),
    ),
    # Exchange Online through Microsoft Graph: publishes CalendarChanges like ews-ingest, keeps its delta links in a
    # bucket of its own, consumes TrueConf results for the join-link write-back, hears seat announcements, answers the
    # resync/on-demand control requests of its own mailboxes (their exact subjects; every on-demand subject when an
    # entry claims mail domains, answering only for addresses the config gives to Graph).
    "graph-ingest": _service(
        "graph-ingest",
        publish=[_subjects(CALENDAR)],
        subscribe=[RESYNC_SUBJECTS, ONDEMAND_SUBJECTS, SEATS_SUBJECT],
        streams=(CALENDAR, TCS_RESULTS, DEADLETTER),
        buckets=(GRAPH_STATE_BUCKET,),
        allow_responses=True,  # the answer to a control request
    ),
    # licensing's CLI only: "the license changed" after --register / --offline_reg.
    "licensing": _service("licensing", publish=[SEATS_SUBJECT]),
    ADMIN: Identity(name=ADMIN, publish=(">",), subscribe=(">",), streams=tuple(STREAM_SUBJECTS)),
}
SERVICE_IDENTITIES = ("ews-ingest", "sync-engine", "tcs-gateway", "licensing", "graph-ingest")


def identity(name: str) -> Identity:
    try:
        return IDENTITIES[name]
    except KeyError:
        raise KeyError(f"no NATS identity {name!r} (known: {', '.join(IDENTITIES)})") from None


def _quote(value: str) -> str:
    """A NATS server config string (JSON string syntax is a subset it reads)."""
    return json.dumps(value)


def server_authorization(passwords: Mapping[str, str], *, indent: str = "", variables: bool = False) -> str:
    """The `authorization { users = [...] }` block for NATS server: one user per identity in `passwords` (with
    `variables`, each value is the name of a variable or environment variable holding the password).

    No `no_auth_user`: a client without credentials is refused at connect.
    """
    lines = [f"{indent}authorization {{", f"{indent}  users = ["]
    for name, password in passwords.items():
        who = identity(name)
        permissions = json.dumps(who.permissions(), indent=None)
        secret = f"${password}" if variables else _quote(password)
        lines.append(f"{indent}    {{user: {_quote(name)}, password: {secret}, permissions: {permissions}}}")
    lines += [f"{indent}  ]", f"{indent}}}"]
    return "\n".join(lines) + "\n"


def password_variable(identity: str) -> str:
    """The environment variable a NATS server configuration may take `identity`'s password from."""
    return "TCCAL_NATS_" + identity.upper().replace("-", "_") + "_PASSWORD"


def server_authorization_from_environment(identities: Iterable[str] = IDENTITIES) -> str:
    """The `authorization` block with each password a reference to an environment variable of the NATS server
    (`password_variable`): the NATS server resolves `$NAME` from its environment, so no password is written down."""
    return server_authorization({name: password_variable(name) for name in identities}, variables=True)


def permission_table() -> list[tuple[str, str, str]]:
    """(identity, publish, subscribe) as Markdown-friendly text, for docs and `tc-calendar nats-auth`."""
    rows = []
    for who in IDENTITIES.values():
        extra = " + replies to requests it received" if who.allow_responses else ""
        rows.append((who.name, ", ".join(who.publish) + extra, ", ".join(who.subscribe)))
    return rows
