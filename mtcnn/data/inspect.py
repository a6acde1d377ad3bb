"""A picture of a sample store: random crops of each label with their targets drawn back on.

Box targets are decoded into the crop (``true box = crop + offsets x side``) and drawn in green,
landmark targets as coloured points (left eye red, right eye blue, nose yellow, left mouth corner
magenta, right mouth corner cyan), so a label or target bug is visible at a glance: a mirrored
sample whose eyes were not swapped shows its red point on the right eye.
"""

from __future__ import annotations

import cv2
import numpy as np

from mtcnn.data.store import SampleStore
from mtcnn.ops.draw import draw_faces, tile_images
from mtcnn.spec import LABEL_LANDMARK, LABEL_NAMES, LABEL_NEGATIVE

TILE = 96


def _caption_tile(lines: list[str]) -> np.ndarray:
    tile = np.full((TILE, TILE, 3), 255, np.uint8)
    for row, text in enumerate(lines):
        cv2.putText(tile, text, (4, 20 + 18 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def sample_tile(image: np.ndarray, label: int, box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """One ``uint8 [TILE, TILE, 3]`` tile: the crop ``[S, S, 3]`` upscaled, with its box target
    ``[4]`` (unless negative) and landmark target ``[10]`` (if landmark) drawn."""
    tile = cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_NEAREST)
    if label == LABEL_NEGATIVE:
        return tile
    boxes = (np.array([0.0, 0.0, 1.0, 1.0]) + box)[None] * TILE
    points = landmarks.reshape(1, 5, 2) * TILE if label == LABEL_LANDMARK else None
    return draw_faces(tile, boxes, points)


def inspect_grid(store: SampleStore, per_label: int = 12, seed: int = 0) -> np.ndarray:
    """A grid ``uint8 [H, W, 3]`` RGB: one row per label, a caption (name, count) and up to
    ``per_label`` random samples of it."""
    rng = np.random.default_rng(seed)
    tiles: list[np.ndarray] = []
    counts = store.counts()
    for label, name in LABEL_NAMES.items():
        members = np.flatnonzero(np.asarray(store.labels) == label)
        chosen = np.sort(rng.choice(members, min(per_label, len(members)), replace=False))
        tiles.append(_caption_tile([name, f"{counts[name]:,}"]))
        for index in chosen:
            tiles.append(
                sample_tile(
                    np.asarray(store.images[index]),
                    label,
                    np.asarray(store.boxes[index]),
                    np.asarray(store.landmarks[index]),
                )
            )
        tiles.extend(np.full((TILE, TILE, 3), 255, np.uint8) for _ in range(per_label - len(chosen)))
    return tile_images(tiles, columns=per_label + 1)
