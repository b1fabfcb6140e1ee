"""The EWS time budget of one throttled principal ("Exchange workload management" / "EWS throttling in Exchange";
the default throttling policy's EwsMaxBurst 300,000 ms, EwsRechargeRate 900,000 ms an hour, EwsCutoffBalance
3,000,000 ms).

Every call spends the server time it took; the balance recharges at the policy's rate and never exceeds the burst.
Once the balance has sunk to minus the cutoff, Exchange refuses the principal's calls with ErrorServerBusy and a
BackOffMilliseconds saying when the balance is back at zero."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TimeBudget:
    max_burst_ms: float
    recharge_ms_per_hour: float
    cutoff_balance_ms: float
    clock: Callable[[], float] = time.monotonic
    balance_ms: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self.balance_ms = self.max_burst_ms
        self._at = self.clock()

    def _recharge(self) -> None:
        now = self.clock()
        earned = (now - self._at) * self.recharge_ms_per_hour / 3600.0
        self.balance_ms = min(self.max_burst_ms, self.balance_ms + earned)
        self._at = now

    def back_off_ms(self) -> int:
        """0 when a call may run now; else how long until the balance is back at zero."""
        self._recharge()
        if self.balance_ms > -self.cutoff_balance_ms:
            return 0
        return max(1, math.ceil(-self.balance_ms * 3600.0 / self.recharge_ms_per_hour * 1000.0))

    def spend(self, ms: float) -> None:
        self._recharge()
        self.balance_ms -= ms
