"""Resuming a run: exact with dropout and whatever --threads the resume is given, old checkpoints
still resume (afresh random state, with a warning), and resuming from an earlier checkpoint never
overwrites the later work in its folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mtcnn.cli import train_pnet
from mtcnn.errors import MtcnnError
from mtcnn.model.checkpoint import atomic_save, load_checkpoint
from mtcnn.train.run import load_train_config, run_training
from mtcnn.train.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny"


@pytest.fixture
def keep_threads():
    """Put torch's thread count back after a test that changes it (as --threads does)."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def _stores(kit_store, stage: str) -> list[str]:
    return [f"train_store={kit_store(stage, 'train')}", f"val_store={kit_store(stage, 'val')}"]


def _rnet_config(kit_store, out_dir: Path, *overrides: str):
    return load_train_config(
        "rnet",
        TINY / "rnet.yaml",
        [*_stores(kit_store, "rnet"), f"out_dir={out_dir}", "dropout=0.25", "val_image_count=0", *overrides],
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same_weights(a: Path, b: Path) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_resume_with_dropout_repeats_the_unbroken_run_bit_for_bit(kit_store, tmp_path):
    # dropout draws from the global generator: a resume that reseeds it replays epoch 1's masks
    straight = run_training(_rnet_config(kit_store, tmp_path / "straight", "epochs=2"), "cpu", show_progress=False)
    run_training(_rnet_config(kit_store, tmp_path / "split", "epochs=1"), "cpu", show_progress=False)
    half_written = tmp_path / "split" / f".last.{'ab' * 16}.tmp.pt"  # a checkpoint write a kill stopped
    half_written.write_bytes(b"PK\x03\x04")
    resumed = run_training(
        _rnet_config(kit_store, tmp_path / "split", "epochs=2"),
        "cpu",
        resume=tmp_path / "split" / LAST_CHECKPOINT,
        show_progress=False,
    )
    assert _same_weights(tmp_path / "straight" / LAST_CHECKPOINT, tmp_path / "split" / LAST_CHECKPOINT)
    assert resumed.history[1]["val_loss"] == straight.history[1]["val_loss"]
    assert not half_written.exists()  # the resumed run cleared its folder of it


def test_a_checkpoint_without_random_state_resumes_afresh_with_a_warning(kit_store, tmp_path, caplog):
    run_training(_rnet_config(kit_store, tmp_path / "run", "epochs=1", "steps_per_epoch=2"), "cpu", show_progress=False)
    old = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)
    for key in ("random", "threads"):
        old["training"].pop(key, None)
    atomic_save(old, tmp_path / "old.pt")
    config = _rnet_config(kit_store, tmp_path / "run", "epochs=2", "steps_per_epoch=2")
    with caplog.at_level(logging.WARNING):
        result = run_training(config, "cpu", out_dir=tmp_path / "more", resume=tmp_path / "old.pt", show_progress=False)
    assert result.epochs_done == 2
    assert any("random state starts afresh" in record.getMessage() for record in caplog.records)


def test_pnet_trained_with_one_thread_resumes_with_one_thread_without_the_option(
    kit_store, tmp_path, keep_threads, caplog
):
    # a fresh process starts with torch's own thread count; more threads split the sums differently
    def train(out_dir: Path, epochs: int) -> None:
        options = ["--config", str(TINY / "pnet.yaml"), "--device", "cpu", "--out-dir", str(out_dir)]
        overrides = [*_stores(kit_store, "pnet"), f"epochs={epochs}", "val_image_count=0"]
        assert train_pnet([*options, "--threads", "1", "--set", *overrides]) == 0

    train(tmp_path / "straight", 2)
    train(tmp_path / "split", 1)
    torch.set_num_threads(4)
    with caplog.at_level(logging.INFO):
        code = train_pnet(
            ["--resume", str(tmp_path / "split" / LAST_CHECKPOINT), "--device", "cpu", "--set", "epochs=2"]
        )
    assert code == 0
    assert _same_weights(tmp_path / "straight" / LAST_CHECKPOINT, tmp_path / "split" / LAST_CHECKPOINT)
    assert torch.get_num_threads() == 1
    assert any("1 torch thread" in record.getMessage() for record in caplog.records)


def test_resume_from_an_earlier_checkpoint_never_overwrites_the_later_run(kit_store, tmp_path, capsys):
    # a vanishing rate keeps val_accuracy flat, so epoch 1 stays best while last.pt moves on to epoch 2
    overrides = (
        *_stores(kit_store, "pnet"),
        "epochs=2",
        "steps_per_epoch=2",
        "optim.lr=1e-12",
        "best_metric=val_accuracy",
        "val_image_count=0",
    )
    run = tmp_path / "run"
    run_training(
        load_train_config("pnet", TINY / "pnet.yaml", [*overrides, f"out_dir={run}"]), "cpu", show_progress=False
    )
    last, best = run / LAST_CHECKPOINT, run / BEST_CHECKPOINT
    assert load_checkpoint(best)["training"]["epoch"] == 1 and load_checkpoint(last)["training"]["epoch"] == 2
    kept = last.read_bytes()
    again = load_train_config("pnet", None, ["epochs=3"], resume=best)
    with pytest.raises(MtcnnError, match=rf"^{best}.* epoch 1.*{last}.* epoch 2.*--out-dir"):
        run_training(again, "cpu", resume=best, show_progress=False)
    assert train_pnet(["--resume", str(best), "--device", "cpu", "--set", "epochs=3"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and str(last) in error[-1] and "--out-dir" in error[-1]
    assert last.read_bytes() == kept
    # into another folder it branches off; from last.pt itself it continues
    branch = run_training(again, "cpu", out_dir=tmp_path / "branch", resume=best, show_progress=False)
    assert branch.epochs_done == 3 and len(branch.history) == 3
    assert load_checkpoint(tmp_path / "branch" / LAST_CHECKPOINT)["training"]["epoch"] == 3
    assert last.read_bytes() == kept
    continued = run_training(again, "cpu", resume=last, show_progress=False)
    assert continued.epochs_done == 3 and load_checkpoint(last)["training"]["epoch"] == 3
