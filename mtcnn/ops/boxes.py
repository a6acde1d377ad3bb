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


#: Elements of one block of the union-mode IoU matrix off the CPU: a few tensors of this size (16
#: to 32 MiB each) live at once, whatever the number of boxes.
_IOU_BLOCK = 1 << 22


def _union_pairs_above(boxes: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs ``(i, j)``, ``i < j``, of ``[K, 4]`` boxes whose IoU is strictly above
    ``threshold``, as two index tensors ``[P]``, in blocks of rows so that memory stays bounded.

    The arithmetic is that of torchvision's CPU NMS, step by step: intersection ``w * h``, union
    ``(area_i + area_j) - intersection``, their quotient in the boxes' dtype, compared in float64
    with the threshold. Each step is its own PyTorch op, rounded on its own on every device, so
    the decisions are the CPU's even for overlaps that sit exactly at the threshold (P-Net's grid
    windows two cells apart have IoU 0.5): torchvision's CUDA kernel fuses the product into the
    subtraction (one rounding), which turned about 220 keep/suppress decisions on 4 WIDER images
    the other way (emulated on the CPU).
    """
    count = boxes.shape[0]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    index = torch.arange(count, device=boxes.device)
    rows = max(1, _IOU_BLOCK // count)
    suppressor, suppressed = [], []
    for start in range(0, count, rows):
        # Rows start:stop against every box from start on: the pairs with i < j all lie there.
        a, b = boxes[start : start + rows, None, :], boxes[None, start:, :]
        width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
        height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
        intersection = width * height
        union = (areas[start : start + rows, None] + areas[None, start:]) - intersection
        above = ((intersection / union).double() > threshold) & (
            index[None, start:] > index[start : start + rows, None]
        )
        i, j = torch.nonzero(above, as_tuple=True)
        suppressor.append(i + start)
        suppressed.append(j + start)
    return torch.cat(suppressor), torch.cat(suppressed)


def _greedy_suppression(count: int, suppressor: torch.Tensor, suppressed: torch.Tensor) -> torch.Tensor:
    """Greedy NMS of ``count`` boxes sorted by falling score, given the pairs ``[P]`` in which box
    ``suppressor[p]`` would suppress box ``suppressed[p]`` (always the later one); a bool
    ``[count]`` keep mask.

    Box ``j`` survives iff no surviving earlier box suppresses it. That recursion has exactly one
    solution, so iterating ``keep <- no kept suppressor of j`` from all-true until it stops
    changing finds it; it stops after at most the length of the longest suppression chain (a
    handful of steps in practice), each a gather and a scatter of one value over the pairs, on
    any device and deterministic.
    """
    keep = torch.ones(count, dtype=torch.bool, device=suppressor.device)
    for _ in range(count + 1):
        new_keep = torch.ones_like(keep)
        new_keep[suppressed[keep[suppressor]]] = False
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _exact_union_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """What ``nms(mode="union")`` runs off the CPU: indices ``[K]`` of the kept ``[N, 4]`` boxes
    by falling score, the same as torchvision's CPU NMS keeps (see :func:`_union_pairs_above`)."""
    order = torch.argsort(scores, descending=True, stable=True)
    suppressor, suppressed = _union_pairs_above(boxes[order], threshold)
    return order[_greedy_suppression(order.shape[0], suppressor, suppressed)]


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
    mode: str = "union",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy non-maximum suppression; indices ``[K]`` of the kept boxes by falling score.

    ``mode`` is ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area). A box is
    suppressed when its overlap with a kept, higher-scoring box is strictly greater than
    ``threshold``. ``groups`` ``[N]`` (ints), when given, runs NMS within each group (e.g. per
    image) on its own: a group keeps exactly the boxes it would keep alone. Union mode runs
    ``torchvision.ops.nms`` on the CPU, the reference and fastest there; on other devices the
    same arithmetic in PyTorch ops (:func:`_exact_union_nms`), so that every device keeps the
    CPU's boxes.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if mode not in ("union", "min"):
        raise ValueError(f"unknown NMS mode {mode!r}; expected 'union' or 'min'")
    union_nms = ops.nms if boxes.device.type == "cpu" else _exact_union_nms
    if groups is None or bool(groups.min() == groups.max()):
        # One group (always so when detecting one image at a time): no split and no merge, whose
        # index work took longer than the suppression itself on the cascade's few hundred boxes.
        if mode == "union":
            return union_nms(boxes, scores, threshold)
        return _min_overlap_nms(boxes, scores, threshold)
    # Each group on its own, so that a group's result never depends on the others: torchvision's
    # batched_nms shifts each group by its own coordinate offset, which changes the rounding of
    # the overlaps, and P-Net's grid windows often overlap by exactly the threshold (two cells
    # apart: IoU 0.5), so an image's boxes would change with the images batched beside it. The
    # min mode also keeps its [K, K] matrix to the boxes of one group.
    kept = []
    for group in torch.unique(groups):
        members = torch.nonzero(groups == group).squeeze(1)
        if mode == "union":
            kept.append(members[union_nms(boxes[members], scores[members], threshold)])
        else:
            kept.append(members[_min_overlap_nms(boxes[members], scores[members], threshold)])
    kept = torch.cat(kept)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _min_overlap_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS by intersection over the smaller box: indices ``[K]`` of the kept ``boxes [N, 4]``
    by falling score (ties in input order)."""
    order = torch.argsort(scores, descending=True, stable=True)
    overlap = torch.triu(pairwise_min_overlap(boxes[order], boxes[order]) > threshold, diagonal=1)
    return order[_greedy_suppression(order.shape[0], *torch.nonzero(overlap, as_tuple=True))]


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
