"""JSON batching: POST /v1.0/$batch.

https://learn.microsoft.com/en-us/graph/json-batching: {"requests": [{id, method, url, headers, body, dependsOn}]} →
{"responses": [{id, status, headers, body}]}; at most 20 requests (more → 400); ids unique; a body needs a
Content-Type header; a request whose dependsOn failed answers 424 Failed Dependency. Each request is checked against
throttling on its own (https://learn.microsoft.com/en-us/graph/throttling#throttling-and-batching), so a member can
answer 429 with its own Retry-After while the others succeed.

Execution, as Microsoft describes it:
- A batch is either fully parallel (no dependsOn) or fully sequential (every request after the first has dependsOn);
  a mix is refused with 400 "Batch should be either fully sequential or fully parallel"
  (https://learn.microsoft.com/en-us/answers/questions/1532547, Microsoft's answer). dependsOn may only name earlier
  ids of the same batch.
- Graph dispatches up to four members of a parallel batch to Outlook at the same time
  (https://learn.microsoft.com/en-us/answers/questions/1660054, Microsoft's answer), each holding one of the mailbox's
  four concurrent requests (throttle.py): a client that has other requests in flight for the mailbox sees members
  answer 429 MailboxConcurrency. Sequential members run one after the other.
- Responses may come in any order (json-batching, "Response format"); the emulator answers in request order.
- A batch cannot contain another $batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from multidict import CIMultiDict, MultiDict

from .auth import IssuedToken
from .errors import GraphError, bad_request
from .graph_api import GraphRequest, GraphResponse
from .timefmt import parse_prefer

MAX_BATCH_REQUESTS = 20
#: Members of a parallel batch Graph runs against Outlook at once.
PARALLEL_MEMBERS = 4
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")


def _relative(url: str, base_url: str) -> str:
    """The request's path below /v1.0. The documented form is relative ("/users/..."); msgraph-sdk sends the absolute
    URL of the same service once its adapter has resolved the base URL, which is accepted too."""
    if "://" in url:
        if not url.lower().startswith(base_url.lower() + "/"):
            raise bad_request(f"The batch request url {url!r} is not a Microsoft Graph {base_url} URL.")
        url = url[len(base_url) :]
    return url


def _validate(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise bad_request("Invalid batch payload format: a JSON object with a 'requests' array is required.")
    requests: list[Any] = body["requests"]
    if not requests:
        raise bad_request("Invalid batch payload format: 'requests' is empty.")
    if len(requests) > MAX_BATCH_REQUESTS:
        raise bad_request(
            f"The number of batch requests ({len(requests)}) exceeds the limit of {MAX_BATCH_REQUESTS}.", "BadRequest"
        )
    seen: set[str] = set()
    for item in requests:
        if not isinstance(item, dict):
            raise bad_request(f"Invalid batch payload format: request {item!r} is not an object.")
        rid, method, url = item.get("id"), item.get("method"), item.get("url")
        if not isinstance(rid, str) or not rid:
            raise bad_request(f"Invalid batch payload format: every request needs an id, got {item!r}.")
        if rid in seen:
            raise bad_request(f"Invalid batch payload format: duplicate request id '{rid}'.")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise bad_request(f"Invalid batch payload format: request '{rid}' has an invalid method {method!r}.")
        if not isinstance(url, str) or not url:
            raise bad_request(f"Invalid batch payload format: request '{rid}' needs a url, got {url!r}.")
        depends = item.get("dependsOn", [])
        if not isinstance(depends, list) or any(d not in seen for d in depends):
            raise bad_request(
                f"Invalid batch payload format: request '{rid}' depends on {depends!r}, which are not "
                "earlier requests of the batch."
            )
        if urlsplit(url).path.rstrip("/").lower().endswith("$batch"):
            raise bad_request(f"Invalid batch payload format: request '{rid}' is itself a $batch.")
        seen.add(rid)
    dependent = [bool(item.get("dependsOn")) for item in requests[1:]]
    if any(dependent) and not all(dependent):
        raise bad_request("Batch should be either fully sequential or fully parallel", "BadRequest")
    return requests


def _request(item: dict[str, Any], headers: CIMultiDict[str], token: IssuedToken, base_url: str) -> GraphRequest:
    parts = urlsplit(_relative(item["url"], base_url))
    path = "/" + unquote(parts.path).lstrip("/")
    if path.lower().startswith("/v1.0/"):
        path = path[5:]
    return GraphRequest(
        method=item["method"].upper(),
        path=path,
        query=MultiDict(parse_qsl(parts.query)),
        headers=headers,
        prefer=parse_prefer(headers.getall("Prefer", [])),
        body=item.get("body"),
        token=token,
        base_url=base_url,
    )


async def run_batch(
    body: Any, token: IssuedToken, base_url: str, execute: Callable[[GraphRequest], Awaitable[GraphResponse]]
) -> dict[str, Any]:
    requests = _validate(body)
    status_of: dict[str, int] = {}

    async def run_one(item: dict[str, Any]) -> dict[str, Any]:
        rid = item["id"]
        headers = CIMultiDict({str(k): str(v) for k, v in (item.get("headers") or {}).items()})
        result: GraphResponse
        if any(status_of[d] >= 400 for d in item.get("dependsOn", [])):
            result = GraphResponse(424, GraphError(424, "FailedDependency", "Failed dependency.").body())
        elif item.get("body") is not None and "Content-Type" not in headers:
            result = GraphResponse(400, bad_request("Content-Type header is required when a body is given.").body())
        else:
            try:
                result = await execute(_request(item, headers, token, base_url))
            except GraphError as exc:
                result = GraphResponse(exc.status, exc.body(), exc.headers)
        status_of[rid] = result.status
        entry: dict[str, Any] = {"id": rid, "status": result.status, "headers": dict(result.headers)}
        if result.body is not None:
            entry["headers"].setdefault("Content-Type", "application/json")
            entry["body"] = result.body
        return entry

    if any(item.get("dependsOn") for item in requests):
        return {"responses": [await run_one(item) for item in requests]}
    dispatch = asyncio.Semaphore(PARALLEL_MEMBERS)

    async def dispatched(item: dict[str, Any]) -> dict[str, Any]:
        async with dispatch:
            return await run_one(item)

    return {"responses": list(await asyncio.gather(*(dispatched(item) for item in requests)))}
