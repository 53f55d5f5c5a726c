"""The repository stands alone: every file that the code's docstrings, the docs and the README
cite exists in the repository, and none cites a design file outside it or an issue number.

A moved or renamed file (a test, a doc, a module) then fails here until its citations follow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Paths the text may cite, relative to the repository root.
CITED = re.compile(
    r"(?<![\w/.-])((?:tests|docs|benchmarks|src/visattn)/[\w./-]*\w\.(?:py|md|sh|cpp))"
)
#: Citations of what is not in the repository.
OUTSIDE = re.compile(r"DESIGN\.md|\bissue \d+|\bissue #\d+", re.IGNORECASE)


def _texts() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("src", "tests", "benchmarks"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".cpp", ".sh"))
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose_lines(path: Path):
    """(line number, line) of a file, without a Markdown file's code blocks (examples there may
    show files a reader is to write)."""
    fenced = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if path.suffix == ".md" and line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield lineno, line


def test_every_cited_file_exists():
    missing = []
    for f in _texts():
        for lineno, line in _prose_lines(f):
            for cited in CITED.findall(line):
                if "*" not in cited and not (ROOT / cited).exists():
                    missing.append(f"{_relative(f)}:{lineno}: {cited}")
    assert not missing, "cited files that do not exist:\n" + "\n".join(missing)


def test_nothing_outside_the_repository_is_cited():
    found = []
    for f in _texts():
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{_relative(f)}:{lineno}: {line.strip()}")
    assert not found, "citations of things outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("Tests: ``tests/layers/test_no_such_file.py``.", True),
        ("see docs/architecture.md", False),
        ("as DESIGN.md says", True),
        ("(issue 6)", True),
    ],
)
def test_the_patterns_catch_what_they_should(text, bad):
    """The checks themselves: a missing path and an outside citation are both seen."""
    missing = [c for c in CITED.findall(text) if not (ROOT / c).exists()]
    assert bool(missing or OUTSIDE.search(text)) is bad
