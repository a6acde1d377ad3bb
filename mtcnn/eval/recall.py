"""Per-stage recall of the cascade: the share of annotated faces that a stage's boxes still
cover, the check that tells whether P-Net (or R-Net) proposes enough for the next stage to be
trained on its output. Used by ``mtcnn eval stages`` and, with the same numbers, by data
preparation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtcnn.ops.boxes import iou_matrix
from mtcnn.spec import STAGE_NAMES, STAGES

log = logging.getLogger(__name__)

#: IoU a stage's box needs with a face to cover it: WIDER's hit, and a positive sample's.
RECALL_IOUS = (0.5, 0.65)


# ------------------------------------------------------------------------------ stage recall


@dataclass(frozen=True)
class StageRecall:
    """Recall of one set of boxes per image against the annotated faces.

    ``faces``: faces counted (valid, at least ``min_size``); ``recalled``: ``{iou: faces covered by
    some box with at least that IoU}``; ``boxes``: boxes over all images; ``images``: images.
    """

    faces: int
    recalled: dict[float, int]
    boxes: int
    images: int

    @property
    def recall(self) -> dict[float, float]:
        return {iou: (count / self.faces if self.faces else float("nan")) for iou, count in self.recalled.items()}

    @property
    def boxes_per_image(self) -> float:
        return self.boxes / self.images if self.images else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": self.faces,
            "boxes_per_image": round(self.boxes_per_image, 3),
            "recall": {f"{iou:g}": round(value, 6) for iou, value in self.recall.items()},
            "recalled": {f"{iou:g}": count for iou, count in self.recalled.items()},
        }


def counted_faces(gt_boxes: np.ndarray, min_size: float = 0.0, invalid: np.ndarray | None = None) -> np.ndarray:
    """Mask ``bool [G]`` of the faces ``[G, 4]`` (x1 y1 x2 y2) that recall counts: not marked
    invalid, and both width and height at least ``min_size`` pixels."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    sides = gt_boxes[:, 2:] - gt_boxes[:, :2]
    keep = (sides >= min_size).all(axis=1)
    if invalid is not None:
        keep &= ~np.asarray(invalid, dtype=bool).reshape(-1)
    return keep


def stage_recall(
    detections_per_image: Sequence[np.ndarray],
    gt_boxes_per_image: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = RECALL_IOUS,
    min_size: float = 0.0,
    invalid_per_image: Sequence[np.ndarray] | None = None,
) -> StageRecall:
    """How many annotated faces some detected box covers, at each IoU threshold.

    ``detections_per_image``: per image ``[K, 4]`` boxes x1 y1 x2 y2; ``gt_boxes_per_image``: per
    image ``[G, 4]`` faces; ``invalid_per_image``: optional ``bool [G]`` (WIDER's invalid flag).
    A face counts if :func:`counted_faces` keeps it; it is recalled at IoU ``t`` when at least one
    box overlaps it by ``>= t`` (boxes are proposals: one may cover several faces). All boxes are
    counted in ``boxes``, whatever they overlap.
    """
    if len(detections_per_image) != len(gt_boxes_per_image):
        raise ValueError(f"{len(detections_per_image)} detection lists for {len(gt_boxes_per_image)} images")
    thresholds = tuple(float(t) for t in iou_thresholds)
    faces, boxes = 0, 0
    recalled = dict.fromkeys(thresholds, 0)
    for index, (detections, gt_boxes) in enumerate(zip(detections_per_image, gt_boxes_per_image)):
        invalid = None if invalid_per_image is None else invalid_per_image[index]
        counted = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)[counted_faces(gt_boxes, min_size, invalid)]
        detections = np.asarray(detections).reshape(-1, 4)
        faces += counted.shape[0]
        boxes += detections.shape[0]
        if counted.shape[0] == 0 or detections.shape[0] == 0:
            continue
        best = iou_matrix(counted, detections).max(axis=1)
        for threshold in thresholds:
            recalled[threshold] += int((best >= threshold).sum())
    return StageRecall(faces, recalled, boxes, len(gt_boxes_per_image))


def evaluate_stages(
    detector: Any,
    images: Sequence[Any],
    last_stage: str = "onet",
    iou_thresholds: Sequence[float] = RECALL_IOUS,
    min_size: float = 0.0,
    progress: bool = True,
) -> dict[str, StageRecall]:
    """Recall after each stage of ``detector`` (an :class:`~mtcnn.detect.cascade.MTCNN`) up to
    ``last_stage`` on WIDER images (:class:`mtcnn.data.readers.WiderImage`: ``path``, ``boxes``,
    ``invalid``). Returns ``{stage: StageRecall}``."""
    from tqdm import tqdm

    stages = STAGES[: STAGES.index(last_stage) + 1]
    per_stage: dict[str, list[np.ndarray]] = {stage: [] for stage in stages}
    batch = max(1, int(getattr(detector, "batch_size", 8)))
    bar = tqdm(total=len(images), unit="img", desc="stages", disable=not progress or None)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        for result in detector.detect_stages([image.path for image in chunk], last_stage=last_stage):
            for stage in stages:
                per_stage[stage].append(result[stage].boxes)
        bar.update(len(chunk))
    bar.close()
    gt_boxes = [image.boxes for image in images]
    invalid = [image.invalid for image in images]
    return {stage: stage_recall(per_stage[stage], gt_boxes, iou_thresholds, min_size, invalid) for stage in stages}


def format_stage_table(results: dict[str, StageRecall]) -> str:
    """The recall table printed by ``mtcnn eval stages``."""
    first = next(iter(results.values()))
    ious = list(first.recalled)
    header = f"{'stage':<6} {'boxes/image':>11}" + "".join(f" {'recall@' + format(iou, 'g'):>11}" for iou in ious)
    lines = [f"{first.faces} faces in {first.images} images", header]
    for stage, result in results.items():
        recall = result.recall
        lines.append(
            f"{STAGE_NAMES[stage]:<6} {result.boxes_per_image:>11.1f}"
            + "".join(f" {recall[iou]:>11.4f}" for iou in ious)
        )
    return "\n".join(lines)
