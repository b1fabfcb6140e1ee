"""`tc-calendar status` as text: one screen from the data `ops.collect_status` gathers (the same as `--json`)."""

from __future__ import annotations

from typing import Any


def _enum(value: Any, prefix: str) -> str:
    return str(value or "unknown").removeprefix(prefix).lower()


def _license(data: dict[str, Any]) -> list[str]:
    if "error" in data:
        return [f"License     unknown: {data['error']}"]
    tier = _enum(data.get("tier"), "LICENSE_TIER_")
    state = _enum(data.get("status"), "LICENSE_STATUS_")
    line = f"License     {tier}, {state}, {data.get('seats_used', 0)} of {data.get('seats', 0)} seats used"
    if data.get("expires_at"):
        line += f", expires {data['expires_at']}"
    lines = [line]
    if data.get("status_reason"):
        lines.append(f"            {data['status_reason']}")
    return lines


def _instant(value: Any) -> str:
    """2026-12-05T19:58:33.032361Z -> 2026-12-05T19:58:33Z."""
    text = str(value or "?")
    return text.split(".", 1)[0] + "Z" if "." in text else text


def _servers(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [f"TrueConf    unknown: {data['error']}"]
    if not data:
        return ["TrueConf    no TrueConf Server whitelisted (productWhitelist.tcs)"]
    lines = ["TrueConf Servers"]
    for server in data:
        if server.get("connected"):
            since = _instant(server.get("connected_since"))
            bridge = f"bridge connected since {since} from {server.get('peer', '?')}"
        else:
            bridge = "bridge NOT connected"
            if server.get("last_seen"):
                bridge += f" (last seen {_instant(server['last_seen'])})"
        queue = f", {server.get('queue_depth', 0)} push(es) waiting" if server.get("queue_depth") else ""
        lines.append(f"  {server['server_id']:<28} {bridge}{queue}, {server.get('users', 0)} user(s)")
        for error in server.get("last_errors", [])[:3]:
            lines.append(f"  {'':<28} {error}")
    return lines


def _mailboxes(data: dict[str, Any]) -> list[str]:
    if "error" in data:
        return [f"Mailboxes   unknown: {data['error']}"]
    counts = ", ".join(f"{count} {state.replace('_', ' ')}" for state, count in data["by_state"].items())
    return [f"Mailboxes   {data['total']}: {counts}"]


def _progress(data: dict[str, Any]) -> list[str]:
    if "error" in data:
        return []
    line = (
        f"First sync  {data['mailboxes_done']}/{data['mailboxes_total']} mailboxes done, {data['items']} items, "
        f"{data['items_per_second']:.1f} items/s"
    )
    if data.get("finished_at"):
        line += f", finished {data['finished_at']}"
    elif data["seconds_left"]:
        line += f", about {data['seconds_left']:.0f} s left"
    if data["mailboxes_failed"]:
        line += f", {data['mailboxes_failed']} failing"
    return [line]


def render_status(report: dict[str, Any]) -> str:
    lines = ["Services"]
    for name, service in report["services"].items():
        lines.append(f"  {name:<12} {service['address']:<22} {service['health']}")
    lines += _license(report["license"])
    lines += _servers(report["servers"])
    lines += _mailboxes(report["mailboxes"])
    lines += _progress(report["sync_progress"])
    errors = report.get("last_errors", [])
    if errors:
        lines.append("Last errors")
        for error in errors:
            lines.append(f"  {error['at']}  {error['mailbox']} ({error['state']}): {error['cause']}")
    return "\n".join(lines)
