"""`tc-calendar` / `tc_calendar`: --help everywhere, the guide's legacy spellings, both entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys

import click
import pytest

from tccal.cli.main import cli, main, translate_legacy


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])  # loads the plugin commands too
    capsys.readouterr()
    for path in all_commands(cli):
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code == 0, path
        assert "Usage: tc-calendar" in capsys.readouterr().out


def test_guide_spellings_are_translated() -> None:
    assert translate_legacy(["--hash_pass", "a", "b"]) == ["hash-pass", "a", "b"]
    assert translate_legacy(["--register", "KEY"]) == ["register", "KEY"]
    assert translate_legacy(["--offline_reg", "regoffline2.crg"]) == ["offline-reg", "regoffline2.crg"]
    assert translate_legacy(["--register=KEY"]) == ["register", "KEY"]
    assert translate_legacy(["config", "check", "x"]) == ["config", "check", "x"]


@pytest.mark.parametrize("program", ["tc-calendar", "tc_calendar"])
def test_both_program_names_are_installed(program: str) -> None:
    path = shutil.which(program) or str(__import__("pathlib").Path(sys.executable).parent / program)
    result = subprocess.run([path, "--help"], capture_output=True, text=True, check=True)
    assert "hash-pass" in result.stdout and "sandbox" in result.stdout
