"""Shared fixtures: one strict emulator subprocess per test session, exchangelib accounts bound to it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from exchange_emulator_support import PLAIN_PASSWORD, PLAIN_USER, SERVICE_PASSWORD, SERVICE_USER
from exchangelib import BASIC, IMPERSONATION, NTLM, Account, Configuration, Credentials, FaultTolerance
from exchangelib.protocol import close_connections

from exchange_emulator.testing import EmulatorHandle, fail_on_new_violations, new_mailboxes, running_emulator

CONFIG: dict[str, Any] = {
    "version": "Exchange2016",
    "domain": "EXAMPLE",
    "service_accounts": [
        {"username": SERVICE_USER, "password": SERVICE_PASSWORD, "impersonation": True},
        {"username": PLAIN_USER, "password": PLAIN_PASSWORD, "impersonation": False},
    ],
    "mailboxes": [{"email": "alice@example.com", "display_name": "Alice Example"}],
    # Calendar semantics are checked with meeting messages delivered before the call returns; their travel
    # through transport (later, out of order) has its own module, test_exchange_emulator_transport.py.
    "meeting_delivery": {"delay_ms": 0, "jitter_ms": 0},
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "expect_violation: the test provokes a schema violation on purpose")


@pytest.fixture(scope="session")
def emu() -> Iterator[EmulatorHandle]:
    # A short EWS "minute" keeps ConnectionTimeout and subscription timeouts testable.
    with running_emulator(CONFIG, strict=True, extra_args=["--minute-seconds", "2", "--heartbeat-seconds", "0.5"]) as h:
        yield h
        close_connections()


@pytest.fixture(autouse=True)
def _no_schema_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test during which the strict emulator recorded a schema violation (unless marked expect_violation)."""
    yield from fail_on_new_violations(request, allowed_by="expect_violation")


@pytest.fixture
def mailboxes(emu: EmulatorHandle) -> Callable[..., list[str]]:
    """Create fresh mailboxes (admin API) and return their addresses."""
    return functools.partial(new_mailboxes, emu)


@pytest.fixture
def account(emu: EmulatorHandle) -> Iterator[Callable[..., Account]]:
    """Factory of impersonating exchangelib accounts (NTLM by default); sessions closed at teardown."""
    made: list[Account] = []

    def make(
        email: str,
        auth_type: str = NTLM,
        username: str = SERVICE_USER,
        password: str = SERVICE_PASSWORD,
        max_wait: float = 5,
        retry_policy: Any = None,
    ) -> Account:
        config = Configuration(
            service_endpoint=emu.ews_url,
            credentials=Credentials(username, password),
            auth_type=auth_type,
            retry_policy=retry_policy or FaultTolerance(max_wait=max_wait),
            max_connections=4,
        )
        acc = Account(email, config=config, access_type=IMPERSONATION, autodiscover=False)
        # exchangelib caches one Protocol per (endpoint, credentials): make this account's retry policy current.
        acc.protocol.config.retry_policy = config.retry_policy
        made.append(acc)
        return acc

    yield make
    for acc in made:
        acc.protocol.close()
    close_connections()


__all__ = ["BASIC", "NTLM"]
