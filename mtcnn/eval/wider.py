"""WIDER FACE average precision by the official protocol, vectorised.

The official evaluation (``eval_tools/wider_eval.m`` of the WIDER FACE release) scores a folder of
predictions, one text file per image, against the ``.mat`` ground truth:

1. every prediction file is read, its boxes sorted by falling score;
2. scores are min-max normalised over the whole set (all events, all images);
3. per image, predictions are matched in score order to the ground-truth face of highest overlap
   (``+1`` pixel convention of the MATLAB ``boxoverlap``); an overlap of at least 0.5 with a face
   *not* in the setting's ``gt_list`` makes the prediction neither true nor false (it is dropped
   from the proposals); with a listed face it recalls that face (once: a duplicate is a proposal
   that recalls nothing, i.e. a false positive). Images whose ground truth has no box are skipped
   altogether, their predictions included;
4. at 1,000 thresholds ``1 - t / 1000`` the proposals and recalled faces with normalised score
   ``>=`` the threshold are summed over the set; precision = recalled / proposals (undefined with
   no proposal), recall = recalled / listed faces;
5. AP is the area under the precision envelope (VOC style, MATLAB ``max`` ignoring undefined
   values).

Because predictions are sorted by score, "the predictions of an image up to the last one above the
threshold" — what the official code walks through per image and per threshold — is exactly "the
predictions of that image with a score above the threshold". So the 1,000-threshold loop over every
image becomes one count over all predictions of the set (:func:`_count_above`), and matching is a
few array operations per image. The whole official val set scores in about a second.

Two degenerate cases differ from the MATLAB code, which fails on them: a missing prediction file
counts as an image with no predictions (it is reported), and a set whose scores are all equal
normalises every score to 1 rather than dividing by zero.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtcnn.eval.wider_files import SETTINGS, PredictionSet, WiderGroundTruth

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
NUM_THRESHOLDS = 1000


# ------------------------------------------------------------------------------ the protocol


def official_overlaps(boxes_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """Overlap ``[P, G]`` of ``x y w h`` boxes as the official ``boxoverlap``: corners ``x + w``,
    sides and intersections counted ``+1`` (inclusive pixel convention), 0 when disjoint."""
    a_x1, a_y1 = boxes_xywh[:, 0:1], boxes_xywh[:, 1:2]
    a_x2, a_y2 = a_x1 + boxes_xywh[:, 2:3], a_y1 + boxes_xywh[:, 3:4]
    b_x1, b_y1 = gt_xywh[None, :, 0], gt_xywh[None, :, 1]
    b_x2, b_y2 = b_x1 + gt_xywh[None, :, 2], b_y1 + gt_xywh[None, :, 3]
    inter_w = np.minimum(a_x2, b_x2) - np.maximum(a_x1, b_x1) + 1
    inter_h = np.minimum(a_y2, b_y2) - np.maximum(a_y1, b_y1) + 1
    overlapping = (inter_w > 0) & (inter_h > 0)
    inter = np.where(overlapping, inter_w * inter_h, 0.0)
    area_a = (a_x2 - a_x1 + 1) * (a_y2 - a_y1 + 1)
    area_b = (b_x2 - b_x1 + 1) * (b_y2 - b_y1 + 1)
    union = np.where(overlapping, area_a + area_b - inter, 1.0)  # positive wherever they overlap
    return inter / union


def normalize_scores(predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores min-max normalised over all images (``{key: float64 [K]}``); all equal -> all 1."""
    scores = [rows[:, 4] for rows in predictions.values() if rows.shape[0]]
    if not scores:
        return {key: rows[:, 4].copy() for key, rows in predictions.items()}
    low = min(float(s.min()) for s in scores)
    high = max(float(s.max()) for s in scores)
    if high == low:
        return {key: np.ones(rows.shape[0]) for key, rows in predictions.items()}
    return {key: (rows[:, 4] - low) / (high - low) for key, rows in predictions.items()}


def match_image(
    pred_xywh: np.ndarray, gt_xywh: np.ndarray, listed: np.ndarray, iou_threshold: float = IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """The official per-image matching, for predictions ``[P, 4]`` sorted by falling score.

    Each prediction goes to the ground-truth face of highest overlap (the first on ties). Returns
    ``proposal bool [P]`` (False when it overlaps an unlisted face by at least the threshold: it is
    ignored) and ``recalls bool [P]`` (True when it is the first prediction to reach a listed face).
    """
    overlaps = official_overlaps(pred_xywh, gt_xywh)
    best = overlaps.argmax(axis=1)
    hit = overlaps[np.arange(len(best)), best] >= iou_threshold
    on_listed = hit & listed[best]
    proposal = ~(hit & ~listed[best])
    recalls = np.zeros(len(best), dtype=bool)
    matched = np.flatnonzero(on_listed)
    _, first = np.unique(best[matched], return_index=True)
    recalls[matched[first]] = True
    return proposal, recalls


def score_thresholds(num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """The official thresholds ``1 - t / n`` for ``t = 1..n``, falling, ``float64 [n]``."""
    return 1.0 - np.arange(1, num_thresholds + 1) / num_thresholds


def _count_above(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of ``scores`` are ``>=`` each threshold, ``[T]``."""
    ordered = np.sort(scores)
    return ordered.size - np.searchsorted(ordered, thresholds, side="left")


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, as the official ``VOCap``: NaN precisions (no proposals)
    are skipped by the envelope as MATLAB's ``max`` skips them."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


@dataclass(frozen=True)
class PRCurve:
    """One setting's curve at the official thresholds (falling): ``proposals``, ``recalled`` (int
    ``[T]``), ``precision`` (NaN where no proposal) and ``recall`` (float ``[T]``)."""

    thresholds: np.ndarray
    proposals: np.ndarray
    recalled: np.ndarray
    num_faces: int

    @property
    def precision(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.recalled / self.proposals

    @property
    def recall(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.recalled / self.num_faces

    @property
    def ap(self) -> float:
        if self.num_faces == 0:
            return float("nan")
        return voc_ap(self.recall, self.precision)


@dataclass(frozen=True)
class WiderResult:
    """AP per setting with its curve, and what was scored."""

    curves: dict[str, PRCurve]
    num_images: int
    num_predictions: int
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ap(self) -> dict[str, float]:
        return {setting: curve.ap for setting, curve in self.curves.items()}

    def to_dict(self, include_curves: bool = True) -> dict[str, Any]:
        """A JSON-able summary (NaN as None)."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 6)

        document: dict[str, Any] = {
            "ap": {setting: clean(ap) for setting, ap in self.ap.items()},
            "faces": {setting: curve.num_faces for setting, curve in self.curves.items()},
            "images": self.num_images,
            "predictions": self.num_predictions,
            "images_without_prediction_file": len(self.missing),
            "unreadable_images": len(self.unreadable),
        }
        if include_curves:
            document["pr_curves"] = {
                setting: {
                    "thresholds": [round(float(t), 6) for t in curve.thresholds],
                    "precision": [clean(float(p)) for p in curve.precision],
                    "recall": [clean(float(r)) for r in curve.recall],
                }
                for setting, curve in self.curves.items()
            }
        return document


def evaluate_wider(
    ground_truth: WiderGroundTruth,
    predictions: Mapping[str, np.ndarray] | PredictionSet,
    iou_threshold: float = IOU_THRESHOLD,
    num_thresholds: int = NUM_THRESHOLDS,
) -> WiderResult:
    """Easy, medium and hard AP of ``predictions`` (``{event/name: float64 [K, 5]}`` ``x y w h
    score`` sorted by falling score, as :func:`parse_predictions` gives) by the official protocol.

    Images absent from ``predictions`` have no detections. See the module docstring for the rules.
    """
    if isinstance(predictions, PredictionSet):
        rows, missing, unreadable = predictions.rows, list(predictions.missing), list(predictions.unreadable)
    else:
        rows, missing, unreadable = predictions, [], []
    known = {image.key for image in ground_truth.images}
    rows = {key: value for key, value in rows.items() if key in known}
    normalized = normalize_scores(rows)
    proposal_scores: dict[str, list[np.ndarray]] = {setting: [] for setting in SETTINGS}
    recall_scores: dict[str, list[np.ndarray]] = {setting: [] for setting in SETTINGS}
    for image in ground_truth.images:
        image_rows = rows.get(image.key)
        if image_rows is None or image_rows.shape[0] == 0 or image.boxes.shape[0] == 0:
            continue  # the official code skips images without predictions or without faces
        scores = normalized[image.key]
        for setting in SETTINGS:
            proposal, recalls = match_image(image_rows[:, :4], image.boxes, image.listed[setting], iou_threshold)
            proposal_scores[setting].append(scores[proposal])
            recall_scores[setting].append(scores[recalls])
    thresholds = score_thresholds(num_thresholds)
    curves = {}
    for setting in SETTINGS:
        proposed = np.concatenate(proposal_scores[setting]) if proposal_scores[setting] else np.zeros(0)
        recalled = np.concatenate(recall_scores[setting]) if recall_scores[setting] else np.zeros(0)
        curves[setting] = PRCurve(
            thresholds,
            _count_above(proposed, thresholds),
            _count_above(recalled, thresholds),
            ground_truth.num_listed(setting),
        )
    return WiderResult(
        curves, len(ground_truth.images), int(sum(r.shape[0] for r in rows.values())), missing, unreadable
    )
