"""The docs hold together: a short README, links that lead somewhere, nothing unreachable.

- README.md stays at most 15 KB: what the project is, the Quickstart, the map; the rest is in
  docs/.
- Every relative link in README.md and docs/*.md names an existing file, and a `#anchor` into
  a markdown file names one of its headings (GitHub's slugs).
- The README's Quickstart has exactly two commands: the local run, and what CI runs (.ci/run).
- Every document in docs/ is linked from the README.
"""
import re
import shlex
from pathlib import Path
from typing import List, Set, Tuple

import pytest

from tests.helpers import doc_blocks, fenced_blocks

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CI_RUN = REPO_ROOT / ".ci" / "run"
README_MAX_BYTES = 15 * 1024
QUICKSTART = "quickstart"
LOCAL_RUN_COMMAND = "python3 -m pipeline.run_local"

# [text](target) and [text](target "title"); images too. Autolinks and reference-style links
# are not used in these docs.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def documents() -> List[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(path: Path) -> List[str]:
    """The lines of a markdown file outside fenced code blocks, with inline code removed: a
    link or a heading inside code is not one."""
    lines: List[str] = []
    fence = 0
    for line in path.read_text().splitlines():
        opening = re.match(r"^\s*(`{3,})", line)
        if fence == 0 and opening:
            fence = len(opening.group(1))
        elif fence and opening and len(opening.group(1)) >= fence and not line.strip().strip("`"):
            fence = 0
        elif fence == 0:
            lines.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown emphasis and links reduced to their text,
    lowercased, punctuation other than hyphens and spaces removed, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[*`]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """The anchors of a markdown file's headings; a repeated heading gets `-1`, `-2`, ..."""
    found: Set[str] = set()
    for line in without_code(path):
        heading = HEADING.match(line) if line.startswith("#") else None
        if heading:
            anchor, n = slug(heading.group(1)), 1
            while anchor in found:
                anchor, n = f"{slug(heading.group(1))}-{n}", n + 1
            found.add(anchor)
    return found


def relative_links(path: Path) -> List[str]:
    """The targets of a markdown file's links that point into the repository."""
    targets = [target for line in without_code(path) for target in LINK.findall(line)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def quickstart_commands() -> List[str]:
    """The README's code blocks marked `quickstart`, each stripped of surrounding space."""
    return [block.strip() for block in doc_blocks(README, QUICKSTART)]


def ci_command() -> str:
    """The last command line of .ci/run: what CI runs."""
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#") and not line.startswith("set ")]
    return commands[-1]


# --- the README --------------------------------------------------------------------------

def test_readme_is_at_most_15_kb() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_quickstart_has_exactly_two_commands() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    assert all(len(command.splitlines()) == 1 for command in commands), commands


def test_readme_quickstart_blocks_are_in_the_quickstart_section() -> None:
    text = README.read_text()
    start = text.index("\n## Quickstart\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    assert all(f"\n{command}\n" in section for command in quickstart_commands())


def test_readme_first_quickstart_command_is_the_local_run() -> None:
    assert quickstart_commands()[0] == LOCAL_RUN_COMMAND


def test_readme_second_quickstart_command_is_what_ci_runs() -> None:
    assert shlex.split(quickstart_commands()[1]) == shlex.split(ci_command())


def test_every_doc_in_docs_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.split("#")[0]).resolve() for target in relative_links(README)}
    assert [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked] == []


# --- links -------------------------------------------------------------------------------

def links() -> List[Tuple[str, str]]:
    return [(str(path.relative_to(REPO_ROOT)), target) for path in documents() for target in relative_links(path)]


@pytest.mark.parametrize("document,target", links(), ids=lambda value: str(value))
def test_relative_link_resolves(document: str, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    source = REPO_ROOT / document
    linked = (source.parent / path_part).resolve() if path_part else source
    assert linked.exists(), f"{document}: {target} names no file"
    if anchor and linked.suffix == ".md":
        assert anchor in anchors(linked), f"{document}: {target}: no such heading in {linked.name}"


def test_the_docs_have_links_to_check() -> None:
    assert len(links()) >= len(documents())


def test_every_code_block_of_the_docs_is_closed() -> None:
    for path in documents():
        fenced_blocks(path)  # asserts that every block is closed


# --- the link checker itself -------------------------------------------------------------

@pytest.mark.parametrize("heading,expected", [
    ("Resources and time limits, and where each figure comes from",
     "resources-and-time-limits-and-where-each-figure-comes-from"),
    ("6. History and logs", "6-history-and-logs"),
    ("The local run: what it does, and prints", "the-local-run-what-it-does-and-prints"),
    ("`tox` and its environments", "tox-and-its-environments"),
    ("Train stage — crossover", "train-stage--crossover"),
])
def test_slug_follows_githubs_rules(heading: str, expected: str) -> None:
    assert slug(heading) == expected
