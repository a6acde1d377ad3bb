"""Readers for the annotation formats, each converting boxes to ``x1 y1 x2 y2`` once, here.

- WIDER FACE ``*_bbx_gt.txt``: an image name, a face count, then one line per face
  ``x y w h blur expression illumination invalid occlusion pose`` (an image with no face has
  count 0 and one line of zeros);
- the CNN_FacePoint list: ``path left right top bottom x1 y1 ... x5 y5`` -- box order left,
  right, top, bottom;
- CelebA: ``list_bbox_celeba.txt`` (``image_id x_1 y_1 width height``) with
  ``list_landmarks_celeba.txt`` (``image_id lefteye_x lefteye_y ... rightmouth_y``), each after a
  count line and a header line.

Structural breakage (a line that does not parse, a count that does not match the lines) raises
:class:`~mtcnn.errors.DataError` naming the file and line. A single bad annotation (a box of zero
or negative size, points outside the image) is logged as a warning with file and line, the face
is left out, and the message is appended to ``problems`` when the caller passes a list, so that
it can be counted in a manifest. Image files are not opened here: a missing or corrupt image is
found, reported and counted when preparation decodes it.

Landmark points are always ``[5, 2]`` ``(x, y)`` in this order: left eye, right eye, nose, left
mouth corner, right mouth corner, where left and right are as seen in the image (the left eye has
the smaller x in a frontal face).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtcnn.errors import DataError

log = logging.getLogger(__name__)

#: WIDER FACE attribute columns after ``x y w h``, in file order.
WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


@dataclass(frozen=True, eq=False)
class WiderImage:
    """One image of a WIDER FACE annotation file, with ``K`` faces (``K`` may be 0).

    ``boxes`` are ``float32 [K, 4]`` ``x1 y1 x2 y2`` (converted from the file's ``x y w h``);
    ``invalid`` is ``bool [K]``; ``blur``, ``expression``, ``illumination``, ``occlusion`` and
    ``pose`` are ``int64 [K]``. ``line`` is the 1-based line of the image's name in ``source``.
    """

    path: Path
    name: str
    boxes: np.ndarray
    invalid: np.ndarray
    blur: np.ndarray
    expression: np.ndarray
    illumination: np.ndarray
    occlusion: np.ndarray
    pose: np.ndarray
    source: Path
    line: int

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True, eq=False)
class LandmarkFace:
    """One face with five landmarks: ``box`` ``float32 [4]`` ``x1 y1 x2 y2`` and ``points``
    ``float32 [5, 2]`` ``(x, y)`` (left eye, right eye, nose, left and right mouth corner), in
    pixels of the image at ``path``; ``source`` and ``line`` say where it was read."""

    path: Path
    box: np.ndarray
    points: np.ndarray
    source: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, stripped text)`` of every non-blank line of a text file."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (opened apart so only its error is reworded)
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation file ({exc.strerror or exc})") from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                text = text.strip()
                if text:
                    yield number, text
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file") from None


def _numbers(fields: list[str], path: Path, line: int, what: str) -> list[float]:
    try:
        return [float(field) for field in fields]
    except ValueError:
        raise DataError(f"{path}:{line}: expected {what}, got {' '.join(fields)!r}") from None


def _report(message: str, problems: list[str] | None) -> None:
    log.warning("%s", message)
    if problems is not None:
        problems.append(message)


def _positive_size(x1: float, y1: float, x2: float, y2: float) -> bool:
    return x2 > x1 and y2 > y1


def _looks_numeric(text: str) -> bool:
    try:
        [float(field) for field in text.split()]
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------ WIDER FACE


def read_wider(
    annotation_file: str | Path, images_dir: str | Path, problems: list[str] | None = None
) -> list[WiderImage]:
    """Read a WIDER FACE ``*_bbx_gt.txt`` file; image paths are ``images_dir / name``.

    Face lines may also carry only ``x y w h`` (attributes then 0). Faces with a zero or negative
    width or height are left out with a warning naming the line.
    """
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    lines = _numbered_lines(annotation_file)
    images: list[WiderImage] = []
    pending = None  # a line read ahead while looking for the zero line after a count of 0
    while True:
        entry = pending if pending is not None else next(lines, None)
        pending = None
        if entry is None:
            break
        name_line, name = entry
        if _looks_numeric(name):
            raise DataError(
                f"{annotation_file}:{name_line}: expected an image file name, got {name!r} "
                "(does the face count above match the face lines?)"
            )
        count_entry = next(lines, None)
        if count_entry is None:
            raise DataError(f"{annotation_file}:{name_line}: file ends after image {name!r}, expected a face count")
        count_line, count_text = count_entry
        try:
            count = int(count_text)
        except ValueError:
            raise DataError(
                f"{annotation_file}:{count_line}: expected the face count of {name!r}, got {count_text!r}"
            ) from None
        if count < 0:
            raise DataError(f"{annotation_file}:{count_line}: negative face count {count}")
        rows: list[list[float]] = []
        if count == 0:
            # The official files follow a count of 0 with one line of zeros; tolerate its absence.
            pending = next(lines, None)
            if pending is not None and _looks_numeric(pending[1]):
                if any(float(field) != 0 for field in pending[1].split()):
                    raise DataError(
                        f"{annotation_file}:{pending[0]}: image {name!r} declares 0 faces but a face "
                        f"line follows: {pending[1]!r}"
                    )
                pending = None
        for _ in range(count):
            face_entry = next(lines, None)
            if face_entry is None:
                raise DataError(
                    f"{annotation_file}: file ends inside image {name!r} (line {name_line}), "
                    f"which declares {count} faces"
                )
            face_line, face_text = face_entry
            fields = face_text.split()
            if len(fields) not in (4, 4 + len(WIDER_ATTRIBUTES)):
                raise DataError(
                    f"{annotation_file}:{face_line}: expected a face line 'x y w h blur expression "
                    f"illumination invalid occlusion pose' of image {name!r} (declared {count} faces), "
                    f"got {face_text!r}"
                )
            values = _numbers(fields, annotation_file, face_line, "a face line of numbers")
            x, y, w, h = values[:4]
            if w <= 0 or h <= 0:
                _report(
                    f"{annotation_file}:{face_line}: face of {name!r} has zero or negative size "
                    f"(w {w:g}, h {h:g}); left out",
                    problems,
                )
                continue
            rows.append([x, y, x + w, y + h] + (values[4:] or [0.0] * len(WIDER_ATTRIBUTES)))
        table = np.asarray(rows, dtype=np.float64).reshape(-1, 4 + len(WIDER_ATTRIBUTES))
        attributes = {key: table[:, 4 + i].astype(np.int64) for i, key in enumerate(WIDER_ATTRIBUTES)}
        invalid = attributes.pop("invalid").astype(bool)
        images.append(
            WiderImage(
                path=images_dir / name,
                name=name,
                boxes=table[:, :4].astype(np.float32),
                invalid=invalid,
                source=annotation_file,
                line=name_line,
                **attributes,
            )
        )
    return images


# ------------------------------------------------------------------------------ landmark lists


def _landmark_face(
    path: Path, box: list[float], points: list[float], source: Path, line: int, problems: list[str] | None
) -> LandmarkFace | None:
    """A checked face, or None (reported) when its box is empty or a point is negative."""
    if not _positive_size(*box):
        _report(
            f"{source}:{line}: box {box[0]:g} {box[1]:g} {box[2]:g} {box[3]:g} (x1 y1 x2 y2) has zero or "
            "negative size; face left out",
            problems,
        )
        return None
    point_array = np.asarray(points, dtype=np.float32).reshape(5, 2)
    if (point_array < 0).any():
        _report(f"{source}:{line}: landmark point outside the image (negative coordinate); face left out", problems)
        return None
    return LandmarkFace(path=path, box=np.asarray(box, dtype=np.float32), points=point_array, source=source, line=line)


def read_landmark_list(
    list_file: str | Path, images_root: str | Path | None = None, problems: list[str] | None = None
) -> list[LandmarkFace]:
    """Read a CNN_FacePoint list: ``path left right top bottom x1 y1 ... x5 y5`` per line.

    Image paths are relative to ``images_root`` (default: the list's folder); Windows
    separators in them are accepted.
    """
    list_file = Path(list_file)
    root = Path(images_root) if images_root is not None else list_file.parent
    faces: list[LandmarkFace] = []
    for line, text in _numbered_lines(list_file):
        fields = text.split()
        if len(fields) != 15:
            raise DataError(
                f"{list_file}:{line}: expected 'path left right top bottom' and 10 point "
                f"coordinates (15 fields), got {len(fields)}"
            )
        values = _numbers(fields[1:], list_file, line, "14 numbers after the path")
        left, right, top, bottom = values[:4]
        face = _landmark_face(
            root / fields[0].replace("\\", "/"), [left, top, right, bottom], values[4:], list_file, line, problems
        )
        if face is not None:
            faces.append(face)
    return faces


def _celeba_table(path: Path, columns: int, header_start: str) -> dict[str, tuple[int, list[float]]]:
    """``{image_id: (line, numbers)}`` of a CelebA list: a count line, a header line, then rows
    ``image_id`` + ``columns`` numbers."""
    lines = _numbered_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file; expected an image count line")
    try:
        declared = int(first[1])
    except ValueError:
        raise DataError(f"{path}:{first[0]}: expected the image count, got {first[1]!r}") from None
    header = next(lines, None)
    if header is None or not header[1].split()[0].startswith(header_start):
        where = f"{path}:{header[0]}" if header else str(path)
        raise DataError(f"{where}: expected the header line starting with {header_start!r}")
    rows: dict[str, tuple[int, list[float]]] = {}
    for line, text in lines:
        fields = text.split()
        if len(fields) != columns + 1:
            raise DataError(f"{path}:{line}: expected an image id and {columns} numbers, got {len(fields)} fields")
        if fields[0] in rows:
            raise DataError(f"{path}:{line}: image {fields[0]!r} listed twice (first at line {rows[fields[0]][0]})")
        rows[fields[0]] = (line, _numbers(fields[1:], path, line, f"{columns} numbers"))
    if len(rows) != declared:
        raise DataError(f"{path}:{first[0]}: declares {declared} images but lists {len(rows)}")
    return rows


def read_celeba(
    bbox_file: str | Path, landmarks_file: str | Path, images_dir: str | Path, problems: list[str] | None = None
) -> list[LandmarkFace]:
    """Read CelebA's ``list_bbox_celeba.txt`` (``x y w h``) and ``list_landmarks_celeba.txt``
    (in-the-wild images, not the aligned ones) into faces, in the bbox file's order; both lists
    must name the same images."""
    bbox_file, landmarks_file, images_dir = Path(bbox_file), Path(landmarks_file), Path(images_dir)
    boxes = _celeba_table(bbox_file, 4, "image_id")
    points = _celeba_table(landmarks_file, 10, "lefteye_x")
    faces: list[LandmarkFace] = []
    for image_id, (line, (x, y, w, h)) in boxes.items():
        if image_id not in points:
            raise DataError(f"{bbox_file}:{line}: image {image_id!r} has no landmarks in {landmarks_file}")
        face = _landmark_face(
            images_dir / image_id, [x, y, x + w, y + h], points[image_id][1], bbox_file, line, problems
        )
        if face is not None:
            faces.append(face)
    extra = set(points) - set(boxes)
    if extra:
        image_id = min(extra, key=lambda key: points[key][0])
        raise DataError(f"{landmarks_file}:{points[image_id][0]}: image {image_id!r} has no box in {bbox_file}")
    return faces


def points_outside(face: LandmarkFace, height: int, width: int) -> str | None:
    """A message naming the face's file and line when a point lies outside an image of
    ``height`` x ``width`` pixels (checked once the image is decoded), else None."""
    points = face.points
    outside = (points[:, 0] > width) | (points[:, 1] > height) | (points < 0).any(axis=1)
    if not outside.any():
        return None
    index = int(np.argmax(outside))
    return (
        f"{face.where}: landmark point {index + 1} ({points[index, 0]:g}, {points[index, 1]:g}) lies outside "
        f"the {width}x{height} image {face.path.name}; face left out"
    )
