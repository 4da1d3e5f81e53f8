"""The stages' runtime image tag: a digest of everything the image is built from.

The build context is exactly the files `.dockerignore` lets in (its `!PATH` lines: the
Dockerfile, requirements_pipe.txt and what the Dockerfile copies from image/), so the tag is
the SHA-256 of those files' names and contents, and of `.dockerignore` itself. The same inputs
give the same tag on every machine; a change of requirements (or of anything else the image
is built from) is a new tag, hence a new image, and bodywork.yaml must name it.

    python3 image/tag.py                       # prints the tag
    python3 image/tag.py --check REPOSITORY    # exit 0 if bodywork.yaml names REPOSITORY:TAG

Standard library only: CI runs it before anything is installed.
"""
import hashlib
import re
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERIGNORE = ".dockerignore"
BODYWORK_YAML = "bodywork.yaml"
TAG_LENGTH = 16
# The image line of bodywork.yaml (`  docker_image: REGISTRY/REPOSITORY:TAG`), read without a
# YAML parser so that this file needs nothing installed.
DOCKER_IMAGE_LINE = re.compile(r"^\s*docker_image:\s*[\"']?([^\"'\s#]+)", re.MULTILINE)


def build_inputs(root: Path = REPO_ROOT) -> List[str]:
    """The files the image is built from, relative to `root`, sorted: `.dockerignore` and every
    path it lets into the build context (`!PATH` lines after `*`).

    Raises:
        ValueError: if `.dockerignore` does not exclude everything first, or lets in a path
            that is not a file (a folder or a pattern would make the inputs depend on the
            checkout).
    """
    lines = [
        line.strip() for line in (root / DOCKERIGNORE).read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines or lines[0] != "*":
        raise ValueError(f"{DOCKERIGNORE} must start with `*` and then let in single files with `!PATH`")
    inputs = [DOCKERIGNORE]
    for line in lines[1:]:
        path = line[1:] if line.startswith("!") else ""
        if not path or not (root / path).is_file():
            raise ValueError(f"{DOCKERIGNORE}: {line!r} is not `!PATH` of an existing file")
        inputs.append(path)
    return sorted(inputs)


def image_tag(root: Path = REPO_ROOT) -> str:
    """The tag: the first TAG_LENGTH hex digits of the SHA-256 over each build input's path
    and the SHA-256 of its bytes."""
    digest = hashlib.sha256()
    for name in build_inputs(root):
        digest.update(name.encode() + b"\0" + hashlib.sha256((root / name).read_bytes()).digest())
    return digest.hexdigest()[:TAG_LENGTH]


def configured_image(root: Path = REPO_ROOT) -> Optional[str]:
    """The `pipeline.docker_image` of bodywork.yaml, or None if it has none."""
    found = DOCKER_IMAGE_LINE.findall((root / BODYWORK_YAML).read_text())
    return found[0] if len(found) == 1 else None


def image_problem(repository: str, root: Path = REPO_ROOT) -> Optional[str]:
    """What is wrong with bodywork.yaml's image given the repository CI pushes to, or None.

    The image must be `REPOSITORY:TAG` with this checkout's tag.
    """
    expected = f"{repository}:{image_tag(root)}"
    configured = configured_image(root)
    if configured == expected:
        return None
    return (
        f"bodywork.yaml's pipeline.docker_image is {configured!r}, but the image built from this "
        f"commit is {expected!r}: put `docker_image: {expected}` in bodywork.yaml"
    )


def main(argv: List[str]) -> int:
    if argv == []:
        print(image_tag())
        return 0
    if len(argv) == 2 and argv[0] == "--check":
        problem = image_problem(argv[1])
        print(problem or configured_image(), file=sys.stderr if problem else sys.stdout)
        return 1 if problem else 0
    print("usage: python3 image/tag.py [--check REGISTRY/REPOSITORY]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
