"""README.md's configuration reference is the schema's, word for word."""

from __future__ import annotations

from tccal.config.reference import BEGIN, END, markdown
from tccal_sandbox.testing import repo_root


def test_readme_config_reference_is_generated_from_the_schema() -> None:
    text = (repo_root() / "README.md").read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:end].strip() == markdown().strip(), "regenerate with `tc-calendar config reference`"


def test_readme_names_the_two_commands_ci_runs() -> None:
    text = (repo_root() / "README.md").read_text()
    assert "make run" in text and "make test" in text
    assert "make test" in (repo_root() / ".ci" / "run").read_text()
