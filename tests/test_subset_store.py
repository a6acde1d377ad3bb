"""scripts/subset_store.py: a store cut down to some of its images is what preparing only those
images gives, and keeps exactly their samples."""

from pathlib import Path

import numpy as np
import pytest
from scripts_dir import load_script
from test_prep import SMALL, kit_config

from mtcnn.data.prepare import SOURCE_FACES, SOURCE_LANDMARKS, prepare
from mtcnn.data.store import ARRAY_NAMES, SampleStore, finish_store, write_shard

subset_store = load_script("subset_store")


def synthetic_store(path: Path, shards: int = 3, per_shard: int = 40, images: int = 20, faces: int = 10) -> Path:
    """A P-Net store whose samples come from ``images`` WIDER images and ``faces`` landmark faces,
    each sample's pixels, targets and window distinct."""
    rng = np.random.default_rng(5)
    for index in range(shards):
        count = per_shard
        source = (rng.random(count) < 0.3).astype(np.int32)
        origin = np.stack(
            [source, np.where(source == SOURCE_FACES, rng.integers(0, images, count), rng.integers(0, faces, count))],
            axis=1,
        ).astype(np.int32)
        labels = np.where(source == SOURCE_LANDMARKS, -2, rng.integers(-1, 2, count)).astype(np.int8)
        write_shard(
            path,
            index,
            12,
            rng.integers(0, 256, (count, 12, 12, 3), dtype=np.uint8),
            labels,
            rng.random((count, 4), dtype=np.float32),
            rng.random((count, 10), dtype=np.float32),
            extras={"origin": origin, "window": rng.random((count, 4), dtype=np.float32)},
        )
    finish_store(path, "pnet", range(shards), {"sources": {"face_images_used": images, "landmark_faces_used": faces}})
    return path


def test_subset_equals_preparing_only_those_images(kit: Path, tmp_path: Path):
    full_config = kit_config(kit, overrides=SMALL)
    prepare("pnet", full_config, tmp_path / "full", workers=1)
    fewer = kit_config(kit, overrides=SMALL + ["prep.limit_images=3", "prep.limit_landmark_faces=20"])
    prepare("pnet", fewer, tmp_path / "fewer", workers=1)
    chosen = {SOURCE_FACES: np.arange(3), SOURCE_LANDMARKS: np.arange(20)}
    subset_store.subset_store(SampleStore.open(tmp_path / "full"), tmp_path / "subset", chosen)

    expected, got = SampleStore.open(tmp_path / "fewer"), SampleStore.open(tmp_path / "subset")
    assert len(got) < len(SampleStore.open(tmp_path / "full"))
    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    for name in ("origin", "window", "transform"):
        np.testing.assert_array_equal(got.extra(name), expected.extra(name))
    assert got.manifest["counts"] == expected.manifest["counts"]
    assert got.manifest["subset"]["wider_images"] == [0, 1, 2]


@pytest.mark.parametrize("wider, landmarks", [(0.25, 1.0), (0.5, 0.3), (1.0, 1.0)])
def test_fractions_keep_every_sample_of_the_chosen_inputs_and_no_other(tmp_path: Path, wider, landmarks):
    source = SampleStore.open(synthetic_store(tmp_path / "store"))
    rc = subset_store.main(
        [
            str(source.path),
            str(tmp_path / "out"),
            "--wider-fraction",
            str(wider),
            "--landmark-fraction",
            str(landmarks),
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    got = SampleStore.open(tmp_path / "out")
    record = got.manifest["subset"]
    assert len(record["wider_images"]) == round(wider * 20) and len(record["landmark_faces"]) == round(landmarks * 10)
    assert len(set(record["wider_images"])) == len(record["wider_images"])
    chosen = {SOURCE_FACES: set(record["wider_images"]), SOURCE_LANDMARKS: set(record["landmark_faces"])}
    kept = [row for row, (code, index) in enumerate(source.extra("origin")) if index in chosen[code]]
    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(got, name), getattr(source, name)[kept])
    np.testing.assert_array_equal(got.extra("window"), source.extra("window")[kept])
    assert got.manifest["sources"] == source.manifest["sources"]
    assert (record["seed"], record["wider_fraction"]) == (3, wider)


def test_other_seeds_choose_other_images(tmp_path: Path):
    source = synthetic_store(tmp_path / "store")
    for seed in (0, 1):
        assert (
            subset_store.main([str(source), str(tmp_path / f"s{seed}"), "--wider-fraction", "0.5", "--seed", str(seed)])
            == 0
        )
    picks = [SampleStore.open(tmp_path / f"s{seed}").manifest["subset"]["wider_images"] for seed in (0, 1)]
    assert picks[0] != picks[1]


def test_bad_input_is_one_line(tmp_path: Path, capsys):
    source = synthetic_store(tmp_path / "store")
    assert subset_store.main([str(source), str(tmp_path / "out"), "--wider-fraction", "1.5"]) == 2
    assert "fraction must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert subset_store.main([str(source), str(tmp_path / "out"), "--wider-fraction", "0.5"]) == 0
    assert subset_store.main([str(source), str(tmp_path / "out"), "--wider-fraction", "0.5"]) == 2
    assert "already holds a finished store" in capsys.readouterr().err
    assert subset_store.main([str(tmp_path / "nowhere"), str(tmp_path / "o2"), "--wider-fraction", "0.5"]) == 2
    assert "no such sample store folder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    write_shard(
        bare,
        0,
        12,
        np.zeros((2, 12, 12, 3), np.uint8),
        np.zeros(2, np.int8),
        np.zeros((2, 4), np.float32),
        np.zeros((2, 10), np.float32),
    )
    finish_store(bare, "pnet", [0])
    assert subset_store.main([str(bare), str(tmp_path / "o3"), "--wider-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no 'origin' array" in err
