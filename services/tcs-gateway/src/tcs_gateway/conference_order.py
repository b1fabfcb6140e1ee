"""The order fence of conference commands (TcsCommand.conference_order), in the JetStream KV bucket
`TCS_CONFERENCE_ORDER`: per TrueConf Server and meeting, the order of the newest conference_upsert or
conference_delete that ran.

JetStream redelivers a message that was not acknowledged within the consumer's AckWait - also one that was
acknowledged when the server lost its consumer state (a kill -9 of the NATS server loses the acknowledgements it had not
written yet) - and it does so behind messages published since: a meeting's create can come back after its delete
ran. Running it then would make a deleted meeting's conference again (or, the other way round, delete a conference
that a newer command made). So a conference_upsert or conference_delete older than the fence is not run.

Key `c.<hex(server id)>.<hex(meeting id)>`, value the order as decimal text. Entries expire with the bucket's
max_age - the command stream's own retention: no message older than that can be redelivered.
"""

from __future__ import annotations

import logging

from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from tccal.bus import STREAM_MAX_AGE_S, Bus
from tccal.subjects import CONFERENCE_ORDER_BUCKET

log = logging.getLogger(__name__)

#: The kinds the fence applies to: they set what the conference is (or that there is none).
FENCED_KINDS = ("conference_upsert", "conference_delete")


def _key(server_id: str, meeting_id: str) -> str:
    return f"c.{server_id.lower().encode().hex()}.{meeting_id.encode().hex()}"


class ConferenceOrder:
    """Reads and raises the fence; one instance per gateway, shared by its servers' consumers."""

    def __init__(self, bus: Bus, *, replicas: int = 1, bucket: str = CONFERENCE_ORDER_BUCKET) -> None:
        self.bus = bus
        self.replicas = replicas
        self.bucket = bucket
        self._kv: KeyValue | None = None

    async def _open(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.bus.js.key_value(self.bucket)
            except (NotFoundError, BadRequestError):
                self._kv = await self.bus.js.create_key_value(
                    bucket=self.bucket, history=1, replicas=self.replicas, ttl=STREAM_MAX_AGE_S
                )
        return self._kv

    async def _read(self, kv: KeyValue, key: str) -> tuple[int, int]:
        """(order, revision) of `key`; (0, 0) when there is none."""
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return 0, 0
        try:
            order = int((entry.value or b"0").decode())
        except ValueError:
            log.warning("unreadable conference order entry ignored", extra={"key": key})
            order = 0
        return order, int(entry.revision or 0)

    async def superseded_by(self, server_id: str, meeting_id: str, order: int) -> int:
        """The newer order that already ran for the meeting, or 0 when a command of `order` may run."""
        if not order:
            return 0  # from an engine that does not number its commands: not fenced
        ran, _ = await self._read(await self._open(), _key(server_id, meeting_id))
        return ran if ran > order else 0

    async def ran(self, server_id: str, meeting_id: str, order: int) -> None:
        """Raise the meeting's fence to `order` (never lowers it; safe against a concurrent writer)."""
        if not order:
            return
        kv = await self._open()
        key = _key(server_id, meeting_id)
        value = str(order).encode()
        while True:
            current, revision = await self._read(kv, key)
            if current >= order:
                return
            try:
                if revision:
                    await kv.update(key, value, last=revision)
                else:
                    await kv.create(key, value)
                return
            except KeyWrongLastSequenceError:
                continue  # someone wrote in between: read again
