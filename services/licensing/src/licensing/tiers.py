"""License tiers and what each one allows (docs/architecture.md §7; docs/license-format.md §3)."""

from __future__ import annotations

import enum

FREE_SEATS = 50
FEATURE_MULTIPLE_PROVIDERS = "multiple_providers"
FEATURE_OFFLINE_REGISTRATION = "offline_registration"
KNOWN_FEATURES = frozenset({FEATURE_MULTIPLE_PROVIDERS, FEATURE_OFFLINE_REGISTRATION})


class Tier(enum.StrEnum):
    FREE = "free"
    STANDARD = "standard"
    ENTERPRISE = "enterprise"

    @property
    def label(self) -> str:
        return self.value.capitalize()

    @property
    def requires_online_check(self) -> bool:
        """Free licenses must reach the registration server regularly; paid ones work without it."""
        return self is Tier.FREE

    @property
    def offline_registration(self) -> bool:
        return self is not Tier.FREE

    def seat_capacity(self, licensed_seats: int) -> int:
        """Accounts that may be synced: 50 for Free whatever the document says, else the licensed seats."""
        if self is Tier.FREE:
            return min(licensed_seats, FREE_SEATS)
        return licensed_seats
