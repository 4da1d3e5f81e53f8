"""The repository ships no merge leftovers: no conflict marker in any tracked text file.

A merge that stops on a conflict writes both sides into the file between markers: a line
starting `<<<<<<< ` (ours), with diff3 one starting `||||||| ` (the base), a line `=======`,
and one starting `>>>>>>> ` (theirs). Committed by mistake, they ship both versions of the
text and the markers themselves, as the README once did.

- The files checked are git's tracked files (`git ls-files`); in a tree without `.git` (an
  exported archive, a copy) every file under the root, outside tool folders such as `.tox/`.
- Binary files (a NUL byte) and files over MAX_BYTES are not read.
- A line starting with `<<<<<<< `, `||||||| ` or `>>>>>>> ` (or that marker alone) is always
  reported. A line `=======` alone is a Markdown or reStructuredText heading underline as
  often as a marker, so it is reported only in a file that also has a `<<<<<<< ` line.

This file builds the markers from their characters, so that no line of it starts with one.
"""
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

from pipeline.settings import LOCAL


MARKER_SIZE = 7
OURS, BASE, THEIRS = "<" * MARKER_SIZE, "|" * MARKER_SIZE, ">" * MARKER_SIZE
SEPARATOR = "=" * MARKER_SIZE
# Larger files are data, not text anyone merges by hand; they are not read.
MAX_BYTES = 4 * 1024 * 1024
# Folders of tools, never the project's own files, left out when there is no git to ask.
NOT_WALKED = {".git", ".tox", LOCAL.venv_dir_name, "__pycache__", ".mypy_cache", ".pytest_cache"}


def repository_files(root: Path) -> List[Path]:
    """The files of the repository at `root`: git's tracked files that exist in the working
    tree, or, where `root` has no `.git` or there is no git, every file under it outside
    NOT_WALKED."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
        assert listed.returncode == 0, f"git ls-files failed in {root}: {listed.stderr.decode(errors='replace')}"
        names = [os.fsdecode(name) for name in listed.stdout.split(b"\0") if name]
        return [root / name for name in names if (root / name).is_file()]
    files: List[Path] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name not in NOT_WALKED)
        files += [Path(directory) / name for name in sorted(names)]
    return files


def is_marker(line: str) -> bool:
    """Whether `line` starts with `<<<<<<< `, `||||||| ` or `>>>>>>> `, or is that marker alone."""
    return any(line == marker or line.startswith(marker + " ") for marker in (OURS, BASE, THEIRS))


def conflict_lines(path: Path) -> List[Tuple[int, str]]:
    """The (line number, line) of each conflict marker in a text file; none in a binary file
    or one over MAX_BYTES."""
    if path.stat().st_size > MAX_BYTES:
        return []
    data = path.read_bytes()
    if b"\0" in data:
        return []
    lines = [raw.decode("utf-8", errors="replace").rstrip("\r") for raw in data.split(b"\n")]
    in_a_conflict = any(line == OURS or line.startswith(OURS + " ") for line in lines)
    return [
        (number, line)
        for number, line in enumerate(lines, start=1)
        if is_marker(line) or (in_a_conflict and line == SEPARATOR)
    ]


def conflict_markers(root: Path) -> List[str]:
    """`path:line: text` for every conflict marker in the repository at `root`."""
    return [
        f"{path.relative_to(root).as_posix()}:{number}: {line[:72]}"
        for path in repository_files(root)
        for number, line in conflict_lines(path)
    ]


# --- the repository ----------------------------------------------------------------------

def test_no_tracked_file_has_merge_conflict_markers() -> None:
    found = conflict_markers(LOCAL.repo_root)
    assert found == [], "merge conflict markers left in the repository:\n" + "\n".join(found)


def test_the_repository_has_files_to_check() -> None:
    names = {path.relative_to(LOCAL.repo_root).as_posix() for path in repository_files(LOCAL.repo_root)}
    assert {"README.md", "tox.ini", "pipeline/storage/layout.py", "tests/test_docs.py"} <= names


# --- the check itself --------------------------------------------------------------------

CONFLICT = "\n".join([
    "# Title",
    "",
    OURS + " HEAD",
    "one side",
    BASE + " merged common ancestors",
    "the base",
    SEPARATOR,
    "the other side",
    THEIRS + " issue15",
    "",
])
# A Markdown setext heading: its underline is a line of `=` that may be seven long.
HEADING_UNDERLINE = "Heading\n" + SEPARATOR + "\n\nText.\n"


def test_the_check_reports_a_planted_conflict_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "planted.md").write_text(CONFLICT)
    assert conflict_markers(tmp_path) == [
        "docs/planted.md:3: " + OURS + " HEAD",
        "docs/planted.md:5: " + BASE + " merged common ancestors",
        "docs/planted.md:7: " + SEPARATOR,
        "docs/planted.md:9: " + THEIRS + " issue15",
    ]


def test_the_check_reports_a_conflict_with_windows_line_endings(tmp_path: Path) -> None:
    (tmp_path / "planted.txt").write_bytes(CONFLICT.replace("\n", "\r\n").encode())
    assert [line.split(": ")[0] for line in conflict_markers(tmp_path)] == [
        "planted.txt:3", "planted.txt:5", "planted.txt:7", "planted.txt:9",
    ]


def test_the_check_reports_a_lone_marker_without_its_partners(tmp_path: Path) -> None:
    (tmp_path / "half.py").write_text("x = 1\n" + THEIRS + " issue15\n")
    assert conflict_markers(tmp_path) == ["half.py:2: " + THEIRS + " issue15"]


def test_the_check_ignores_a_heading_underline_and_markers_mid_line(tmp_path: Path) -> None:
    (tmp_path / "heading.md").write_text(HEADING_UNDERLINE)
    (tmp_path / "heading.rst").write_text(HEADING_UNDERLINE)
    (tmp_path / "prose.md").write_text(f"git writes `{OURS} HEAD` and `{THEIRS} branch` lines.\n")
    assert conflict_markers(tmp_path) == []


def test_the_check_skips_binary_large_and_tool_files(tmp_path: Path) -> None:
    (tmp_path / "image.png").write_bytes(b"\x89PNG\0\n" + CONFLICT.encode())
    (tmp_path / "data.csv").write_text(CONFLICT + "x" * MAX_BYTES)
    for folder in (".tox", LOCAL.venv_dir_name, "__pycache__"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "planted.py").write_text(CONFLICT)
    assert conflict_markers(tmp_path) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_check_reads_the_files_git_tracks(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "--quiet"], cwd=tmp_path, check=True)
    (tmp_path / "tracked.md").write_text(CONFLICT)
    (tmp_path / "untracked.md").write_text(CONFLICT)
    subprocess.run(["git", "add", "tracked.md"], cwd=tmp_path, check=True)
    found = conflict_markers(tmp_path)
    assert found and all(line.startswith("tracked.md:") for line in found), found
