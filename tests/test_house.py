"""The house a newcomer walks into: a README that is a front door, user pages without the team's paths or
history, and no script or benchmark that no document names or that cannot say how it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_PAGES = ["README.md"] + [f"docs/{p}.md" for p in ("guide", "transcribe", "training", "evaluation", "exports",
                                                       "serving", "distributed", "models")]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines: move details to docs/"
    assert "bash scripts/setup.sh && .venv/bin/python -m mlx_whisper_lora.transcribe" in lines[:12]
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in lines[:12]


@pytest.mark.parametrize("page", USER_PAGES)
def test_user_pages_carry_no_dates_team_paths_or_issue_numbers(page):
    """Results with their conditions, not the history of runs: dates stay on the benchmarks page."""
    text = (ROOT / page).read_text()
    for pattern, what in ((r"\b20\d\d-\d\d-\d\d\b", "a date"), (r"\.\./shared", "the team's data path"),
                          (r"\bissues? \d+|issue-\d+", "an issue number")):
        found = re.search(pattern, text)
        assert not found, f"{page} holds {what}: {found.group(0)!r}"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for folder in ("scripts", "benchmarks")
                                        for p in (ROOT / folder).iterdir() if p.is_file()))
def test_every_script_and_benchmark_is_named_by_a_document_and_says_how_it_runs(path):
    name = Path(path).name
    assert any(name in (ROOT / doc).read_text() for doc in DOCS), f"{path}: no document names it (delete it?)"
    if path.endswith((".py", ".sh")):
        head = (ROOT / path).read_text()[:3000]
        assert name in head, f"{path}: its docstring does not show the command that runs it"
