"""The local run's virtualenv bootstrap: it installs only when a requirement file changed."""
from pathlib import Path
from typing import List

import pytest

from pipeline.local import bootstrap
from pipeline.settings import LOCAL


@pytest.fixture
def requirement_files(tmp_path: Path) -> List[Path]:
    pipe, cicd, mlflow = (tmp_path / name for name in LOCAL.requirement_file_names)
    pipe.write_text("numpy==2.0.2\n")
    cicd.write_text("pytest==9.0.3\n")
    mlflow.write_text("mlflow==3.17.2\n")
    return [pipe, cicd, mlflow]


def test_no_install_when_requirements_are_unchanged_since_the_last_install(
    tmp_path: Path, requirement_files: List[Path]
) -> None:
    venv_dir = tmp_path / LOCAL.venv_dir_name
    venv_dir.mkdir()
    bootstrap.write_stamp(venv_dir, bootstrap.requirements_digest(requirement_files))

    assert bootstrap.install_needed(venv_dir, bootstrap.requirements_digest(requirement_files)) is False


def test_install_when_a_pin_changed_since_the_last_install(
    tmp_path: Path, requirement_files: List[Path]
) -> None:
    venv_dir = tmp_path / LOCAL.venv_dir_name
    venv_dir.mkdir()
    bootstrap.write_stamp(venv_dir, bootstrap.requirements_digest(requirement_files))
    requirement_files[0].write_text("numpy==2.1.0\n")

    assert bootstrap.install_needed(venv_dir, bootstrap.requirements_digest(requirement_files)) is True


def test_install_when_the_virtualenv_has_no_stamp(tmp_path: Path, requirement_files: List[Path]) -> None:
    venv_dir = tmp_path / LOCAL.venv_dir_name
    venv_dir.mkdir()

    assert bootstrap.install_needed(venv_dir, bootstrap.requirements_digest(requirement_files)) is True
