"""Drawing boxes and landmarks onto images, for `detect --save-images`, sample grids and TensorBoard."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mtcnn.atomic import atomic_path
from mtcnn.errors import OutputError

#: RGB colours of the five landmark points: left eye, right eye, nose, left and right mouth corner.
POINT_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 220, 0), (255, 64, 255), (0, 230, 230))
BOX_COLOUR = (0, 255, 0)


def draw_faces(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    colour: tuple[int, int, int] = BOX_COLOUR,
) -> np.ndarray:
    """A copy of ``image`` (``uint8 [H, W, 3]`` RGB) with ``boxes [K, 4]`` x1 y1 x2 y2, optional
    ``landmarks [K, 5, 2]`` (NaN points are skipped) and ``scores [K]`` drawn on it.

    Line widths scale with the image so the marks stay visible on large photos and small crops.
    """
    canvas = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    radius = max(1, thickness + 1)
    labels_drawn: list[tuple[int, int, int, int]] = []
    for k, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        if scores is not None:
            _draw_label(canvas, f"{float(scores[k]):.2f}", (x1, y1, x2, y2), thickness, colour, labels_drawn)
        if landmarks is not None:
            for point, point_colour in zip(np.asarray(landmarks[k], dtype=np.float64), POINT_COLOURS):
                if np.all(np.isfinite(point)):
                    cv2.circle(canvas, (int(round(point[0])), int(round(point[1]))), radius, point_colour, -1)
    return canvas


def _draw_label(
    canvas: np.ndarray,
    text: str,
    box: tuple[int, int, int, int],
    thickness: int,
    colour: tuple[int, int, int],
    drawn: list[tuple[int, int, int, int]],
) -> None:
    """Write ``text`` above ``box``, else below it, where it covers no label in ``drawn`` (text
    rectangles x1 y1 x2 y2, appended to); left out where both places are taken. Faces come by
    falling score, so on a crowded picture the surest faces keep their labels."""
    scale, weight = 0.35 * thickness, max(1, thickness // 2)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
    x1, y1, _, y2 = box
    for bottom in (max(height, y1 - 3), y2 + height + 3):
        spot = (x1, bottom - height, x1 + width, bottom + baseline)
        if all(spot[2] <= a or spot[0] >= c or spot[3] <= b or spot[1] >= d for a, b, c, d in drawn):
            cv2.putText(canvas, text, (x1, bottom), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, weight, cv2.LINE_AA)
            drawn.append(spot)
            return


def tile_images(tiles: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Arrange equally sized ``uint8 [h, w, 3]`` tiles in a grid with ``columns`` per row."""
    if not tiles:
        raise ValueError("no tiles to arrange")
    height, width = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, columns)
        top, left = gap + row * (height + gap), gap + col * (width + gap)
        grid[top : top + height, left : left + width] = tile
    return grid


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB ``uint8`` image with OpenCV (format from the extension), atomically.

    Raises :class:`~mtcnn.atomic.OutputError` naming ``path`` for an extension OpenCV cannot
    write and for a write the system refuses (a full disk).
    """
    path = Path(path)
    # Encoded in memory and written by Python, not cv2.imwrite: a refused write then raises OSError
    # with its reason (imwrite only returns False), which atomic_path reports in one line.
    try:
        encoded, data = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error:
        encoded = False
    if not encoded:
        raise OutputError(f"{path}: cannot write an image of type {path.suffix or '(no extension)'}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
