"""`tc-calendar test exchange USER` and `tc-calendar test trueconf [SERVER_ID]`: step-by-step connectivity checks.

The checks that need credentials run inside the services (IngestService.TestMailbox, GatewayService.TestServer)
with their own configuration and secrets, so this command needs only the admin token. Each step prints OK, FAIL
(with what was found and what to fix) or SKIP. Exit code 0 when no step failed, 1 otherwise (or a service is down).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import click

from tccal.cli.admin import EXIT_FAILED, Admin, config_option, json_option
from trueconf.calendar.v1 import common_pb2, gateway_pb2, ingest_pb2

OUTCOMES = {
    common_pb2.CONNECTIVITY_OUTCOME_OK: "OK",
    common_pb2.CONNECTIVITY_OUTCOME_FAIL: "FAIL",
    common_pb2.CONNECTIVITY_OUTCOME_SKIPPED: "SKIP",
}


def step_dicts(steps: Iterable[common_pb2.ConnectivityStep]) -> list[dict[str, str]]:
    return [
        {"name": s.name, "outcome": OUTCOMES.get(s.outcome, "UNKNOWN"), "detail": s.detail, "fix": s.fix} for s in steps
    ]


def print_steps(steps: list[dict[str, str]]) -> None:
    for step in steps:
        click.echo(f"  {step['outcome']:<5} {step['name']:<14} {step['detail']}")
        if step["fix"]:
            click.echo(f"  {'':<5} {'':<14} fix: {step['fix']}")


def verdict(steps: list[dict[str, str]]) -> str:
    failed = [s["name"] for s in steps if s["outcome"] == "FAIL"]
    return f"FAIL at {failed[0]}" if failed else "OK"


@click.group("test")
def test_group() -> None:
    """Check step by step that Exchange or TrueConf Server works with the connector (DNS, TCP, TLS, auth, ...)."""


@test_group.command("exchange")
@config_option
@click.argument("user")
@json_option
def test_exchange(config_path: str | None, user: str, as_json: bool) -> None:
    """Can ews-ingest read USER's calendar? DNS, TCP, TLS, authentication of the credential serving USER,
    impersonation of USER, one read of the calendar - run by ews-ingest with its own credentials."""
    admin = Admin.load(config_path, timeout=120.0)
    answer = admin.call(
        "ews-ingest", "TestMailbox", ingest_pb2.TestMailboxRequest(mailbox=user), ingest_pb2.TestMailboxResponse
    )
    steps = step_dicts(answer.steps)
    result: dict[str, Any] = {
        "mailbox": user.strip().lower(),
        "provider": answer.provider,
        "credential": answer.credential,
        "ews_url": answer.ews_url,
        "result": verdict(steps),
        "steps": steps,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"Exchange: {result['mailbox']} via {answer.credential} at {answer.ews_url}")
        print_steps(steps)
        click.echo(f"Result: {result['result']}")
    if result["result"] != "OK":
        sys.exit(EXIT_FAILED)


@test_group.command("trueconf")
@config_option
@click.argument("server_id", required=False, default="")
@json_option
def test_trueconf(config_path: str | None, server_id: str, as_json: bool) -> None:
    """Does TrueConf Server SERVER_ID (default: every one in tcs.servers) work with the connector? Its REST API
    (DNS, TCP, TLS, OAuth2 token, one read) and its calendar bridge (connected, answering) - run by tcs-gateway
    with its own secrets."""
    admin = Admin.load(config_path, timeout=120.0)
    answer = admin.call(
        "tcs-gateway", "TestServer", gateway_pb2.TestServerRequest(server_id=server_id), gateway_pb2.TestServerResponse
    )
    servers: list[dict[str, Any]] = [
        {"server_id": s.server_id, "result": verdict(step_dicts(s.steps)), "steps": step_dicts(s.steps)}
        for s in answer.servers
    ]
    if as_json:
        click.echo(json.dumps({"servers": servers}, indent=2))
    else:
        if not servers:
            click.echo("No TrueConf Server in tcs.servers.")
        for server in servers:
            click.echo(f"TrueConf Server {server['server_id']}")
            print_steps(server["steps"])
            click.echo(f"Result: {server['result']}")
    if not servers or any(s["result"] != "OK" for s in servers):
        sys.exit(EXIT_FAILED)
