"""Seat allocation: configured users first, on-demand users while seats remain, leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from licensing.seats import Holding, SeatAsk, allocate

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(hours=1)


def users(prefix: str, n: int, configured: bool) -> list[SeatAsk]:
    return [SeatAsk(f"{prefix}{i:03d}@corp.example", configured) for i in range(n)]


def test_whitelist_priority_at_the_free_limit_of_50() -> None:
    on_demand = users("od", 20, False)
    configured = users("cfg", 45, True)
    # On-demand users asked first and are listed first: configured users still win.
    result = allocate(on_demand + configured, {}, 50, NOW, LEASE)
    assert len(result.granted) == 50
    assert all(f"cfg{i:03d}@corp.example" in result.granted for i in range(45))
    assert result.granted[:5] == [f"od{i:03d}@corp.example" for i in range(5)]
    refused = {r.mailbox: r.reason for r in result.refused}
    assert set(refused) == {f"od{i:03d}@corp.example" for i in range(5, 20)}
    assert all("all 50 accounts of the license are taken" in reason for reason in refused.values())
    assert result.seats_used == 50


def test_more_configured_users_than_seats_keeps_the_order_and_says_why() -> None:
    result = allocate(users("cfg", 55, True), {}, 50, NOW, LEASE)
    assert result.granted == [f"cfg{i:03d}@corp.example" for i in range(50)]
    assert [r.mailbox for r in result.refused] == [f"cfg{i:03d}@corp.example" for i in range(50, 55)]
    assert "allows 50 accounts and 55 configured users" in result.refused[0].reason


def test_configured_users_take_seats_from_on_demand_holders() -> None:
    first = allocate(users("od", 50, False), {}, 50, NOW, LEASE)
    assert len(first.granted) == 50
    later = NOW + timedelta(minutes=5)
    second = allocate(users("cfg", 3, True), first.holdings, 50, later, LEASE)
    assert len(second.granted) == 3
    # The newest on-demand grants give way (all were granted together: the last asked lose).
    assert second.revoked == [f"od{i:03d}@corp.example" for i in (47, 48, 49)]
    assert second.seats_used == 50
    third = allocate(users("od", 50, False), second.holdings, 50, later, LEASE)
    assert {r.mailbox for r in third.refused} == {f"od{i:03d}@corp.example" for i in (47, 48, 49)}


def test_on_demand_holders_keep_their_seats_over_newcomers() -> None:
    first = allocate(users("a", 3, False), {}, 3, NOW, LEASE)
    newcomers = [SeatAsk("new@corp.example", False)]
    second = allocate(newcomers + users("a", 3, False), first.holdings, 3, NOW + timedelta(minutes=1), LEASE)
    assert second.refused[0].mailbox == "new@corp.example"
    assert sorted(second.granted) == sorted(a.mailbox for a in users("a", 3, False))


def test_leases_expire_and_renew() -> None:
    first = allocate(users("a", 2, False), {}, 2, NOW, LEASE)
    renewed = allocate(users("a", 1, False), first.holdings, 2, NOW + timedelta(minutes=50), LEASE)
    assert renewed.holdings["a000@corp.example"].expires_at == NOW + timedelta(minutes=50) + LEASE
    assert renewed.holdings["a000@corp.example"].granted_at == NOW
    # a001 was not renewed: after its lease it no longer counts, and a newcomer gets the seat.
    later = NOW + timedelta(minutes=61)
    third = allocate([SeatAsk("b@corp.example", False)], renewed.holdings, 2, later, LEASE)
    assert third.granted == ["b@corp.example"]
    assert "a001@corp.example" not in third.holdings


def test_a_bigger_license_grants_the_refused_without_anything_else() -> None:
    asks = users("cfg", 10, True) + users("od", 60, False)
    small = allocate(asks, {}, 50, NOW, LEASE)
    assert len(small.refused) == 20
    big = allocate(asks, small.holdings, 100, NOW + timedelta(minutes=1), LEASE)
    assert big.refused == [] and len(big.granted) == 70


def test_addresses_are_case_insensitive_and_invalid_ones_refused() -> None:
    asks = [
        SeatAsk("Alice@Corp.Example", False),
        SeatAsk("alice@corp.example ", True),
        SeatAsk("bob", False),
        SeatAsk("", True),
    ]
    result = allocate(asks, {}, 50, NOW, LEASE)
    assert result.granted == ["alice@corp.example"]
    assert result.holdings["alice@corp.example"].configured is True
    reasons = {r.mailbox: r.reason for r in result.refused}
    assert reasons == {"bob": "'bob' is not an e-mail address", "": "empty mailbox address"}


def test_capacity_zero_refuses_everyone() -> None:
    result = allocate(users("cfg", 2, True), {}, 0, NOW, LEASE)
    assert result.granted == [] and len(result.refused) == 2


asks_strategy = st.lists(st.tuples(st.integers(min_value=0, max_value=30), st.booleans()), max_size=40).map(
    lambda xs: [SeatAsk(f"u{i}@x.example", c) for i, c in xs]
)


@settings(max_examples=200, deadline=None)
@given(
    first=asks_strategy,
    second=asks_strategy,
    capacity=st.integers(min_value=0, max_value=25),
    minutes=st.integers(min_value=0, max_value=120),
)
def test_allocation_invariants(first: list[SeatAsk], second: list[SeatAsk], capacity: int, minutes: int) -> None:
    state: dict[str, Holding] = allocate(first, {}, capacity, NOW, LEASE).holdings
    later = NOW + timedelta(minutes=minutes)
    result = allocate(second, state, capacity, later, LEASE)
    asked = {a.mailbox for a in second}
    configured = {a.mailbox for a in second if a.configured}
    # Never more seats than the license allows; every asked mailbox gets exactly one answer.
    assert result.seats_used <= capacity
    assert set(result.granted) | {r.mailbox for r in result.refused} == asked
    assert not set(result.granted) & {r.mailbox for r in result.refused}
    assert set(result.granted) <= set(result.holdings)
    # Whitelist priority: an on-demand mailbox is granted only if every configured one asked is.
    if any(m not in configured for m in result.granted):
        assert configured <= set(result.granted)
    # Configured users fitting in the capacity always get a seat.
    if len(configured | {m for m, h in state.items() if h.configured and h.expires_at > later}) <= capacity:
        assert configured <= set(result.granted)
    # A seat is refused only when the seats are all taken.
    if result.refused:
        assert result.seats_used == capacity
