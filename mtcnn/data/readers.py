"""Readers for the annotation formats, each converting boxes to ``x1 y1 x2 y2`` once, here.

- WIDER FACE ``*_bbx_gt.txt``: an image name, a face count, then one line per face
  ``x y w h blur expression illumination invalid occlusion pose`` (an image with no face has
  count 0 and one line of zeros);
- the CNN_FacePoint list: ``path left right top bottom x1 y1 ... x5 y5`` -- box order left,
  right, top, bottom;
- YOLO (ultralytics layout): one ``.txt`` per image under ``labels/`` mirroring ``images/``, lines
  ``class cx cy w h`` normalised to the image size (read from the image's header, EXIF rotation
  applied, as the detector sees it); ``data.yaml`` names the classes. An image without a label
  file is a background image; a label file without an image is reported;
- COCO JSON: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, ``bbox`` as ``x y w
  h`` pixels, ``category_id``, ``iscrowd``) and ``categories``; crowd boxes are kept as faces that
  give no positives, like WIDER's invalid ones;
- CelebA: ``list_bbox_celeba.txt`` (``image_id x_1 y_1 width height``) with
  ``list_landmarks_celeba.txt`` (``image_id lefteye_x lefteye_y ... rightmouth_y``), each after a
  count line and a header line.

Every face set reads into :class:`WiderImage` records (YOLO and COCO sets have no WIDER
attributes: those are 0), every landmark set into :class:`LandmarkFace`; :func:`read_face_source`
and :func:`read_landmark_source` read one source of a stage config.

Structural breakage (a line that does not parse, a count that does not match the lines) raises
:class:`~mtcnn.errors.DataError` naming the file and line. A single bad annotation (a box of zero
or negative size or wholly outside the image, a number that is NaN or infinite, points outside
the image) is logged as a warning with file and line, the face
is left out, and the message is appended to ``problems`` when the caller passes a list, so that
it can be counted in a manifest. Image files are not opened here: a missing or corrupt image is
found, reported and counted when preparation decodes it.

Landmark points are always ``[5, 2]`` ``(x, y)`` in this order: left eye, right eye, nose, left
mouth corner, right mouth corner, where left and right are as seen in the image (the left eye has
the smaller x in a frontal face).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtcnn.config import FaceSource, LandmarkSource
from mtcnn.errors import DataError
from mtcnn.spec import IMAGE_EXTENSIONS

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
            if not all(math.isfinite(value) for value in values[:4]):
                message = f"{annotation_file}:{face_line}: face of {name!r} has a NaN or infinite number; left out"
                _report(message, problems)
                continue
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


def _face_image(
    path: Path, name: str, rows: list[list[float]], crowd: list[bool], source: Path, line: int
) -> WiderImage:
    """A :class:`WiderImage` of a YOLO or COCO image: ``rows`` ``x1 y1 x2 y2``, no WIDER attributes."""
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    zeros = np.zeros(len(boxes), dtype=np.int64)
    return WiderImage(
        path=path,
        name=name,
        boxes=boxes,
        invalid=np.asarray(crowd, dtype=bool).reshape(-1),
        blur=zeros,
        expression=zeros,
        illumination=zeros,
        occlusion=zeros,
        pose=zeros,
        source=source,
        line=line,
    )


def _checked_box(
    box: list[float], width: float, height: float, where: str, problems: list[str] | None
) -> list[float] | None:
    """``box`` (``x1 y1 x2 y2`` pixels) when it is finite, has an area and overlaps the
    ``width`` x ``height`` image; else None, reported with ``where``."""
    if not all(math.isfinite(value) for value in box):
        _report(f"{where}: a NaN or infinite number; face left out", problems)
    elif not _positive_size(*box):
        _report(f"{where}: box has zero or negative size; face left out", problems)
    elif box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
        _report(f"{where}: box lies wholly outside the {width:g}x{height:g} image; face left out", problems)
    else:
        return box
    return None


# ------------------------------------------------------------------------------ YOLO


#: EXIF orientations that swap an image's width and height (rotations by 90 degrees).
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image as decoded with its EXIF rotation, from its header; None
    when the file cannot be read."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def default_labels_dir(images_dir: Path) -> Path:
    """Where ultralytics looks for the labels of ``images_dir``: the last ``images`` part of the
    path replaced by ``labels`` (``set/images/train`` -> ``set/labels/train``)."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    raise DataError(f"{images_dir}: no 'images' folder in the path to find the labels beside; give 'labels'")


def _class_names(labels_dir: Path) -> tuple[Path, dict[int, str]] | None:
    """The ``names`` of the ``data.yaml`` nearest above ``labels_dir`` (up to three folders up)."""
    for folder in [labels_dir, *list(labels_dir.parents)[:3]]:
        path = folder / "data.yaml"
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise DataError(f"{path}: cannot read the class names ({exc})") from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, list):
                names = dict(enumerate(names))
            if not isinstance(names, dict):
                raise DataError(f"{path}: expected 'names', a list or a mapping of class ids to names")
            return path, {int(key): str(value) for key, value in names.items()}
    return None


def _face_label(names: Mapping[Any, str], face_class: str | None, where: Path, what: str) -> Any:
    """The id of the face class among ``names`` ``{id: name}``: the one named ``face_class``
    (default ``face``), else the only one when no name was asked for."""
    wanted = face_class if face_class is not None else "face"
    matches = [key for key, name in names.items() if name == wanted]
    if matches:
        return matches[0]
    if face_class is None and len(names) == 1:
        return next(iter(names))
    raise DataError(f"{where}: no {what} named {wanted!r} among {sorted(names.values())}; set face_class")


def _yolo_face_class(labels_dir: Path, face_class: str | int | None) -> int | None:
    """The class id of faces: ``face_class`` (an id, or a name data.yaml gives), else data.yaml's
    one class or its class named ``face``; None when there is no data.yaml and no ``face_class``
    (then every label must be class 0)."""
    if isinstance(face_class, int):
        return face_class
    found = _class_names(labels_dir)
    if found is None:
        if face_class is not None:
            raise DataError(f"{labels_dir}: face_class {face_class!r} is a name, but no data.yaml names the classes")
        return None
    path, names = found
    return _face_label(names, face_class, path, "class")


def read_yolo(
    images_dir: str | Path,
    labels_dir: str | Path | None = None,
    face_class: str | int | None = None,
    problems: list[str] | None = None,
) -> list[WiderImage]:
    """Read a YOLO face set: every image under ``images_dir`` (sorted by path) with the faces of
    its label file under ``labels_dir`` (default :func:`default_labels_dir`), lines ``class cx cy
    w h`` normalised to the image. Lines of other classes are left out; an image without a label
    file is a background image; a label file without an image is reported."""
    images_dir = Path(images_dir)
    labels_dir = Path(labels_dir) if labels_dir is not None else default_labels_dir(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no such images folder")
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: no such labels folder")
    face_id = _yolo_face_class(labels_dir, face_class)
    files = sorted(path for path in images_dir.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    images: list[WiderImage] = []
    for path in files:
        relative = path.relative_to(images_dir)
        label_file = labels_dir / relative.with_suffix(".txt")
        rows: list[list[float]] = []
        if label_file.is_file():
            size = _image_size(path)
            if size is None:
                _report(f"{path}: cannot read the image size; image left out", problems)
                continue
            rows = _yolo_faces(label_file, face_id, size, problems)
        images.append(_face_image(path, relative.as_posix(), rows, [False] * len(rows), label_file, 1))
    stems = {path.relative_to(images_dir).with_suffix("") for path in files}
    for label_file in sorted(labels_dir.rglob("*.txt")):
        if label_file.relative_to(labels_dir).with_suffix("") not in stems:
            _report(f"{label_file}: a label file without an image in {images_dir}; left out", problems)
    return images


def _yolo_faces(
    label_file: Path, face_id: int | None, size: tuple[int, int], problems: list[str] | None
) -> list[list[float]]:
    """The face boxes ``x1 y1 x2 y2`` in pixels of one YOLO label file for an image of ``size``
    ``(width, height)``."""
    width, height = size
    rows = []
    for line, text in _numbered_lines(label_file):
        fields = text.split()
        if len(fields) != 5:
            raise DataError(f"{label_file}:{line}: expected 'class cx cy w h', got {len(fields)} fields")
        try:
            label = int(fields[0])
        except ValueError:
            raise DataError(f"{label_file}:{line}: expected an integer class id, got {fields[0]!r}") from None
        if face_id is None and label != 0:
            raise DataError(f"{label_file}:{line}: class {label}, but no data.yaml names the classes; set face_class")
        if label != (face_id or 0):
            continue
        cx, cy, w, h = _numbers(fields[1:], label_file, line, "four numbers after the class")
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        # Normalised numbers carry rounding: without this a 20 px face comes back 19.9999 px and
        # falls below min_face_size. No annotation is finer than a thousandth of a pixel.
        box = [round(value, 3) if math.isfinite(value) else value for value in box]
        checked = _checked_box(box, width, height, f"{label_file}:{line}", problems)
        if checked is not None:
            rows.append(checked)
    return rows


# ------------------------------------------------------------------------------ COCO


def _json_list(document: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list '{key}' at the top level")
    return value


def _coco_face_category(categories: list[Any], face_class: str | int | None, path: Path) -> int:
    names = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DataError(f"{path}: categories[{index}] needs 'id' and 'name'")
        names[category["id"]] = str(category["name"])
    return _face_label(names, None if face_class is None else str(face_class), path, "category")


def read_coco(
    annotation_file: str | Path,
    images_dir: str | Path,
    face_class: str | int | None = None,
    problems: list[str] | None = None,
) -> list[WiderImage]:
    """Read a COCO face set: each of the file's ``images`` (in file order) with its boxes of the
    face category (``face_class``, default ``face``, or the one category); ``iscrowd`` boxes are
    kept as faces marked invalid. Image paths are ``images_dir / file_name``."""
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    try:
        document = json.loads(annotation_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{annotation_file}: cannot read annotation file ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{annotation_file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{annotation_file}: not a UTF-8 text file") from None
    if not isinstance(document, dict):
        raise DataError(f"{annotation_file}: expected a JSON object with images, annotations and categories")
    face_id = _coco_face_category(_json_list(document, "categories", annotation_file), face_class, annotation_file)
    entries: dict[Any, dict[str, Any]] = {}
    for index, image in enumerate(_json_list(document, "images", annotation_file)):
        if not isinstance(image, dict) or not all(key in image for key in ("id", "file_name", "width", "height")):
            raise DataError(f"{annotation_file}: images[{index}] needs 'id', 'file_name', 'width' and 'height'")
        if image["id"] in entries:
            raise DataError(f"{annotation_file}: images[{index}]: image id {image['id']!r} listed twice")
        entries[image["id"]] = {"image": image, "rows": [], "crowd": []}
    for index, annotation in enumerate(_json_list(document, "annotations", annotation_file)):
        where = f"{annotation_file}: annotations[{index}]"
        if not isinstance(annotation, dict) or not all(key in annotation for key in ("image_id", "bbox")):
            raise DataError(f"{where} needs 'image_id' and 'bbox'")
        if annotation.get("category_id", face_id) != face_id:
            continue
        entry = entries.get(annotation["image_id"])
        if entry is None:
            raise DataError(f"{where}: image id {annotation['image_id']!r} is not among the images")
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise DataError(f"{where}: expected bbox [x, y, w, h] of numbers, got {bbox!r}")
        x, y, w, h = (float(value) for value in bbox)
        image = entry["image"]
        checked = _checked_box([x, y, x + w, y + h], float(image["width"]), float(image["height"]), where, problems)
        if checked is not None:
            entry["rows"].append(checked)
            entry["crowd"].append(bool(annotation.get("iscrowd", 0)))
    return [
        _face_image(
            images_dir / entry["image"]["file_name"],
            str(entry["image"]["file_name"]),
            entry["rows"],
            entry["crowd"],
            annotation_file,
            0,
        )
        for entry in entries.values()
    ]


# ------------------------------------------------------------------------------ landmark lists


def _landmark_face(
    path: Path, box: list[float], points: list[float], source: Path, line: int, problems: list[str] | None
) -> LandmarkFace | None:
    """A checked face, or None (reported) when a number is NaN or infinite, its box is empty or a
    point is negative."""
    if not all(math.isfinite(value) for value in (*box, *points)):
        _report(f"{source}:{line}: a NaN or infinite number; face left out", problems)
        return None
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


def faces_inside(image: WiderImage, height: int, width: int) -> tuple[WiderImage, list[str]]:
    """``image`` without the faces whose box lies wholly outside the decoded ``height`` x ``width``
    image (checked once it is decoded: annotation files do not give image sizes), and a message
    naming the file and line for each face left out."""
    x1, y1, x2, y2 = image.boxes.T
    outside = (x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height)
    if not outside.any():
        return image, []
    messages = [
        f"{image.source}:{image.line}: face {k + 1} of {image.name!r} ({' '.join(f'{v:g}' for v in image.boxes[k])}) "
        f"lies wholly outside the {width}x{height} image; left out"
        for k in np.flatnonzero(outside)
    ]
    keep = ~outside
    per_face = ("boxes", "invalid", "blur", "expression", "illumination", "occlusion", "pose")
    return dataclasses.replace(image, **{name: getattr(image, name)[keep] for name in per_face}), messages


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


# ------------------------------------------------------------------------------ config sources


def read_face_source(source: FaceSource, problems: list[str] | None = None) -> list[WiderImage]:
    """The images and face boxes of one ``data.<split>.faces`` entry of a stage config."""
    if source.format == "wider":
        return read_wider(source.annotations, source.images, problems)
    if source.format == "yolo":
        return read_yolo(source.images, source.labels, source.face_class, problems)
    return read_coco(source.annotations, source.images, source.face_class, problems)


def read_landmark_source(source: LandmarkSource, problems: list[str] | None = None) -> list[LandmarkFace]:
    """The faces and five points of one ``data.<split>.landmarks`` entry of a stage config."""
    if source.format == "cnn_facepoint":
        return read_landmark_list(source.list, source.images, problems)
    return read_celeba(source.boxes, source.landmarks, source.images, problems)
