"""A full disk for the write-error tests, without one: the atomic writer's temporaries become links
to ``/dev/full``, where every write fails with ENOSPC as it does on a full disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mtcnn.atomic


def fill_disk(monkeypatch: pytest.MonkeyPatch, *suffixes: str) -> None:
    """Make every atomic write of a file ending in one of ``suffixes`` (all files if none) fail
    as on a full disk, through the real writers (``torch.save``, ``json``, OpenCV's encoder)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to stand for a full disk")
    real = mtcnn.atomic.temporary_name

    def temporary_on_a_full_disk(path: Path) -> Path:
        tmp = real(path)
        if not suffixes or path.suffix in suffixes:
            os.symlink("/dev/full", tmp)
        return tmp

    monkeypatch.setattr(mtcnn.atomic, "temporary_name", temporary_on_a_full_disk)


def leftovers(folder: Path) -> list[Path]:
    """Hidden temporaries (``.name.<hex>.tmp.suffix`` files, ``.00001.<pid>.tmp`` shard folders)
    anywhere below ``folder``."""
    return sorted(path for path in Path(folder).rglob(".*") if ".tmp" in path.name)


def one_error_line(err: str) -> str:
    """The single ``error:`` line of a command's standard error, which holds no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]
