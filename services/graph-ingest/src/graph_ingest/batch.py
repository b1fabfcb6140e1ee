"""Many Graph GETs of one mailbox through JSON batching (`POST /$batch`), 20 to a batch.

https://learn.microsoft.com/en-us/graph/json-batching: at most 20 requests per batch; every member answers with its
own status, headers and body (the POST itself is 200 even when members failed); responses may come in any order and
are matched by `id`; a member whose `dependsOn` failed answers 424 Failed Dependency.

Concurrency: every member counts against Outlook's per-app-and-mailbox limit of four concurrent requests
(https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits, and "requests in a batch are
evaluated individually against throttling limits", https://learn.microsoft.com/en-us/graph/throttling); Microsoft
states that Graph dispatches up to four members of a batch to Outlook at once
(https://learn.microsoft.com/en-us/answers/questions/1660054). So a batch holds min(members, 4) of the mailbox's
`maxConcurrency` slots (graph.MailboxLimit). When `maxConcurrency` is lower than that, the batch is sent fully
sequential instead (each member `dependsOn` the one before; Graph accepts a batch only fully sequential or fully
parallel, https://learn.microsoft.com/en-us/answers/questions/1532547): one slot, members run one after the other,
and the members after a failed one answer 424 and are sent again.

Per member: 2xx → the body; 404 → `gone` (the event was deleted between the delta page and this read: the caller
skips it, the next delta round reports the removal); 429/503 → those members only are sent again after the largest
Retry-After among them (tccal.retry, at most `attempts` times); 424 → sent again; anything else raises GraphError
naming the member's URL, status, code and message.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graph_ingest.graph import RETRIED_STATUSES, GraphClient, GraphError, ThrottledError, retry_after_of
from tccal.retry import retry_async

#: Graph's limit of requests in one JSON batch.
MAX_BATCH_REQUESTS = 20
#: Members of one batch Graph runs against Outlook at the same time.
GRAPH_BATCH_PARALLELISM = 4
FAILED_DEPENDENCY = 424


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]

    @property
    def gone(self) -> bool:
        return self.status == 404


class _MembersThrottledError(ThrottledError):
    """Some members of a batch were throttled: they (only) are sent again."""


async def get_many(
    client: GraphClient, mailbox: str, urls: Mapping[str, str], headers: Mapping[str, str] | None = None
) -> dict[str, Answer]:
    """GET every URL of `urls` (key → URL relative to the Graph root, e.g. "/users/x/events/y") for `mailbox`.

    Returns key → Answer (status 2xx or 404); any other member status raises GraphError."""
    done: dict[str, Answer] = {}
    pending = list(urls)

    async def once() -> dict[str, Answer]:
        throttled: list[tuple[str, float, GraphError]] = []
        again: list[str] = []
        for start in range(0, len(pending), MAX_BATCH_REQUESTS):
            chunk = pending[start : start + MAX_BATCH_REQUESTS]
            answers = await _send(client, mailbox, [(key, urls[key]) for key in chunk], dict(headers or {}))
            for key in chunk:
                status, answered, body = answers[key]
                if 200 <= status < 300 or status == 404:
                    done[key] = Answer(status, body)
                elif status == FAILED_DEPENDENCY:
                    again.append(key)
                elif status in RETRIED_STATUSES:
                    code, message = _error(body)
                    wait = retry_after_of(answered)
                    throttled.append((key, wait, GraphError(status, code, message, urls[key])))
                else:
                    code, message = _error(body)
                    raise GraphError(status, code, f"$batch member: {message}", client.url(urls[key]))
        pending[:] = again + [key for key, _, _ in throttled]
        if throttled:
            wait = max(w for _, w, _ in throttled)
            client.note_throttled_members(len(throttled), min(wait, client.tuning.max_retry_after_seconds))
            first = throttled[0][2]
            what = f"{len(throttled)} $batch members throttled"
            raise _MembersThrottledError(first.status, first.code, what, client.url(urls[throttled[0][0]]), wait)
        if pending:  # only 424s left: their dependency failed with 404 (gone); send them again at once
            return await once()
        return done

    def wait_of(error: BaseException) -> float | None:
        if isinstance(error, ThrottledError):
            return min(error.retry_after, client.tuning.max_retry_after_seconds)
        return None

    if not pending:
        return done
    return await retry_async(
        once, retry_on=_MembersThrottledError, attempts=client.tuning.attempts, base=0.5, cap=30.0, retry_after=wait_of
    )


async def _send(
    client: GraphClient, mailbox: str, members: list[tuple[str, str]], headers: dict[str, str]
) -> dict[str, tuple[int, Mapping[str, Any], dict[str, Any]]]:
    """One POST /$batch: key → (status, headers, body) of each member."""
    parallel = min(len(members), GRAPH_BATCH_PARALLELISM)
    sequential = parallel > client.provider.max_concurrency
    requests: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    for number, (key, url) in zip(itertools.count(1), members, strict=False):
        request: dict[str, Any] = {"id": str(number), "method": "GET", "url": url}
        if headers:
            request["headers"] = headers
        if sequential and number > 1:
            request["dependsOn"] = [str(number - 1)]
        requests.append(request)
        ids[str(number)] = key
    client.stats.batches += 1
    client.stats.batch_members += len(members)
    answer = await client.post_batch(mailbox, {"requests": requests}, 1 if sequential else parallel)
    found: dict[str, tuple[int, Mapping[str, Any], dict[str, Any]]] = {}
    for response in answer.get("responses") or []:
        member = ids.get(str(response.get("id")))
        if member is None:
            continue
        body = response.get("body")
        answered = response.get("headers")
        found[member] = (
            int(response.get("status", 0)),
            answered if isinstance(answered, dict) else {},
            body if isinstance(body, dict) else {},
        )
    missing = [key for key, _ in members if key not in found]
    if missing:
        what = f"$batch answered no response for {missing}"
        raise GraphError(200, "invalidBatchResponse", what, client.url("/$batch"))
    return found


def _error(body: dict[str, Any]) -> tuple[str, str]:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("code", "unknown")), str(error.get("message", ""))
    return "unknown", str(body)[:200]
