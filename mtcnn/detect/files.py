"""Detecting faces in many image files: read ahead in threads, batch, report per file.

Used by ``mtcnn detect``; a file that cannot be read is reported and skipped, the rest go on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtcnn.detect.cascade import MTCNN, Faces
from mtcnn.detect.inputs import read_image
from mtcnn.errors import ImageReadError, MemoryLimitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    """The faces found in one file, or the reason it could not be read (``faces`` is then None)."""

    path: Path
    width: int = 0
    height: int = 0
    faces: Faces | None = None
    error: str | None = None
    image: np.ndarray | None = None  # the decoded RGB image, when asked for


def _read(path: Path) -> np.ndarray | ImageReadError:
    try:
        return read_image(path)
    except ImageReadError as exc:
        return exc


def detect_files(
    detector: MTCNN, paths: Iterable[Path], read_ahead: int = 2, keep_images: bool = False
) -> Iterator[ImageResult]:
    """Yield an :class:`ImageResult` per path, in order (with the decoded image if ``keep_images``).

    Images are decoded by a small thread pool (OpenCV releases the GIL) while the previous batch
    runs through the cascade; ``detector.batch_size`` images go through together.
    """
    paths = list(paths)
    batch_size = detector.batch_size
    with ThreadPoolExecutor(max_workers=max(1, read_ahead)) as pool:
        pending = [pool.submit(_read, path) for path in paths[: batch_size * 2]]
        submitted = len(pending)
        for start in range(0, len(paths), batch_size):
            batch_paths = paths[start : start + batch_size]
            loaded = [future.result() for future in pending[: len(batch_paths)]]
            pending = pending[len(batch_paths) :]
            refill = paths[submitted : submitted + batch_size]
            pending.extend(pool.submit(_read, path) for path in refill)
            submitted += len(refill)
            readable = [
                (path, image) for path, image in zip(batch_paths, loaded) if not isinstance(image, ImageReadError)
            ]
            found = iter(_detect_batch(detector, readable))
            for path, image in zip(batch_paths, loaded):
                if isinstance(image, ImageReadError):
                    yield ImageResult(path, error=str(image))
                    continue
                faces = next(found)
                if isinstance(faces, str):
                    yield ImageResult(path, error=faces)
                else:
                    yield ImageResult(path, image.shape[1], image.shape[0], faces, image=image if keep_images else None)


def _detect_batch(detector: MTCNN, readable: list[tuple[Path, np.ndarray]]) -> list[Faces | str]:
    """Faces of each image, or the one-line error of an image too large for the free memory. A
    batch too large together goes again one image at a time, so one huge photo fails alone."""
    if not readable:
        return []
    try:
        return detector.detect([image for _, image in readable])
    except MemoryLimitError:
        if len(readable) > 1:
            log.warning("a batch of %d images is too large for the free memory: one at a time", len(readable))
    outcomes: list[Faces | str] = []
    for path, image in readable:
        try:
            outcomes.append(detector.detect(image))
        except MemoryLimitError as exc:
            outcomes.append(f"{path}: {exc.detail}")
    return outcomes


def faces_to_json(faces: Faces) -> list[dict[str, Any]]:
    """Faces as the JSON records of ``mtcnn detect``: box, score, five ``[x, y]`` landmarks."""
    return [
        {
            "box": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in points],
        }
        for box, score, points in zip(faces.boxes, faces.scores, faces.landmarks)
    ]


def results_to_json(results: list[ImageResult]) -> dict[str, Any]:
    """The ``mtcnn detect`` output document: ``{"images": [...], "errors": [...]}``."""
    return {
        "images": [
            {"path": str(r.path), "width": r.width, "height": r.height, "faces": faces_to_json(r.faces)}
            for r in results
            if r.faces is not None
        ],
        "errors": [{"path": str(r.path), "error": r.error} for r in results if r.faces is None],
    }


def results_text(document: dict[str, Any]) -> str:
    """The ``mtcnn detect`` document as compact JSON text: a line per image and one per face.

    ``json.dumps(indent=...)`` would put every coordinate on a line of its own, ~25 lines a face.
    """
    images = []
    for image in document["images"]:
        head = json.dumps({key: value for key, value in image.items() if key != "faces"})[:-1]
        faces = ",\n".join(f"   {json.dumps(face)}" for face in image["faces"])
        images.append(f'  {head}, "faces": [' + (f"\n{faces}" if faces else "") + "]}")
    errors = [f"  {json.dumps(error)}" for error in document["errors"]]
    return (
        '{"images": ['
        + ("\n" + ",\n".join(images) if images else "")
        + '],\n "errors": ['
        + ("\n" + ",\n".join(errors) if errors else "")
        + "]}\n"
    )


def output_image_path(name: Path, out_dir: Path) -> Path:
    """Where ``--save-images`` puts the drawing of the image named ``name`` (its path below the
    folder argument it came from): mirrored under ``out_dir``, as JPEG unless it was PNG."""
    suffix = ".png" if name.suffix.lower() == ".png" else ".jpg"
    return out_dir / name.with_suffix(suffix)
