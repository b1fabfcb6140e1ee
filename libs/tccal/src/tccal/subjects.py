"""Every name on the bus, in one place: JetStream streams and their subjects, KV buckets, core control subjects.

Publishers and consumers import their subjects from here and nowhere else (docs/architecture.md §4.2).

* stream CALENDAR, `calendar.v1.changes.<provider>.<mailbox>`: `CalendarChange` from ews-ingest to sync-engine;
* stream TCS_COMMANDS, `tcs.v1.commands.<server>`: `TcsCommand` from sync-engine to tcs-gateway;
* stream TCS_RESULTS, `tcs.v1.results.<server>`: `TcsCommandResult` from tcs-gateway to sync-engine and to
  ews-ingest (join-link write-back);
* stream DEADLETTER, `dlq.<stream>.<durable>`: what a consumer gave up on, for the administrator;
* core `calendar.v1.control.resync.<mailbox>`: `ResyncMailboxRequest` from sync-engine to ews-ingest, or to
  graph-ingest for a mailbox of a Graph provider (it subscribes to those exact subjects only);
* core `calendar.v1.control.ondemand.<mailbox>`: request/reply from tcs-gateway to ews-ingest (a user TrueConf
  asked for), or to graph-ingest as above;
* core `calendar.v1.control.seats`: "the license changed" from licensing's CLI to ews-ingest and tcs-gateway.

A `<mailbox>` or `<server>` token is `subject_token(text)`: lower case, with the characters NATS gives a meaning
('.', '*', '>') and the escape character itself percent-encoded, so one address is always one token.
"""

from __future__ import annotations

CALENDAR = "CALENDAR"
TCS_COMMANDS = "TCS_COMMANDS"
TCS_RESULTS = "TCS_RESULTS"
DEADLETTER = "DEADLETTER"

_CHANGES = "calendar.v1.changes"
_COMMANDS = "tcs.v1.commands"
_RESULTS = "tcs.v1.results"
_DEADLETTER = "dlq"
_CONTROL = "calendar.v1.control"

#: The subjects each stream holds.
STREAM_SUBJECTS = {
    CALENDAR: f"{_CHANGES}.>",
    TCS_COMMANDS: f"{_COMMANDS}.>",
    TCS_RESULTS: f"{_RESULTS}.>",
    DEADLETTER: f"{_DEADLETTER}.>",
}

#: KV bucket of ews-ingest's checkpoints, seats and on-demand mailboxes (ews_ingest.state).
INGEST_STATE_BUCKET = "INGEST_STATE"
#: ews-ingest replicas' registry and mailbox-shard leases (a bucket with a TTL: ews_ingest.ownership).
INGEST_LEASES_BUCKET = "INGEST_LEASES"
#: KV bucket of graph-ingest's delta links, sequences and last seat answer (graph_ingest.state).
GRAPH_STATE_BUCKET = "GRAPH_INGEST_STATE"
#: KV bucket of tcs-gateway's per-server state (tcs_gateway.state).
GATEWAY_STATE_BUCKET = "TCS_GATEWAY"
#: tcs-gateway replicas' per-TrueConf-Server leases (a bucket with a TTL: tcs_gateway.server_lease).
GATEWAY_LEASES_BUCKET = "TCS_GATEWAY_LEASES"
#: KV bucket of tcs-gateway's conference command order fence (tcs_gateway.conference_order).
CONFERENCE_ORDER_BUCKET = "TCS_CONFERENCE_ORDER"

#: Core subjects ews-ingest subscribes to: re-read a mailbox, sync a mailbox TrueConf asked for, ask for seats.
RESYNC_SUBJECTS = f"{_CONTROL}.resync.*"
ONDEMAND_SUBJECTS = f"{_CONTROL}.ondemand.*"
#: "The license changed, ask licensing for seats again now" (payload ignored).
SEATS_SUBJECT = f"{_CONTROL}.seats"

_ESCAPED = {".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "%": "%25", "\t": "%09"}
_UNESCAPED = {code: char for char, code in _ESCAPED.items()}
_ESCAPE_TABLE = str.maketrans(_ESCAPED)


def subject_token(text: str) -> str:
    """Make `text` (an e-mail, a server id) one NATS subject token: '.', '*', '>', '%' and blanks escaped."""
    return text.lower().translate(_ESCAPE_TABLE)


def unescape_token(token: str) -> str:
    """Inverse of `subject_token` (up to case: tokens are lower case)."""
    out: list[str] = []
    i = 0
    while i < len(token):
        piece = token[i : i + 3].upper()
        if token[i] == "%" and piece in _UNESCAPED:
            out.append(_UNESCAPED[piece])
            i += 3
        else:
            out.append(token[i])
            i += 1
    return "".join(out)


def calendar_subject(provider: str, mailbox: str) -> str:
    return f"{_CHANGES}.{subject_token(provider)}.{subject_token(mailbox)}"


def commands_subject(server_id: str) -> str:
    return f"{_COMMANDS}.{subject_token(server_id)}"


def results_subject(server_id: str) -> str:
    return f"{_RESULTS}.{subject_token(server_id)}"


def deadletter_subject(stream: str, durable: str) -> str:
    return f"{_DEADLETTER}.{stream.lower()}.{subject_token(durable)}"


def resync_subject(mailbox: str) -> str:
    return f"{_CONTROL}.resync.{subject_token(mailbox)}"


def ondemand_subject(mailbox: str) -> str:
    return f"{_CONTROL}.ondemand.{subject_token(mailbox)}"
