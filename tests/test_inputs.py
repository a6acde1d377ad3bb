"""What the detector accepts as an image, and how faces are drawn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mtcnn.detect.inputs import to_pixel_tensor
from mtcnn.errors import ImageReadError
from mtcnn.ops.draw import _draw_label, draw_faces


def test_float_pixels_in_unit_range_are_refused_in_one_line():
    unit = torch.rand(3, 20, 30)  # what torchvision's ToTensor gives
    for image in (unit, unit.permute(1, 2, 0).numpy()):
        with pytest.raises(ImageReadError, match=r"photo: float pixel values all in \[0, 1\].*image \* 255") as caught:
            to_pixel_tensor(image, "photo")
        assert "\n" not in str(caught.value)
    scaled = to_pixel_tensor(unit * 255, "photo")
    assert torch.allclose(scaled, unit * 255)
    assert to_pixel_tensor(torch.zeros(3, 4, 4)).abs().max() == 0  # a black picture is still a picture


def test_a_read_only_array_from_pil_converts_without_a_warning():
    pixels = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    array = np.asarray(Image.fromarray(pixels))
    assert not array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_pixel_tensor(array)
    assert torch.equal(tensor, torch.from_numpy(pixels).permute(2, 0, 1).float())


def test_labels_of_crowded_faces_never_cover_each_other():
    canvas = np.zeros((200, 200, 3), np.uint8)
    drawn: list[tuple[int, int, int, int]] = []
    for shift in range(12):  # twelve faces side by side, 4 px apart
        _draw_label(canvas, "0.99", (40 + 4 * shift, 80, 70 + 4 * shift, 110), 1, (0, 255, 0), drawn)
    assert 2 <= len(drawn) < 12
    for i, (a1, b1, c1, d1) in enumerate(drawn):
        for a2, b2, c2, d2 in drawn[i + 1 :]:
            assert c1 <= a2 or a1 >= c2 or d1 <= b2 or b1 >= d2
    alone = draw_faces(canvas, np.array([[40.0, 80, 70, 110]]), scores=np.array([0.99]))
    assert (alone[60:80, 40:70] != 0).any()  # the label above the box
