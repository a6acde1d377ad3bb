"""The nets' shapes, and loading weights of both formats with clear errors for wrong files."""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import stat
import warnings

import pytest
import torch
import torch.nn.functional as F

from mtcnn.config import TrainConfig
from mtcnn.errors import WeightsError
from mtcnn.model.checkpoint import atomic_save, load_checkpoint, load_file, make_checkpoint
from mtcnn.model.nets import (
    DROPOUT_HEADS,
    NET_CLASSES,
    MirrorAveraged,
    PNet,
    build_net,
    max_pool_2x2,
    mirror_outputs,
    prelu,
)
from mtcnn.model.weights import load_net, resolve_weight_files


@pytest.mark.parametrize("height, width", [(12, 12), (13, 12), (30, 41), (100, 64)])
def test_pnet_map_size(height, width):
    output = PNet()(torch.rand(2, 3, height, width) * 255)
    rows, cols = -(-(height - 2) // 2) - 4, -(-(width - 2) // 2) - 4
    assert output.logits.shape == (2, 2, rows, cols)
    assert output.box.shape == (2, 4, rows, cols)
    assert output.landmarks.shape == (2, 10, rows, cols)


@pytest.mark.parametrize("stage, size", [("rnet", 24), ("onet", 48)])
def test_refine_net_output_shapes(stage, size):
    output = build_net(stage)(torch.rand(5, 3, size, size) * 255)
    assert [tuple(t.shape) for t in output] == [(5, 2), (5, 4), (5, 10)]


@pytest.mark.parametrize("stage, size", [("rnet", 24), ("onet", 48)])
def test_dropout_acts_in_training_only_and_adds_no_weights(stage, size):
    torch.manual_seed(0)
    plain = build_net(stage)
    dropped = build_net(stage, dropout=0.5)
    assert dropped.state_dict().keys() == plain.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    pixels = torch.rand(8, 3, size, size) * 255
    plain.eval()
    dropped.eval()
    for left, right in zip(plain(pixels), dropped(pixels)):
        assert torch.equal(left, right)
    dropped.train()
    assert not torch.allclose(dropped(pixels).logits, plain(pixels).logits)


@pytest.mark.parametrize("stage, size", [("rnet", 24), ("onet", 48)])
def test_dropout_on_the_classification_head_only_leaves_box_and_landmarks_undropped(stage, size):
    torch.manual_seed(0)
    plain = build_net(stage).train()
    pixels = torch.rand(8, 3, size, size) * 255
    expected = plain(pixels)
    for heads, box_dropped in (("classification", False), ("all", True)):
        dropped = build_net(stage, dropout=0.5, dropout_heads=heads).train()
        dropped.load_state_dict(plain.state_dict())
        output = dropped(pixels)
        assert not torch.allclose(output.logits, expected.logits)
        assert torch.equal(output.box, expected.box) is not box_dropped
        assert torch.equal(output.landmarks, expected.landmarks) is not box_dropped


def test_unknown_dropout_heads_is_an_error_and_the_config_offers_the_known_ones():
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "dropout_heads")
    assert field.metadata["choices"] == DROPOUT_HEADS
    with pytest.raises(ValueError, match="dropout_heads must be one of all, classification, got 'box'"):
        build_net("onet", dropout=0.25, dropout_heads="box")


def test_mirror_averaged_is_the_mean_of_a_crop_and_its_mirror_worked_out_by_hand():
    torch.manual_seed(0)
    net = build_net("onet").eval()
    pixels = torch.rand(3, 3, 48, 48) * 255
    with torch.no_grad():
        averaged = MirrorAveraged(net)(pixels)
        for i in range(len(pixels)):
            plain, mirrored = net(pixels[i : i + 1]), net(pixels[i : i + 1].flip(3))
            # In the mirror image the face's right edge is on the left: its left offset, negated,
            # is the right offset in the crop as given.
            dx1, dy1, dx2, dy2 = mirrored.box[0]
            box = torch.stack([-dx2, dy1, -dx1, dy2])
            left_eye, right_eye, nose, left_mouth, right_mouth = mirrored.landmarks[0].reshape(5, 2)
            points = torch.stack([right_eye, left_eye, nose, right_mouth, left_mouth])
            points[:, 0] = 1 - points[:, 0]
            torch.testing.assert_close(averaged.logits[i], (plain.logits[0] + mirrored.logits[0]) / 2)
            torch.testing.assert_close(averaged.box[i], (plain.box[0] + box) / 2)
            torch.testing.assert_close(averaged.landmarks[i], (plain.landmarks[0] + points.flatten()) / 2)


@pytest.mark.parametrize("stage, size", [("rnet", 24), ("onet", 48)])
def test_mirror_averaged_outputs_of_a_mirrored_crop_are_mirrored(stage, size):
    torch.manual_seed(1)
    net = build_net(stage).eval()
    pixels = torch.rand(4, 3, size, size) * 255
    with torch.no_grad():
        as_given, of_mirror = MirrorAveraged(net)(pixels), MirrorAveraged(net)(pixels.flip(3))
        plain, plain_of_mirror = net(pixels), net(pixels.flip(3))
    box, landmarks = mirror_outputs(of_mirror.box, of_mirror.landmarks)
    torch.testing.assert_close(of_mirror.logits, as_given.logits)
    torch.testing.assert_close(box, as_given.box)
    torch.testing.assert_close(landmarks, as_given.landmarks)
    twice_box, twice_landmarks = mirror_outputs(*mirror_outputs(box, landmarks))  # the identity
    torch.testing.assert_close(twice_box, box)
    torch.testing.assert_close(twice_landmarks, landmarks)
    # A net alone is not symmetric: that is what the averaging adds.
    assert not torch.allclose(plain.logits, plain_of_mirror.logits, atol=1e-3)


@pytest.mark.parametrize("height, width", [(10, 14), (11, 14), (10, 15), (1, 1), (7, 9)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_max_pool_2x2_without_autograd_is_the_pooling_layer(height, width, channels_last):
    pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
    x = torch.randn((2, 5, height, width), generator=torch.Generator().manual_seed(height * width))
    x[0, 0, 0, :2] = -torch.inf  # ties and infinities pool as the layer pools them
    x[1, 1, :2, :2] = 3.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(max_pool_2x2(x), pool(x))
        if min(height, width) > 2:  # a map of one pixel a row or column is in both memory formats
            assert max_pool_2x2(x).is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), pool(x))
    x.requires_grad_(True)
    assert max_pool_2x2(x).grad_fn is not None  # with autograd: the layer itself


@pytest.mark.parametrize("channels", [10, 28, 16, 32])
@pytest.mark.parametrize("channels_last", [True, False])
def test_prelu_without_autograd_gives_the_layers_values(channels, channels_last):
    generator = torch.Generator().manual_seed(channels)
    x = torch.randn((3, channels, 7, 9), generator=generator)
    x[0, :, 0, 0] = 0.0  # the kink: the slope side or the identity side must be the layer's
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer = torch.nn.PReLU(channels)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(channels, generator=generator))  # negative slopes too
        expected = layer(x)
    with torch.inference_mode():
        result = prelu(x, layer.weight)
    assert torch.equal(result, expected)
    assert result.is_contiguous(memory_format=torch.channels_last) == channels_last
    x.requires_grad_(True)
    assert prelu(x, layer.weight).grad_fn is not None  # with autograd: F.prelu itself


@pytest.mark.parametrize("channels_last", [True, False])
def test_pnet_forward_detect_gives_the_face_and_box_heads_of_forward(channels_last):
    pnet = load_net(resolve_weight_files(None)["pnet"], "pnet").eval()
    pixels = torch.rand((2, 3, 41, 57), generator=torch.Generator().manual_seed(5)) * 255
    if channels_last:
        pnet, pixels = pnet.to(memory_format=torch.channels_last), pixels.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        full = pnet(pixels)
        logits, box = pnet.forward_detect(pixels)
    torch.testing.assert_close(logits, full.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(box, full.box, rtol=0, atol=1e-6)


def test_pnet_takes_no_dropout():
    with pytest.raises(ValueError, match="P-Net has no dropout layer"):
        build_net("pnet", dropout=0.1)
    assert isinstance(build_net("pnet", dropout=0.0), PNet)


def test_unknown_stage_is_an_error():
    with pytest.raises(ValueError, match="unknown stage 'qnet'"):
        build_net("qnet")


def facenet_style_forward(state: dict, stage: str, pixels: torch.Tensor) -> tuple:
    """The original release's forward pass written out from its state dict: Caffe (W, H, C)
    flatten before the dense layers, O-Net landmarks as x1..x5, y1..y5. The slow reference for
    the conversion in mtcnn.model.weights."""
    x = (pixels - 127.5) * 0.0078125

    def conv(x, name):
        x = F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"])
        return F.prelu(x, state[name.replace("conv", "prelu") + ".weight"])

    if stage == "pnet":
        x = conv(x, "conv1")
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = conv(conv(x, "conv2"), "conv3")
        return (
            F.conv2d(x, state["conv4_1.weight"], state["conv4_1.bias"]),
            F.conv2d(x, state["conv4_2.weight"], state["conv4_2.bias"]),
            None,
        )
    x = F.max_pool2d(conv(x, "conv1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(conv(x, "conv2"), 3, 2, ceil_mode=True)
    if stage == "rnet":
        x = conv(x, "conv3")
        dense, heads = "dense4", ("dense5_1", "dense5_2", None)
        prelu = "prelu4"
    else:
        x = F.max_pool2d(conv(x, "conv3"), 2, 2, ceil_mode=True)
        x = conv(x, "conv4")
        dense, heads = "dense5", ("dense6_1", "dense6_2", "dense6_3")
        prelu = "prelu5"
    x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
    x = F.prelu(F.linear(x, state[f"{dense}.weight"], state[f"{dense}.bias"]), state[f"{prelu}.weight"])
    return tuple(
        None if head is None else F.linear(x, state[f"{head}.weight"], state[f"{head}.bias"]) for head in heads
    )


@pytest.mark.parametrize("stage, size", [("pnet", 40), ("rnet", 24), ("onet", 48)])
def test_original_weights_load_with_caffe_layout_converted(reference_weights, stage, size):
    state = torch.load(reference_weights / f"{stage}.pt", weights_only=True)
    net = load_net(reference_weights / f"{stage}.pt", stage)
    pixels = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    ours = net(pixels)
    logits, box, points = facenet_style_forward(state, stage, pixels)
    assert torch.allclose(ours.logits, logits, atol=1e-4)
    assert torch.allclose(ours.box, box, atol=1e-5)
    if points is not None:
        interleaved = torch.stack([points[:, :5], points[:, 5:]], dim=2).reshape(-1, 10)
        assert torch.allclose(ours.landmarks, interleaved, atol=1e-5)
    assert net.original_window_mapping
    again = load_net(reference_weights / f"{stage}.pt", stage)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_wrong_net_file_names_what_it_holds(reference_weights):
    with pytest.raises(WeightsError, match="holds O-Net weights, expected P-Net"):
        load_net(reference_weights / "onet.pt", "pnet")


def test_foreign_and_corrupt_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "pnet.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="pnet.pt: not a PyTorch weights file"):
        load_net(garbage)
    foreign = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(WeightsError, match="not of an MTCNN net"):
        load_net(foreign)
    with pytest.raises(WeightsError, match="no such file"):
        load_net(tmp_path / "missing.pt")


class Gadget:
    """A Python object in a would-be weights file: unpickling it may run code, so it is refused."""

    def __init__(self):
        self.payload = "anything"


def _write_random(path):
    path.write_bytes(random.Random(0).randbytes(4096))


def _write_empty(path):
    path.write_bytes(b"")


def _write_truncated(path):
    atomic_save(make_checkpoint("pnet", build_net("pnet"), {"stage": "pnet"}), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write_object(path):
    torch.save({"model": Gadget()}, path)


def _write_object_old_format(path):
    torch.save({"model": Gadget()}, path, _use_new_zipfile_serialization=False)


def _write_whole_net(path):
    torch.save(build_net("pnet"), path)  # the net object, not its state_dict


def _write_plain_pickle(path):
    path.write_bytes(pickle.dumps({"model": Gadget()}, protocol=4))


def _write_folder(path):
    path.mkdir()


BAD_FILES = {
    "random bytes": (_write_random, "not a PyTorch weights file"),
    "empty": (_write_empty, "empty file"),
    "truncated checkpoint": (_write_truncated, "truncated"),
    "custom object": (_write_object, r"holds Python objects other than tensors \(.*Gadget\); refused for safety"),
    "custom object, old format": (_write_object_old_format, "holds Python objects other than tensors"),
    "whole net": (_write_whole_net, r"holds Python objects other than tensors \(mtcnn.model.nets.PNet\)"),
    "plain pickle": (_write_plain_pickle, "not a PyTorch weights file"),
    "folder": (_write_folder, "a folder, not a weights file"),
    "missing": (lambda path: None, "no such file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("loader", [load_file, load_checkpoint, load_net], ids=lambda f: f.__name__)
def test_unloadable_files_are_one_line_errors_without_unsafe_advice(kind, loader, tmp_path):
    write, expected = BAD_FILES[kind]
    path = tmp_path / "pnet.pt"
    write(path)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(WeightsError) as error:
        warnings.simplefilter("always")
        loader(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert re.search(expected, message), message
    # PyTorch's own text advises weights_only=False (running the file's code) or filing an issue.
    for text in [message, *(str(warning.message) for warning in caught)]:
        assert "weights_only" not in text and "file an issue" not in text.lower()


def test_mis_shaped_state_is_reported(reference_weights, tmp_path):
    state = torch.load(reference_weights / "pnet.pt", weights_only=True)
    state["conv2.weight"] = torch.zeros(16, 10, 5, 5)
    bad = tmp_path / "pnet.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"conv2.weight has shape \(16, 10, 5, 5\)"):
        load_net(bad)


@pytest.mark.parametrize("stage", sorted(NET_CLASSES))
def test_checkpoint_round_trip_gives_the_same_net(stage, tmp_path):
    torch.manual_seed(0)
    net = build_net(stage)
    path = tmp_path / f"{stage}.pt"
    atomic_save(make_checkpoint(stage, net, {"stage": stage}, epoch=3), path)
    assert load_checkpoint(path)["epoch"] == 3
    loaded = load_net(path, stage)
    assert not loaded.original_window_mapping
    size = {"pnet": 12, "rnet": 24, "onet": 48}[stage]
    pixels = torch.rand(2, 3, size, size) * 255
    for ours, theirs in zip(net.eval()(pixels), loaded(pixels)):
        assert torch.equal(ours, theirs)
    assert [p.name for p in tmp_path.iterdir()] == [f"{stage}.pt"]  # no temporary left behind


def test_atomic_save_gives_new_file_permissions_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "onet.pt"
    previous_umask = os.umask(0o022)
    try:
        atomic_save({"epoch": 1}, path)
    finally:
        os.umask(previous_umask)
    # mkstemp would have left 0o600: weights exported for others must be readable by them
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["onet.pt"]  # the failed temporary is gone


def test_weight_folder_must_hold_all_three(tmp_path):
    (tmp_path / "pnet.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match="missing rnet.pt, onet.pt"):
        resolve_weight_files(tmp_path)
    with pytest.raises(WeightsError, match="must be a folder"):
        resolve_weight_files(tmp_path / "pnet.pt")
    with pytest.raises(WeightsError, match="unknown stage"):
        resolve_weight_files({"qnet": tmp_path})
