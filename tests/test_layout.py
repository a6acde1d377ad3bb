"""The package's layering: data flows one way (data -> train -> model <- detect <- eval), the
shared names stay torch-free, and the command line answers --help without PyTorch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mtcnn"

#: Each part of the package and its layer: a module may import from its own part and from parts
#: of lower layers only. Parts of one layer do not import each other.
LAYERS = {
    "spec": 0,
    "errors": 0,
    "atomic": 1,
    "allocator": 1,
    "config": 2,
    "ops": 3,
    "model": 4,
    "detect": 5,
    "data": 6,  # mining runs the detector over training images
    "train": 7,
    "eval": 7,
    "pipeline": 8,
    "cli": 9,
}


def _part(module: str) -> str:
    return module.split(".")[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtcnn."):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("mtcnn.")]
    return found


def _modules() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path.parent != PACKAGE or path.stem in LAYERS]


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_reaches_up(path: Path):
    part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for module in _imports(path):
        other = _part(module)
        assert other == part or LAYERS[other] < LAYERS[part], f"{path.relative_to(PACKAGE)} imports {module}"


def test_every_part_has_a_layer():
    parts = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert parts - {"__init__", "__main__", "weights"} == set(LAYERS)


def _imports_torch(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


def test_shared_names_and_config_do_not_import_torch():
    assert not _imports_torch("import mtcnn.spec, mtcnn.config, mtcnn.errors, mtcnn.atomic")


@pytest.mark.parametrize("arguments", [["--help"], ["--version"], ["detect", "--help"], ["train", "pnet", "--help"]])
def test_command_line_help_does_not_import_torch(arguments):
    code = f"from mtcnn.cli import main\ntry:\n    main({arguments!r})\nexcept SystemExit:\n    pass"
    assert not _imports_torch(code)


def test_public_api_loads_on_first_use():
    assert _imports_torch("from mtcnn import MTCNN")
    assert not _imports_torch("import mtcnn; mtcnn.__version__")
