"""scripts/onet_box_bands.py: how much of the needed box correction an O-Net makes, by IoU band."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from scripts_dir import load_script, script_path

from mtcnn.model.nets import NetOutput

SCRIPT = script_path("onet_box_bands")


class FixedBoxes(torch.nn.Module):
    """An O-Net stand-in whose box output is ``factor`` times the given offsets."""

    def __init__(self, offsets: torch.Tensor, factor: float) -> None:
        super().__init__()
        self.offsets, self.factor = offsets, factor

    def forward(self, crops: torch.Tensor) -> NetOutput:
        count = crops.shape[0]
        return NetOutput(torch.zeros(count, 2), self.offsets * self.factor, torch.zeros(count, 10))


def slow_iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_bands_measure_the_share_of_the_needed_correction():
    script = load_script("onet_box_bands")
    faces = np.array([[100, 100, 140, 150], [300, 80, 380, 180]], np.float32)
    # Windows around both faces: IoU 0.75, 0.47, 0.37 and 0.67, 0.48, 0.35 (two per band).
    windows = torch.tensor(
        [
            [98, 104, 146, 152],
            [104, 110, 154, 160],
            [108, 112, 158, 162],
            [290, 90, 390, 190],
            [315, 100, 405, 190],
            [320, 110, 410, 200],
        ],
        dtype=torch.float32,
    )
    needed = torch.tensor(
        [
            [
                (f[0] - w[0]) / (w[2] - w[0]),
                (f[1] - w[1]) / (w[3] - w[1]),
                (f[2] - w[2]) / (w[2] - w[0]),
                (f[3] - w[3]) / (w[3] - w[1]),
            ]
            for w, f in zip(windows.tolist(), faces[[0, 0, 0, 1, 1, 1]].tolist())
        ]
    )
    onets = {name: FixedBoxes(needed, factor) for name, factor in (("exact", 1.0), ("half", 0.5), ("none", 0.0))}
    measured = script.measure_windows(windows, faces, torch.zeros(6, 3, 48, 48), onets)

    window_iou = [max(slow_iou(w, f) for f in faces.tolist()) for w in windows.tolist()]
    np.testing.assert_allclose(measured.iou, window_iou, rtol=1e-5)
    np.testing.assert_allclose(measured.target, needed.numpy(), atol=1e-6)
    np.testing.assert_allclose(measured.refined_iou["exact"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(measured.refined_iou["none"], window_iou, rtol=1e-5)
    half_boxes = windows + 0.5 * (torch.as_tensor(faces[[0, 0, 0, 1, 1, 1]]) - windows)
    np.testing.assert_allclose(
        measured.refined_iou["half"],
        [slow_iou(b, f) for b, f in zip(half_boxes.tolist(), faces[[0, 0, 0, 1, 1, 1]].tolist())],
        rtol=1e-5,
    )

    table = script.band_table(measured)
    assert sum(per_net["exact"].windows for per_net in table.values()) == 6
    assert list(table) == list(script.BANDS)  # each band holds two of the windows
    for band, (low, high) in script.BANDS.items():
        members = [iou for iou in window_iou if low <= iou < high]
        assert table[band]["none"].windows == len(members)
        assert table[band]["none"].window_iou == pytest.approx(np.mean(members), rel=1e-5)
        assert table[band]["exact"].correction == pytest.approx(1.0, rel=1e-5)
        assert table[band]["half"].correction == pytest.approx(0.5, rel=1e-5)
        assert table[band]["none"].correction == 0.0
        assert table[band]["exact"].box_mse == pytest.approx(0.0, abs=1e-10)
        assert table[band]["exact"].found == 1.0
        assert table[band]["none"].refined_iou == pytest.approx(table[band]["none"].window_iou, rel=1e-5)


def test_bad_onet_argument_is_a_one_line_error(tmp_path):
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), "--onet", f"ours={tmp_path / 'none.pt'}", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "none.pt" in missing.stderr and "Traceback" not in missing.stderr
    malformed = subprocess.run(
        [sys.executable, str(SCRIPT), "--onet", "no-equals-sign"], capture_output=True, text=True
    )
    assert malformed.returncode == 2 and "NAME=PATH" in malformed.stderr
