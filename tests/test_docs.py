"""The documents against the code: the README's flag table lists exactly the parser's flags,
each document stays within its length, the CI's test command is the README's verbatim, and
every relative link points to a file that exists. CPU only, no GPU, no video."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMITS = {"README.md": 250, "PERFORMANCE_TUNING.md": 150, "OPTIMIZATION_SUMMARY.md": 400, "docs/DESIGN.md": 300}
DOCS = [*LIMITS, "docs/USAGE.md", "docs/BACKBONES.md"]


def parser_flags() -> set[str]:
    import feat_extraction

    return {opt for action in feat_extraction.build_parser()._actions for opt in action.option_strings}


def readme_flag_rows() -> list[list[str]]:
    """The flags of each row of the README's table under '## Flags' (a row may name aliases)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `-"):
            first_cell = line.split("|")[1]
            rows.append(re.findall(r"`(-[^`]+)`", first_cell))
    return rows


def test_readme_flag_table_lists_exactly_the_parsers_flags():
    rows = readme_flag_rows()
    listed = [flag for row in rows for flag in row]
    assert len(listed) == len(set(listed)), "a flag listed twice"
    assert set(listed) == parser_flags()


@pytest.mark.parametrize("doc,limit", sorted(LIMITS.items()))
def test_document_length(doc, limit):
    lines = len((ROOT / doc).read_text(encoding="utf-8").splitlines())
    assert lines <= limit, f"{doc}: {lines} lines, at most {limit}"


def test_ci_test_command_is_in_the_readme_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if "pytest" in line)
    assert command.strip() in (ROOT / "README.md").read_text(encoding="utf-8")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_point_to_files(doc):
    path = ROOT / doc
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same file
        file = target.split("#", 1)[0]
        resolved = (path.parent / file).resolve()
        if not resolved.exists():
            broken.append(target)
    assert not broken, f"{doc}: links to missing files: {broken}"


def test_no_machine_paths_in_the_documents():
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert "/work/" not in text and "/home/" not in text, doc
