"""The local run's virtualenv bootstrap: standard library only.

The first Quickstart command runs with any Python 3.11+ that has pip: before anything else,
the local run makes sure the project's virtualenv `.venv/` exists with the pinned
requirements (installing them only when a requirement file changed since the last install,
which a stamp inside `.venv` records) and re-executes itself with `.venv/bin/python`.
"""
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import List, Optional, Sequence

from pipeline.settings import ENVIRONMENT, LOCAL


log = logging.getLogger(__name__)


class BootstrapError(Exception):
    """The virtualenv cannot be made or used; the message says why."""


def requirements_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and contents of the requirement files, in order.

    Raises:
        OSError: if a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_stamp(venv_dir: Path) -> Optional[str]:
    """The digest recorded by the last successful install into `venv_dir`, if any."""
    try:
        return (venv_dir / LOCAL.stamp_file_name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_stamp(venv_dir: Path, digest: str) -> None:
    """Record that `venv_dir` holds the requirements with this digest."""
    (venv_dir / LOCAL.stamp_file_name).write_text(digest + "\n", encoding="utf-8")


def install_needed(venv_dir: Path, digest: str) -> bool:
    """True unless the last successful install into `venv_dir` was of exactly these requirements."""
    return read_stamp(venv_dir) != digest


def venv_python(venv_dir: Path) -> Path:
    """The interpreter of a virtualenv."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def missing_modules(names: Sequence[str]) -> List[str]:
    """The top-level modules among `names` that the current interpreter cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def in_project_venv() -> bool:
    """Whether this interpreter is the one of the project's `.venv`."""
    return Path(sys.prefix).resolve() == LOCAL.venv_dir.resolve()


def in_other_ready_venv(required: Sequence[str]) -> bool:
    """Whether this interpreter is some other virtualenv in which `required` all import."""
    return sys.prefix != sys.base_prefix and not missing_modules(required)


def ensure_project_venv(venv_dir: Path, requirement_files: Sequence[Path]) -> Path:
    """Create the virtualenv if needed and install the requirements if they changed.

    Returns:
        The virtualenv's interpreter.

    Raises:
        BootstrapError: if the virtualenv cannot be created or pip fails.
    """
    python = venv_python(venv_dir)
    if not _runs(python):
        log.info(f"creating the virtualenv {venv_dir} (first run only)")
        try:
            venv.EnvBuilder(with_pip=True, clear=venv_dir.exists()).create(venv_dir)
        except (OSError, subprocess.CalledProcessError) as error:
            raise BootstrapError(f"cannot create the virtualenv {venv_dir}: {error}") from error
    digest = requirements_digest(requirement_files)
    if not install_needed(venv_dir, digest):
        log.info(f"{venv_dir} already has the pinned requirements; nothing to install")
        return python
    names = " and ".join(path.name for path in requirement_files)
    log.info(f"installing the pinned requirements ({names}) into {venv_dir}; "
             "this takes a minute or two, and only happens when they change")
    started = time.monotonic()
    command = [str(python), "-m", "pip", "install"]
    for path in requirement_files:
        command += ["-r", str(path)]
    # pip's own output is not in the project's log format: it goes to a file, read on failure.
    pip_log = venv_dir / LOCAL.pip_log_file_name
    with open(pip_log, "w", encoding="utf-8") as output:
        code = subprocess.call(command, cwd=LOCAL.repo_root, stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        raise BootstrapError(f"pip could not install the requirements into {venv_dir} (exit code {code}): "
                             f"{_last_line(pip_log)}; pip's whole output is in {pip_log}")
    write_stamp(venv_dir, digest)
    log.info(f"requirements installed in {time.monotonic() - started:.0f}s")
    return python


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def _runs(python: Path) -> bool:
    if not python.exists():
        return False
    try:
        return subprocess.call([str(python), "-c", "import sys"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_in_place_or_reexecute(module: str, argv: Sequence[str], required: Sequence[str], in_place: bool) -> None:
    """Return if this interpreter can run `module`; else make `.venv` ready and become it.

    With `in_place`, this interpreter must have `required`. Otherwise `.venv` is made ready
    (see `ensure_project_venv`) and this process is replaced by `.venv/bin/python -m module
    ARGV`, unless this already is `.venv` or another virtualenv that has `required`.

    Raises:
        BootstrapError: `--in-place` without `required`, or the virtualenv cannot be made.
    """
    if in_place:
        missing = missing_modules(required)
        if missing:
            raise BootstrapError(f"--in-place, but {sys.executable} cannot import {', '.join(missing)}; "
                                 "run without --in-place to use the project's .venv")
        log.info(f"running in place with {sys.executable} (--in-place)")
        return
    # Set by the bare interpreter that checked .venv and re-executed this module with it.
    reexecuted = os.environ.pop(ENVIRONMENT.reexecuted, None) is not None
    if in_project_venv():
        if not reexecuted:
            ensure_project_venv(LOCAL.venv_dir, LOCAL.requirement_files)
        return
    if in_other_ready_venv(required):
        log.info(f"running in place with the virtualenv {sys.prefix}: it has the pipeline's requirements")
        return
    if reexecuted:
        raise BootstrapError(f"re-executed with {sys.executable}, which is still not the project's .venv")
    python = ensure_project_venv(LOCAL.venv_dir, LOCAL.requirement_files)
    log.info(f"continuing with {python}")
    sys.stdout.flush()
    env = {**os.environ, ENVIRONMENT.reexecuted: "1",
           ENVIRONMENT.python_path: os.pathsep.join(
               filter(None, [str(LOCAL.repo_root), os.environ.get(ENVIRONMENT.python_path)]))}
    os.chdir(LOCAL.repo_root)
    # Replacing this process (rather than starting a child) keeps one process for the terminal
    # to signal: Ctrl-C reaches the local run itself.
    os.execve(str(python), [str(python), "-m", module, *argv], env)
