"""The weights shipped in the package: what `MTCNN()` and `mtcnn detect` use when given none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from mtcnn import cli
from mtcnn.detect.cascade import MTCNN
from mtcnn.errors import WeightsError
from mtcnn.model.checkpoint import load_checkpoint
from mtcnn.model.weights import packaged_weights_dir, stage_weights_file
from mtcnn.spec import STAGES

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
    iou = box_iou(truth, torch.from_numpy(faces.boxes))
    assert len(faces) >= len(reference)
    # Every face the original MTCNN finds here is found, and a box far from all of them (the
    # shipped weights put one on a shirt) scores below every face: ranking is what AP measures.
    assert bool((iou.max(dim=1).values >= 0.5).all())
    on_a_face = iou.max(dim=0).values >= 0.3
    assert int(on_a_face.sum()) >= len(reference)
    if not bool(on_a_face.all()):
        assert faces.scores[~on_a_face.numpy()].max() < faces.scores[on_a_face.numpy()].min()
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
    monkeypatch.setattr("mtcnn.model.weights.packaged_weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match="none are shipped"):
        MTCNN(device="cpu")
    assert cli.main(["detect", str(kit / SAMPLE), "--device", "cpu"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pass a folder with pnet.pt" in error[0]


def test_shipped_names_the_packaged_file_of_each_stage_and_anything_else_is_a_path(monkeypatch, tmp_path):
    for stage in STAGES:
        assert stage_weights_file("shipped", stage) == packaged_weights_dir() / f"{stage}.pt"
    assert stage_weights_file("runs/train/onet/best.pt", "onet") == Path("runs/train/onet/best.pt")
    monkeypatch.setattr("mtcnn.model.weights.packaged_weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match=r"'shipped': this installation ships no rnet\.pt"):
        stage_weights_file(Path("shipped"), "rnet")


def test_prep_mines_with_the_shipped_nets_when_told_shipped(kit, tmp_path, monkeypatch):
    used = {}

    def recording_prepare(stage, config, out, *, weights, **options):
        used.update(weights)
        raise WeightsError("stop here: the nets are what this test checks")

    monkeypatch.setattr("mtcnn.data.prepare.prepare", recording_prepare)
    config = Path(__file__).resolve().parents[1] / "configs" / "onet.yaml"
    assert (
        cli.main(
            [
                "prep",
                "onet",
                "--config",
                str(config),
                "--out",
                str(tmp_path / "store"),
                "--pnet",
                "shipped",
                "--rnet",
                "shipped",
                "--device",
                "cpu",
            ]
        )
        != 0
    )
    assert used == {stage: packaged_weights_dir() / f"{stage}.pt" for stage in ("pnet", "rnet")}
