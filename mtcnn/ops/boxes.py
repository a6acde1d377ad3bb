"""Pure tensor operations on boxes.

Boxes are ``float`` tensors ``[N, 4]`` of ``(x1, y1, x2, y2)`` in continuous pixel
coordinates: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``, so a box's width is
``x2 - x1`` with no ``+ 1``. Every function works on the device of its inputs.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torchvision import ops


def box_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and heights ``[N]`` of ``[N, 4]`` boxes."""
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union ``[N, M]`` of ``[N, 4]`` and ``[M, 4]`` boxes."""
    return ops.box_iou(boxes_a, boxes_b)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU ``float64 [N, M]`` of numpy ``[N, 4]`` and ``[M, 4]`` boxes: the NumPy face of
    :func:`pairwise_iou` for data preparation and evaluation. A degenerate box (zero or negative
    size) overlaps nothing: its IoU is 0, never NaN."""
    a = torch.from_numpy(np.asarray(boxes_a, np.float64).reshape(-1, 4))
    b = torch.from_numpy(np.asarray(boxes_b, np.float64).reshape(-1, 4))
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return torch.where(union > 0, intersection / union, 0.0).numpy()


def pairwise_min_overlap(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Intersection over the smaller of the two areas, ``[N, M]``.

    This is the "min" overlap the original cascade uses after O-Net, which also removes a
    small box lying inside a larger one.
    """
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a, area_b = ops.box_area(boxes_a), ops.box_area(boxes_b)
    smaller = torch.minimum(area_a[:, None], area_b[None, :])
    return intersection / smaller.clamp(min=torch.finfo(boxes_a.dtype).tiny)


def _greedy_suppression(overlap_above: torch.Tensor) -> torch.Tensor:
    """Greedy NMS on a precomputed ``[K, K]`` bool matrix, boxes sorted by falling score.

    ``overlap_above[i, j]`` says box ``i`` would suppress box ``j`` (only ``i < j`` matters).
    Box ``j`` survives iff no surviving earlier box suppresses it. That recursion has exactly one
    solution, so iterating ``keep <- not any(keep[i] and overlap[i, j])`` from all-true until it
    stops changing finds it; it stops after at most the length of the longest suppression chain
    (a handful of steps in practice), each one matrix-vector product, on any device.
    """
    count = overlap_above.shape[0]
    suppresses = torch.triu(overlap_above, diagonal=1).to(torch.float32)
    keep = torch.ones(count, dtype=torch.bool, device=overlap_above.device)
    for _ in range(count + 1):
        new_keep = (keep.to(torch.float32) @ suppresses) == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
    mode: str = "union",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy non-maximum suppression; indices ``[K]`` of the kept boxes by falling score.

    ``mode`` is ``"union"`` (IoU, via ``torchvision.ops``) or ``"min"`` (intersection over the
    smaller area). A box is suppressed when its overlap with a kept, higher-scoring box is
    strictly greater than ``threshold``. ``groups`` ``[N]`` (ints), when given, runs NMS
    within each group (e.g. per image) on its own: a group keeps exactly the boxes it would keep
    alone.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if mode not in ("union", "min"):
        raise ValueError(f"unknown NMS mode {mode!r}; expected 'union' or 'min'")
    if groups is None:
        groups = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    # Each group on its own, so that a group's result never depends on the others: torchvision's
    # batched_nms shifts each group by its own coordinate offset, which changes the rounding of
    # the overlaps, and P-Net's grid windows often overlap by exactly the threshold (two cells
    # apart: IoU 0.5), so an image's boxes would change with the images batched beside it. The
    # min mode also keeps its [K, K] matrix to the boxes of one group.
    kept = []
    for group in torch.unique(groups):
        members = torch.nonzero(groups == group).squeeze(1)
        if mode == "union":
            kept.append(members[ops.nms(boxes[members], scores[members], threshold)])
        else:
            order = members[torch.argsort(scores[members], descending=True, stable=True)]
            overlap = pairwise_min_overlap(boxes[order], boxes[order]) > threshold
            kept.append(order[_greedy_suppression(overlap)])
    kept = torch.cat(kept)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def apply_box_offsets(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move each corner by its offset times the box size: ``[N, 4]`` boxes, ``[N, 4]`` offsets.

    ``offsets`` are ``(dx1, dy1, dx2, dy2)`` in units of the box width and height, as the nets
    regress them; :func:`box_offsets` is the inverse.
    """
    widths, heights = box_sizes(boxes)
    scale = torch.stack([widths, heights, widths, heights], dim=1)
    return boxes + offsets * scale


def box_offsets(windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Offsets ``[N, 4]`` taking ``windows`` to ``targets`` (both ``[N, 4]``), per unit of window size.

    Training targets for the box heads. Windows are the (square) crops, so ``w == h``.
    """
    widths, heights = box_sizes(windows)
    scale = torch.stack([widths, heights, widths, heights], dim=1)
    return (targets - windows) / scale


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Squares ``[N, 4]`` with the same centres, side the longer of width and height."""
    widths, heights = box_sizes(boxes)
    side = torch.maximum(widths, heights)
    centre_x = boxes[:, 0] + widths / 2
    centre_y = boxes[:, 1] + heights / 2
    half = side / 2
    return torch.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], dim=1)


def clip_boxes(boxes: torch.Tensor, height: int | torch.Tensor, width: int | torch.Tensor) -> torch.Tensor:
    """Clip ``[N, 4]`` boxes to an image of ``height`` x ``width`` (scalars or ``[N]`` per box)."""
    width = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    height = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    x1 = torch.minimum(boxes[:, 0].clamp(min=0), width)
    y1 = torch.minimum(boxes[:, 1].clamp(min=0), height)
    x2 = torch.minimum(boxes[:, 2].clamp(min=0), width)
    y2 = torch.minimum(boxes[:, 3].clamp(min=0), height)
    return torch.stack([x1, y1, x2, y2], dim=1)


def pyramid_scales(min_side: int, min_face_size: float, scale_factor: float, net_size: int = 12) -> list[float]:
    """Scales of the image pyramid: ``net_size / min_face_size`` times powers of ``scale_factor``.

    The first scale maps the smallest face sought onto the P-Net window; scales continue while
    the image's shorter side still holds one window. Empty for images smaller than the window
    at the first scale.
    """
    if not 0.0 < scale_factor < 1.0:
        raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be positive, got {min_face_size}")
    scales = []
    scale = net_size / min_face_size
    while min_side * scale >= net_size:
        scales.append(scale)
        scale *= scale_factor
    return scales


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The pixel size of an image scaled by ``scale`` (rounded up, at least 1)."""
    return max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale))


def integral_image(image: torch.Tensor) -> torch.Tensor:
    """Summed-area table ``[H + 1, W + 1, C]`` (float64) of a ``[C, H, W]`` image; row and column 0 are zero.

    On the CPU OpenCV builds it (about 40 times faster than ``torch.cumsum`` there); on other
    devices it is two cumulative sums on the device.
    """
    if image.device.type != "cpu":
        return integral_image_torch(image)
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).to(torch.float32).numpy())
    table = cv2.integral(pixels, sdepth=cv2.CV_64F)
    return torch.from_numpy(table.reshape(pixels.shape[0] + 1, pixels.shape[1] + 1, pixels.shape[2]))


def integral_image_torch(image: torch.Tensor) -> torch.Tensor:
    """:func:`integral_image` with torch ops only, on any device."""
    table = image.permute(1, 2, 0).to(torch.float64).cumsum(dim=0).cumsum(dim=1)
    return torch.nn.functional.pad(table, (0, 0, 1, 0, 1, 0))


def _area_bins(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel ranges ``[first, end)`` ``[N, size]`` of each output pixel when ``length`` input pixels
    from ``start`` are area-resampled to ``size``: the bins of ``adaptive_avg_pool``."""
    steps = torch.arange(size, device=start.device)
    first = start[:, None] + (steps[None, :] * length[:, None]) // size
    end = start[:, None] + ((steps[None, :] + 1) * length[:, None] + size - 1) // size
    return first, end


def resize_from_integral(integral: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-resample a whole image to ``[C, height, width]`` float32 from its summed-area table
    ``[H + 1, W + 1, C]``: the same bins, hence the same pixels, as
    ``F.interpolate(image, size=(height, width), mode="area")``.

    Its cost grows with the output rather than the input, so it is the cheaper way to make the
    smaller levels of an image pyramid once the table exists.
    """
    rows, cols = integral.shape[0] - 1, integral.shape[1] - 1
    origin = torch.zeros(1, dtype=torch.long, device=integral.device)
    row_first, row_end = (bins[0] for bins in _area_bins(origin, origin + rows, height))
    col_first, col_end = (bins[0] for bins in _area_bins(origin, origin + cols, width))
    band_sums = integral.index_select(0, row_end) - integral.index_select(0, row_first)  # [height, W + 1, C]
    total = band_sums.index_select(1, col_end) - band_sums.index_select(1, col_first)  # [height, width, C]
    count = ((row_end - row_first)[:, None] * (col_end - col_first)[None, :]).to(torch.float64)
    return (total / count[..., None]).to(torch.float32).permute(2, 0, 1)


def crop_and_resize(
    image: torch.Tensor, boxes: torch.Tensor, size: int, integral: torch.Tensor | None = None
) -> torch.Tensor:
    """Cut ``boxes`` out of one image and area-resample each to ``size`` x ``size``, all at once.

    ``image`` is ``[C, H, W]`` float, ``boxes`` ``[N, 4]`` (floored to the pixel grid); returns
    ``[N, C, size, size]`` float32 (in channels-last memory order). Each output pixel is the mean
    of the input pixels of its bin, exactly as ``F.interpolate(mode="area")`` would give for each
    crop on its own, but computed for every box in one gather from the summed-area table (pass
    ``integral`` to reuse one). Parts of a box outside the image count as black (0), as the
    original cascade pads them.
    """
    channels, height, width = image.shape
    if boxes.shape[0] == 0:
        return image.new_zeros((0, channels, size, size), dtype=torch.float32)
    if integral is None:
        integral = integral_image(image)
    corners = boxes.floor().to(torch.long)
    box_width = (corners[:, 2] - corners[:, 0]).clamp(min=1)
    box_height = (corners[:, 3] - corners[:, 1]).clamp(min=1)
    col_first, col_end = _area_bins(corners[:, 0], box_width, size)
    row_first, row_end = _area_bins(corners[:, 1], box_height, size)
    count = ((row_end - row_first)[:, :, None] * (col_end - col_first)[:, None, :]).to(torch.float64)
    # Only the part of a bin inside the image adds to its sum; the divisor stays the whole bin.
    r0, r1 = row_first.clamp(0, height)[:, :, None], row_end.clamp(0, height)[:, :, None]
    c0, c1 = col_first.clamp(0, width)[:, None, :], col_end.clamp(0, width)[:, None, :]
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]  # [N, size, size, C]
    return (total / count[..., None]).to(torch.float32).permute(0, 3, 1, 2)
