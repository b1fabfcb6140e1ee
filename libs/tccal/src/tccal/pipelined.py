"""JetStream publishes of a batch written in order on one connection, their acks collected together.

A JetStream publish is a core NATS message with a reply subject; the stream answers there with a PubAck (or an
error). nats-py's `publish_async` makes a future, a done-callback and a JSON-parsed PubAck per message (~24 µs of
CPU each); here a batch's messages reply to `<inbox>.<batch>_<index>` on one wildcard subscription per connection,
and a reply only sets its message's answer: ~11 µs. The reply is parsed as JSON only when it carries an error or
the duplicate flag; nothing is assumed about the order of the replies. Per message the batch tells: stored, a
duplicate (stored before), refused (with JetStream's error), or no answer within the timeout (None).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

#: (subject, payload, Nats-Msg-Id, other headers) of one message.
Message = tuple[str, bytes, str, Mapping[str, str]]

#: The status of a reply when no stream takes the subject (no responders).
NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class Answer:
    """JetStream's reply to one publish: stored, a duplicate, or refused (`code` and `error` set)."""

    duplicate: bool = False
    #: For a refusal: JetStream's error code (or the reply's status, 503: no stream takes the subject) ...
    code: int | None = None
    #: ... and its error text.
    error: str | None = None
    #: JetStream's own error code of a refusal (e.g. 10060: the expected stream does not match), if it gave one.
    err_code: int | None = None
    #: A status reply's status instead of a PubAck ("503": no stream takes the subject, no responders).
    status: str | None = None

    @property
    def acknowledged(self) -> bool:
        """Stored, now or before (a duplicate): publishing it again changes nothing."""
        return self.code is None


STORED = Answer()
DUPLICATE = Answer(duplicate=True)


def answer_of(msg: Msg) -> Answer:
    """What a reply to a JetStream publish says. A status reply (503 no responders: no stream takes the subject)
    carries headers and no PubAck; the PubAck of a message stored now has neither "error" nor "duplicate"."""
    if msg.headers:
        status = msg.headers.get("Status", "")
        description = msg.headers.get("Description", "") or "no stream takes the subject"
        return Answer(code=int(status) if status.isdigit() else 0, error=description, status=status)
    if not msg.data:
        return Answer(code=0, error="an empty reply")
    if b'"error"' not in msg.data and b'"duplicate"' not in msg.data:
        return STORED
    reply = json.loads(msg.data)
    if not isinstance(reply, dict):
        return Answer(code=0, error=f"not a PubAck: {msg.data[:200]!r}")
    error = reply.get("error")
    if error is not None:
        details: dict[str, Any] = error if isinstance(error, dict) else {"description": str(error)}
        err_code = details.get("err_code")
        return Answer(
            code=int(details.get("code") or 0),
            error=str(details.get("description") or error),
            err_code=err_code if isinstance(err_code, int) else None,
        )
    return DUPLICATE if reply.get("duplicate") is True else STORED


def acknowledged_from_first(answers: Sequence[Answer | None]) -> int:
    """How many of a batch's messages, from the first, JetStream stored or recognised as duplicates."""
    acknowledged = 0
    for answer in answers:
        if answer is None or not answer.acknowledged:
            break
        acknowledged += 1
    return acknowledged


def refusal_error(answer: Answer, subject: str, msg_id: str) -> Exception:
    """The exception a single `js.publish` raises for this refusal (nats-py's types: NoStreamResponseError for a
    subject no stream takes, else APIError or its subclass of the code), its text naming the message."""
    if answer.status == NO_RESPONDERS:
        return NoStreamOnSubjectError(subject, msg_id)
    named = f"{answer.error} (publishing {msg_id!r} on {subject})"
    kind = _API_ERRORS.get(answer.code or 0, APIError)
    return kind(code=answer.code, err_code=answer.err_code, description=named)


#: The APIError subclass nats-py raises per code of a JetStream error (`APIError.from_error`).
_API_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    404: NotFoundError,
    500: ServerError,
    503: ServiceUnavailableError,
}


class NoStreamOnSubjectError(NoStreamResponseError):
    """No stream takes the subject of a published message (nats-py's NoStreamResponseError, naming the message)."""

    def __init__(self, subject: str, msg_id: str) -> None:
        super().__init__()
        self.subject = subject
        self.msg_id = msg_id

    def __str__(self) -> str:
        return f"nats: no response from stream: no stream takes {self.subject} (publishing {self.msg_id!r})"


@dataclass
class _Batch:
    answers: list[Answer | None]  # per message: JetStream's answer, or None: no reply yet
    waiting: int
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PipelinedPublisher:
    """Publishes batches on one NATS connection; the reply subscription is made at the first batch."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = ""
        self._subscription: Subscription | None = None
        self._numbers = itertools.count(1)
        self._batches: dict[int, _Batch] = {}

    async def _subscribe(self) -> None:
        # The connection's own inbox (nats-py's `inbox_prefix` + a NUID): a service may subscribe to it only.
        prefix = f"{self.nc.new_inbox()}."
        self._subscription = await self.nc.subscribe(f"{prefix}*", cb=self._on_reply)
        self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        number, _, index = msg.subject[len(self._prefix) :].partition("_")
        batch = self._batches.get(int(number))
        if batch is None or batch.answers[int(index)] is not None:  # a batch given up on, or a repeated reply
            return
        batch.answers[int(index)] = answer_of(msg)
        batch.waiting -= 1
        if batch.waiting == 0 and not batch.done.done():
            batch.done.set_result(None)

    async def publish(self, messages: Sequence[Message], *, timeout: float) -> list[Answer | None]:
        """Publish `messages` in order without waiting for each ack, then wait up to `timeout` for all of them;
        per message JetStream's answer, None where none came within `timeout`."""
        if not messages:
            return []
        if self._subscription is None:
            await self._subscribe()
        number = next(self._numbers)
        batch = _Batch([None] * len(messages), len(messages))
        self._batches[number] = batch
        reply = f"{self._prefix}{number}_"
        try:
            for index, (subject, payload, msg_id, headers) in enumerate(messages):
                await self.nc.publish(
                    subject, payload, reply=f"{reply}{index}", headers={"Nats-Msg-Id": msg_id, **headers}
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.done, timeout)
        finally:
            del self._batches[number]
        return batch.answers
