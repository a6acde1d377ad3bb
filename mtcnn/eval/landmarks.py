"""Landmark error and per-stage recall of the cascade.

WIDER FACE average precision, the third measurement, has its own module: :mod:`mtcnn.eval.wider`.

- :func:`stage_recall`: the share of annotated faces that a stage's boxes still cover — the check
  that tells whether P-Net (or R-Net) proposes enough for the next stage to be trained on its
  output. Used by ``mtcnn eval stages`` and, with the same numbers, by data preparation.
- :func:`landmark_errors` and :func:`evaluate_landmarks`: the normalised mean error (by the
  inter-ocular distance) of the five points, per point and overall, and the failure rate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtcnn.ops.boxes import iou_matrix
from mtcnn.model.nets import STAGES
from mtcnn.model.weights import STAGE_NAMES

log = logging.getLogger(__name__)

POINT_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")
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
        return {"faces": self.faces, "boxes_per_image": round(self.boxes_per_image, 3),
                "recall": {f"{iou:g}": round(value, 6) for iou, value in self.recall.items()},
                "recalled": {f"{iou:g}": count for iou, count in self.recalled.items()}}


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
        chunk = images[start:start + batch]
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
        lines.append(f"{STAGE_NAMES[stage]:<6} {result.boxes_per_image:>11.1f}"
                     + "".join(f" {recall[iou]:>11.4f}" for iou in ious))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ landmarks


def landmark_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-point error ``[N, 5]`` of ``predicted`` vs ``truth`` points (both ``[N, 5, 2]``, pixels),
    divided by each face's inter-ocular distance (between the true eye centres, points 0 and 1)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    distance = np.linalg.norm(predicted - truth, axis=2)
    inter_ocular = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=1)
    if np.any(inter_ocular <= 0):
        raise ValueError("a face has both eyes at the same point; its error cannot be normalised")
    return distance / inter_ocular[:, None]


@dataclass(frozen=True)
class LandmarkResult:
    """Normalised errors of the faces that were located (``errors [N, 5]``) and how many were not.

    ``failure_threshold``: a face whose mean error exceeds it counts as a failure.
    """

    errors: np.ndarray
    missed: int
    failure_threshold: float = 0.1
    missed_paths: list[str] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return int(self.errors.shape[0]) + self.missed

    @property
    def per_point(self) -> np.ndarray:
        """Mean normalised error of each point ``[5]``."""
        return self.errors.mean(axis=0) if self.errors.size else np.full(5, np.nan)

    @property
    def nme(self) -> float:
        """Mean over located faces and points."""
        return float(self.errors.mean()) if self.errors.size else float("nan")

    @property
    def failure_rate(self) -> float:
        """Share of located faces whose mean error exceeds ``failure_threshold``."""
        if not self.errors.size:
            return float("nan")
        return float((self.errors.mean(axis=1) > self.failure_threshold).mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": self.faces, "located": int(self.errors.shape[0]), "missed": self.missed,
            "nme": round(self.nme, 6),
            "per_point": {name: round(float(v), 6) for name, v in zip(POINT_NAMES, self.per_point)},
            f"failure_rate_at_{self.failure_threshold:g}": round(self.failure_rate, 6),
        }

    def format(self) -> str:
        """The summary printed by ``mtcnn eval landmarks``."""
        lines = [f"faces: {self.faces}, located: {self.errors.shape[0]}, not detected: {self.missed}"
                 f" ({self.missed / max(self.faces, 1):.1%})",
                 f"NME (inter-ocular): {self.nme:.4f}",
                 f"failure rate (mean error > {self.failure_threshold:g}): {self.failure_rate:.2%}"]
        lines += [f"  {name:<19} {value:.4f}" for name, value in zip(POINT_NAMES, self.per_point)]
        return "\n".join(lines)


def evaluate_landmarks(
    faces: Sequence[Any],
    detector: Any,
    use_boxes: bool = False,
    match_iou: float = 0.5,
    failure_threshold: float = 0.1,
    progress: bool = True,
) -> LandmarkResult:
    """Landmark error of ``detector`` on annotated faces (:class:`mtcnn.data.readers.LandmarkFace`:
    ``path``, ``box [4]`` x1 y1 x2 y2, ``points [5, 2]``).

    By default the full cascade runs on each image and the detection of highest IoU with the
    annotated box is scored; a face without a detection of IoU ``>= match_iou`` is missed (0.5, the
    usual detection criterion; the tight square boxes of CNN_FacePoint lists overlap a correct
    MTCNN box by 0.4 to 0.8). With ``use_boxes``, O-Net alone runs on the annotated box, as the
    cascade runs it (:meth:`mtcnn.detect.cascade.MTCNN.landmarks_in_boxes`), so every face is scored.
    """
    from tqdm import tqdm

    from mtcnn.detect.inputs import read_image

    by_path: dict[str, list[int]] = {}
    for index, face in enumerate(faces):
        by_path.setdefault(str(face.path), []).append(index)
    predicted = np.full((len(faces), 5, 2), np.nan)
    paths = list(by_path)
    batch = max(1, int(getattr(detector, "batch_size", 8)))
    bar = tqdm(total=len(paths), unit="img", desc="landmarks", disable=not progress or None)
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        images = [read_image(path) for path in chunk]
        if use_boxes:
            for path, image in zip(chunk, images):
                members = by_path[path]
                predicted[members] = detector.landmarks_in_boxes(image, np.stack([faces[i].box for i in members]))
        else:
            for path, found in zip(chunk, detector.detect(images)):
                members = by_path[path]
                if len(found) == 0:
                    continue
                truth = np.stack([faces[i].box for i in members])
                overlap = iou_matrix(truth, found.boxes)
                best = overlap.argmax(axis=1)
                for row, index in enumerate(members):
                    if overlap[row, best[row]] >= match_iou:
                        predicted[index] = found.landmarks[best[row]]
        bar.update(len(chunk))
    bar.close()
    located = ~np.isnan(predicted).any(axis=(1, 2))
    truth_points = np.stack([np.asarray(face.points, dtype=np.float64) for face in faces]) if faces \
        else np.zeros((0, 5, 2))
    errors = landmark_errors(predicted[located], truth_points[located]) if located.any() else np.zeros((0, 5))
    missed_paths = [str(faces[i].path) for i in np.flatnonzero(~located)]
    return LandmarkResult(errors, int((~located).sum()), failure_threshold, missed_paths)
