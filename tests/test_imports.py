"""The import rules that keep the layout honest, checked on the real modules.

- The serve entry point loads no training code and no plotting library.
- Library modules never import an entry point (a module with a CLI block).
- Nothing in `pipeline/` imports the tests or moto, except the one local-S3 helper.

Each module is imported in a fresh interpreter and its `sys.modules` inspected, so that what
a module pulls in through other modules counts too; an AST scan also catches imports made
inside functions.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pytest

from tests.helpers import REPO_ROOT

PIPELINE = REPO_ROOT / "pipeline"
PLOTTING_LIBRARIES = ("matplotlib", "seaborn", "plotly", "PIL")
TRAINING_MODULES = ("pipeline.train.steps", "pipeline.train.tuning", "pipeline.train_model")
LOCAL_S3_HELPER = "pipeline.local.local_s3"


def module_name(path: Path) -> str:
    return f"pipeline.{path.stem}"


def is_entry_point(path: Path) -> bool:
    """A module with a command line: it has an `if __name__ == "__main__":` block."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


MODULES = sorted(p for p in PIPELINE.glob("*.py") if p.name != "__init__.py")
ENTRY_POINTS = [module_name(p) for p in MODULES if is_entry_point(p)]
LIBRARY_MODULES = [module_name(p) for p in MODULES if not is_entry_point(p)]


def modules_loaded_by_importing(module: str) -> Set[str]:
    """Every module in `sys.modules` after a fresh interpreter imports `module`."""
    probe = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def imported_names(path: Path) -> List[str]:
    """Every module named by an import statement anywhere in the file, functions included."""
    names: List[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
            names.append(ast.unparse(node.args[0]).strip("'\""))
    return names


def test_the_entry_points_are_the_stage_and_tool_clis() -> None:
    assert {"pipeline.train_model", "pipeline.serve_model", "pipeline.run_local"} <= set(ENTRY_POINTS)
    assert "pipeline.train.steps" in LIBRARY_MODULES and "pipeline.serve.api" in LIBRARY_MODULES


def test_serve_entry_point_loads_no_training_code_and_no_plotting_library() -> None:
    loaded = modules_loaded_by_importing("pipeline.serve_model")

    assert sorted(m for m in loaded if m.startswith(TRAINING_MODULES)) == []
    assert sorted(m for m in loaded if m.split(".")[0] in PLOTTING_LIBRARIES) == []


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_module_loads_no_entry_point(module: str) -> None:
    loaded = modules_loaded_by_importing(module)

    assert sorted(loaded & set(ENTRY_POINTS)) == []


@pytest.mark.parametrize("path", [p for p in MODULES if not is_entry_point(p)], ids=lambda p: p.name)
def test_library_modules_never_name_an_entry_point_in_an_import(path: Path) -> None:
    assert sorted(set(imported_names(path)) & set(ENTRY_POINTS)) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_pipeline_module_imports_the_tests_or_moto_but_the_local_s3_helper(path: Path) -> None:
    names = imported_names(path)
    forbidden = [n for n in names if n.split(".")[0] == "tests"]
    if module_name(path) != LOCAL_S3_HELPER:
        forbidden += [n for n in names if n.split(".")[0] == "moto"]

    assert forbidden == []


@pytest.mark.parametrize("module", [m for m in ENTRY_POINTS + LIBRARY_MODULES if m != LOCAL_S3_HELPER])
def test_importing_a_pipeline_module_loads_neither_the_tests_nor_moto(module: str) -> None:
    loaded = modules_loaded_by_importing(module)

    assert sorted(m for m in loaded if m.split(".")[0] in ("tests", "moto")) == []


def pipeline_imports(path: Path) -> Set[str]:
    """The other `pipeline` modules a module imports, by their short names."""
    return {name.split(".")[1] for name in imported_names(path)
            if name.startswith("pipeline.") and name.count(".") == 1} - {path.stem}


def diagram_edges() -> Set[str]:
    """The `a --> b` arrows between pipeline modules in docs/architecture.md's mermaid graph."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    modules = {p.stem for p in MODULES}
    edges = set()
    for line in block.splitlines():
        words = [w for w in line.replace("-->", " ").replace(".->", " ").split() if w.isidentifier()]
        if len(words) >= 2 and words[0] in modules and words[-1] in modules:
            edges.add(f"{words[0]} --> {words[-1]}")
    return edges


def test_the_architecture_diagram_shows_exactly_the_imports_between_pipeline_modules() -> None:
    actual = {f"{path.stem} --> {other}" for path in MODULES for other in pipeline_imports(path)}

    extra, missing = sorted(diagram_edges() - actual), sorted(actual - diagram_edges())

    assert extra == [], f"arrows in docs/architecture.md that the code does not have: {extra}"
    assert missing == [], f"imports missing from docs/architecture.md's diagram: {missing}"
