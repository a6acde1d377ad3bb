"""R-Net and O-Net samples mined with the earlier stages of the cascade.

The earlier nets run as a detector over the training images at the ``mining`` settings; each box
they pass on is squared exactly as the cascade squares it for the next stage, cut at that stage's
input size with the detector's own resampling, and labelled by its best IoU with the annotated
faces (:func:`mtcnn.data.samples.label_windows`). Negatives are capped per image by a random subset, as
crowded images would otherwise flood the set with them. The share of usable faces that some box
overlaps with IoU >= ``positive_iou`` is the earlier stages' recall: when it is low the earlier
net is too weak to mine from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtcnn.config import MiningConfig, PrepConfig
from mtcnn.data.readers import WiderImage
from mtcnn.data.samples import (
    UNUSED,
    Samples,
    box_targets,
    cut_crops,
    jittered_face_windows,
    label_windows,
    usable_faces,
)
from mtcnn.detect.cascade import MTCNN
from mtcnn.model.weights import load_net
from mtcnn.ops.boxes import iou_matrix, square_boxes
from mtcnn.spec import EARLIER_STAGES, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE

#: The stages whose boxes each mined set is made of.


@dataclass
class Recall:
    """Usable faces and how many of them some mined window overlaps with IoU >= positive_iou."""

    faces: int = 0
    found: int = 0

    @property
    def value(self) -> float:
        return self.found / self.faces if self.faces else float("nan")


def mining_detector(
    stage: str, weights: Mapping[str, str | Path], mining: MiningConfig, device: str | torch.device = "auto"
) -> MTCNN:
    """The cascade up to the stage before ``stage`` (``rnet`` or ``onet``), with ``weights``
    ``{stage: file}`` for each earlier stage and the mining thresholds."""
    nets = {earlier: load_net(weights[earlier], earlier) for earlier in EARLIER_STAGES[stage]}
    # The detector wants all three stages' settings; those of stages that do not run are inert.
    return MTCNN(
        nets=nets,
        min_face_size=mining.min_face_size,
        scale_factor=mining.scale_factor,
        thresholds=(*mining.thresholds, 0.7),
        nms_thresholds=(*mining.nms_thresholds, 0.7),
        device=device,
        batch_size=mining.batch_size,
    )


def mined_windows(detector: MTCNN, images: Sequence[np.ndarray], stage: str) -> list[np.ndarray]:
    """Square windows ``float32 [M, 4]`` the cascade would pass to ``stage``, per image."""
    previous = EARLIER_STAGES[stage][-1]
    results = detector.detect_stages(list(images), last_stage=previous)
    return [square_boxes(torch.from_numpy(result[previous].boxes)).numpy() for result in results]


def mine_image(
    image: np.ndarray,
    annotation: WiderImage,
    windows: np.ndarray,
    rng: np.random.Generator,
    prep: PrepConfig,
    mining: MiningConfig,
    size: int,
) -> tuple[Samples, Recall]:
    """Labelled ``size`` px samples from one image's mined ``windows [M, 4]``, and the recall of
    its usable faces. Windows may stick out of the image: the outside is black, as in detection."""
    faces = annotation.boxes.astype(np.float64)
    usable = usable_faces(faces, annotation.invalid, prep.min_face_size)
    windows = np.asarray(windows, np.float64).reshape(-1, 4)
    iou = iou_matrix(windows, faces[usable])
    recall = Recall(faces=int(usable.sum()), found=int((iou.max(axis=0, initial=0.0) >= prep.positive_iou).sum()))
    labels, best, _ = label_windows(windows, faces, usable, prep)
    negatives = np.flatnonzero(labels == LABEL_NEGATIVE)
    if len(negatives) > mining.max_negatives_per_image:
        dropped = np.setdiff1d(negatives, rng.choice(negatives, mining.max_negatives_per_image, replace=False))
        labels[dropped] = UNUSED
    keep = np.isin(labels, (LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_PART))
    windows, labels, best = windows[keep], labels[keep], best[keep]
    boxes = np.zeros((len(windows), 4), np.float32)
    faced = labels != LABEL_NEGATIVE
    boxes[faced] = box_targets(windows[faced], faces[best[faced]])
    if mining.face_crops_per_face:
        # The earlier nets' boxes hold few positives; jittered squares around the faces add more
        # (and part faces), cut the same way, so the next net sees enough faces to learn from.
        extra_windows, extra_labels, extra_boxes = jittered_face_windows(
            rng, faces, usable, prep, mining.face_crops_per_face, size
        )
        windows = np.concatenate([windows, extra_windows])
        labels = np.concatenate([labels, extra_labels])
        boxes = np.concatenate([boxes, extra_boxes])
    samples = Samples(
        images=cut_crops(image, windows, size),
        labels=labels,
        boxes=boxes,
        landmarks=np.zeros((len(windows), 10), np.float32),
        windows=windows.astype(np.float32),
        mirrored=np.zeros(len(windows), bool),
        rotation=np.zeros(len(windows), np.float32),
    )
    return samples, recall
