"""Writes the system refuses (a full disk, a folder in the way) end a command with one line naming
the file, exit status 2 and no temporary left behind; not with a traceback."""

from __future__ import annotations

import argparse
import errno
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from full_disk import fill_disk, leftovers, one_error_line

from mtcnn.cli import run_command, train_pnet
from mtcnn.errors import OutputError
from mtcnn.model.checkpoint import atomic_save

REPO = Path(__file__).resolve().parents[1]


def test_a_full_disk_at_a_training_checkpoint_is_one_line(kit_store, tmp_path, capsys, monkeypatch):
    fill_disk(monkeypatch, ".pt")
    run = tmp_path / "run"
    code = train_pnet(
        [
            "--config",
            str(REPO / "configs" / "tiny" / "pnet.yaml"),
            "--device",
            "cpu",
            "--out-dir",
            str(run),
            "--set",
            f"train_store={kit_store('pnet', 'train')}",
            f"val_store={kit_store('pnet', 'val')}",
            "train.epochs=1",
        ]
    )
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith(f"error: {run}/") and line.endswith(".pt: cannot write (no space left on device)")
    assert leftovers(run) == [] and not list(run.glob("*.pt"))


def test_torch_own_write_error_is_one_line_too(tmp_path, monkeypatch):
    """torch.save's zip writer, when writing by name, says only ``unexpected pos``; atomic_save
    names the file and tells a full disk from the free space."""

    def save_that_fails(obj, file, *args, **kwargs):
        part = b"PK\x03\x04 part of a zip"
        if hasattr(file, "write"):
            file.write(part)
        else:  # torch.save by name, as before atomic_save wrote through a Python file
            Path(file).write_bytes(part)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\nframe #0: ...")

    monkeypatch.setattr(torch, "save", save_that_fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=10**9))
    path = tmp_path / "last.pt"
    with pytest.raises(OutputError) as raised:
        atomic_save({"w": torch.zeros(3)}, path)
    torch_words = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
    assert str(raised.value) == f"{path}: cannot write (torch.save failed: {torch_words})"
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    with pytest.raises(OutputError, match=r"last.pt: cannot write \(no space left on device\)$"):
        atomic_save({"w": torch.zeros(3)}, path)
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_no_write_site_caught_is_still_one_line(capsys):
    def run(args: argparse.Namespace) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/out/report.json")

    parser = argparse.ArgumentParser()
    parser.set_defaults(run=run)
    assert run_command(parser, []) == 2
    assert capsys.readouterr().err == "error: /srv/out/report.json: permission denied\n"
