"""image/tag.py: the runtime image's tag is the digest of exactly what the image is built from,
and `--check` refuses a bodywork.yaml that names another repository or a stale tag."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image.tag import build_inputs, configured_image, image_tag

from pipeline.settings import LOCAL

TAG_SCRIPT = LOCAL.repo_root / "image" / "tag.py"
# The pipeline's pinned requirements, which the image installs.
PIPELINE_REQUIREMENTS = LOCAL.requirement_file_names[0]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the build inputs, bodywork.yaml and image/tag.py, as a checkout would have them."""
    for name in [*build_inputs(), "bodywork.yaml", "image/tag.py", "README.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(LOCAL.repo_root / name, tmp_path / name)
    return tmp_path


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def check(root: Path, repository: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, str(root / "image" / "tag.py"), "--check", repository],
                          capture_output=True, text=True, timeout=60)


def test_tag_is_sixteen_hex_digits() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", image_tag())


def test_tag_is_the_same_for_a_copy_of_the_same_inputs(checkout: Path) -> None:
    assert image_tag(checkout) == image_tag()


def test_tag_changes_when_the_requirements_lock_changes(checkout: Path) -> None:
    append(checkout / PIPELINE_REQUIREMENTS, "tomli==2.3.0\n")
    assert image_tag(checkout) != image_tag()


@pytest.mark.parametrize("name", ["Dockerfile", "image/requirements_bodywork.txt", "image/bodywork",
                                  "image/bodywork_entry.py", ".dockerignore"])
def test_tag_changes_when_a_build_input_changes(checkout: Path, name: str) -> None:
    append(checkout / name, "\n# changed\n")
    assert image_tag(checkout) != image_tag()


@pytest.mark.parametrize("name", ["README.md", "bodywork.yaml", "image/tag.py"])
def test_tag_ignores_files_the_image_is_not_built_from(checkout: Path, name: str) -> None:
    append(checkout / name, "\n# changed\n")
    assert image_tag(checkout) == image_tag()


def test_build_inputs_are_the_dockerfile_and_every_file_it_copies_from_the_context() -> None:
    copied = set()
    for line in (LOCAL.repo_root / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            copied.update(words[1:-1])
    assert set(build_inputs()) == {".dockerignore", "Dockerfile", *copied}


def test_check_accepts_the_repository_bodywork_yaml_names_with_this_commits_tag() -> None:
    image = configured_image()
    assert image is not None
    result = check(LOCAL.repo_root, image.rsplit(":", 1)[0])
    assert (result.returncode, result.stdout.strip()) == (0, image), result.stderr


def test_check_refuses_another_repository_and_says_what_to_put_in_bodywork_yaml() -> None:
    result = check(LOCAL.repo_root, "210987654321.dkr.ecr.us-east-1.amazonaws.com/other")
    expected = f"put `docker_image: 210987654321.dkr.ecr.us-east-1.amazonaws.com/other:{image_tag()}` in bodywork.yaml"
    assert (result.returncode, expected in result.stderr) == (1, True), result.stderr


def test_check_refuses_a_tag_older_than_the_requirements(checkout: Path) -> None:
    image = configured_image(checkout)
    assert image is not None
    append(checkout / PIPELINE_REQUIREMENTS, "tomli==2.3.0\n")
    result = check(checkout, image.rsplit(":", 1)[0])
    assert (result.returncode, f":{image_tag(checkout)}` in bodywork.yaml" in result.stderr) == (1, True)
