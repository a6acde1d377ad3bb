"""Training samples: IoU-labelled crops around annotated faces, and augmented landmark crops.

Every crop is cut with :func:`mtcnn.ops.boxes.crop_and_resize` (exact area resampling, zero outside
the image), the op the detector uses, so that training and detection see identically resampled
pixels. Windows cut here lie on the pixel grid (integer corners), so the window a target is
computed for is exactly the window whose pixels are stored.

Labels (``mtcnn.data.store.LABEL_*``) come from the best IoU of a window with *every* annotated face:
negative below ``negative_iou``, part from ``part_iou``, positive from ``positive_iou``; crops in
between are not used. A face that is marked invalid or smaller than ``min_face_size`` gives no
positives or parts (its box is unreliable or too small to learn from) but still counts as a face,
so no negative overlaps it.

Each function takes its own ``numpy.random.Generator``; preparation derives one per image from
the seed and the image's index, so the samples do not depend on how work is split.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mtcnn.config import LandmarkCropConfig, PrepConfig
from mtcnn.data.readers import LandmarkFace
from mtcnn.model.nets import mirror_outputs
from mtcnn.ops.boxes import iou_matrix
from mtcnn.ops.resample import crop_and_resize
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE

#: Label of a window that falls between the negative and part thresholds: not used.
UNUSED = -100


@dataclass
class Samples:
    """Crops and their targets, plus where each came from.

    ``images uint8 [n, S, S, 3]``, ``labels int8 [n]``, ``boxes float32 [n, 4]`` (offsets of the
    true box from the window per unit of window side), ``landmarks float32 [n, 10]`` (``x, y`` in
    [0, 1] of the crop, zeros unless landmark), ``windows float32 [n, 4]`` (the window in the
    source image's pixels, before any mirroring), ``mirrored bool [n]``, ``rotation float32 [n]``
    (degrees, counter-clockwise as seen, about the window's centre).
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    windows: np.ndarray
    mirrored: np.ndarray
    rotation: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def empty(size: int) -> Samples:
        return Samples(
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros(0, np.int8),
            np.zeros((0, 4), np.float32),
            np.zeros((0, 10), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros(0, bool),
            np.zeros(0, np.float32),
        )

    @staticmethod
    def concat(parts: list[Samples], size: int) -> Samples:
        parts = [part for part in parts if len(part)]
        if not parts:
            return Samples.empty(size)
        return Samples(
            *(
                np.concatenate([getattr(part, name) for part in parts])
                for name in ("images", "labels", "boxes", "landmarks", "windows", "mirrored", "rotation")
            )
        )


def usable_faces(boxes: np.ndarray, invalid: np.ndarray, min_face_size: float) -> np.ndarray:
    """``bool [K]``: faces that may give positives and parts (valid, longer side >= the minimum)."""
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return ~invalid & (longer >= min_face_size)


def label_windows(
    windows: np.ndarray, faces: np.ndarray, usable: np.ndarray, config: PrepConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label ``[M, 4]`` windows by their best IoU with all ``[K, 4]`` faces.

    Returns ``labels int8 [M]`` (``UNUSED`` for windows between the negative and part thresholds,
    and for positives and parts whose best face is not usable), the best face's index ``[M]``
    (-1 without faces) and the best IoU ``float64 [M]``.
    """
    iou = iou_matrix(windows, faces)
    if iou.shape[1] == 0:
        return np.full(len(windows), LABEL_NEGATIVE, np.int8), np.full(len(windows), -1), np.zeros(len(windows))
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(len(windows)), best]
    labels = np.full(len(windows), UNUSED, np.int8)
    labels[best_iou < config.negative_iou] = LABEL_NEGATIVE
    labels[(best_iou >= config.part_iou) & usable[best]] = LABEL_PART
    labels[(best_iou >= config.positive_iou) & usable[best]] = LABEL_POSITIVE
    return labels, best, best_iou


def box_targets(windows: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``float32 [M, 4]``: offsets of each face ``[M, 4]`` from its window ``[M, 4]``, per unit of
    window width and height (the inverse of :func:`mtcnn.ops.boxes.apply_box_offsets`)."""
    windows = np.asarray(windows, np.float64)
    width = (windows[:, 2] - windows[:, 0])[:, None]
    height = (windows[:, 3] - windows[:, 1])[:, None]
    scale = np.concatenate([width, height, width, height], axis=1)
    return ((np.asarray(faces, np.float64) - windows) / scale).astype(np.float32)


def integral_table(image: np.ndarray) -> torch.Tensor:
    """Summed-area table ``[H + 1, W + 1, 3]`` of a ``uint8 [H, W, 3]`` image, as
    :func:`mtcnn.ops.boxes.integral_image` computes it, but straight from the uint8 pixels.

    The sums are integers, so int32 (float64 for images too large for it) holds them exactly and
    :func:`mtcnn.ops.boxes.crop_and_resize` gives bit-identical crops from either table.
    """
    height, width = image.shape[:2]
    depth = cv2.CV_32S if height * width * 255 < 2**31 else cv2.CV_64F
    return torch.from_numpy(cv2.integral(np.ascontiguousarray(image), sdepth=depth))


def cut_crops(image: np.ndarray, windows: np.ndarray, size: int, integral: torch.Tensor | None = None) -> np.ndarray:
    """``uint8 [M, size, size, 3]`` crops of ``[M, 4]`` windows (on the pixel grid or not: they are
    floored as the detector floors them) from a ``uint8 [H, W, 3]`` image, area-resampled by
    :func:`mtcnn.ops.boxes.crop_and_resize` and rounded to the nearest integer."""
    height, width = image.shape[:2]
    if integral is None:
        integral = integral_table(image)
    # crop_and_resize reads only the shape of its image argument when given the table: a
    # zero-stride view stands in for the float copy of the image it would otherwise need.
    shape_only = torch.zeros(1).expand(3, height, width)
    crops = crop_and_resize(
        shape_only, torch.from_numpy(np.asarray(windows, np.float32)).reshape(-1, 4), size, integral=integral
    )
    return crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _inside(windows: np.ndarray, height: int, width: int) -> np.ndarray:
    return (windows[:, 0] >= 0) & (windows[:, 1] >= 0) & (windows[:, 2] <= width) & (windows[:, 3] <= height)


def _squares(x: np.ndarray, y: np.ndarray, side: np.ndarray) -> np.ndarray:
    return np.stack([x, y, x + side, y + side], axis=1).astype(np.float64)


def jittered_squares(
    rng: np.random.Generator,
    faces: np.ndarray,
    tries: int,
    centre_jitter: float,
    size_range: tuple[float, float],
    min_side: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``tries`` squares per face ``[K, 4]`` on the pixel grid: side from ``size_range[0]`` x the
    shorter face side to ``size_range[1]`` x the longer one (at least ``min_side``), centre moved
    by up to ``centre_jitter`` x the face width and height. Returns windows ``[K * tries, 4]`` and
    the face each came from ``[K * tries]``."""
    faces = np.asarray(faces, np.float64)
    owner = np.repeat(np.arange(len(faces)), tries)
    box = faces[owner]
    width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    low = np.maximum(np.floor(size_range[0] * np.minimum(width, height)), min_side)
    high = np.maximum(np.ceil(size_range[1] * np.maximum(width, height)), low)
    side = np.floor(low + rng.random(len(owner)) * (high - low + 1))
    shift_x = rng.uniform(-centre_jitter, centre_jitter, len(owner)) * width
    shift_y = rng.uniform(-centre_jitter, centre_jitter, len(owner)) * height
    x = np.floor(box[:, 0] + width / 2 + shift_x - side / 2)
    y = np.floor(box[:, 1] + height / 2 + shift_y - side / 2)
    return _squares(x, y, side), owner


def random_negative_windows(
    rng: np.random.Generator, height: int, width: int, faces: np.ndarray, config: PrepConfig, size: int
) -> np.ndarray:
    """Up to ``random.negatives_per_image`` squares anywhere in the image with IoU below
    ``negative_iou`` with every face, side from ``size`` to ``negative_max_fraction`` of the
    shorter image side; drawn in rounds of twice the number still wanted."""
    wanted = config.random.negatives_per_image
    largest = int(min(height, width) * config.random.negative_max_fraction)
    found: list[np.ndarray] = []
    count = 0
    if largest < size:
        return np.zeros((0, 4))
    for _ in range(config.random.negative_rounds):
        if count >= wanted:
            break
        draws = 2 * (wanted - count)
        if config.random.negative_sizes == "log":
            side = np.floor(np.exp(rng.uniform(np.log(size), np.log(largest + 1), draws)))
        else:
            side = rng.integers(size, largest + 1, draws).astype(np.float64)
        x = np.floor(rng.random(draws) * (width - side + 1))
        y = np.floor(rng.random(draws) * (height - side + 1))
        windows = _squares(x, y, side)
        iou = iou_matrix(windows, faces)
        keep = windows[iou.max(axis=1, initial=0.0) < config.negative_iou][: wanted - count]
        found.append(keep)
        count += len(keep)
    return np.concatenate(found) if found else np.zeros((0, 4))


def near_face_negative_windows(
    rng: np.random.Generator,
    height: int,
    width: int,
    faces: np.ndarray,
    around: np.ndarray,
    config: PrepConfig,
    size: int,
) -> np.ndarray:
    """``random.negatives_near_face`` tries per face of ``around`` ``[K', 4]``: squares whose top
    left corner lies within a side's length before the face and before its far edge, kept when
    inside the image and below ``negative_iou`` with every face: hard negatives that cut faces."""
    tries = config.random.negatives_near_face
    largest = int(min(height, width) * config.random.negative_max_fraction)
    if tries == 0 or len(around) == 0 or largest < size:
        return np.zeros((0, 4))
    box = np.repeat(np.asarray(around, np.float64), tries, axis=0)
    side = rng.integers(size, largest + 1, len(box)).astype(np.float64)
    face_w, face_h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    # Shift from -side (the square just touches the face from the left/top) to the face's size.
    low_x, low_y = np.maximum(-side, -box[:, 0]), np.maximum(-side, -box[:, 1])
    x = np.floor(box[:, 0] + low_x + rng.random(len(box)) * np.maximum(face_w - low_x, 0))
    y = np.floor(box[:, 1] + low_y + rng.random(len(box)) * np.maximum(face_h - low_y, 0))
    windows = _squares(x, y, side)
    windows = windows[_inside(windows, height, width)]
    return windows[iou_matrix(windows, faces).max(axis=1, initial=0.0) < config.negative_iou]


def jittered_face_windows(
    rng: np.random.Generator,
    faces: np.ndarray,
    usable: np.ndarray,
    config: PrepConfig,
    tries: int,
    size: int,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tries`` jittered squares around each usable face (``random.centre_jitter``,
    ``random.size_range``), kept when labelled positive or part by IoU with all faces ``[K, 4]``;
    only those inside the image when ``image_size`` ``(H, W)`` is given.

    Returns windows ``[M, 4]``, labels ``int8 [M]`` and box targets ``float32 [M, 4]``.
    """
    jittered, _ = jittered_squares(
        rng, faces[usable], tries, config.random.centre_jitter, config.random.size_range, size
    )
    if image_size is not None:
        jittered = jittered[_inside(jittered, *image_size)]
    labels, best, _ = label_windows(jittered, faces, usable, config)
    keep = (labels == LABEL_POSITIVE) | (labels == LABEL_PART)
    return jittered[keep], labels[keep], box_targets(jittered[keep], faces[best[keep]])


def face_crops(
    image: np.ndarray, faces: np.ndarray, invalid: np.ndarray, rng: np.random.Generator, config: PrepConfig, size: int
) -> Samples:
    """P-Net samples from one WIDER image ``uint8 [H, W, 3]`` with faces ``[K, 4]``: random and
    near-face negatives, and jittered squares around usable faces labelled positive or part.
    Every window lies inside the image, as P-Net's windows do at detection."""
    height, width = image.shape[:2]
    faces = np.asarray(faces, np.float64).reshape(-1, 4)
    usable = usable_faces(faces, np.asarray(invalid, bool), config.min_face_size)
    negatives = [
        random_negative_windows(rng, height, width, faces, config, size),
        near_face_negative_windows(rng, height, width, faces, faces[usable], config, size),
    ]
    face_windows, face_labels, face_boxes = jittered_face_windows(
        rng, faces, usable, config, config.random.crops_per_face, size, (height, width)
    )
    negative_windows = np.concatenate(negatives)
    windows = np.concatenate([negative_windows, face_windows])
    labels = np.concatenate([np.full(len(negative_windows), LABEL_NEGATIVE, np.int8), face_labels])
    boxes = np.concatenate([np.zeros((len(negative_windows), 4), np.float32), face_boxes])
    return Samples(
        images=cut_crops(image, windows, size),
        labels=labels,
        boxes=boxes,
        landmarks=np.zeros((len(windows), 10), np.float32),
        windows=windows.astype(np.float32),
        mirrored=np.zeros(len(windows), bool),
        rotation=np.zeros(len(windows), np.float32),
    )


def mirror_targets(boxes: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``[n, 4]``, ``[n, 10]`` of horizontally flipped crops, by :func:`mtcnn.model.nets.mirror_outputs`."""
    mirrored_boxes, mirrored_points = mirror_outputs(
        torch.from_numpy(np.asarray(boxes, np.float32)), torch.from_numpy(np.asarray(landmarks, np.float32))
    )
    return mirrored_boxes.numpy(), mirrored_points.numpy()


def rotation_matrix(centre: np.ndarray, degrees: float) -> np.ndarray:
    """``float64 [2, 3]`` affine map in continuous pixel coordinates rotating by ``degrees``
    (counter-clockwise as seen) about ``centre`` ``(x, y)``."""
    # OpenCV puts pixel centres on integers; continuous coordinates put them at +0.5, so rotating
    # about c in ours is rotating about c - 0.5 in OpenCV's, and the translation is the same.
    return cv2.getRotationMatrix2D((float(centre[0]) - 0.5, float(centre[1]) - 0.5), float(degrees), 1.0)


def landmark_crops(
    image: np.ndarray, face: LandmarkFace, rng: np.random.Generator, config: LandmarkCropConfig, size: int
) -> Samples:
    """Landmark samples of one face: ``crops_per_face`` jittered squares with IoU above
    ``min_iou`` (inside the image unless ``inside_image`` is false: outside pixels are zeros),
    each mirrored and rotated with the configured chances.

    A rotated sample is cut from the image rotated about the window's centre (points rotated
    alike; the box target stays the annotated box's, which the landmark loss does not use).
    Samples whose points leave the crop are dropped.
    """
    height, width = image.shape[:2]
    box = face.box.astype(np.float64)[None]
    windows, _ = jittered_squares(rng, box, config.crops_per_face, config.centre_jitter, config.size_range, size)
    mirror = rng.random(len(windows)) < config.mirror_probability
    rotate = rng.random(len(windows)) < config.rotate_probability
    angles = np.where(rotate, rng.uniform(-config.max_rotation, config.max_rotation, len(windows)), 0.0)
    keep = iou_matrix(windows, box)[:, 0] > config.min_iou
    if config.inside_image:
        keep &= _inside(windows, height, width)
    windows, mirror, angles = windows[keep], mirror[keep], angles[keep]
    if len(windows) == 0:
        return Samples.empty(size)
    crops = np.empty((len(windows), size, size, 3), np.uint8)
    points = np.repeat(face.points.astype(np.float64)[None], len(windows), axis=0)
    upright = angles == 0.0
    crops[upright] = cut_crops(image, windows[upright], size)
    for index in np.flatnonzero(~upright):
        window = windows[index]
        matrix = rotation_matrix((window[:2] + window[2:]) / 2, angles[index])
        rotated = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        crops[index] = cut_crops(rotated, window[None], size)[0]
        points[index] = (points[index] - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5
    side = (windows[:, 2] - windows[:, 0])[:, None, None]
    landmarks = ((points - windows[:, None, :2]) / side).reshape(-1, 10).astype(np.float32)
    boxes = box_targets(windows, np.repeat(box, len(windows), axis=0))
    boxes[mirror], landmarks[mirror] = mirror_targets(boxes[mirror], landmarks[mirror])
    crops[mirror] = crops[mirror][:, :, ::-1]
    inside = ((landmarks >= 0) & (landmarks <= 1)).all(axis=1)
    return Samples(
        images=crops[inside],
        labels=np.full(int(inside.sum()), LABEL_LANDMARK, np.int8),
        boxes=boxes[inside],
        landmarks=landmarks[inside],
        windows=windows[inside].astype(np.float32),
        mirrored=mirror[inside],
        rotation=angles[inside].astype(np.float32),
    )
