"""The docs hold together: a short README, links that lead somewhere, nothing unreachable.

- README.md stays at most 15 KB: what the project is, the Quickstart, the map; the rest is in
  docs/.
- Every relative link in README.md and docs/*.md names an existing file, and a `#anchor` into
  a markdown file names one of its headings (GitHub's slugs).
- The README's Quickstart has exactly two commands: the local run, and what CI runs (.ci/run).
- Every document in docs/ is linked from the README; every design-decision record in
  docs/decisions/ is numbered and listed in that folder's index, which the README links to.
- Facts the docs state about the repository are read from the repository, never counted by
  hand: the tox environments (tox.ini's envlist) in docs/testing.md's table, in any count of
  them and in the README's closing summary lines; the folders and top-level modules of
  pipeline/ in the README's map, and every module in architecture.md's tables; the scripts of
  benchmarks/ in both; the test folders and the test files where the README and
  docs/testing.md list them.
"""
import configparser
import re
import shlex
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from pipeline.settings import LOCAL
from tests.helpers import doc_blocks, fenced_blocks

README = LOCAL.repo_root / "README.md"
DOCS = LOCAL.repo_root / "docs"
DECISIONS = DOCS / "decisions"
DECISIONS_INDEX = DECISIONS / "README.md"
CI_RUN = LOCAL.repo_root / ".ci" / "run"
TESTING_DOC = DOCS / "testing.md"
ARCHITECTURE_DOC = DOCS / "architecture.md"
TOX_INI = LOCAL.repo_root / "tox.ini"
README_MAX_BYTES = 15 * 1024
QUICKSTART = "quickstart"
LOCAL_RUN_COMMAND = "python3 -m pipeline.run_local"

# [text](target) and [text](target "title"); images too. Autolinks and reference-style links
# are not used in these docs.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def documents() -> List[Path]:
    return [README, *sorted(DOCS.glob("*.md")), *sorted(DECISIONS.glob("*.md"))]


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


def decision_records() -> List[Path]:
    return sorted(path for path in DECISIONS.glob("*.md") if path != DECISIONS_INDEX)


def test_every_decision_record_is_numbered_and_in_the_index() -> None:
    records = decision_records()
    numbers = [path.name[:4] for path in records]
    assert all(re.fullmatch(r"\d{4}-[a-z0-9-]+\.md", path.name) for path in records), numbers
    assert numbers == [f"{n:04d}" for n in range(1, len(records) + 1)], "decision records are numbered 0001, 0002, ..."
    linked = {(DECISIONS / target.split("#")[0]).resolve() for target in relative_links(DECISIONS_INDEX)}
    assert [path.name for path in records if path.resolve() not in linked] == []


def test_every_decision_record_has_context_decision_and_consequences() -> None:
    for path in decision_records():
        headings = [line for line in without_code(path) if line.startswith("## ")]
        assert headings == ["## Context", "## Decision", "## Consequences"], path.name


def test_the_readme_links_to_the_index_of_decision_records() -> None:
    linked = {(README.parent / target.split("#")[0]).resolve() for target in relative_links(README)}
    assert DECISIONS_INDEX.resolve() in linked


# --- facts about the repository ----------------------------------------------------------

NUMBER_WORDS: Dict[str, int] = {
    word: n for n, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}
# "runs six environments", "the 6 tox environments"; not "the last two environments", which
# counts some of them.
ENVIRONMENT_COUNT = re.compile(
    r"(?<!last )(?<!first )\b(" + "|".join(NUMBER_WORDS) + r"|\d+)\s+(?:tox\s+)?environments\b",
    re.IGNORECASE,
)


def tox_environments() -> List[str]:
    """tox.ini's envlist: the environments `tox` runs, in order."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(TOX_INI)
    names = [name for name in re.split(r"[\s,]+", tox["tox"]["envlist"]) if name]
    assert all(re.fullmatch(r"[\w-]+", name) for name in names), names
    return names


def pipeline_modules() -> Set[str]:
    """The modules of pipeline/, by path under it without `.py` (`train_model`, `storage/layout`),
    without the packages' __init__."""
    pipeline = LOCAL.repo_root / "pipeline"
    return {path.relative_to(pipeline).with_suffix("").as_posix()
            for path in pipeline.rglob("*.py") if path.name != "__init__.py"}


def pipeline_folders() -> Set[str]:
    """The folders of pipeline/ (`storage`), each a package."""
    return {path.parent.name for path in (LOCAL.repo_root / "pipeline").glob("*/__init__.py")}


def folders_of_tests() -> Set[str]:
    """The folders of tests/ that hold test files."""
    return {path.parent.name for path in (LOCAL.repo_root / "tests").glob("*/test_*.py")}


def benchmark_scripts() -> Set[str]:
    """The scripts of benchmarks/, by file name (`soak.py`), without the package's __init__."""
    return {path.name for path in (LOCAL.repo_root / "benchmarks").glob("*.py") if path.name != "__init__.py"}


def tables(path: Path, first_header: str) -> List[List[str]]:
    """The body rows of each markdown table in `path` whose header row starts with
    `| first_header |`."""
    lines = path.read_text().splitlines()
    found: List[List[str]] = []
    for start in [n for n, line in enumerate(lines) if line.startswith(f"| {first_header} |")]:
        rows: List[str] = []
        for line in lines[start + 2:]:
            if not line.startswith("|"):
                break
            rows.append(line)
        found.append(rows)
    return found


def table_rows(path: Path, first_header: str) -> List[str]:
    """The body rows of the one markdown table in `path` headed `| first_header |`."""
    found = tables(path, first_header)
    assert len(found) == 1, f"{path.relative_to(LOCAL.repo_root)}: {len(found)} tables headed {first_header!r}, not 1"
    return found[0]


def first_cell(row: str) -> str:
    return row.strip().strip("|").split("|")[0].strip()


def code_spans(text: str) -> List[str]:
    return re.findall(r"`([^`]+)`", text)


def row_starting(rows: List[str], cell: str) -> str:
    """The one row whose first cell is `cell`."""
    found = [row for row in rows if first_cell(row) == cell]
    assert len(found) == 1, f"{len(found)} rows for {cell}, not 1"
    return found[0]


def test_testing_doc_lists_exactly_the_tox_environments() -> None:
    listed = [first_cell(row).strip("`") for row in table_rows(TESTING_DOC, "environment")]
    assert listed == tox_environments(), "docs/testing.md's table of environments is not tox.ini's envlist"


def test_every_count_of_the_tox_environments_is_right() -> None:
    expected = len(tox_environments())
    wrong = [
        f"{path.relative_to(LOCAL.repo_root)}: {match.group(0)!r}"
        for path in documents()
        for match in ENVIRONMENT_COUNT.finditer(path.read_text())
        if int(NUMBER_WORDS.get(match.group(1).lower(), match.group(1))) != expected
    ]
    assert wrong == [], f"tox.ini has {expected} environments: {wrong}"


def test_readme_closing_lines_show_every_tox_environment() -> None:
    summaries = [text for _, text in fenced_blocks(README) if "congratulations :)" in text]
    assert len(summaries) == 1, "README.md: no single block shows tox's closing lines"
    lines = summaries[0].strip().splitlines()
    shown = [re.sub(r":.*", "", line).strip() for line in lines[:-1]]
    assert shown == tox_environments(), f"README.md's closing lines show {shown}, not tox.ini's envlist"
    assert "congratulations :)" in lines[-1]


def test_readme_map_names_every_folder_and_top_level_module_and_no_other() -> None:
    named = [
        match
        for row in table_rows(README, "where")
        for match in re.findall(r"\bpipeline/(\w+)(?:\.py\b|/)", first_cell(row))
    ]
    expected = {name for name in pipeline_modules() if "/" not in name} | pipeline_folders()
    assert set(named) == expected, (
        f"README.md's map misses {sorted(expected - set(named))}, names {sorted(set(named) - expected)} "
        "that are not folders or top-level modules of pipeline/"
    )


def test_readme_map_names_only_paths_that_exist() -> None:
    missing = [
        span
        for row in table_rows(README, "where")
        for span in code_spans(first_cell(row))
        if not (LOCAL.repo_root / span).exists()
    ]
    assert missing == [], f"README.md's map names paths that do not exist: {missing}"


def test_readme_map_names_every_folder_of_tests_that_is_not_a_mirror_of_pipeline() -> None:
    folders = folders_of_tests() - pipeline_folders()
    row = row_starting(table_rows(README, "where"), "`tests/`")
    named = set(re.findall(r"`tests/(\w+)/`", row))
    assert named == folders, f"README.md's `tests/` row names {sorted(named)}; tests/ has {sorted(folders)} but mirrors"


def test_architecture_doc_lists_every_module_once() -> None:
    listed = [
        match
        for header in ("entry point", "module")
        for rows in tables(ARCHITECTURE_DOC, header)
        for row in rows
        for match in re.findall(r"^`(?:pipeline/)?([\w/]+)\.py`$", first_cell(row))
    ]
    modules = pipeline_modules()
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert (sorted(modules - set(listed)), sorted(set(listed) - modules), twice) == ([], [], []), (
        "docs/architecture.md's tables: (missing modules, modules that do not exist, modules listed twice)"
    )


def test_readme_and_architecture_doc_name_every_benchmark_script() -> None:
    readme_row = row_starting(table_rows(README, "where"), "`benchmarks/`")
    lines = ARCHITECTURE_DOC.read_text().splitlines()
    start = [n for n, line in enumerate(lines) if line.startswith("- `benchmarks/`")]
    assert len(start) == 1, "docs/architecture.md: no single `benchmarks/` item"
    item = [lines[start[0]]]
    for line in lines[start[0] + 1:]:
        if not line.startswith("  "):
            break
        item.append(line)
    for where, text in (("README.md", readme_row), ("docs/architecture.md", "\n".join(item))):
        named = set(re.findall(r"\b\w+\.py\b", text))
        assert named == benchmark_scripts(), f"{where} names {sorted(named)}"


def test_testing_doc_lists_every_test_file() -> None:
    listed = {
        span
        for rows in tables(TESTING_DOC, "file")
        for row in rows
        for span in code_spans(first_cell(row))
    }
    files = {path.relative_to(LOCAL.repo_root).as_posix() for path in (LOCAL.repo_root / "tests").rglob("test_*.py")}
    missing = [name for name in files - listed if f"{name.rsplit('/', 1)[0]}/" not in listed]
    assert sorted(missing) == [], "missing from docs/testing.md's table of test files (or of their folder)"


# --- links -------------------------------------------------------------------------------

def links() -> List[Tuple[str, str]]:
    return [(str(path.relative_to(LOCAL.repo_root)), target) for path in documents() for target in relative_links(path)]


@pytest.mark.parametrize("document,target", links(), ids=lambda value: str(value))
def test_relative_link_resolves(document: str, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    source = LOCAL.repo_root / document
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
