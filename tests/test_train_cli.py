"""train-pnet / train-rnet / train-onet from the command line, errors as one line, and DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtcnn.cli import main, train_onet, train_pnet, train_rnet
from mtcnn.model.checkpoint import load_checkpoint
from mtcnn.model.weights import load_net

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny"
NO_RANDOMNESS = (
    "loss.ohem_keep=1.0",
    "augment.flip=false",
    "augment.brightness=0",
    "augment.contrast=0",
    "augment.saturation=0",
)


def _stores(kit_store, stage: str) -> list[str]:
    return [f"train_store={kit_store(stage, 'train')}", f"val_store={kit_store(stage, 'val')}"]


def test_train_pnet_writes_a_run_folder_whose_best_checkpoint_loads_as_a_detector_net(kit_store, tmp_path, capsys):
    code = train_pnet(
        [
            "--config",
            str(TINY / "pnet.yaml"),
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--set",
            *_stores(kit_store, "pnet"),
            "train.epochs=1",
            "optim.lr=0.002",
        ]
    )
    assert code == 0, capsys.readouterr().err
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["train"]["optim"]["lr"] == 0.002 and written["train"]["epochs"] == 1
    assert written["train"]["out_dir"] == str(tmp_path)
    net = load_net(tmp_path / "best.pt", "pnet")
    assert load_checkpoint(tmp_path / "best.pt")["config"] == written
    assert net(torch.zeros(1, 3, 12, 12)).logits.shape == (1, 2, 1, 1)


@pytest.mark.parametrize(
    "stage,command,weights", [("rnet", train_rnet, [1.0, 0.5, 0.5]), ("onet", train_onet, [1.0, 0.5, 1.0])]
)
def test_rnet_and_onet_train_with_their_paper_task_weights(kit_store, tmp_path, capsys, stage, command, weights):
    code = command(
        [
            "--config",
            str(TINY / f"{stage}.yaml"),
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--set",
            *_stores(kit_store, stage),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["loss"]["task_weights"] == weights
    history = load_checkpoint(tmp_path / "last.pt")["training"]["history"]
    assert len(history) == 2 and all(0.0 <= entry["val_recall"] <= 1.0 for entry in history)


def _error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err
    return lines[0]


def test_config_mistakes_are_one_line_errors_naming_the_key(kit_store, tmp_path, capsys):
    base = ["--config", str(TINY / "pnet.yaml"), "--device", "cpu", "--out-dir", str(tmp_path)]
    message = _error(capsys, train_pnet([*base, "--set", "optim.lrr=0.1"]))
    assert "unknown key 'train.optim.lrr'; did you mean lr" in message and "pnet.yaml" in message
    message = _error(capsys, train_pnet([*base, "--set", "optim.name=adam", "optim.momentum=0.9"]))
    assert "optimizer 'adam' does not take 'momentum'" in message
    message = _error(capsys, train_pnet([*base, "--set", "batch_size=0"]))
    assert "train.batch_size: must be >= 1" in message
    message = _error(capsys, train_rnet(base))
    assert "configures pnet, but this command trains rnet" in message
    message = _error(capsys, train_pnet([*base, "--set", f"train_store={tmp_path / 'nowhere'}"]))
    assert f"{tmp_path / 'nowhere'}: no such sample store folder" in message
    message = _error(capsys, train_pnet(["--device", "cpu"]))
    assert "give a stage config with --config" in message


def test_resume_from_the_checkpoint_alone_continues_the_run(kit_store, tmp_path, capsys):
    args = [
        "--config",
        str(TINY / "pnet.yaml"),
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
        "--set",
        *_stores(kit_store, "pnet"),
        "epochs=1",
    ]
    assert train_pnet(args) == 0
    assert _error(capsys, train_pnet(args)).endswith(
        f"continue it with --resume {tmp_path / 'last.pt'} or choose another --out-dir"
    )
    assert main(["train", "pnet", "--device", "cpu", "--resume", str(tmp_path / "last.pt"), "--set", "epochs=2"]) == 0
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert resumed["training"]["epoch"] == 2 and resumed["config"]["train"]["epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", ["70", "full"])
def test_torchrun_with_two_cpu_processes_matches_one_process(kit_store, tmp_path, batch_size):
    """DDP on the CPU (gloo): 2 ranks with half a batch (or half the chunks of the full batch)
    each take the same steps as one process with all of it (hard example mining and
    augmentation off, as those are per rank)."""
    options = ["--config", str(TINY / "pnet.yaml"), "--device", "cpu"]
    settings = [
        "--set",
        *_stores(kit_store, "pnet"),
        "epochs=1",
        "val_image_count=0",
        f"batch_size={batch_size}",
        "chunk_size=256",
        *NO_RANDOMNESS,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mtcnn",
            "train",
            "pnet",
            *options,
            "--out-dir",
            str(tmp_path / "ddp"),
            *settings,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("pnet epoch 1/1") == 1  # rank 0 alone logs
    assert "Grad strides do not match" not in done.stderr
    assert main(["train", "pnet", *options, "--out-dir", str(tmp_path / "single"), *settings]) == 0
    ddp, single = (load_checkpoint(tmp_path / name / "last.pt") for name in ("ddp", "single"))
    for key, value in single["model"].items():
        assert torch.allclose(ddp["model"][key], value, atol=1e-5), key
    assert ddp["training"]["history"][0]["train_loss"] == pytest.approx(
        single["training"]["history"][0]["train_loss"], rel=1e-5
    )
