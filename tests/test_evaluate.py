"""Stage recall and landmark error: against slow references, hand-built cases and the kit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtcnn.cli import main
from mtcnn.eval.landmarks import evaluate_landmarks, landmark_errors
from mtcnn.eval.recall import RECALL_IOUS, counted_faces, evaluate_stages, stage_recall

# ------------------------------------------------------------------------------ stage recall


def slow_recall(detections, gt_boxes, threshold, min_size, invalid):
    """One face, one box at a time."""
    faces = recalled = 0
    for boxes, faces_of_image, invalid_of_image in zip(detections, gt_boxes, invalid):
        for (x1, y1, x2, y2), bad in zip(faces_of_image, invalid_of_image):
            if bad or x2 - x1 < min_size or y2 - y1 < min_size:
                continue
            faces += 1
            for bx1, by1, bx2, by2 in boxes:
                inter = max(0.0, min(x2, bx2) - max(x1, bx1)) * max(0.0, min(y2, by2) - max(y1, by1))
                union = (x2 - x1) * (y2 - y1) + (bx2 - bx1) * (by2 - by1) - inter
                if inter / union >= threshold:
                    recalled += 1
                    break
    return faces, recalled


@pytest.mark.parametrize("seed", range(4))
def test_stage_recall_equals_slow_reference(seed):
    rng = np.random.default_rng(seed)
    detections, gt_boxes, invalid = [], [], []
    for _ in range(10):
        faces = rng.integers(0, 40, size=(int(rng.integers(0, 6)), 2)) * 2.0
        faces = np.concatenate([faces, faces + rng.integers(2, 30, size=faces.shape) * 2.0], axis=1)
        boxes = np.concatenate(
            [
                faces + rng.integers(-4, 5, size=faces.shape) * 2.0,
                rng.integers(0, 60, size=(3, 2)).repeat(2, axis=1) * [1, 1, 1.5, 1.5],
            ]
        )
        detections.append(boxes[rng.random(len(boxes)) < 0.7])
        gt_boxes.append(faces)
        invalid.append(rng.random(len(faces)) < 0.2)
    result = stage_recall(detections, gt_boxes, RECALL_IOUS, min_size=10, invalid_per_image=invalid)
    for threshold in RECALL_IOUS:
        faces, recalled = slow_recall(detections, gt_boxes, threshold, 10, invalid)
        assert result.faces == faces and result.recalled[threshold] == recalled
    assert result.boxes == sum(len(d) for d in detections) and result.images == 10


def test_stage_recall_thresholds_and_sizes_at_the_edge():
    face = np.array([[0, 0, 20, 10]], np.float32)
    half = np.array([[0, 0, 10, 10]], np.float32)  # IoU exactly 0.5
    result = stage_recall([half], [face])
    assert result.recalled == {0.5: 1, 0.65: 0} and result.recall[0.5] == 1.0
    assert stage_recall([half], [face], min_size=10).faces == 1  # 20 x 10 is at least 10 each way
    assert stage_recall([half], [face], min_size=10.5).faces == 0
    assert stage_recall([np.zeros((0, 4))], [face]).recalled == {0.5: 0, 0.65: 0}
    assert counted_faces(np.array([[0, 0, 30, 30], [0, 0, 30, 30]]), 20, np.array([False, True])).tolist() == [
        True,
        False,
    ]
    # one box may cover two faces: proposals are not matched one-to-one
    two = np.array([[0, 0, 10, 10], [0, 0, 10, 11]], np.float32)
    assert stage_recall([half], [two]).recalled[0.65] == 2


@pytest.mark.slow
def test_stage_recall_on_real_images(kit, reference_weights, tmp_path, capsys):
    from mtcnn.data.readers import read_wider
    from mtcnn.detect.cascade import MTCNN
    from mtcnn.eval.wider_files import parse_predictions

    images = read_wider(
        kit / "widerface" / "wider_face_split" / "wider_face_val_bbx_gt.txt", kit / "widerface" / "WIDER_val" / "images"
    )[:12]
    detector = MTCNN(reference_weights, device="cpu")
    results = evaluate_stages(detector, images, min_size=20, progress=False)
    assert list(results) == ["pnet", "rnet", "onet"]
    counts = [results[stage].boxes for stage in ("pnet", "rnet", "onet")]
    assert counts[0] > counts[1] > counts[2] > 0  # each stage keeps a subset of the previous one's boxes
    for result in results.values():
        assert result.faces > 50 and result.recalled[0.65] <= result.recalled[0.5]
    # The original implementation's final boxes for the same images (1-based inclusive x y w h in
    # the files) recall about as many faces as our O-Net stage.
    reference_boxes = []
    for image in images:
        path = kit / "reference_weights" / "wider_val_predictions" / image.path.parent.name / f"{image.path.stem}.txt"
        rows = parse_predictions(path.read_text())
        reference_boxes.append(np.concatenate([rows[:, :2] - 1, rows[:, :2] + rows[:, 2:4] - 1], axis=1))
    reference = stage_recall(
        reference_boxes,
        [image.boxes for image in images],
        min_size=20,
        invalid_per_image=[image.invalid for image in images],
    )
    assert reference.faces == results["onet"].faces
    assert abs(results["onet"].recall[0.5] - reference.recall[0.5]) < 0.06
    # The same through the command, with only P-Net weights: it stops after P-Net.
    pnet_only = tmp_path / "weights"
    pnet_only.mkdir()
    (pnet_only / "pnet.pt").symlink_to(reference_weights / "pnet.pt")
    status = main(
        [
            "eval",
            "stages",
            "--weights",
            str(pnet_only),
            "--device",
            "cpu",
            "--max-images",
            "12",
            "--images",
            str(kit / "widerface" / "WIDER_val" / "images"),
            "--annotations",
            str(kit / "widerface" / "wider_face_split" / "wider_face_val_bbx_gt.txt"),
            "--out",
            str(tmp_path / "stages.json"),
        ]
    )
    assert status == 0
    report = json.loads((tmp_path / "stages.json").read_text())
    assert list(report["stages"]) == ["pnet"]
    assert report["stages"]["pnet"]["recalled"]["0.5"] == results["pnet"].recalled[0.5]
    assert "P-Net" in capsys.readouterr().out


# ------------------------------------------------------------------------------ landmarks


def test_landmark_errors_are_normalised_by_the_eye_distance():
    truth = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], np.float32)  # eyes 20 px apart
    shifted = truth + np.array([[[2, 0], [0, 0], [0, 3], [0, 0], [-4, 0]]], np.float32)
    np.testing.assert_allclose(landmark_errors(shifted, truth), [[0.1, 0, 0.15, 0, 0.2]])
    with pytest.raises(ValueError, match="both eyes"):
        landmark_errors(truth, np.repeat(truth[:, :1], 5, axis=1))


class FixedDetector:
    """Stands in for MTCNN: returns the given faces for every image."""

    batch_size = 4

    def __init__(self, found):
        self.found = found

    def detect(self, images):
        return [self.found for _ in images]


def fixed_onet():
    """An O-Net that puts the five points at fixed places of its window, whatever it sees."""
    from mtcnn.model.nets import ONet

    onet = ONet()
    with torch.no_grad():
        for parameter in onet.parameters():
            parameter.zero_()
        onet.dense6_3.bias.copy_(torch.tensor([0.3, 0.3, 0.7, 0.3, 0.5, 0.5, 0.35, 0.75, 0.65, 0.75]))
    return onet


def test_evaluate_landmarks_matches_detections_and_counts_misses(kit):
    from mtcnn.data.readers import read_landmark_list
    from mtcnn.detect.cascade import Faces

    faces = read_landmark_list(kit / "landmarks" / "testImageList.txt")[:3]
    box = faces[0].box
    exact = Faces(
        np.array([box + [200, 200, 200, 200], box], np.float32),
        np.array([0.99, 0.9], np.float32),
        faces[0].points[None].repeat(2, axis=0) + np.array([[[0, 0]], [[2.0, 0]]], np.float32),
    )
    result = evaluate_landmarks(faces[:1], FixedDetector(exact), progress=False)
    eye_distance = np.linalg.norm(faces[0].points[0] - faces[0].points[1])
    assert result.missed == 0
    np.testing.assert_allclose(result.errors, np.full((1, 5), 2.0 / eye_distance), rtol=1e-5)  # the matched one
    far_only = Faces(exact.boxes[:1], exact.scores[:1], exact.landmarks[:1])
    result = evaluate_landmarks(faces, FixedDetector(far_only), progress=False)
    assert result.missed == 3 and result.faces == 3 and np.isnan(result.nme)


def test_onet_on_given_boxes_places_points_in_the_squared_window():
    from mtcnn.detect.cascade import MTCNN

    image = np.zeros((100, 100, 3), np.uint8)
    box = np.array([[20.0, 10.0, 60.0, 90.0]])
    points = MTCNN(nets={"onet": fixed_onet()}, device="cpu", landmark_scales=()).landmarks_in_boxes(image, box)
    # the 40 x 80 box is squared to 80 x 80 around its centre: x from 0 to 80, y from 10 to 90
    np.testing.assert_allclose(points[0, 0], [0 + 0.3 * 80, 10 + 0.3 * 80], atol=1e-4)
    np.testing.assert_allclose(points[0, 4], [0 + 0.65 * 80, 10 + 0.75 * 80], atol=1e-4)
    # With the window also scaled by 1.5 about its centre (40, 50), each point averages its place
    # in the two windows: 1.25 times as far from the centre.
    averaged = MTCNN(nets={"onet": fixed_onet()}, device="cpu", landmark_scales=(1.5,)).landmarks_in_boxes(image, box)
    np.testing.assert_allclose(averaged[0, 0], [40 + 1.25 * (0.3 - 0.5) * 80, 50 + 1.25 * (0.3 - 0.5) * 80], atol=1e-4)
    np.testing.assert_allclose(averaged[0, 4], [40 + 1.25 * 0.15 * 80, 50 + 1.25 * 0.25 * 80], atol=1e-4)
    assert MTCNN(nets={"onet": fixed_onet()}, device="cpu").landmarks_in_boxes(image, np.zeros((0, 4))).shape == (
        0,
        5,
        2,
    )


@pytest.mark.slow
def test_landmark_error_of_the_reference_weights(kit, reference_weights, tmp_path, capsys):
    from mtcnn.data.readers import read_landmark_list
    from mtcnn.detect.cascade import MTCNN

    faces = read_landmark_list(kit / "landmarks" / "testImageList.txt")[:24]
    detector = MTCNN(reference_weights, device="cpu")
    detected = evaluate_landmarks(faces, detector, progress=False)
    given = evaluate_landmarks(faces, detector, use_boxes=True, progress=False)
    assert given.missed == 0 and given.faces == 24
    assert detected.faces == 24 and detected.missed <= 6
    # the original weights locate points to a few percent of the eye distance
    assert 0.01 < detected.nme < 0.1 and 0.01 < given.nme < 0.1
    list_file = tmp_path / "few.txt"
    list_file.write_text("".join((kit / "landmarks" / "testImageList.txt").read_text().splitlines(True)[:24]))
    status = main(
        [
            "eval",
            "landmarks",
            "--list",
            str(list_file),
            "--images-root",
            str(kit / "landmarks"),
            "--weights",
            str(reference_weights),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "lm.json"),
        ]
    )
    assert status == 0
    report = json.loads((tmp_path / "lm.json").read_text())
    assert report["nme"] == pytest.approx(detected.nme, abs=1e-6) and report["missed"] == detected.missed
    assert "NME (inter-ocular)" in capsys.readouterr().out
    assert report["detector"]["landmark_scales"] == list(detector.landmark_scales)
    # --no-mirror-onet --landmark-scales none runs O-Net once per face, as the original cascade does.
    status = main(
        [
            "eval",
            "landmarks",
            "--list",
            str(list_file),
            "--images-root",
            str(kit / "landmarks"),
            "--weights",
            str(reference_weights),
            "--device",
            "cpu",
            "--no-mirror-onet",
            "--landmark-scales",
            "none",
            "--use-boxes",
            "--out",
            str(tmp_path / "lm_once.json"),
        ]
    )
    once = evaluate_landmarks(
        faces,
        MTCNN(reference_weights, device="cpu", mirror_onet=False, landmark_scales=()),
        use_boxes=True,
        progress=False,
    )
    report = json.loads((tmp_path / "lm_once.json").read_text())
    assert status == 0 and report["detector"]["mirror_onet"] is False and report["detector"]["landmark_scales"] == []
    assert report["nme"] == pytest.approx(once.nme, abs=1e-6) and once.nme != pytest.approx(given.nme, abs=1e-6)
