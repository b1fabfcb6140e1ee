"""Runtime-settable fault injection (admin API /_emulator/faults)."""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

FAULT_KINDS = ("server_busy", "http_503", "latency", "drop_streams", "malformed_xml", "schema_invalid")


@dataclass
class FaultRule:
    id: int
    kind: str
    rate: float = 1.0
    operation: str | None = None
    mailbox: str | None = None
    back_off_ms: int = 1000
    latency_ms: int = 0
    remaining: int | None = None  # None = unlimited
    injected: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    def __init__(self, seed: int | None = None) -> None:
        self._rules: dict[int, FaultRule] = {}
        self._ids = itertools.count(1)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, spec: dict[str, Any]) -> FaultRule:
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        rate = float(spec.get("rate", 1.0))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within 0..1, got {rate!r}")
        count = spec.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"fault count must be a positive integer, got {count!r}")
        back_off = int(spec.get("back_off_ms", 1000))
        latency = int(spec.get("latency_ms", 0))
        if back_off < 0 or latency < 0:
            raise ValueError(f"back_off_ms and latency_ms must not be negative (got {back_off}, {latency})")
        if kind == "latency" and latency <= 0:
            raise ValueError("a latency fault needs latency_ms > 0")
        unknown = set(spec) - {"kind", "rate", "operation", "mailbox", "back_off_ms", "latency_ms", "count"}
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        mailbox = spec.get("mailbox")
        rule = FaultRule(
            id=next(self._ids),
            kind=str(kind),
            rate=rate,
            operation=spec.get("operation"),
            mailbox=mailbox.lower() if isinstance(mailbox, str) else None,
            back_off_ms=back_off,
            latency_ms=latency,
            remaining=count,
        )
        with self._lock:
            self._rules[rule.id] = rule
        return rule

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            return self._rules.pop(rule_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_json() for r in self._rules.values()]

    def pick(self, kind: str, operation: str | None, mailbox: str | None) -> FaultRule | None:
        """Return a matching rule if it fires for this request (consumes one of its count)."""
        with self._lock:
            for rule in list(self._rules.values()):
                if rule.kind != kind:
                    continue
                if rule.operation is not None and rule.operation != operation:
                    continue
                if rule.mailbox is not None and rule.mailbox != (mailbox or "").lower():
                    continue
                if rule.rate < 1.0 and self._random.random() >= rule.rate:
                    continue
                rule.injected += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        del self._rules[rule.id]
                return rule
        return None
