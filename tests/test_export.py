"""Exported nets (ONNX through onnxruntime, TorchScript) give PyTorch's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtcnn.cli import main
from mtcnn.detect.inputs import read_image, to_pixel_tensor
from mtcnn.model.export import OUTPUT_NAMES, export_modules
from mtcnn.model.weights import load_net
from mtcnn.spec import INPUT_SIZES, STAGES

TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def inputs_for(stage: str, kit) -> list[torch.Tensor]:
    """Batches of 0, 1 and 3 (and, for P-Net, several sizes and a real photo with no face)."""
    generator = torch.Generator().manual_seed(1)
    size = INPUT_SIZES[stage]
    shapes = [(0, 3, size, size), (1, 3, size, size), (3, 3, size, size)]
    if stage == "pnet":
        shapes += [(2, 3, 12, 31), (1, 3, 57, 40)]
    batches = [torch.rand(shape, generator=generator) * 255 for shape in shapes]
    if stage == "pnet":
        batches.append(to_pixel_tensor(read_image(kit / "samples" / "dogs.jpg"))[None])
    return batches


def reference_outputs(net, pixels):
    with torch.no_grad():
        return [output.numpy() for output in net(pixels)]


@pytest.fixture(scope="module")
def nets(reference_weights):
    return {stage: load_net(reference_weights / f"{stage}.pt", stage) for stage in STAGES}


# The exported nets are the ones loaded here: the original release has no landmark heads for P-Net
# and R-Net, so each load initialises those afresh, and a second load would differ there.


@pytest.fixture(scope="module")
def onnx_dir(nets, tmp_path_factory):
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install '.[onnx]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")
    out = tmp_path_factory.mktemp("onnx")
    export_modules(nets, "onnx", out)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_onnx_matches_pytorch(stage, nets, onnx_dir, kit):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install '.[onnx]')")
    # self-contained: no external weights file, no temporary left behind
    assert sorted(path.name for path in onnx_dir.iterdir()) == ["export.json", "onet.onnx", "pnet.onnx", "rnet.onnx"]
    session = ort.InferenceSession(str(onnx_dir / f"{stage}.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == list(OUTPUT_NAMES)
    for pixels in inputs_for(stage, kit):
        exported = session.run(None, {"pixels": pixels.numpy()})
        for ours, theirs in zip(exported, reference_outputs(nets[stage], pixels)):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def torchscript_dir(nets, tmp_path_factory):
    out = tmp_path_factory.mktemp("torchscript")
    export_modules(nets, "torchscript", out)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_torchscript_matches_pytorch(stage, nets, torchscript_dir, kit):
    scripted = torch.jit.load(str(torchscript_dir / f"{stage}.torchscript.pt"))
    for pixels in inputs_for(stage, kit):
        with torch.no_grad():
            exported = [output.numpy() for output in scripted(pixels)]
        for ours, theirs in zip(exported, reference_outputs(nets[stage], pixels)):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


def test_export_command(reference_weights, tmp_path, capsys):
    out = tmp_path / "ts"
    assert main(["export", "--weights", str(reference_weights), "--format", "torchscript", "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "export.json",
        "onet.torchscript.pt",
        "pnet.torchscript.pt",
        "rnet.torchscript.pt",
    ]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "torchscript" and list(manifest["nets"]) == list(STAGES)
    assert manifest["nets"]["onet"]["weights"] == str(reference_weights / "onet.pt")
    assert manifest["nets"]["pnet"]["original_window_mapping"] is True  # the original weights' rounding
    assert main(["export", "--weights", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "missing pnet.pt, rnet.pt, onet.pt" in capsys.readouterr().err
