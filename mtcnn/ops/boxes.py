"""Pure tensor operations on boxes.

Boxes are ``float`` tensors ``[N, 4]`` of ``(x1, y1, x2, y2)`` in continuous pixel
coordinates: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``, so a box's width is
``x2 - x1`` with no ``+ 1``. Every function works on the device of its inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import ops


def box_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and heights ``[N]`` of ``[N, 4]`` boxes."""
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU ``float64 [N, M]`` of numpy ``[N, 4]`` and ``[M, 4]`` boxes, for data preparation and
    evaluation. A degenerate box (zero or negative
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
    regress them (:func:`mtcnn.data.samples.box_targets` computes them for training).
    """
    widths, heights = box_sizes(boxes)
    scale = torch.stack([widths, heights, widths, heights], dim=1)
    return boxes + offsets * scale


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Squares ``[N, 4]`` with the same centres, side the longer of width and height."""
    widths, heights = box_sizes(boxes)
    side = torch.maximum(widths, heights)
    centre_x = boxes[:, 0] + widths / 2
    centre_y = boxes[:, 1] + heights / 2
    half = side / 2
    return torch.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], dim=1)
