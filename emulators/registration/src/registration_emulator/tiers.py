"""Tiers as the authority sells them (docs/license-format.md §3): seats, features granted, offline signing."""

from __future__ import annotations

import enum

FREE_SEATS = 50  # §3: a Free key always carries 50 seats
FEATURE_MULTIPLE_PROVIDERS = "multiple_providers"
FEATURE_OFFLINE_REGISTRATION = "offline_registration"

# §3: the sentence (the admin guide's words) refusing a Free key asked offline.
FREE_OFFLINE_MESSAGE = (
    "A free license cannot be registered offline. This form of registration is available only for paid licenses."
)


class Tier(enum.StrEnum):
    """The ``tier`` value of a license (§5) and of an issued key."""

    FREE = "free"
    STANDARD = "standard"
    ENTERPRISE = "enterprise"

    @property
    def label(self) -> str:
        return self.value.capitalize()

    @property
    def offline_registration(self) -> bool:
        """§3: offline signing is refused for Free keys."""
        return self is not Tier.FREE

    @property
    def default_features(self) -> tuple[str, ...]:
        """§3: the features granted with each tier, sorted."""
        if self is Tier.FREE:
            return ()
        if self is Tier.STANDARD:
            return (FEATURE_OFFLINE_REGISTRATION,)
        return (FEATURE_MULTIPLE_PROVIDERS, FEATURE_OFFLINE_REGISTRATION)


def parse_tier(text: str) -> Tier:
    try:
        return Tier(text.strip().lower())
    except ValueError:
        raise ValueError(f"unknown license tier {text!r}: expected free, standard or enterprise") from None
