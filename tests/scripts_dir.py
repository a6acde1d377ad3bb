"""The project's research instruments (experiments/) and scripts (scripts/), imported as modules
so that tests can call their parts."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
sys.path.insert(0, str(EXPERIMENTS))  # the experiments import their shared module, common.py
SCRIPTS = REPO / "scripts"


def script_path(name: str) -> Path:
    """``experiments/<name>.py`` or else ``scripts/<name>.py``."""
    experiment = EXPERIMENTS / f"{name}.py"
    return experiment if experiment.exists() else SCRIPTS / f"{name}.py"


def load_script(name: str) -> ModuleType:
    """``experiments/<name>.py`` (or ``scripts/<name>.py``) as a module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, script_path(name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
