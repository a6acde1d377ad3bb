"""Sample preparation on the real kit: labels, targets and pixels checked against slow references."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from full_disk import leftovers, one_error_line

from mtcnn.cli import main
from mtcnn.config import StageConfig, build_config
from mtcnn.data.prepare import SOURCE_FACES, SOURCE_LANDMARKS, prepare
from mtcnn.data.readers import read_landmark_list, read_wider
from mtcnn.data.samples import cut_crops, mirror_targets
from mtcnn.data.store import SampleStore
from mtcnn.errors import DataError, MtcnnError
from mtcnn.model.nets import MIRRORED_POINT_ORDER
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE

SMALL = ["prep.limit_images=6", "prep.limit_landmark_faces=40", "prep.images_per_shard=2", "prep.faces_per_shard=20"]


def wider_source(images: Path, annotations: Path) -> dict[str, str]:
    return {"format": "wider", "images": str(images), "annotations": str(annotations)}


def kit_data(kit: Path) -> dict[str, dict]:
    wider, marks = kit / "widerface", kit / "landmarks"
    split = wider / "wider_face_split"
    return {
        "train": {
            "faces": [wider_source(wider / "WIDER_train" / "images", split / "wider_face_train_bbx_gt.txt")],
            "landmarks": [{"format": "cnn_facepoint", "list": str(marks / "trainImageList.txt")}],
        },
        "val": {
            "faces": [wider_source(wider / "WIDER_val" / "images", split / "wider_face_val_bbx_gt.txt")],
            "landmarks": [{"format": "cnn_facepoint", "list": str(marks / "testImageList.txt")}],
        },
    }


def kit_config(kit: Path, stage: str = "pnet", overrides=(), train: dict | None = None) -> StageConfig:
    """The kit's sources, with ``train`` (``faces`` and/or ``landmarks`` lists) replacing the
    training split's."""
    data = kit_data(kit)
    data["train"].update(train or {})
    return build_config(StageConfig, {"stage": stage, "data": data}, list(overrides))


def reference_iou(box: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """IoU of one box with each face, written out plainly."""
    ix = np.clip(np.minimum(box[2], faces[:, 2]) - np.maximum(box[0], faces[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], faces[:, 3]) - np.maximum(box[1], faces[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1]) - inter)


def reference_crop(image: np.ndarray, window: np.ndarray, size: int) -> np.ndarray:
    """The window (floored to the grid) cut with zero padding and area-resampled by torch."""
    x1, y1, x2, y2 = (int(v) for v in np.floor(window))
    height, width = image.shape[:2]
    padded = np.zeros((y2 - y1, x2 - x1, 3), np.float64)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        padded[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    tensor = torch.from_numpy(padded).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(size, size), mode="area")[0].permute(1, 2, 0).numpy()


def decode_points(landmarks: np.ndarray, window: np.ndarray) -> np.ndarray:
    side = window[2] - window[0]
    return window[:2] + landmarks.reshape(5, 2) * side


def decode_box(offsets: np.ndarray, window: np.ndarray) -> np.ndarray:
    side = window[2] - window[0]
    return window + offsets * side


@pytest.fixture(scope="module")
def pnet_store(kit: Path, tmp_path_factory) -> tuple[SampleStore, StageConfig]:
    config = kit_config(kit, overrides=SMALL)
    out = tmp_path_factory.mktemp("pnet")
    prepare("pnet", config, out, workers=1)
    return SampleStore.open(out), config


def test_every_wider_crop_label_matches_its_iou_with_all_faces(pnet_store):
    store, config = pnet_store
    prep = config.prep
    wider = read_wider(config.data.train.faces[0].annotations, config.data.train.faces[0].images)
    origin, windows = store.extra("origin"), store.extra("window")
    from_wider = np.flatnonzero(origin[:, 0] == SOURCE_FACES)
    assert set(store.labels[from_wider].tolist()) == {LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_PART}
    images = {}
    for i in from_wider:
        annotation = wider[origin[i, 1]]
        faces = annotation.boxes.astype(np.float64)
        window = windows[i].astype(np.float64)
        assert window[2] - window[0] == window[3] - window[1] >= 12 and np.all(window == np.floor(window))
        iou = reference_iou(window, faces)
        label = store.labels[i]
        if label == LABEL_NEGATIVE:
            assert iou.max() < prep.negative_iou  # below the threshold with every face, invalid and small ones too
            np.testing.assert_array_equal(store.boxes[i], 0)
        else:
            best = iou.argmax()
            longer = max(faces[best, 2] - faces[best, 0], faces[best, 3] - faces[best, 1])
            assert not annotation.invalid[best] and longer >= prep.min_face_size
            if label == LABEL_POSITIVE:
                assert iou[best] >= prep.positive_iou
            else:
                assert prep.part_iou <= iou[best] < prep.positive_iou
            np.testing.assert_allclose(decode_box(store.boxes[i], window), faces[best], atol=1e-3)
        np.testing.assert_array_equal(store.landmarks[i], 0)
        if i % 7 == 0:  # pixels: compare a sample of crops with torch's own area resampling
            if annotation.name not in images:
                images[annotation.name] = cv2.cvtColor(cv2.imread(str(annotation.path)), cv2.COLOR_BGR2RGB)
            expected = reference_crop(images[annotation.name], window, store.size)
            assert np.abs(store.images[i].astype(np.float64) - expected).max() <= 0.5 + 1e-6


def test_landmark_targets_decode_to_the_annotation_mirrored_or_not(pnet_store):
    store, config = pnet_store
    faces = read_landmark_list(config.data.train.landmarks[0].list)
    origin, windows, transform = store.extra("origin"), store.extra("window"), store.extra("transform")
    marks = np.flatnonzero(store.labels == LABEL_LANDMARK)
    assert np.array_equal(np.flatnonzero(origin[:, 0] == SOURCE_LANDMARKS), marks)
    mirrored, rotation = transform[marks, 0] == 1, transform[marks, 1]
    # The sample must hold all four kinds, or the checks below prove nothing.
    assert mirrored.any() and (~mirrored).any() and (rotation != 0).any() and (rotation == 0).any()
    assert np.abs(rotation).max() <= config.prep.landmarks.max_rotation
    for i in marks:
        face, window = faces[origin[i, 1]], windows[i].astype(np.float64)
        boxes, points = store.boxes[i : i + 1], store.landmarks[i : i + 1]
        if transform[i, 0]:
            boxes, points = mirror_targets(boxes, points)  # mirroring twice is the identity
        expected_points = face.points.astype(np.float64)
        angle = float(transform[i, 1])
        if angle:
            # Rotate the annotated points about the window centre, as seen (y points down).
            centre = (window[:2] + window[2:]) / 2
            theta = np.deg2rad(angle)
            rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
            expected_points = (expected_points - centre) @ rot.T + centre
        np.testing.assert_allclose(decode_points(points[0], window), expected_points, atol=2e-3)
        np.testing.assert_allclose(decode_box(boxes[0], window), face.box, atol=2e-3)
        assert ((store.landmarks[i] >= 0) & (store.landmarks[i] <= 1)).all()
        if not angle:
            expected_crop = reference_crop(
                cv2.cvtColor(cv2.imread(str(face.path)), cv2.COLOR_BGR2RGB), window, store.size
            )
            if transform[i, 0]:
                expected_crop = expected_crop[:, ::-1]
            assert np.abs(store.images[i].astype(np.float64) - expected_crop).max() <= 0.5 + 1e-6
    # Left and right stay as seen in the crop: in mirrored crops too the "left eye" target is the
    # eye on the crop's left, and the left mouth corner the one on the left.
    points = store.landmarks[marks].reshape(-1, 5, 2)
    for subset in (mirrored, ~mirrored):
        assert (points[subset, 0, 0] < points[subset, 1, 0]).all()
        assert (points[subset, 3, 0] < points[subset, 4, 0]).all()


def test_mirror_targets_by_hand():
    boxes = np.array([[0.1, -0.05, -0.2, 0.15]], np.float32)
    points = np.arange(10, dtype=np.float32)[None] / 10  # (0, .1) (.2, .3) (.4, .5) (.6, .7) (.8, .9)
    mirrored_boxes, mirrored_points = mirror_targets(boxes, points)
    np.testing.assert_allclose(mirrored_boxes, [[0.2, -0.05, -0.1, 0.15]])
    np.testing.assert_allclose(
        mirrored_points.reshape(5, 2), [[0.8, 0.3], [1.0, 0.1], [0.6, 0.5], [0.2, 0.9], [0.4, 0.7]], atol=1e-6
    )
    assert MIRRORED_POINT_ORDER == (1, 0, 2, 4, 3)
    # A mirrored crop's pixels are the horizontal flip of the crop of the mirrored image.
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    window = np.array([[7, 5, 30, 28]], np.float32)
    flipped_window = np.array([[50 - 30, 5, 50 - 7, 28]], np.float32)
    np.testing.assert_array_equal(
        cut_crops(image, window, 12)[:, :, ::-1], cut_crops(image[:, ::-1], flipped_window, 12)
    )


@pytest.mark.slow
def test_same_seed_same_arrays_with_one_and_two_workers(kit: Path, tmp_path: Path, pnet_store):
    store_one, config = pnet_store
    prepare("pnet", config, tmp_path / "two", workers=2)
    store_two = SampleStore.open(tmp_path / "two")
    for name in ("images", "labels", "boxes", "landmarks"):
        np.testing.assert_array_equal(getattr(store_one, name), getattr(store_two, name))
    np.testing.assert_array_equal(store_one.extra("window"), store_two.extra("window"))
    assert store_one.manifest["counts"] == store_two.manifest["counts"]
    other_seed = kit_config(
        kit, overrides=SMALL + ["prep.seed=1", "prep.limit_images=2", "prep.limit_landmark_faces=0"]
    )
    prepare("pnet", other_seed, tmp_path / "seed1", workers=1)
    first = np.flatnonzero(store_one.extra("origin")[:, 1] < 2)
    assert not np.array_equal(SampleStore.open(tmp_path / "seed1").extra("window"), store_one.extra("window")[first])


def test_interrupted_run_resumes_to_the_same_result(pnet_store, tmp_path: Path, monkeypatch):
    import mtcnn.data.prepare as runner

    reference, config = pnet_store
    real_run_shard = runner.run_shard
    calls = {"n": 0}

    def killed_after_two(job, task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run_shard(job, task)

    monkeypatch.setattr(runner, "run_shard", killed_after_two)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        prepare("pnet", config, out, workers=1)
    monkeypatch.setattr(runner, "run_shard", real_run_shard)
    with pytest.raises(DataError, match="did not finish"):
        SampleStore.open(out)
    summary = prepare("pnet", config, out, workers=1)
    assert summary.shards_done_before == 2
    resumed = SampleStore.open(out)
    for name in ("images", "labels", "boxes", "landmarks"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
    # A damaged last shard is made again, the others are kept.
    last = sorted((out / "shards").iterdir())[-1]
    (last / "images.npy").write_bytes((last / "images.npy").read_bytes()[:1000])
    summary = prepare("pnet", config, out, workers=1)
    assert summary.shards_done_before == summary.shards_total - 1
    np.testing.assert_array_equal(SampleStore.open(out).images, reference.images)
    # Other settings into the same folder are refused, not mixed in.
    changed = kit_config(Path(config.data.train.faces[0].images).parents[2], overrides=SMALL + ["prep.seed=3"])
    with pytest.raises(DataError, match="other settings"):
        prepare("pnet", changed, out, workers=1)


def _tiny_wider(kit: Path, tmp_path: Path, extra: str = "") -> dict[str, str]:
    """A WIDER-format file of two real images, a missing one and a corrupt one."""
    images = tmp_path / "images"
    real = read_wider(
        kit / "widerface" / "wider_face_split" / "wider_face_train_bbx_gt.txt",
        kit / "widerface" / "WIDER_train" / "images",
    )[:2]
    lines = []
    for image in real:
        (images / image.name).parent.mkdir(parents=True, exist_ok=True)
        (images / image.name).symlink_to(image.path)
        lines += [image.name, str(len(image))]
        lines += [f"{b[0]:g} {b[1]:g} {b[2] - b[0]:g} {b[3] - b[1]:g} 0 0 0 0 0 0" for b in image.boxes]
    (images / "x").mkdir()
    (images / "x" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    lines += ["x/missing.jpg", "1", "10 10 40 40 0 0 0 0 0 0", "x/corrupt.jpg", "1", "10 10 40 40 0 0 0 0 0 0"]
    annotation = tmp_path / "gt.txt"
    annotation.write_text("\n".join(lines) + "\n" + extra)
    return {"faces": [wider_source(images, annotation)]}


def test_unreadable_images_and_bad_points_are_skipped_and_counted(kit: Path, tmp_path: Path, caplog):
    marks = read_landmark_list(kit / "landmarks" / "trainImageList.txt")[:3]
    lines = [
        [str(face.path)] + line.split()[1:]
        for face, line in zip(marks, (kit / "landmarks" / "trainImageList.txt").read_text().splitlines())
    ]
    lines[2][5] = "400.0"  # left eye x beyond the 154 px image
    landmark_list = tmp_path / "marks.txt"
    landmark_list.write_text("".join(" ".join(line) + "\n" for line in lines))
    train = {**_tiny_wider(kit, tmp_path), "landmarks": [{"format": "cnn_facepoint", "list": str(landmark_list)}]}
    config = kit_config(kit, train=train, overrides=["prep.faces_per_shard=2"])
    summary = prepare("pnet", config, tmp_path / "out", workers=1)
    skipped = summary.manifest["skipped_inputs"]
    assert skipped["count"] == 2
    assert any("missing.jpg" in message for message in skipped["messages"])
    assert any("corrupt.jpg" in message for message in skipped["messages"])
    problems = summary.manifest["annotation_problems"]
    assert problems["count"] == 1 and problems["messages"][0].startswith(f"{landmark_list}:3: landmark point 1")
    assert "missing.jpg" in caplog.text
    store = SampleStore.open(tmp_path / "out")
    assert set(store.extra("origin")[:, 1][store.extra("origin")[:, 0] == SOURCE_FACES].tolist()) == {0, 1}
    assert set(store.extra("origin")[:, 1][store.extra("origin")[:, 0] == SOURCE_LANDMARKS].tolist()) <= {0, 1}


def test_broken_inputs_stop_with_file_and_line(kit: Path, tmp_path: Path, capsys):
    train = _tiny_wider(kit, tmp_path, extra="y/z.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match=r"gt.txt: file ends inside image 'y/z.jpg'"):
        prepare("pnet", kit_config(kit, train=train), tmp_path / "out")
    with pytest.raises(MtcnnError, match="the config is for pnet, not rnet"):
        prepare("rnet", kit_config(kit), tmp_path / "out", weights={"pnet": "x.pt"})
    config_file = tmp_path / "pnet.yaml"
    annotations = train["faces"][0]["annotations"]
    config_file.write_text(
        f"stage: pnet\ndata:\n  train:\n    faces: [{{format: wider, images: x, annotations: {annotations}}}]\n"
        "prep:\n  part_iou: 0.9\n"
    )
    assert main(["prep", "pnet", "--config", str(config_file), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "part_iou" in error and len(error.strip().splitlines()) == 1


def test_cli_prep_and_inspect(kit: Path, tmp_path: Path, capsys, monkeypatch):
    config_file = tmp_path / "pnet.yaml"
    config_file.write_text(yaml.safe_dump({"stage": "pnet", "data": kit_data(kit)}))
    args = [
        "prep",
        "pnet",
        "--config",
        str(config_file),
        "--out",
        str(tmp_path / "s"),
        "--workers",
        "1",
        "--set",
        "prep.limit_images=2",
        "--set",
        "prep.limit_landmark_faces=10",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    store = SampleStore.open(tmp_path / "s")
    assert f"{len(store):,} samples of 12x12 px" in printed and "crops/s" in printed
    assert f"landmark {store.counts()['landmark']:,}" in printed
    assert main(args) == 0 and "already done" in capsys.readouterr().out
    assert main(["prep", "inspect", str(tmp_path / "s"), "--out", str(tmp_path / "grid.png"), "--per-label", "5"]) == 0
    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid.shape[0] > 4 * 96 and grid.shape[1] > 6 * 96
    assert main(["prep", "inspect", str(tmp_path / "nothing"), "--out", str(tmp_path / "g.png")]) == 2
    assert "no such sample store" in capsys.readouterr().err


@pytest.mark.slow
def test_rnet_mining_labels_and_crops_match_the_detector(kit: Path, reference_weights: Path, tmp_path: Path):
    from mtcnn.detect.cascade import MTCNN
    from mtcnn.detect.inputs import read_image, to_pixel_tensor
    from mtcnn.ops.boxes import square_boxes
    from mtcnn.ops.resample import crop_and_resize

    overrides = [
        "prep.limit_images=3",
        "prep.limit_landmark_faces=10",
        "prep.images_per_shard=2",
        "mining.max_negatives_per_image=15",
        "mining.face_crops_per_face=3",
    ]
    config = kit_config(kit, "rnet", overrides)
    summary = prepare("rnet", config, tmp_path / "r", workers=1, weights={"pnet": reference_weights / "pnet.pt"})
    store = SampleStore.open(tmp_path / "r")
    assert store.size == 24 and store.counts()["positive"] > 0 and store.counts()["landmark"] > 0
    wider = read_wider(config.data.train.faces[0].annotations, config.data.train.faces[0].images)[:3]
    detector = MTCNN(weights={"pnet": reference_weights / "pnet.pt"}, device="cpu")
    origin, windows = store.extra("origin"), store.extra("window")
    usable_faces, found, jittered = 0, 0, 0
    for index, annotation in enumerate(wider):
        image = read_image(annotation.path)
        detected = detector.detect_stages([image], last_stage="pnet")[0]["pnet"].boxes
        squares = square_boxes(torch.from_numpy(detected)).numpy()
        mine = np.flatnonzero((origin[:, 0] == SOURCE_FACES) & (origin[:, 1] == index))
        assert 0 < (store.labels[mine] == LABEL_NEGATIVE).sum() <= 15
        faces = annotation.boxes.astype(np.float64)
        # Every mined window is one of the detector's squares, cut exactly as R-Net gets it.
        crops = crop_and_resize(to_pixel_tensor(image), torch.from_numpy(windows[mine]), 24)
        np.testing.assert_array_equal(
            store.images[mine], crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
        for i in mine:
            # A window is one of the detector's squares, or one of the jittered squares added
            # around a face, which are positives or parts only.
            if not (len(squares) and np.abs(squares - windows[i]).max(axis=1).min() < 1e-3):
                jittered += 1
                assert store.labels[i] in (LABEL_POSITIVE, LABEL_PART)
            iou = reference_iou(windows[i].astype(np.float64), faces)
            if store.labels[i] == LABEL_NEGATIVE:
                assert iou.max() < 0.3
            else:
                assert iou.max() >= (0.65 if store.labels[i] == LABEL_POSITIVE else 0.4)
                np.testing.assert_allclose(
                    decode_box(store.boxes[i], windows[i].astype(np.float64)), faces[iou.argmax()], atol=1e-2
                )
        longer = np.maximum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])
        for face in faces[~annotation.invalid & (longer >= 20)]:
            usable_faces += 1
            found += bool(len(squares)) and max(reference_iou(face, squares)) >= 0.65
    assert summary.manifest["recall"]["faces"] == usable_faces and summary.manifest["recall"]["found"] == found
    assert 0 < jittered <= 3 * usable_faces


@pytest.mark.slow
def test_onet_mining_runs_both_earlier_nets(kit: Path, reference_weights: Path, tmp_path: Path):
    config = kit_config(kit, "onet", ["prep.limit_images=2", "prep.limit_landmark_faces=5"])
    weights = {"pnet": reference_weights / "pnet.pt", "rnet": reference_weights / "rnet.pt"}
    summary = prepare("onet", config, tmp_path / "o", workers=1, weights=weights)
    store = SampleStore.open(tmp_path / "o")
    assert store.images.shape[1:] == (48, 48, 3) and store.counts()["positive"] > 0
    assert summary.manifest["weights"] == {name: str(path) for name, path in weights.items()}
    assert 0 < summary.manifest["recall"]["found"] <= summary.manifest["recall"]["faces"]
    with pytest.raises(MtcnnError, match="no such rnet weights"):
        prepare("onet", config, tmp_path / "o2", weights={"pnet": weights["pnet"], "rnet": tmp_path / "none.pt"})


@pytest.mark.parametrize("mirror", [0.0, 1.0])
def test_rotated_and_mirrored_pixels_follow_their_landmark_targets(mirror: float):
    """Five bright dots on a dark image: wherever the targets say a point is, the crop is bright."""
    from mtcnn.config import LandmarkCropConfig
    from mtcnn.data.readers import LandmarkFace
    from mtcnn.data.samples import landmark_crops

    image = np.zeros((160, 160, 3), np.uint8)
    points = np.array([[60, 62], [100, 58], [82, 85], [64, 108], [98, 110]], np.float32)
    for index, (x, y) in enumerate(points):
        image[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255 if index != 2 else 128  # nose dimmer
    face = LandmarkFace(Path("synthetic.png"), np.array([40, 40, 120, 130], np.float32), points, Path("l.txt"), 1)
    config = LandmarkCropConfig(crops_per_face=30, mirror_probability=mirror, rotate_probability=1.0, max_rotation=30)
    samples = landmark_crops(image, face, np.random.default_rng(4), config, 48)
    assert len(samples) >= 10 and (np.abs(samples.rotation) > 5).any()
    assert samples.mirrored.all() == bool(mirror)
    for crop, targets in zip(samples.images, samples.landmarks):
        for index, (x, y) in enumerate(targets.reshape(5, 2) * 48):
            patch = crop[max(int(y) - 1, 0) : int(y) + 2, max(int(x) - 1, 0) : int(x) + 2]
            expected = 255 if index != 2 else 128
            assert patch.max() >= 0.5 * expected, (index, x, y)
        eyes = targets.reshape(5, 2)[:2]
        assert eyes[0, 0] < eyes[1, 0]  # the left eye stays on the crop's left, mirrored or not


def test_landmark_crops_may_cross_the_border_zero_padded_like_the_detector():
    from mtcnn.config import LandmarkCropConfig
    from mtcnn.data.readers import LandmarkFace
    from mtcnn.data.samples import landmark_crops

    image = np.full((100, 100, 3), 200, np.uint8)  # the face fills the image, as in CNN_FacePoint lists
    points = np.array([[35, 40], [65, 40], [50, 55], [38, 72], [62, 72]], np.float32)
    face = LandmarkFace(Path("synthetic.png"), np.array([10, 10, 90, 90], np.float32), points, Path("l.txt"), 1)
    settings = dict(
        crops_per_face=40, min_iou=0.3, size_range=(0.8, 1.7), rotate_probability=0.0, mirror_probability=0.0
    )
    inside = landmark_crops(image, face, np.random.default_rng(0), LandmarkCropConfig(**settings), 48)
    padded = landmark_crops(
        image, face, np.random.default_rng(0), LandmarkCropConfig(**settings, inside_image=False), 48
    )
    assert len(padded) > len(inside)
    assert (inside.images > 0).all()  # every kept crop lies inside the image
    crossing = (padded.images == 0).all(axis=3).any(axis=(1, 2))
    assert crossing.sum() >= 5
    for crop, targets in zip(padded.images[crossing], padded.landmarks[crossing]):
        # Points are inside the face, never on the zero padding, wherever the window fell.
        for x, y in targets.reshape(5, 2) * 48:
            assert crop[int(y), int(x)].min() > 0


def _prep_arguments(kit: Path, tmp_path: Path, out: Path, workers: int, images: int) -> list[str]:
    config_file = tmp_path / "pnet.yaml"
    config_file.write_text(yaml.safe_dump({"stage": "pnet", "data": kit_data(kit)}))
    settings = [f"prep.limit_images={images}", "prep.limit_landmark_faces=0", "prep.images_per_shard=1"]
    return [
        *("prep", "pnet", "--config", str(config_file), "--out", str(out), "--workers", str(workers)),
        *(word for setting in settings for word in ("--set", setting)),
    ]


def test_a_full_disk_during_prep_is_one_line_and_leaves_no_temporary(kit: Path, tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "store"
    arguments = _prep_arguments(kit, tmp_path, out, workers=1, images=2)
    real_save = np.save

    def save_until_the_disk_fills(file, array, *args, **kwargs):
        if ".00001." in str(getattr(file, "name", file)):  # the second shard's temporary folder
            file.write(b"\x93NUMPY half an array")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_until_the_disk_fills)
    assert main(arguments) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {out / 'shards' / '00001' / 'images.npy'}: cannot write (no space left on device)"
    assert leftovers(out) == [] and [p.name for p in (out / "shards").iterdir()] == ["00000"]
    # What a killed run leaves (a shard folder, the manifest's temporary) goes when the next starts.
    monkeypatch.setattr(np, "save", real_save)
    (out / "shards" / ".00001.12345.tmp").mkdir()
    (out / f".manifest.{'0' * 32}.tmp.json").write_text('{"stage": ')
    assert main(arguments) == 0
    assert "1 were already done" in capsys.readouterr().out
    assert leftovers(out) == [] and len(SampleStore.open(out).manifest["shards"]) == 2


def _children(parent: int) -> list[int]:
    """The process ids whose parent is ``parent``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _is_pool_worker(pid: int) -> bool:
    """Whether ``pid`` is a spawned multiprocessing worker (not the resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_workers_exit_when_prep_is_killed_outright(kit: Path, tmp_path: Path):
    """kill -9 (or the OOM killer) of `mtcnn prep` alone must not leave its workers running."""
    out = tmp_path / "store"
    command = [sys.executable, "-m", "mtcnn", *_prep_arguments(kit, tmp_path, out, workers=2, images=400)]
    prep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while True:  # both workers started and shards being written: the workers are at work
            workers = [pid for pid in _children(prep.pid) if _is_pool_worker(pid)]
            if len(workers) == 2 and (out / "shards").is_dir() and any((out / "shards").iterdir()):
                break
            assert prep.poll() is None, "prep ended before its workers were seen at work"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        prep.kill()
        prep.wait()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in workers if _running(pid)] == [], "workers outlived their killed parent"
    finally:
        if prep.poll() is None:
            prep.kill()
            prep.wait()
        for pid in workers:  # only the workers this test started
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_wider_faces_wholly_outside_the_decoded_image_are_reported_and_left_out(kit: Path, tmp_path: Path):
    image = read_wider(
        kit / "widerface" / "wider_face_split" / "wider_face_train_bbx_gt.txt",
        kit / "widerface" / "WIDER_train" / "images",
    )[3]
    faces = [f"{b[0]:g} {b[1]:g} {b[2] - b[0]:g} {b[3] - b[1]:g} 0 0 0 0 0 0" for b in image.boxes]
    plain, with_outside = tmp_path / "plain.txt", tmp_path / "outside.txt"
    plain.write_text("\n".join([image.name, str(len(faces)), *faces]) + "\n")
    # 1e30 is finite: only the decoded image's size shows this face is not on it
    with_outside.write_text("\n".join([image.name, str(len(faces) + 1), *faces, "1e30 5 20 20 0 0 0 0 0 0"]) + "\n")
    images_dir = kit / "widerface" / "WIDER_train" / "images"
    stores = {}
    for name, gt_file in (("plain", plain), ("outside", with_outside)):
        train = {"faces": [wider_source(images_dir, gt_file)], "landmarks": []}
        stores[name] = prepare("pnet", kit_config(kit, train=train), tmp_path / name).manifest
    problems = stores["outside"]["annotation_problems"]
    assert problems["count"] == 1
    assert problems["messages"][0].startswith(f"{with_outside}:1: face {len(faces) + 1} of {image.name!r}")
    assert "wholly outside the" in problems["messages"][0]
    assert stores["outside"]["counts"] == stores["plain"]["counts"]  # as if the line were not there
