"""The weights shipped in the package: what `MTCNN()` and `mtcnn detect` use when given none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtcnn import cli
from mtcnn.boxes import pairwise_iou
from mtcnn.checkpoint import load_checkpoint
from mtcnn.detector import MTCNN
from mtcnn.errors import WeightsError
from mtcnn.weights import STAGES, packaged_weights_dir

SAMPLE = "samples/2007_007763.jpg"  # seven frontal faces, 375 x 500


def test_the_package_ships_one_trained_checkpoint_per_stage():
    for stage in STAGES:
        checkpoint = load_checkpoint(packaged_weights_dir() / f"{stage}.pt")
        assert checkpoint["stage"] == stage
        assert "training" not in checkpoint  # weights only: no optimizer state to carry around
        assert checkpoint["trained"]["epoch"] >= 1


def test_the_default_detector_finds_the_faces_of_a_photo(kit):
    reference = json.loads((kit / "reference_detections.json").read_text())["images"][SAMPLE]
    faces = MTCNN(device="cpu").detect(kit / SAMPLE)
    truth = torch.tensor([face["box"] for face in reference])
    iou = pairwise_iou(truth, torch.from_numpy(faces.boxes))
    assert len(faces) >= len(reference)
    # Every face the original MTCNN finds here is found, and nothing far from a face is.
    assert bool((iou.max(dim=1).values >= 0.5).all())
    assert bool((iou.max(dim=0).values >= 0.3).all())
    centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    sides = faces.boxes[:, 2:] - faces.boxes[:, :2]
    # The eyes sit above the mouth corners, inside the box.
    assert (faces.landmarks[:, [0, 1], 1].max(axis=1) < faces.landmarks[:, [3, 4], 1].min(axis=1)).all()
    assert (abs(faces.landmarks - centres[:, None]) <= sides[:, None] * 0.6).all()


def test_detect_without_weights_uses_the_shipped_ones(kit, tmp_path):
    out = tmp_path / "faces.json"
    assert cli.main(["detect", str(kit / SAMPLE), "--device", "cpu", "--output", str(out)]) == 0
    assert len(json.loads(out.read_text())["images"][0]["faces"]) >= 7


def test_an_installation_without_weights_says_what_to_pass(monkeypatch, tmp_path: Path, kit, capsys):
    monkeypatch.setattr("mtcnn.weights.packaged_weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match="none are shipped"):
        MTCNN(device="cpu")
    assert cli.main(["detect", str(kit / SAMPLE), "--device", "cpu"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pass a folder with pnet.pt" in error[0]
