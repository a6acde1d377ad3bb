"""Landmark error of the cascade on a 5-point landmark set.

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

log = logging.getLogger(__name__)

POINT_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")


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
            "faces": self.faces,
            "located": int(self.errors.shape[0]),
            "missed": self.missed,
            "nme": round(self.nme, 6),
            "per_point": {name: round(float(v), 6) for name, v in zip(POINT_NAMES, self.per_point)},
            f"failure_rate_at_{self.failure_threshold:g}": round(self.failure_rate, 6),
        }

    def format(self) -> str:
        """The summary printed by ``mtcnn eval landmarks``."""
        lines = [
            f"faces: {self.faces}, located: {self.errors.shape[0]}, not detected: {self.missed}"
            f" ({self.missed / max(self.faces, 1):.1%})",
            f"NME (inter-ocular): {self.nme:.4f}",
            f"failure rate (mean error > {self.failure_threshold:g}): {self.failure_rate:.2%}",
        ]
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
        chunk = paths[start : start + batch]
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
    truth_points = (
        np.stack([np.asarray(face.points, dtype=np.float64) for face in faces]) if faces else np.zeros((0, 5, 2))
    )
    errors = landmark_errors(predicted[located], truth_points[located]) if located.any() else np.zeros((0, 5))
    missed_paths = [str(faces[i].path) for i in np.flatnonzero(~located)]
    return LandmarkResult(errors, int((~located).sum()), failure_threshold, missed_paths)
