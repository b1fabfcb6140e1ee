"""The shared bounded poll (`wait_for`, `wait_for_async`) and how `tc-calendar` finds the sandbox command."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from tccal.cli.main import PLUGIN_GROUP
from tccal_sandbox.testing import wait_for, wait_for_async


def test_wait_for_returns_the_first_truthy_value() -> None:
    answers: list[object] = [None, 0, "", "found", "later"]
    assert wait_for(lambda: answers.pop(0), timeout=5, interval=0.01) == "found"
    assert answers == ["later"]


def test_wait_for_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.2s waiting for the moon"):
        wait_for(lambda: None, timeout=0.2, interval=0.01, what="the moon")


def test_wait_for_tolerates_only_the_errors_it_is_told_and_names_the_last() -> None:
    calls = [1, 2]

    def flaky() -> str:
        if calls:
            calls.pop()
            raise KeyError("not yet")
        return "there"

    assert wait_for(flaky, timeout=5, interval=0.01, tolerate=(KeyError,)) == "there"
    with pytest.raises(AssertionError, match=r"last error: KeyError\('still not'\)"):
        wait_for(lambda: {}["still not"], timeout=0.2, interval=0.01, tolerate=(KeyError,))
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, timeout=5, tolerate=(KeyError,))


async def test_wait_for_async_takes_coroutine_and_plain_predicates() -> None:
    answers: list[object] = [None, False, 3, 4]

    async def popped() -> object:
        return answers.pop(0)

    assert await wait_for_async(popped, timeout=5, interval=0.01) == 3
    assert await wait_for_async(lambda: "plain", timeout=5) == "plain"
    with pytest.raises(AssertionError, match=r"waiting for nothing"):
        await wait_for_async(lambda: False, timeout=0.2, interval=0.01, what="nothing")


def test_the_sandbox_command_is_a_plugin_and_tccal_does_not_import_the_sandbox() -> None:
    commands = {entry.name: entry.value for entry in entry_points(group=PLUGIN_GROUP)}
    assert commands["sandbox"] == "tccal_sandbox.cli:sandbox"
    probe = "import sys, tccal.cli.main; print(sorted(m for m in sys.modules if m.startswith('tccal_sandbox')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
