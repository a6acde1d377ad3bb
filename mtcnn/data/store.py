"""The packed sample store: training crops and their targets as memory-mappable arrays.

A store is a folder::

    manifest.json             written last: stage, size, counts, shards, sources, config, seed ...
    shards/00000/images.npy   uint8   [n, S, S, 3]  RGB crops
    shards/00000/labels.npy   int8    [n]           LABEL_* of mtcnn.spec
    shards/00000/boxes.npy    float32 [n, 4]        (true box - crop) / crop side, x1 y1 x2 y2
    shards/00000/landmarks.npy float32 [n, 10]      x1 y1 ... x5 y5 in [0, 1] of the crop
    shards/00000/shard.json   what the shard holds and which inputs it covers
    shards/00000/<extra>.npy  optional per-sample arrays ``[n, ...]`` (e.g. where each crop came from)
    shards/00001/...

Each shard is written into a hidden temporary folder and renamed into place when complete, so a
shard folder that exists is whole; ``manifest.json`` is written (atomically) only when every shard
is there, so a folder without it is an unfinished run, which preparation resumes.
:meth:`SampleStore.open` checks all of this and reports any breakage as one-line
:class:`~mtcnn.errors.DataError`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mtcnn.atomic import remove_stale_temporaries, reported_as_output_error, write_json_atomic
from mtcnn.errors import DataError
from mtcnn.spec import INPUT_SIZES, LABEL_NAMES, STAGES

FORMAT_NAME = "mtcnn-sample-store"
FORMAT_VERSION = 1


MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
SHARD_META_NAME = "shard.json"
ARRAY_NAMES = ("images", "labels", "boxes", "landmarks")


def _array_specs(size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-sample shape and dtype of each array of a store of ``size`` x ``size`` crops."""
    return {
        "images": ((size, size, 3), np.dtype(np.uint8)),
        "labels": ((), np.dtype(np.int8)),
        "boxes": ((4,), np.dtype(np.float32)),
        "landmarks": ((10,), np.dtype(np.float32)),
    }


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """``{"positive": n, "negative": n, "part": n, "landmark": n}`` of an ``int8 [N]`` label array."""
    values, numbers = np.unique(np.asarray(labels), return_counts=True)
    found = dict(zip(values.tolist(), numbers.tolist()))
    return {name: int(found.get(label, 0)) for label, name in LABEL_NAMES.items()}


def shard_name(index: int) -> str:
    return f"{index:05d}"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} is not a JSON object")
    return data


def check_sample_arrays(
    images: np.ndarray, labels: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, size: int, where: str
) -> int:
    """Check the four arrays of ``n`` samples of ``size`` px crops agree in length, shape and dtype;
    return ``n``. ``where`` names them in the :class:`DataError`."""
    arrays = {"images": images, "labels": labels, "boxes": boxes, "landmarks": landmarks}
    count = len(labels) if np.ndim(labels) >= 1 else -1
    for name, (shape, dtype) in _array_specs(size).items():
        array = arrays[name]
        expected = (count, *shape)
        if array.dtype != dtype or tuple(array.shape) != expected:
            raise DataError(f"{where}: {name} is {array.dtype} {list(array.shape)}, expected {dtype} {list(expected)}")
    bad = ~np.isin(labels, list(LABEL_NAMES))
    if bad.any():
        raise DataError(
            f"{where}: label {int(labels[bad][0])} at sample {int(np.argmax(bad))} is not one of {sorted(LABEL_NAMES)}"
        )
    return count


def write_shard(
    store_dir: str | Path,
    index: int,
    size: int,
    images: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    meta: Mapping[str, Any] | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write shard ``index`` of a store of ``size`` px crops, atomically; returns its folder.

    Arrays: ``images uint8 [n, size, size, 3]``, ``labels int8 [n]``, ``boxes float32 [n, 4]``,
    ``landmarks float32 [n, 10]``; ``extras`` are further per-sample arrays ``[n, ...]`` by name
    (read back with :meth:`SampleStore.extra`). ``meta`` (JSON-able) is saved beside them, with the
    counts. Everything goes into a hidden temporary folder which is renamed to ``shards/<index>``
    when every file is flushed; an existing shard of that index is replaced. A write the system
    refuses (a full disk) removes the temporary folder and raises
    :class:`~mtcnn.atomic.OutputError` naming the shard's file.
    """
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(labels)
    boxes = np.ascontiguousarray(boxes)
    landmarks = np.ascontiguousarray(landmarks)
    count = check_sample_arrays(images, labels, boxes, landmarks, size, f"shard {index}")
    extras = {name: np.ascontiguousarray(array) for name, array in (extras or {}).items()}
    for name, array in extras.items():
        if name in ARRAY_NAMES or not name.isidentifier():
            raise ValueError(f"extra array name {name!r} is reserved or not an identifier")
        if array.ndim < 1 or array.shape[0] != count:
            raise DataError(f"shard {index}: extra array {name} has shape {list(array.shape)}, expected {count} rows")
    shard_meta = {
        "index": index,
        "count": count,
        "counts": label_counts(labels),
        "extras": sorted(extras),
        **dict(meta or {}),
    }
    meta_text = json.dumps(shard_meta, indent=1) + "\n"
    shards = Path(store_dir) / SHARDS_DIR
    final = shards / shard_name(index)
    tmp = shards / f".{shard_name(index)}.{os.getpid()}.tmp"
    with reported_as_output_error(final):
        shards.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    try:
        for name, array in [*zip(ARRAY_NAMES, (images, labels, boxes, landmarks)), *extras.items()]:
            _write_synced(tmp, final, f"{name}.npy", lambda handle, array=array: np.save(handle, array))
        _write_synced(tmp, final, SHARD_META_NAME, lambda handle: handle.write(meta_text.encode()))
        with reported_as_output_error(final):
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except Exception:
        # A failed write (a full disk) leaves no half shard taking up the space. An interrupt is
        # left like a kill: the next preparation's remove_temporary_shards clears it.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_synced(folder: Path, final: Path, name: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``folder/name`` with ``write(handle)`` and flush it to disk; an ``OSError`` becomes an
    :class:`~mtcnn.atomic.OutputError` naming ``final/name``, where the file was meant to end up."""
    with reported_as_output_error(final / name), open(folder / name, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def read_shard_meta(store_dir: str | Path, index: int) -> dict[str, Any] | None:
    """The ``shard.json`` of a finished shard, or None when the shard is absent or unreadable."""
    path = Path(store_dir) / SHARDS_DIR / shard_name(index) / SHARD_META_NAME
    if not path.is_file():
        return None
    try:
        return _read_json(path, "shard metadata")
    except DataError:
        return None


def complete_shard_meta(store_dir: str | Path, index: int) -> dict[str, Any] | None:
    """The metadata of shard ``index`` if the shard is whole: its ``shard.json`` readable and
    every array file it lists present, untruncated and of its sample count; else None.

    Shards are renamed into place only when complete, but a file can still be damaged or
    removed afterwards; preparation redoes such a shard instead of trusting its metadata.
    """
    meta = read_shard_meta(store_dir, index)
    if meta is None or not isinstance(meta.get("count"), int):
        return None
    folder = Path(store_dir) / SHARDS_DIR / shard_name(index)
    for name in (*ARRAY_NAMES, *meta.get("extras", [])):
        try:
            array = _load_array(folder / f"{name}.npy", mmap=True)
        except DataError:
            return None
        if array.ndim < 1 or array.shape[0] != meta["count"]:
            return None
    return meta


def remove_temporary_shards(store_dir: str | Path) -> None:
    """Delete what killed writes left behind: hidden ``*.tmp`` shard folders, and temporaries of
    the atomic writer (an unfinished ``manifest.json``) in the store folder."""
    shards = Path(store_dir) / SHARDS_DIR
    if shards.is_dir():
        for leftover in shards.glob(".*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    remove_stale_temporaries(store_dir)


def finish_store(
    store_dir: str | Path, stage: str, shard_indices: Sequence[int], extra_manifest: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``manifest.json`` for the given finished shards (in that order); returns the manifest.

    Counts are summed from the shards' metadata. ``extra_manifest`` (JSON-able: sources, skipped
    inputs, config, seed ...) is merged in; it cannot override the structural keys.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    store_dir = Path(store_dir)
    shards, total = [], {name: 0 for name in LABEL_NAMES.values()}
    for index in shard_indices:
        meta = read_shard_meta(store_dir, index)
        if meta is None:
            raise DataError(f"{store_dir / SHARDS_DIR / shard_name(index)}: shard missing or incomplete")
        shards.append({"name": shard_name(index), "count": int(meta["count"])})
        for name in total:
            total[name] += int(meta["counts"][name])
    manifest = dict(extra_manifest or {})
    manifest.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "stage": stage,
            "size": INPUT_SIZES[stage],
            "count": sum(shard["count"] for shard in shards),
            "counts": total,
            "shards": shards,
            "extras": read_shard_meta(store_dir, shard_indices[0]).get("extras", []) if shard_indices else [],
        }
    )
    write_json_atomic(store_dir / MANIFEST_NAME, manifest)
    return manifest


def write_store(
    path: str | Path,
    stage: str,
    images: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    extra_manifest: Mapping[str, Any] | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a one-shard store from arrays (for tests and small tools); returns its folder.

    ``images uint8 [N, S, S, 3]`` with ``S`` the stage's input size, ``labels int8 [N]``,
    ``boxes float32 [N, 4]``, ``landmarks float32 [N, 10]``; ``extras`` further per-sample
    arrays ``[N, ...]`` by name, as :func:`write_shard` takes them.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_shard(path, 0, INPUT_SIZES[stage], images, labels, boxes, landmarks, extras=extras)
    finish_store(path, stage, [0], extra_manifest)
    return path


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing array file (partial shard?)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: truncated or corrupt array file ({exc})") from None


@dataclass
class SampleStore:
    """A prepared sample set, opened and checked. Arrays are read-only memory maps when ``mmap``.

    - ``images``: ``uint8 [N, S, S, 3]`` RGB crops (S = 12, 24 or 48);
    - ``labels``: ``int8 [N]``, one of ``LABEL_POSITIVE``, ``LABEL_NEGATIVE``, ``LABEL_PART``,
      ``LABEL_LANDMARK``;
    - ``boxes``: ``float32 [N, 4]`` offsets of the true box from the crop per unit of crop side
      (:func:`mtcnn.data.samples.box_targets`); zeros for negatives;
    - ``landmarks``: ``float32 [N, 10]`` interleaved ``x, y`` in [0, 1] of the crop; zeros
      unless the label is landmark.
    """

    path: Path
    manifest: dict[str, Any]
    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    _mmap: bool = True

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the four arrays: what training holds in memory, or on the GPU."""
        return sum(int(array.nbytes) for array in (self.images, self.labels, self.boxes, self.landmarks))

    def counts(self) -> dict[str, int]:
        """Samples per label name, from the labels themselves."""
        return label_counts(self.labels)

    def extra(self, name: str) -> np.ndarray:
        """An extra per-sample array ``[N, ...]`` written with the shards (e.g. ``origin``,
        ``window``, ``transform`` from preparation); :class:`DataError` when the store has none."""
        if name not in self.manifest.get("extras", []):
            raise DataError(
                f"{self.path}: the store has no {name!r} array (it has: "
                f"{', '.join(self.manifest.get('extras', [])) or 'none'})"
            )
        parts = []
        for shard in self.manifest["shards"]:
            array = _load_array(self.path / SHARDS_DIR / shard["name"] / f"{name}.npy", self._mmap)
            if array.ndim < 1 or array.shape[0] != shard["count"]:
                raise DataError(
                    f"{self.path / SHARDS_DIR / shard['name']}: {name} has {list(array.shape)} rows, "
                    f"expected {shard['count']}"
                )
            parts.append(array)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @classmethod
    def open(cls, path: str | Path, mmap: bool = True) -> SampleStore:
        """Open and check the store at ``path``.

        With one shard the arrays are memory maps of its files; several shards are concatenated
        into memory (training loads the whole set anyway). Raises :class:`DataError` for a folder
        without a manifest (an unfinished preparation), another format version, a missing or
        truncated shard, and arrays whose shapes, dtypes, labels or counts disagree with it.
        """
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: no such sample store folder")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise DataError(
                f"{path}: no {MANIFEST_NAME}; not a sample store, or its preparation did not "
                "finish (run it again to resume)"
            )
        manifest = _read_json(manifest_path, "manifest")
        if manifest.get("format") != FORMAT_NAME:
            raise DataError(f"{manifest_path}: not a sample store manifest (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{manifest_path}: store format version {manifest.get('format_version')!r}, this "
                f"software reads version {FORMAT_VERSION}; prepare the data again"
            )
        stage = manifest.get("stage")
        if stage not in INPUT_SIZES or manifest.get("size") != INPUT_SIZES[stage]:
            raise DataError(f"{manifest_path}: bad stage {stage!r} or size {manifest.get('size')!r}")
        shards = manifest.get("shards")
        if not isinstance(shards, list) or not shards:
            raise DataError(f"{manifest_path}: lists no shards")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAY_NAMES}
        for shard in shards:
            folder = path / SHARDS_DIR / str(shard.get("name"))
            if not folder.is_dir():
                raise DataError(f"{folder}: shard listed in the manifest is missing")
            arrays = [_load_array(folder / f"{name}.npy", mmap) for name in ARRAY_NAMES]
            count = check_sample_arrays(*arrays, INPUT_SIZES[stage], str(folder))
            if count != shard.get("count"):
                raise DataError(f"{folder}: holds {count} samples, the manifest says {shard.get('count')}")
            for name, array in zip(ARRAY_NAMES, arrays):
                parts[name].append(array)
        joined = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in parts.items()}
        store = cls(path=path, manifest=manifest, **joined, _mmap=mmap)
        if store.counts() != manifest.get("counts"):
            raise DataError(
                f"{manifest_path}: counts {manifest.get('counts')} disagree with the labels {store.counts()}"
            )
        return store
