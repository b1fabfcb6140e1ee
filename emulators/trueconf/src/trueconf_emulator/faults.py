"""Fault injection for the REST API: status codes (429 with Retry-After, 503, …) and latency, per endpoint,
for the next N calls or for a deterministic fraction of calls."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

ALLOWED_METHODS = ("*", "GET", "POST", "PUT", "PATCH", "DELETE")


class FaultRuleError(ValueError):
    pass


@dataclass
class FaultRule:
    id: int
    method: str
    path: str
    status: int | None
    retry_after: int | None
    latency_ms: int
    count: int | None
    rate: float | None
    #: The error reason of the injected answer (e.g. `invalidToken` with 403); None: the status's usual one.
    reason: str | None = None
    matched: int = 0
    injected: int = 0
    _accumulator: float = field(default=0.0, repr=False)

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method) and fnmatch.fnmatchcase(path, self.path)

    def fires(self) -> bool:
        """Count a matching call and decide whether this rule affects it.

        `rate` is applied deterministically: with rate r, the k-th matching call fires when
        floor(k·r) grows, so rate 0.5 affects every second call and rate 1 every call."""
        self.matched += 1
        if self.count is not None and self.injected >= self.count:
            return False
        if self.rate is not None:
            self._accumulator += self.rate
            if self._accumulator + 1e-9 < 1.0:
                return False
            self._accumulator -= 1.0
        self.injected += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.injected >= self.count

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "retry_after": self.retry_after,
            "latency_ms": self.latency_ms,
            "count": self.count,
            "rate": self.rate,
            "reason": self.reason,
            "matched": self.matched,
            "injected": self.injected,
            "remaining": None if self.count is None else max(self.count - self.injected, 0),
        }


@dataclass(frozen=True)
class FaultDecision:
    status: int | None
    retry_after: int | None
    latency_ms: int
    rule_ids: tuple[int, ...]
    reason: str | None = None


class FaultInjector:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._next_id = 0

    def add(self, raw: Any) -> FaultRule:
        if not isinstance(raw, dict):
            raise FaultRuleError("a fault rule is a JSON object")
        allowed = {"method", "path", "status", "retry_after", "latency_ms", "count", "rate", "reason"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise FaultRuleError(f"unknown field {unknown[0]!r}; allowed: {sorted(allowed)}")
        method = raw.get("method", "*")
        if not isinstance(method, str) or method.upper() not in ALLOWED_METHODS:
            raise FaultRuleError(f"method {method!r} is not one of {list(ALLOWED_METHODS)}")
        path = raw.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise FaultRuleError(f"path {path!r} must be a glob starting with '/', e.g. /api/v4/conferences*")
        status = raw.get("status")
        if status is not None and (not _is_int(status) or not 400 <= status <= 599):
            raise FaultRuleError(f"status {status!r} must be an HTTP error status 400..599")
        retry_after = raw.get("retry_after")
        if retry_after is not None and (not _is_int(retry_after) or not 0 <= retry_after <= 3600):
            raise FaultRuleError(f"retry_after {retry_after!r} must be whole seconds 0..3600")
        if retry_after is None and status == 429:
            retry_after = 1
        latency = raw.get("latency_ms", 0)
        if not _is_int(latency) or not 0 <= latency <= 120_000:
            raise FaultRuleError(f"latency_ms {latency!r} must be 0..120000")
        if status is None and latency == 0:
            raise FaultRuleError("a rule needs a status, a latency_ms, or both")
        count = raw.get("count")
        if count is not None and (not _is_int(count) or count < 1):
            raise FaultRuleError(f"count {count!r} must be a positive integer (the next N matching calls)")
        rate = raw.get("rate")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < float(rate) <= 1
        ):
            raise FaultRuleError(f"rate {rate!r} must be a fraction in (0, 1]")
        reason = raw.get("reason")
        if reason is not None and (not isinstance(reason, str) or not reason.isidentifier() or status is None):
            raise FaultRuleError(f"reason {reason!r} must be an error reason word (e.g. invalidToken) with a status")
        self._next_id += 1
        rule = FaultRule(
            id=self._next_id,
            method=method.upper(),
            path=path,
            status=status,
            retry_after=retry_after,
            latency_ms=latency,
            count=count,
            rate=None if rate is None else float(rate),
            reason=reason,
        )
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [rule for rule in self._rules if rule.id != rule_id]
        return len(self._rules) != before

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def decide(self, method: str, path: str) -> FaultDecision:
        status: int | None = None
        retry_after: int | None = None
        reason: str | None = None
        latency = 0
        fired: list[int] = []
        for rule in self._rules:
            if rule.exhausted or not rule.matches(method, path):
                continue
            if not rule.fires():
                continue
            fired.append(rule.id)
            latency += rule.latency_ms
            if status is None and rule.status is not None:
                status = rule.status
                retry_after = rule.retry_after
                reason = rule.reason
        return FaultDecision(
            status=status, retry_after=retry_after, latency_ms=latency, rule_ids=tuple(fired), reason=reason
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
