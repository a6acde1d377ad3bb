"""The packed sample store: round trip, counts, and every kind of breakage reported in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtcnn.data.store import (
    FORMAT_VERSION,
    SampleStore,
    finish_store,
    read_shard_meta,
    remove_temporary_shards,
    write_shard,
    write_store,
)
from mtcnn.errors import DataError
from mtcnn.spec import LABEL_LANDMARK, LABEL_NAMES, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE


def _arrays(count: int, size: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = rng.choice(np.array(list(LABEL_NAMES), dtype=np.int8), count)
    boxes = rng.uniform(-0.3, 0.3, (count, 4)).astype(np.float32)
    landmarks = np.where(labels[:, None] == LABEL_LANDMARK, rng.uniform(0, 1, (count, 10)), 0).astype(np.float32)
    return images, labels, boxes, landmarks


def test_label_constants_match_the_design():
    assert (LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_PART, LABEL_LANDMARK) == (1, 0, -1, -2)
    assert LABEL_NAMES == {1: "positive", 0: "negative", -1: "part", -2: "landmark"}


def test_write_and_open_round_trip(tmp_path: Path):
    images, labels, boxes, landmarks = _arrays(37, 24)
    write_store(tmp_path / "s", "rnet", images, labels, boxes, landmarks, extra_manifest={"seed": 7})
    store = SampleStore.open(tmp_path / "s")
    assert store.stage == "rnet" and store.size == 24 and len(store) == 37
    np.testing.assert_array_equal(store.images, images)
    np.testing.assert_array_equal(store.labels, labels)
    np.testing.assert_array_equal(store.boxes, boxes)
    np.testing.assert_array_equal(store.landmarks, landmarks)
    assert store.images.dtype == np.uint8 and store.labels.dtype == np.int8
    assert store.boxes.dtype == np.float32 and store.landmarks.dtype == np.float32
    expected = {name: int((labels == label).sum()) for label, name in LABEL_NAMES.items()}
    assert store.counts() == expected == store.manifest["counts"]
    assert store.manifest["seed"] == 7 and store.manifest["format_version"] == FORMAT_VERSION
    assert isinstance(store.images, np.memmap)  # one shard: memory-mapped, not loaded


def test_several_shards_concatenate_in_manifest_order(tmp_path: Path):
    first, second = _arrays(5, seed=1), _arrays(8, seed=2)
    write_shard(tmp_path, 1, 12, *second, meta={"note": "b"})
    write_shard(tmp_path, 0, 12, *first)
    finish_store(tmp_path, "pnet", [0, 1])
    store = SampleStore.open(tmp_path)
    assert len(store) == 13
    np.testing.assert_array_equal(store.images, np.concatenate([first[0], second[0]]))
    np.testing.assert_array_equal(store.labels, np.concatenate([first[1], second[1]]))
    assert read_shard_meta(tmp_path, 1)["note"] == "b"
    assert read_shard_meta(tmp_path, 2) is None


def test_writer_rejects_disagreeing_arrays(tmp_path: Path):
    images, labels, boxes, landmarks = _arrays(4)
    with pytest.raises(DataError, match="boxes"):
        write_store(tmp_path, "pnet", images, labels, boxes[:3], landmarks)
    with pytest.raises(DataError, match="images"):
        write_store(tmp_path, "rnet", images, labels, boxes, landmarks)  # 12 px crops in a 24 px store
    with pytest.raises(DataError, match="label 5"):
        write_store(tmp_path, "pnet", images, np.full(4, 5, np.int8), boxes, landmarks)


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    write_shard(path, 0, 12, *_arrays(6, seed=3))
    write_shard(path, 1, 12, *_arrays(9, seed=4))
    finish_store(path, "pnet", [0, 1])
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unfinished_store_without_manifest(tmp_path: Path):
    path = tmp_path / "s"
    write_shard(path, 0, 12, *_arrays(3))
    with pytest.raises(DataError, match="no manifest.json") as exc:
        SampleStore.open(path)
    assert str(path) in _one_line(exc)
    with pytest.raises(DataError, match="no such"):
        SampleStore.open(tmp_path / "absent")


def test_missing_shard(tmp_path: Path):
    import shutil

    path = _store(tmp_path)
    shutil.rmtree(path / "shards" / "00001")
    with pytest.raises(DataError, match="00001: shard listed in the manifest is missing") as exc:
        SampleStore.open(path)
    _one_line(exc)


def test_truncated_and_missing_array_files(tmp_path: Path):
    path = _store(tmp_path)
    images = path / "shards" / "00001" / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as exc:
        SampleStore.open(path)
    assert "00001/images.npy" in _one_line(exc)
    (path / "shards" / "00000" / "labels.npy").unlink()
    with pytest.raises(DataError, match="00000/labels.npy: missing"):
        SampleStore.open(path)


def test_array_disagreeing_with_manifest(tmp_path: Path):
    path = _store(tmp_path)
    np.save(path / "shards" / "00000" / "boxes.npy", np.zeros((6, 4), np.float64))
    with pytest.raises(DataError, match="boxes is float64"):
        SampleStore.open(path)
    path = _store(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][0]["count"] = 7
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="holds 6 samples, the manifest says 7"):
        SampleStore.open(path)
    path = _store(tmp_path / "c")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["counts"]["positive"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="disagree with the labels"):
        SampleStore.open(path)


def test_other_format_version_and_corrupt_manifest(tmp_path: Path):
    path = _store(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format version") as exc:
        SampleStore.open(path)
    _one_line(exc)
    (path / "manifest.json").write_text("{ not json")
    with pytest.raises(DataError, match="unreadable manifest") as exc:
        SampleStore.open(path)
    _one_line(exc)


def test_half_written_shard_is_never_seen_as_finished(tmp_path: Path, monkeypatch):
    """A crash while a shard's files are written leaves only a hidden temporary folder."""
    calls = {"n": 0}
    real_save = np.save

    def crashing_save(handle, array):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed mid-shard
        real_save(handle, array)

    monkeypatch.setattr(np, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        write_shard(tmp_path, 0, 12, *_arrays(4))
    monkeypatch.setattr(np, "save", real_save)
    assert read_shard_meta(tmp_path, 0) is None
    assert not (tmp_path / "shards" / "00000").exists()
    assert list((tmp_path / "shards").glob(".*.tmp"))
    remove_temporary_shards(tmp_path)
    assert not list((tmp_path / "shards").iterdir())
    with pytest.raises(DataError, match="shard missing or incomplete"):
        finish_store(tmp_path, "pnet", [0])


def test_extra_arrays_round_trip_across_shards(tmp_path: Path):
    write_shard(tmp_path, 0, 12, *_arrays(3, seed=5), extras={"window": np.arange(12, dtype=np.float32).reshape(3, 4)})
    write_shard(tmp_path, 1, 12, *_arrays(2, seed=6), extras={"window": -np.ones((2, 4), np.float32)})
    finish_store(tmp_path, "pnet", [0, 1])
    store = SampleStore.open(tmp_path)
    window = store.extra("window")
    assert window.shape == (5, 4)
    np.testing.assert_array_equal(window[:3].ravel(), np.arange(12))
    np.testing.assert_array_equal(window[3:], -1)
    with pytest.raises(DataError, match="no 'origin' array"):
        store.extra("origin")
    with pytest.raises(DataError, match="expected 3 rows"):
        write_shard(tmp_path, 2, 12, *_arrays(3), extras={"window": np.zeros((2, 4))})
