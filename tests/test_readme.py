"""The README's two set-up commands are the ones CI runs."""

from __future__ import annotations

from conftest import REPO


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in readme and 'pip install -e ".[dev]"' in ci
    assert 'python -m pytest -m "not slow"' in readme and 'python -m pytest -m "not slow"' in ci
