"""Box ops against slow, obvious references, on inputs built to sit at the thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import ops as torchvision_ops

from mtcnn.data.samples import box_targets
from mtcnn.ops import boxes as B
from mtcnn.ops import resample as S


def random_boxes(count: int, generator: torch.Generator, span: float = 100.0) -> torch.Tensor:
    corners = torch.rand((count, 2), generator=generator) * span
    sizes = torch.rand((count, 2), generator=generator) * span / 3 + 1
    return torch.cat([corners, corners + sizes], dim=1)


def slow_overlap(a: list[float], b: list[float], mode: str) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) if mode == "union" else inter / min(area_a, area_b)


def slow_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str, groups=None) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all(
            (groups is not None and groups[i] != groups[k])
            or slow_overlap(boxes[i].tolist(), boxes[k].tolist(), mode) <= threshold
            for k in kept
        ):
            kept.append(i)
    return kept


def test_pairwise_overlaps_match_slow_reference():
    generator = torch.Generator().manual_seed(0)
    a, b = random_boxes(20, generator), random_boxes(15, generator)
    iou, min_overlap = B.iou_matrix(a.numpy(), b.numpy()), B.pairwise_min_overlap(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            assert iou[i, j] == pytest.approx(slow_overlap(a[i].tolist(), b[j].tolist(), "union"), abs=1e-6)
            assert min_overlap[i, j].item() == pytest.approx(
                slow_overlap(a[i].tolist(), b[j].tolist(), "min"), abs=1e-6
            )


def test_min_overlap_of_nested_box_is_one():
    outer = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    inner = torch.tensor([[2.0, 2.0, 5.0, 5.0]])
    assert B.pairwise_min_overlap(outer, inner).item() == pytest.approx(1.0)
    assert B.iou_matrix(outer.numpy(), inner.numpy())[0, 0] == pytest.approx(9 / 100)


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_nms_matches_slow_greedy_reference(mode, seed):
    generator = torch.Generator().manual_seed(seed)
    # Clustered boxes so that suppression chains occur.
    centres = random_boxes(6, generator)[:, :2].repeat_interleave(10, dim=0)
    jitter = torch.rand((60, 4), generator=generator) * 8
    boxes = torch.cat([centres, centres + 20], dim=1) + jitter
    scores = torch.rand(60, generator=generator)
    groups = torch.randint(0, 3, (60,), generator=generator)
    for threshold in (0.3, 0.5, 0.7):
        got = B.nms(boxes, scores, threshold, mode=mode).tolist()
        assert got == slow_nms(boxes, scores, threshold, mode)
        got = B.nms(boxes, scores, threshold, mode=mode, groups=groups).tolist()
        assert got == slow_nms(boxes, scores, threshold, mode, groups.tolist())


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_keeps_a_box_whose_overlap_equals_the_threshold(mode):
    # Overlap exactly 0.5 in both cases (exact in binary floating point).
    second = [0.0, 0.0, 10.0, 5.0] if mode == "union" else [5.0, 0.0, 15.0, 10.0]
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], second])
    scores = torch.tensor([0.9, 0.8])
    assert B.nms(boxes, scores, 0.5, mode=mode).tolist() == [0, 1]
    assert B.nms(boxes, scores, 0.499, mode=mode).tolist() == [0]
    if mode == "union":  # and so does the union NMS that runs off the CPU
        assert B._exact_union_nms(boxes, scores, 0.5).tolist() == [0, 1]
        assert B._exact_union_nms(boxes, scores, 0.499).tolist() == [0]


@pytest.mark.parametrize("scale", [0.6, 0.2138, 0.1075])
def test_a_group_keeps_what_it_keeps_alone_despite_overlaps_equal_to_the_threshold(scale):
    # One pyramid level's P-Net windows mapped back to the image: windows two cells apart overlap
    # by exactly 0.5 in exact arithmetic, so rounding decides. Sixteen images with the same
    # windows and different scores; shifting each image by its own offset (torchvision's
    # batched_nms on few boxes) rounded the overlaps differently and changed most images' boxes.
    rows, cols = torch.meshgrid(torch.arange(0.0, 10.0, 2.0), torch.arange(0.0, 12.0, 2.0), indexing="ij")
    x1, y1 = cols.flatten() / scale, rows.flatten() / scale
    windows = torch.stack([x1, y1, x1 + 12 / scale, y1 + 12 / scale], dim=1)
    images = 16
    boxes = windows.repeat(images, 1)
    groups = torch.arange(images).repeat_interleave(len(windows))
    scores = torch.rand(len(boxes), generator=torch.Generator().manual_seed(0))
    kept = B.nms(boxes, scores, 0.5, groups=groups)
    for image in range(images):
        members = torch.nonzero(groups == image).squeeze(1)
        alone = members[B.nms(boxes[members], scores[members], 0.5)]
        assert kept[groups[kept] == image].tolist() == alone.tolist()


def pnet_grid(height: int, width: int, scaled_height: int, scaled_width: int, cells: int = 30) -> torch.Tensor:
    """P-Net's windows over ``cells x cells`` cells of one pyramid level, mapped back to the
    image as the cascade maps them (per-axis ratio of the resize): ``[cells**2, 4]``."""
    rows, cols = torch.meshgrid(torch.arange(cells) * 2.0, torch.arange(cells) * 2.0, indexing="ij")
    x, y = cols.flatten(), rows.flatten()
    x_ratio, y_ratio = torch.tensor(width / scaled_width), torch.tensor(height / scaled_height)
    return torch.stack([x * x_ratio, y * y_ratio, (x + 12) * x_ratio, (y + 12) * y_ratio], dim=1)


def fused_union_above(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """IoU above ``threshold`` ``[N, N]`` with the union's subtraction fused with the
    intersection's product (one rounding, as CUDA's fused multiply-add does it)."""
    width = torch.minimum(boxes[:, None, 2], boxes[None, :, 2]) - torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    height = torch.minimum(boxes[:, None, 3], boxes[None, :, 3]) - torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    width, height = width.clamp(min=0).double(), height.clamp(min=0).double()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = ((areas[:, None] + areas[None, :]).double() - width * height).float()
    return (width * height).float() / union > threshold


@pytest.mark.parametrize(("height", "width"), [(375, 500), (768, 1024), (333, 517)])
def test_union_nms_off_the_cpu_decides_ties_as_torchvision_on_the_cpu(height, width):
    # P-Net windows two cells apart overlap by exactly 0.5, so rounding decides; the boxes of
    # several pyramid levels of one image, with random scores (and some equal ones).
    generator = torch.Generator().manual_seed(height)
    fused_flips = 0
    for level in range(5):
        scaled = S.scaled_size(height, width, 0.6 * 0.709**level)
        boxes = pnet_grid(height, width, *scaled)
        scores = (torch.rand(len(boxes), generator=generator) * 200).round() / 200
        expected = torchvision_ops.nms(boxes, scores, 0.5)
        assert torch.equal(B._exact_union_nms(boxes, scores, 0.5), expected)
        unfused = torch.zeros((len(boxes), len(boxes)), dtype=torch.bool)
        unfused[B._union_pairs_above(boxes, 0.5)] = True
        fused_flips += int((torch.triu(fused_union_above(boxes, 0.5), diagonal=1) != unfused).sum())
    assert fused_flips > 0  # rounding decides here: CUDA's fused arithmetic flips some ties


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.6, 0.7])
def test_union_nms_off_the_cpu_keeps_what_torchvision_keeps_on_random_boxes(threshold):
    # 0.6 rounds up in float32: the overlaps are compared with the threshold in float64, as
    # torchvision compares them.
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        boxes = random_boxes(1500, generator, span=300.0)
        scores = (torch.rand(1500, generator=generator) * 50).round() / 50
        assert torch.equal(B._exact_union_nms(boxes, scores, threshold), torchvision_ops.nms(boxes, scores, threshold))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["union", "min"])
def test_cuda_nms_keeps_the_cpu_boxes(mode):
    generator = torch.Generator().manual_seed(0)
    levels = [pnet_grid(768, 1024, *S.scaled_size(768, 1024, 0.6 * 0.709**level), cells=60) for level in range(6)]
    boxes = torch.cat(levels)
    groups = torch.cat([torch.full((len(level),), index) for index, level in enumerate(levels)])
    scores = torch.rand(len(boxes), generator=generator)
    on_cpu = B.nms(boxes, scores, 0.5, mode=mode, groups=groups)
    on_gpu = B.nms(boxes.cuda(), scores.cuda(), 0.5, mode=mode, groups=groups.cuda())
    assert torch.equal(on_gpu.cpu(), on_cpu)


def test_nms_of_no_boxes_is_empty():
    assert B.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5, mode="min").shape == (0,)


def test_offsets_round_trip_and_scale_with_the_box():
    generator = torch.Generator().manual_seed(4)
    windows = B.square_boxes(random_boxes(30, generator))
    targets = random_boxes(30, generator)
    offsets = torch.from_numpy(box_targets(windows.numpy(), targets.numpy()))
    assert torch.allclose(B.apply_box_offsets(windows, offsets), targets, atol=1e-4)
    window = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    moved = B.apply_box_offsets(window, torch.tensor([[0.1, -0.1, 0.5, 0.0]]))
    assert moved.tolist() == [[12.0, 18.0, 40.0, 40.0]]


def test_square_boxes_keep_centre_and_take_longer_side():
    squares = B.square_boxes(torch.tensor([[10.0, 10.0, 30.0, 50.0], [0.0, 0.0, 8.0, 2.0]]))
    assert squares.tolist() == [[0.0, 10.0, 40.0, 50.0], [0.0, -3.0, 8.0, 5.0]]


def test_pyramid_scales_cover_the_range_of_face_sizes():
    scales = S.pyramid_scales(min_side=480, min_face_size=20, scale_factor=0.709)
    assert scales[0] == pytest.approx(12 / 20)
    assert all(b / a == pytest.approx(0.709) for a, b in zip(scales, scales[1:]))
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    assert S.pyramid_scales(min_side=11, min_face_size=12, scale_factor=0.7) == []
    with pytest.raises(ValueError, match="scale_factor"):
        S.pyramid_scales(100, 20, 1.0)


def slow_area_crop(image: np.ndarray, box: list[float], size: int) -> np.ndarray:
    """Zero-pad, cut the floored box, and average each output pixel's bin by hand."""
    channels, height, width = image.shape
    x1, y1, x2, y2 = (math.floor(v) for v in box)
    box_w, box_h = max(1, x2 - x1), max(1, y2 - y1)
    out = np.zeros((channels, size, size))
    for i in range(size):
        r0, r1 = y1 + (i * box_h) // size, y1 + -(-((i + 1) * box_h) // size)
        for j in range(size):
            c0, c1 = x1 + (j * box_w) // size, x1 + -(-((j + 1) * box_w) // size)
            total = np.zeros(channels)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    if 0 <= r < height and 0 <= c < width:
                        total += image[:, r, c]
            out[:, i, j] = total / ((r1 - r0) * (c1 - c0))
    return out


def test_crop_and_resize_is_area_resampling_with_zero_padding():
    generator = torch.Generator().manual_seed(5)
    image = torch.rand((3, 30, 40), generator=generator) * 255
    crop_boxes = torch.tensor(
        [
            [2.0, 3.0, 30.0, 27.0],  # inside, downscaled
            [10.3, 5.9, 17.2, 12.8],  # smaller than the output: upscaled
            [-6.0, -4.0, 20.0, 22.0],  # partly outside: zeros there
            [35.0, 25.0, 50.0, 40.0],  # mostly outside
        ]
    )
    crops = S.crop_and_resize(image, crop_boxes, 12)
    assert crops.shape == (4, 3, 12, 12) and crops.dtype == torch.float32
    for crop, box in zip(crops, crop_boxes.tolist()):
        np.testing.assert_allclose(crop.numpy(), slow_area_crop(image.numpy(), box, 12), rtol=1e-5, atol=1e-3)


def test_crop_and_resize_equals_torch_area_interpolation_inside_the_image():
    generator = torch.Generator().manual_seed(6)
    image = torch.rand((3, 64, 80), generator=generator) * 255
    crop = S.crop_and_resize(image, torch.tensor([[5.0, 7.0, 54.0, 56.0]]), 24)[0]
    expected = F.interpolate(image[None, :, 7:56, 5:54], size=(24, 24), mode="area")[0]
    assert torch.allclose(crop, expected, atol=1e-3)
    assert S.crop_and_resize(image, torch.zeros((0, 4)), 24).shape == (0, 3, 24, 24)


def test_integral_image_paths_agree():
    image = torch.rand((3, 17, 23), generator=torch.Generator().manual_seed(7)) * 255
    table = S.integral_image(image)
    assert table.shape == (18, 24, 3) and table.dtype == torch.float64
    assert torch.allclose(table, S.integral_image_torch(image))
    assert torch.allclose(table[-1, -1], image.double().sum(dim=(1, 2)))


def test_integer_pixels_get_an_int32_table_with_the_same_crops_and_resizes():
    generator = torch.Generator().manual_seed(9)
    image = torch.randint(0, 256, (3, 40, 50), generator=generator).float()
    table = S.integral_image(image)
    wide = S.integral_image_torch(image)
    assert table.dtype == torch.int32 and torch.equal(table.double(), wide)
    boxes = torch.tensor([[2.0, 3.0, 30.0, 27.0], [-6.5, -4.0, 20.0, 22.0], [10.3, 5.9, 17.2, 12.8]])
    assert torch.equal(S.crop_and_resize(image, boxes, 24, table), S.crop_and_resize(image, boxes, 24, wide))
    assert torch.equal(S.resize_from_integral(table, 13, 17), S.resize_from_integral(wide, 13, 17))
    # Not integers, or out of [0, 255]: the float64 table.
    assert S.integral_image(image + 0.5).dtype == torch.float64
    assert S.integral_image(image + 256).dtype == torch.float64


@pytest.mark.parametrize("band_values", [S.RESIZE_BAND_VALUES, 1, 81 * 3 * 5])
@pytest.mark.parametrize("height, width", [(30, 41), (7, 9), (64, 80), (1, 1)])
def test_resize_from_integral_equals_torch_area_interpolation(height, width, band_values, monkeypatch):
    # Bands of one row, of five rows, and the whole level in one band all give the same pixels.
    monkeypatch.setattr(S, "RESIZE_BAND_VALUES", band_values)
    image = torch.rand((3, 64, 80), generator=torch.Generator().manual_seed(8)) * 255
    resized = S.resize_from_integral(S.integral_image(image), height, width)
    expected = F.interpolate(image[None], size=(height, width), mode="area")[0]
    assert resized.shape == (3, height, width)
    assert torch.allclose(resized, expected, atol=1e-3)
