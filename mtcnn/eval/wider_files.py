"""WIDER FACE's files: the official ``.mat`` evaluation ground truth, and prediction folders in
the official submission format (one text file per image: name, count, ``x y w h score`` lines),
written by running a detector over the val images (:func:`detect_wider`, resumable).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtcnn.atomic import write_json_atomic, write_text_atomic
from mtcnn.errors import DataError

log = logging.getLogger(__name__)

#: The three difficulty settings of the official evaluation.
SETTINGS = ("easy", "medium", "hard")
#: The official ground-truth files, inside ``eval_tools/ground_truth``.
GROUND_TRUTH_FILES = {
    "all": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}
#: The file in a ``--save-predictions`` folder recording which detector wrote it.
DETECTOR_RECORD = "detector.json"


# ------------------------------------------------------------------------------ ground truth


@dataclass(frozen=True)
class WiderGroundTruthImage:
    """One image of the evaluation ground truth.

    - ``event``: the event folder, e.g. ``0--Parade``; ``name``: the file name without extension;
    - ``boxes``: ``float64 [G, 4]`` faces as ``x y w h`` (all faces, including those no setting lists);
    - ``listed``: ``{setting: bool [G]}``, the faces that count in each setting (``gt_list``).
    """

    event: str
    name: str
    boxes: np.ndarray
    listed: dict[str, np.ndarray]

    @property
    def key(self) -> str:
        """``event/name``, the image's identity in predictions and reports."""
        return f"{self.event}/{self.name}"


@dataclass(frozen=True)
class WiderGroundTruth:
    """The evaluation ground truth: images in the order of the ``.mat`` files."""

    images: list[WiderGroundTruthImage]

    @property
    def events(self) -> list[str]:
        return list(dict.fromkeys(image.event for image in self.images))

    def num_listed(self, setting: str) -> int:
        """Faces that count in ``setting``."""
        return int(sum(image.listed[setting].sum() for image in self.images))


def _mat_string(cell: Any) -> str:
    """A MATLAB char array read by scipy (nested object arrays) as a Python string."""
    value = cell
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one string, got an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    return str(value)


def _mat_cells(array: Any) -> list[Any]:
    """The entries of a MATLAB cell column (``[n, 1]`` object array) as a list."""
    return list(np.asarray(array, dtype=object).reshape(-1))


def _load_mat(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: WIDER FACE ground-truth file not found")
    try:
        contents = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt or non-MAT file
        raise DataError(f"{path}: not a readable MATLAB .mat file ({exc})") from None
    missing = [key for key in keys if key not in contents]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (not a WIDER FACE ground-truth file)")
    return contents


def load_ground_truth(gt_dir: str | Path) -> WiderGroundTruth:
    """Read the official ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat`` in ``gt_dir``.

    Faces come from ``wider_face_val.mat``; each setting's file gives the 1-based indices of the
    faces that count in it. The four files must list the same events and images.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError(f"{gt_dir}: ground-truth folder not found (expected eval_tools/ground_truth)")
    main_path = gt_dir / GROUND_TRUTH_FILES["all"]
    main = _load_mat(main_path, ("event_list", "file_list", "face_bbx_list"))
    events = [_mat_string(cell) for cell in _mat_cells(main["event_list"])]
    files = [[_mat_string(cell) for cell in _mat_cells(event_files)] for event_files in _mat_cells(main["file_list"])]
    boxes = [
        [
            np.asarray(cell, dtype=np.float64).reshape(-1, 4) if np.size(cell) else np.zeros((0, 4))
            for cell in _mat_cells(event_boxes)
        ]
        for event_boxes in _mat_cells(main["face_bbx_list"])
    ]
    if not (len(events) == len(files) == len(boxes)) or any(len(f) != len(b) for f, b in zip(files, boxes)):
        raise DataError(f"{main_path}: event_list, file_list and face_bbx_list disagree in length")
    listed: dict[str, list[list[np.ndarray]]] = {}
    for setting in SETTINGS:
        path = gt_dir / GROUND_TRUTH_FILES[setting]
        contents = _load_mat(path, ("event_list", "file_list", "gt_list"))
        setting_events = [_mat_string(cell) for cell in _mat_cells(contents["event_list"])]
        gt_lists = [_mat_cells(event_lists) for event_lists in _mat_cells(contents["gt_list"])]
        if setting_events != events or [len(g) for g in gt_lists] != [len(f) for f in files]:
            raise DataError(f"{path}: lists other events or images than {main_path.name}")
        masks = []
        for event_index, event_lists in enumerate(gt_lists):
            event_masks = []
            for image_index, indices in enumerate(event_lists):
                count = boxes[event_index][image_index].shape[0]
                indices = np.asarray(indices, dtype=np.int64).reshape(-1)
                if indices.size and (indices.min() < 1 or indices.max() > count):
                    raise DataError(
                        f"{path}: gt_list of {events[event_index]}/{files[event_index][image_index]} "
                        f"has face index {indices.max()} outside 1..{count}"
                    )
                mask = np.zeros(count, dtype=bool)
                mask[indices - 1] = True
                event_masks.append(mask)
            masks.append(event_masks)
        listed[setting] = masks
    images = [
        WiderGroundTruthImage(event, name, boxes[e][i], {s: listed[s][e][i] for s in SETTINGS})
        for e, event in enumerate(events)
        for i, name in enumerate(files[e])
    ]
    return WiderGroundTruth(images)


# ------------------------------------------------------------------------------ prediction files


def prediction_path(pred_dir: str | Path, event: str, name: str) -> Path:
    """Where the official format keeps the predictions of one image: ``DIR/<event>/<name>.txt``."""
    return Path(pred_dir) / event / f"{name}.txt"


def format_predictions(name: str, boxes_xyxy: np.ndarray, scores: np.ndarray) -> str:
    """The official prediction file text: image name, count, one ``x y w h score`` line per face.

    ``boxes_xyxy`` is ``[K, 4]`` ``x1 y1 x2 y2`` (converted to ``x y w h``), ``scores`` ``[K]``;
    lines are sorted by falling score.
    """
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    lines = [name, str(len(order))]
    for k in order:
        x1, y1, x2, y2 = boxes_xyxy[k]
        lines.append(f"{x1:.2f} {y1:.2f} {x2 - x1:.2f} {y2 - y1:.2f} {scores[k]:.8f}")
    return "\n".join(lines) + "\n"


def parse_predictions(text: str, source: str = "predictions") -> np.ndarray:
    """Parse an official prediction file into ``float64 [K, 5]`` rows ``x y w h score``, sorted by
    falling score (stable, as MATLAB's ``sort(..., 'descend')``).

    Line 1 is the image name (not checked), line 2 the count, then that many lines of at least five
    numbers; blank lines after them are allowed. Errors name ``source`` and the line.
    """
    lines = text.splitlines()
    if len(lines) < 2:
        raise DataError(f"{source}: expected the image name on line 1 and the face count on line 2")
    try:
        count = int(float(lines[1].strip()))
    except ValueError:
        raise DataError(f"{source}: line 2: expected the face count, got {lines[1].strip()!r}") from None
    rows = lines[2 : 2 + count]
    extra = [line for line in lines[2 + count :] if line.strip()]
    if count < 0 or len(rows) < count or extra:
        found = len([line for line in lines[2:] if line.strip()])
        raise DataError(f"{source}: line 2 says {count} faces but {found} box lines follow")
    values = np.zeros((count, 5), dtype=np.float64)
    for index, line in enumerate(rows):
        fields = line.split()
        try:
            numbers = [float(value) for value in fields[:5]]
        except ValueError:
            numbers = []
        if len(numbers) < 5 or not all(math.isfinite(value) for value in numbers):
            raise DataError(f"{source}: line {index + 3}: expected 'x y w h score', got {line.strip()!r}")
        values[index] = numbers
    return values[np.argsort(-values[:, 4], kind="stable")]


def write_predictions(
    pred_dir: str | Path, event: str, name: str, boxes_xyxy: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Write one image's predictions atomically in the official format; returns the rows as they
    read back (``float64 [K, 5]`` ``x y w h score``), so scores computed in memory equal scores of
    the files."""
    text = format_predictions(name, boxes_xyxy, scores)
    path = prediction_path(pred_dir, event, name)
    write_text_atomic(path, text)
    return parse_predictions(text, str(path))


@dataclass
class PredictionSet:
    """Predictions per image key (``event/name``): ``float64 [K, 5]`` ``x y w h score`` sorted by
    falling score. ``missing`` lists the images that had no prediction file, ``unreadable`` the
    images the detector could not read (with the reason); both are scored as no detections."""

    rows: dict[str, np.ndarray]
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def read_prediction_dir(pred_dir: str | Path, ground_truth: WiderGroundTruth) -> PredictionSet:
    """Read the prediction file of every ground-truth image from ``pred_dir`` (official layout).

    An image without a file counts as having no predictions and is listed in ``missing``; files of
    images the ground truth does not list are not read.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    rows: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for image in ground_truth.images:
        path = prediction_path(pred_dir, image.event, image.name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            missing.append(image.key)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        rows[image.key] = parse_predictions(text, str(path))
    if missing:
        log.warning(
            "%d of %d images have no prediction file in %s (scored as no detections), e.g. %s",
            len(missing),
            len(ground_truth.images),
            pred_dir,
            missing[0],
        )
    return PredictionSet(rows, missing)


def image_path(images_dir: str | Path, image: WiderGroundTruthImage) -> Path:
    """The image file of a ground-truth entry: ``images_dir/<event>/<name>.jpg``."""
    return Path(images_dir) / image.event / f"{image.name}.jpg"


def detect_wider(
    detector: Any,
    ground_truth: WiderGroundTruth,
    images_dir: str | Path,
    save_dir: str | Path | None = None,
    detector_settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> PredictionSet:
    """Run ``detector`` (an :class:`~mtcnn.detect.cascade.MTCNN`) over every ground-truth image.

    With ``save_dir``, each image's predictions are written there in the official format as soon
    as they are found, beside ``detector.json`` holding ``detector_settings``; a second run with
    the same settings reuses the files already there, so an interrupted evaluation resumes. A
    folder written with other settings is an error rather than silently mixed. The settings'
    ``weights`` entry, if any, is :func:`mtcnn.model.weights.weights_fingerprint`'s record and is
    compared by content digest, so a weights file replaced under the same name is refused too.
    Unreadable images are reported in ``unreadable`` and scored as having no detections.
    """
    from tqdm import tqdm

    from mtcnn.detect.files import detect_files

    images_dir = Path(images_dir)
    paths = {image.key: image_path(images_dir, image) for image in ground_truth.images}
    absent = [str(path) for path in paths.values() if not path.is_file()]
    if absent:
        raise DataError(
            f"{absent[0]}: image listed in the ground truth not found "
            f"({len(absent)} of {len(paths)} missing; is --images the WIDER_val/images folder?)"
        )
    rows: dict[str, np.ndarray] = {}
    if save_dir is not None:
        save_dir = Path(save_dir)
        _check_detector_record(save_dir, detector_settings or {})
        for image in ground_truth.images:
            path = prediction_path(save_dir, image.event, image.name)
            if path.is_file():
                rows[image.key] = parse_predictions(path.read_text(encoding="utf-8"), str(path))
        if rows:
            log.info("resuming: %d of %d images already have predictions in %s", len(rows), len(paths), save_dir)
    todo = [image for image in ground_truth.images if image.key not in rows]
    unreadable: list[str] = []
    bar = tqdm(total=len(todo), unit="img", desc="detect", disable=not progress or None)
    for image, result in zip(todo, detect_files(detector, [paths[image.key] for image in todo])):
        if result.error is not None:
            unreadable.append(result.error)
            bar.write(f"error: {result.error}")
        elif save_dir is not None:
            rows[image.key] = write_predictions(
                save_dir, image.event, image.name, result.faces.boxes, result.faces.scores
            )
        else:
            text = format_predictions(image.name, result.faces.boxes, result.faces.scores)
            rows[image.key] = parse_predictions(text, image.key)
        bar.update()
    bar.close()
    return PredictionSet(rows, unreadable=unreadable)


def _check_detector_record(save_dir: Path, settings: Mapping[str, Any]) -> None:
    record = save_dir / DETECTOR_RECORD
    wanted = json.loads(json.dumps(settings))  # as it reads back from JSON (tuples become lists)
    if record.is_file():
        try:
            written = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{record}: unreadable ({exc})") from None
        if not isinstance(written, dict):
            raise DataError(f"{record}: not a detector record (expected a JSON object)")
        _check_recorded_weights(save_dir, written.get("weights"), wanted.get("weights"))
        changed = sorted(
            key for key in set(written) | set(wanted) if key != "weights" and written.get(key) != wanted.get(key)
        )
        if changed:
            raise DataError(
                f"{save_dir}: holds predictions of a detector with other settings "
                f"({', '.join(changed)} differ, see {DETECTOR_RECORD}); use another folder or empty it"
            )
    else:
        if save_dir.is_dir() and any(save_dir.iterdir()):
            raise DataError(
                f"{save_dir}: not empty and without {DETECTOR_RECORD}, so its files may come from "
                "another detector; use an empty or new folder"
            )
        write_json_atomic(record, wanted)


def _check_recorded_weights(save_dir: Path, written: Any, wanted: Any) -> None:
    """Refuse a folder whose predictions came from other weights than ``wanted``.

    Weights are recorded as :func:`mtcnn.model.weights.weights_fingerprint` gives them,
    ``{stage: {"file": path, "sha256": digest}}``, and compared by digest alone: the same content
    under another path is the same detector, a file replaced under the same path is not.
    """
    if written == wanted:
        return
    if not isinstance(written, dict) or not isinstance(wanted, dict) or set(written) != set(wanted):
        raise DataError(
            f"{save_dir}: holds predictions of a detector with other weights (see {DETECTOR_RECORD}); "
            "use another folder or empty it"
        )
    for stage, entry in wanted.items():
        old = written[stage]
        if not isinstance(old, dict) or "sha256" not in old:
            raise DataError(
                f"{save_dir}: {DETECTOR_RECORD} names its weights without their content digest (an older "
                "mtcnn wrote it), so its predictions cannot be matched to these weights; use another folder or empty it"
            )
        if old["sha256"] != entry.get("sha256"):
            raise DataError(
                f"{save_dir}: holds predictions of other {stage} weights: {entry.get('file')} is not the file "
                f"recorded in {DETECTOR_RECORD} (its content differs); use another folder or empty it"
            )
