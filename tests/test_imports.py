"""The layout's rules, checked on the real modules (docs/architecture.md).

- The entry points are the five CLIs the contracts name, at the top of `pipeline/`, and together
  they stay short: they wire the steps, which live in the folders.
- The serve entry point loads no training code and no plotting library.
- Library modules never import an entry point; neither do the benchmarks and the notebook,
  which call the library's functions.
- Nothing in `pipeline/` imports the tests or moto, except the one local-S3 helper.
- No two modules share a base name (nor one with a module of uvicorn, whose lines the service
  logs in the same format): a log line names a module by its base name alone.
- No two folders import each other, even through others; docs/architecture.md's diagram shows
  exactly the imports between the folders and the top-level modules.
- The tests mirror the modules: `tests/<folder>/test_<module>[_<aspect>].py` for a module of a
  folder, `tests/test_<module>[_<aspect>].py` for a top-level one.
- No test module imports from another test module: what tests share lives once, in
  `tests/helpers.py` (plain functions and containers) or a `conftest.py` (fixtures).

Each module is imported in a fresh interpreter and its `sys.modules` inspected, so that what
a module pulls in through other modules counts too; an AST scan also catches imports made
inside functions.
"""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from pipeline.settings import ENVIRONMENT, LOCAL


PIPELINE = LOCAL.repo_root / "pipeline"
PLOTTING_LIBRARIES = ("matplotlib", "seaborn", "plotly", "PIL")
LOCAL_S3_HELPER = "pipeline.local.local_s3"
# The CLIs the product's contracts name, each `python -m pipeline.<name>`.
CONTRACT_ENTRY_POINTS = {
    "pipeline.train_model", "pipeline.serve_model", "pipeline.score_batch", "pipeline.registry", "pipeline.run_local",
    "pipeline.stream_predict",
}
MAX_ENTRY_POINT_LINES = 300
# Top-level modules that are not entry points: the entry points' command-line runner, the log
# format and the stage argument parser, and the settings.
GROUND_MODULES = {"pipeline.cli", "pipeline.utils", "pipeline.settings"}
# Test folders that run in their own tox environments, not mirrors of a folder of pipeline/.
ENVIRONMENT_TEST_FOLDERS = {"bodywork", "image", "cluster"}
# Tests of the product's contracts alone (CLIs, HTTP, S3, environment), not of a folder: they run
# unchanged against commits of another layout too (docs/reliability.md, "Round two: shown on 7ab96a0").
CONTRACT_TEST_FOLDERS = {"contract"}
# Tests of the repository as a whole rather than of one module.
REPOSITORY_TESTS = {"deployment_config", "docs", "imports", "machine_state", "monitoring", "repository"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(LOCAL.repo_root).with_suffix("").parts)


def is_entry_point(path: Path) -> bool:
    """A module with a command line: it has an `if __name__ == "__main__":` block."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


MODULES = sorted(p for p in PIPELINE.rglob("*.py") if p.name != "__init__.py")
ENTRY_POINTS = [module_name(p) for p in MODULES if is_entry_point(p)]
LIBRARY_MODULES = [module_name(p) for p in MODULES if not is_entry_point(p)]
FOLDERS = sorted(p.name for p in PIPELINE.iterdir() if (p / "__init__.py").is_file())


def unit(module: str) -> str:
    """What a module is drawn as in the diagram: its folder, or itself at the top of pipeline/."""
    return module.split(".")[1]


def modules_loaded_by_importing(module: str) -> Set[str]:
    """Every module in `sys.modules` after a fresh interpreter imports `module`."""
    probe = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=LOCAL.repo_root, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", ENVIRONMENT.python_path: str(LOCAL.repo_root)})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def imported_names(source: str) -> List[str]:
    """Every module named by an import statement anywhere in the source, functions included;
    `from pipeline import storage` names both `pipeline` and `pipeline.storage`."""
    names: List[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
            names.append(ast.unparse(node.args[0]).strip("'\""))
    return names


def notebook_source(path: Path) -> str:
    """The code cells of a notebook as one module, IPython's `%` and `!` lines left out."""
    cells = json.loads(path.read_text())["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code"
             for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def is_training_module(module: str) -> bool:
    return module == "pipeline.train_model" or module == "pipeline.train" or module.startswith("pipeline.train.")


# --- entry points --------------------------------------------------------------------------

def test_the_entry_points_are_the_five_clis_of_the_contracts() -> None:
    assert set(ENTRY_POINTS) == CONTRACT_ENTRY_POINTS
    assert "pipeline.train.steps" in LIBRARY_MODULES and "pipeline.serve.api" in LIBRARY_MODULES


def test_the_top_of_the_package_holds_the_entry_points_and_the_log_format_only() -> None:
    top = {module_name(p) for p in MODULES if p.parent == PIPELINE}
    assert top == CONTRACT_ENTRY_POINTS | GROUND_MODULES


def test_the_entry_points_together_stay_short() -> None:
    lines = {name: len((LOCAL.repo_root / (name.replace(".", "/") + ".py")).read_text().splitlines())
             for name in ENTRY_POINTS}
    assert sum(lines.values()) < MAX_ENTRY_POINT_LINES, lines


def test_serve_entry_point_loads_no_training_code_and_no_plotting_library() -> None:
    loaded = modules_loaded_by_importing("pipeline.serve_model")

    assert sorted(m for m in loaded if is_training_module(m)) == []
    assert sorted(m for m in loaded if m.split(".")[0] in PLOTTING_LIBRARIES) == []


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_module_loads_no_entry_point(module: str) -> None:
    loaded = modules_loaded_by_importing(module)

    assert sorted(loaded & set(ENTRY_POINTS)) == []


@pytest.mark.parametrize("path", [p for p in MODULES if not is_entry_point(p)], ids=module_name)
def test_library_modules_never_name_an_entry_point_in_an_import(path: Path) -> None:
    assert sorted(set(imported_names(path.read_text())) & set(ENTRY_POINTS)) == []


CONSUMERS = sorted(LOCAL.repo_root.glob("benchmarks/*.py")) + sorted(LOCAL.repo_root.glob("notebooks/*.ipynb"))


@pytest.mark.parametrize("path", CONSUMERS, ids=lambda p: p.relative_to(LOCAL.repo_root).as_posix())
def test_benchmarks_and_notebooks_call_the_library_not_an_entry_point(path: Path) -> None:
    source = notebook_source(path) if path.suffix == ".ipynb" else path.read_text()
    assert sorted(set(imported_names(source)) & set(ENTRY_POINTS)) == []


def test_an_import_of_an_entry_point_by_name_from_the_package_is_seen() -> None:
    names = imported_names("def f():\n    from pipeline import train_model as stage\n")
    assert set(names) & set(ENTRY_POINTS) == {"pipeline.train_model"}


# --- the tests and moto ----------------------------------------------------------------------

@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_pipeline_module_imports_the_tests_or_moto_but_the_local_s3_helper(path: Path) -> None:
    names = imported_names(path.read_text())
    forbidden = [n for n in names if n.split(".")[0] == "tests"]
    if module_name(path) != LOCAL_S3_HELPER:
        forbidden += [n for n in names if n.split(".")[0] == "moto"]

    assert forbidden == []


@pytest.mark.parametrize("module", [m for m in ENTRY_POINTS + LIBRARY_MODULES if m != LOCAL_S3_HELPER])
def test_importing_a_pipeline_module_loads_neither_the_tests_nor_moto(module: str) -> None:
    loaded = modules_loaded_by_importing(module)

    assert sorted(m for m in loaded if m.split(".")[0] in ("tests", "moto")) == []


# --- names -----------------------------------------------------------------------------------

def test_no_two_modules_share_a_base_name() -> None:
    by_name: Dict[str, List[str]] = {}
    for path in MODULES:
        by_name.setdefault(path.stem, []).append(module_name(path))
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}


def test_no_module_shares_a_base_name_with_a_module_of_uvicorn_that_logs() -> None:
    # The service logs uvicorn's lines in the same format, `server._serve` for one.
    import uvicorn

    theirs = {path.stem for path in Path(uvicorn.__file__).parent.rglob("*.py")
              if re.search(r"\blogger\.\w+\(", path.read_text())}
    assert "server" in theirs
    assert sorted({path.stem for path in MODULES} & theirs) == []


# --- the diagram -----------------------------------------------------------------------------

def pipeline_imports(path: Path) -> Set[str]:
    """The pipeline modules a module imports, by their dotted names."""
    modules = {module_name(p) for p in MODULES}
    return {name for name in imported_names(path.read_text()) if name in modules}


def unit_edges() -> Set[str]:
    """`a --> b` for each folder or top-level module `a` that imports from another one, `b`."""
    return {f"{unit(module_name(path))} --> {unit(other)}" for path in MODULES for other in pipeline_imports(path)
            if unit(module_name(path)) != unit(other)}


# `a --> b`, `a -.-> b` and `a -. label .-> b`, either end possibly with a label (`a["a/"]`).
EDGE = re.compile(r"^\s*(\w+)(?:\[[^\]]*\])?\s*(?:-->|-\.->|-\.[^>]*?\.->)\s*(\w+)")


def diagram_edges() -> Set[str]:
    """The arrows between pipeline's folders and top-level modules in architecture.md's mermaid graph."""
    text = (LOCAL.repo_root / "docs" / "architecture.md").read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    units = {unit(module_name(p)) for p in MODULES}
    edges = set()
    for line in block.splitlines():
        match = EDGE.match(line)
        if match and match.group(1) in units and match.group(2) in units:
            edges.add(f"{match.group(1)} --> {match.group(2)}")
    return edges


def test_the_architecture_diagram_shows_exactly_the_imports_between_folders_and_top_level_modules() -> None:
    extra, missing = sorted(diagram_edges() - unit_edges()), sorted(unit_edges() - diagram_edges())

    assert extra == [], f"arrows in docs/architecture.md that the code does not have: {extra}"
    assert missing == [], f"imports missing from docs/architecture.md's diagram: {missing}"


def test_the_diagram_reader_reads_each_kind_of_arrow() -> None:
    lines = ["train_model --> train", "run_local -. lazily .-> local", 'storage["storage/"] -.-> artefact']
    matches = [EDGE.match(line) for line in lines]
    assert [m.groups() if m else None for m in matches] == [
        ("train_model", "train"), ("run_local", "local"), ("storage", "artefact")]


def test_no_two_folders_import_each_other_even_through_others() -> None:
    graph: Dict[str, Set[str]] = {}
    for edge in unit_edges():
        source, target = edge.split(" --> ")
        graph.setdefault(source, set()).add(target)

    def reachable(start: str) -> Set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert sorted(u for u in graph if u in reachable(u)) == []


# --- the tests mirror the modules ------------------------------------------------------------

def mirrors(test_file: Path, folder: Path) -> bool:
    """`test_<module>.py` or `test_<module>_<aspect>.py` for a module of `folder`."""
    name = test_file.stem[len("test_"):]
    return any(name == p.stem or name.startswith(p.stem + "_") for p in folder.glob("*.py") if p.name != "__init__.py")


def test_the_test_folders_are_the_folders_of_pipeline_and_the_environments() -> None:
    folders = {p.parent.name for p in (LOCAL.repo_root / "tests").glob("*/test_*.py")}
    assert sorted(folders - ENVIRONMENT_TEST_FOLDERS - CONTRACT_TEST_FOLDERS - set(FOLDERS)) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_test_of_a_folder_mirrors_one_of_its_modules(folder: str) -> None:
    tests = sorted((LOCAL.repo_root / "tests" / folder).glob("test_*.py"))
    strays = [p.name for p in tests if not mirrors(p, PIPELINE / folder)]
    assert strays == []


def test_each_top_level_test_mirrors_a_top_level_module_or_checks_the_repository() -> None:
    strays = [p.name for p in sorted((LOCAL.repo_root / "tests").glob("test_*.py"))
              if p.stem[len("test_"):] not in REPOSITORY_TESTS and not mirrors(p, PIPELINE)]
    assert strays == []


# --- what the tests share --------------------------------------------------------------------

TESTS = LOCAL.repo_root / "tests"


def is_test_module(name: str) -> bool:
    """`tests.test_docs`, `tests.bodywork.test_cli`: a module of tests/ that pytest collects."""
    parts = name.split(".")
    return parts[0] == "tests" and any(part.startswith("test_") for part in parts[1:])


def imported_test_modules(source: str, package: str) -> List[str]:
    """The test modules that `source`, a module of `package` (`tests.bodywork`), imports or
    imports from, anywhere (functions included), relative imports resolved."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if is_test_module(alias.name)}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            if is_test_module(base):
                found.add(base)
            else:
                found |= {f"{base}.{alias.name}" for alias in node.names if is_test_module(f"{base}.{alias.name}")}
    return sorted(found)


TEST_SOURCES = sorted(TESTS.rglob("*.py"))


@pytest.mark.parametrize("path", TEST_SOURCES, ids=lambda p: p.relative_to(LOCAL.repo_root).as_posix())
def test_no_test_module_imports_from_another_test_module(path: Path) -> None:
    package = ".".join(path.parent.relative_to(LOCAL.repo_root).parts)
    assert imported_test_modules(path.read_text(), package) == [], "move what is shared to tests/helpers.py"


@pytest.mark.parametrize("source, package, expected", [
    ("from tests.test_serve_model import the_error_of_a_failed_start\n", "tests", ["tests.test_serve_model"]),
    ("import tests.test_docs\n", "tests", ["tests.test_docs"]),
    ("from tests import helpers, test_docs\n", "tests", ["tests.test_docs"]),
    ("def f():\n    from tests.test_deployment_config import deployment_text\n", "tests.cluster",
     ["tests.test_deployment_config"]),
    ("from .test_cli import parse_with_bodywork_cli\n", "tests.bodywork", ["tests.bodywork.test_cli"]),
    ("from ..test_docs import slug\n", "tests.bodywork", ["tests.test_docs"]),
    ("from tests.helpers import free_port\nfrom tests.conftest import start\nimport pytest\n", "tests", []),
], ids=["from", "import", "from the package", "inside a function", "relative", "relative, up", "helpers and conftest"])
def test_an_import_from_a_test_module_is_seen(source: str, package: str, expected: List[str]) -> None:
    assert imported_test_modules(source, package) == expected
