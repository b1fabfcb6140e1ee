"""Registration key format: generation, checksum, normalisation, refusal messages."""

from __future__ import annotations

import pytest

from licensing.errors import MalformedKeyError
from licensing.keys import ALPHABET, generate_key, key_sha256, parse_key
from licensing.tiers import Tier

# A fixed valid key: its checksum group was computed once and must never change.
FIXED_KEY = "TCCAL-STD-0123A-BCDEF-GHJKM-NPQRS-X74E"


def test_fixed_key_parses_with_its_tier() -> None:
    key = parse_key(FIXED_KEY)
    assert key.tier is Tier.STANDARD
    assert key.text == FIXED_KEY
    assert key.masked() == "TCCAL-STD-0123A-*****-*****-*****-X74E"


@pytest.mark.parametrize("tier", list(Tier))
def test_generated_keys_parse_back(tier: Tier) -> None:
    for _ in range(50):
        key = generate_key(tier)
        assert parse_key(key.text) == key
        assert key.tier is tier


def test_keys_are_normalised_before_comparison() -> None:
    assert parse_key("  " + FIXED_KEY.lower() + "\n").text == FIXED_KEY
    assert key_sha256(FIXED_KEY.lower()) == key_sha256(FIXED_KEY) == parse_key(FIXED_KEY).sha256


def test_every_single_character_typo_in_the_random_part_is_caught() -> None:
    positions = [i for i, ch in enumerate(FIXED_KEY) if i >= 10 and ch != "-" and i < len(FIXED_KEY) - 5]
    assert len(positions) == 20
    for pos in positions:
        for ch in ALPHABET:
            if ch == FIXED_KEY[pos]:
                continue
            typo = FIXED_KEY[:pos] + ch + FIXED_KEY[pos + 1 :]
            with pytest.raises(MalformedKeyError, match="checksum"):
                parse_key(typo)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "MY-REG-KEY",
        "TCCAL-GOLD-0123A-BCDEF-GHJKM-NPQRS-X74E",
        "TCCAL-STD-0123A-BCDEF-GHJKM-X74E",
        "TCCAL-STD-0123I-BCDEF-GHJKM-NPQRS-X74E",
    ],
)
def test_malformed_keys_are_refused_naming_the_value_and_the_pattern(text: str) -> None:
    with pytest.raises(MalformedKeyError) as info:
        parse_key(text)
    assert repr(text) in info.value.message
    assert "TCCAL-<FREE|STD|ENT>" in info.value.message
    assert info.value.exit_code == 10


def test_tier_code_is_covered_by_the_checksum() -> None:
    with pytest.raises(MalformedKeyError, match="checksum"):
        parse_key(FIXED_KEY.replace("-STD-", "-ENT-"))
