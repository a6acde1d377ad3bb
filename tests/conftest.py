"""Shared fixtures: where the real-data kit is, and the nets with the original weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def kit_dir() -> Path:
    """The real-data kit: $MTCNN_KIT, else ../shared/data beside the checkout, else data/."""
    for candidate in (os.environ.get("MTCNN_KIT"), REPO.parent / "shared" / "data", REPO / "data"):
        if candidate and (Path(candidate) / "widerface").is_dir():
            return Path(candidate)
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def kit() -> Path:
    path = kit_dir()
    if not (path / "widerface").is_dir():
        pytest.skip(f"real-data kit not found at {path} (set MTCNN_KIT)")
    return path


@pytest.fixture(scope="session")
def reference_weights(kit: Path) -> Path:
    return kit / "reference_weights" / "facenet_pytorch"


@pytest.fixture(scope="session")
def kit_store(kit: Path, tmp_path_factory):
    """``kit_store(stage, split)``: the folder of a small real sample store cut from the kit's
    faces (see tests/kit_stores.py), built once per session on first use."""
    from kit_stores import write_kit_store

    root = tmp_path_factory.mktemp("kit-stores")
    built: dict[tuple[str, str], Path] = {}
    faces = {("pnet", "train"): 100, ("pnet", "val"): 40}

    def get(stage: str, split: str = "train") -> Path:
        if (stage, split) not in built:
            built[stage, split] = write_kit_store(
                kit,
                stage,
                split,
                faces.get((stage, split), 16),
                root / f"{stage}-{split}",
                seed=0 if split == "train" else 1,
            )
        return built[stage, split]

    return get
