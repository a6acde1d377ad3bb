"""WIDER FACE AP: the vectorised protocol against a slow transliteration of the official code,
hand-built cases with known answers, the official figures on the kit, and the command line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from mtcnn.cli import main
from mtcnn.errors import DataError
from mtcnn.eval.wider import SETTINGS, evaluate_wider
from mtcnn.eval.wider_files import (
    DETECTOR_RECORD,
    WiderGroundTruth,
    WiderGroundTruthImage,
    detect_wider,
    format_predictions,
    load_ground_truth,
    parse_predictions,
    read_prediction_dir,
    write_predictions,
)

# ------------------------------------------------------------------------------ helpers


def _cells(items: list) -> np.ndarray:
    """A MATLAB cell column as scipy writes it: an ``[n, 1]`` object array."""
    array = np.empty((len(items), 1), dtype=object)
    for index, item in enumerate(items):
        array[index, 0] = item
    return array


def write_ground_truth(folder: Path, images: list[WiderGroundTruthImage]) -> Path:
    """Write the four official .mat files for ``images`` (the layout :func:`load_ground_truth` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    events = list(dict.fromkeys(image.event for image in images))
    per_event = [[image for image in images if image.event == event] for event in events]
    common = {
        "event_list": _cells(events),
        "file_list": _cells([_cells([image.name for image in group]) for group in per_event]),
        "face_bbx_list": _cells([_cells([image.boxes.reshape(-1, 4) for image in group]) for group in per_event]),
    }
    scipy.io.savemat(folder / "wider_face_val.mat", common)
    for setting in SETTINGS:
        gt_list = _cells(
            [
                _cells(
                    [(np.flatnonzero(image.listed[setting]) + 1).reshape(-1, 1).astype(np.float64) for image in group]
                )
                for group in per_event
            ]
        )
        scipy.io.savemat(folder / f"wider_{setting}_val.mat", {**common, "gt_list": gt_list})
    return folder


def gt_image(event: str, name: str, boxes: list, listed: list[bool] | None = None) -> WiderGroundTruthImage:
    """A ground-truth image whose ``listed`` faces count in all three settings."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mask = np.ones(len(boxes), bool) if listed is None else np.asarray(listed, bool)
    return WiderGroundTruthImage(event, name, boxes, {setting: mask.copy() for setting in SETTINGS})


def rows(*predictions: tuple) -> np.ndarray:
    """Prediction rows ``x y w h score`` sorted by falling score, as the readers return them."""
    table = np.asarray(predictions, dtype=np.float64).reshape(-1, 5)
    return table[np.argsort(-table[:, 4], kind="stable")]


def official_reference(
    ground_truth: WiderGroundTruth,
    predictions: dict[str, np.ndarray],
    iou_threshold: float = 0.5,
    num_thresholds: int = 1000,
) -> dict[str, float]:
    """The official evaluation written out as the MATLAB code does it: loops, one prediction and one
    threshold at a time. Slow; the reference for the vectorised version."""
    scores = [value for table in predictions.values() for value in table[:, 4]]
    low, high = min(scores), max(scores)
    result = {}
    for setting in SETTINGS:
        curve = np.zeros((num_thresholds, 2))
        faces = 0
        for image in ground_truth.images:
            listed = image.listed[setting]
            faces += int(listed.sum())
            table = predictions.get(image.key, np.zeros((0, 5)))
            if len(image.boxes) == 0 or len(table) == 0:
                continue
            normalized = [(s - low) / (high - low) for s in table[:, 4]]
            recall_list = [0] * len(image.boxes)
            proposal_list = [1] * len(table)
            pred_recall = [0] * len(table)
            for h, (x, y, w, hh, _) in enumerate(table):
                overlaps = []
                for gx, gy, gw, gh in image.boxes:
                    iw = min(x + w, gx + gw) - max(x, gx) + 1
                    ih = min(y + hh, gy + gh) - max(y, gy) + 1
                    if iw <= 0 or ih <= 0:
                        overlaps.append(0.0)
                        continue
                    union = (w + 1) * (hh + 1) + (gw + 1) * (gh + 1) - iw * ih
                    overlaps.append(iw * ih / union)
                best = max(range(len(overlaps)), key=lambda k: (overlaps[k], -k))
                if overlaps[best] >= iou_threshold:
                    if not listed[best]:
                        recall_list[best] = -1
                        proposal_list[h] = -1
                    elif recall_list[best] == 0:
                        recall_list[best] = 1
                pred_recall[h] = sum(1 for r in recall_list if r == 1)
            for t in range(num_thresholds):
                threshold = 1 - (t + 1) / num_thresholds
                above = [k for k, s in enumerate(normalized) if s >= threshold]
                if above:
                    last = above[-1]
                    curve[t, 0] += sum(1 for p in proposal_list[: last + 1] if p == 1)
                    curve[t, 1] += pred_recall[last]
        precision = [c[1] / c[0] if c[0] else float("nan") for c in curve]
        recall = [c[1] / faces for c in curve]
        mrec, mpre = [0.0] + recall + [1.0], [0.0] + precision + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            later = mpre[i + 1]
            if np.isnan(mpre[i]) or (not np.isnan(later) and later > mpre[i]):
                mpre[i] = later  # MATLAB's max skips NaN
        result[setting] = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return result


def random_case(seed: int) -> tuple[WiderGroundTruth, dict[str, np.ndarray]]:
    """A set with crowded images, duplicates, predictions on unlisted faces, an image without faces
    and an image without predictions; boxes on a coarse grid so that overlaps hit 0.5 exactly."""
    rng = np.random.default_rng(seed)
    images, predictions = [], {}
    for index in range(12):
        count = 0 if index == 3 else int(rng.integers(1, 8))
        xy = rng.integers(0, 60, size=(count, 2)) * 2.0
        wh = rng.integers(2, 20, size=(count, 2)) * 2.0
        boxes = np.concatenate([xy, wh], axis=1)
        listed = {setting: rng.random(count) < p for setting, p in zip(SETTINGS, (0.4, 0.7, 0.9))}
        listed["medium"] |= listed["easy"]
        listed["hard"] |= listed["medium"]
        image = WiderGroundTruthImage(f"{index // 4}--Event", f"image_{index}", boxes, listed)
        images.append(image)
        if index == 5:
            continue  # no predictions at all
        chosen = boxes[rng.random(count) < 0.8]
        jitter = rng.integers(-3, 4, size=chosen.shape) * 1.0
        duplicates = chosen[: int(rng.integers(0, len(chosen) + 1))]
        false = np.concatenate([rng.integers(0, 60, size=(3, 2)) * 2.0, rng.integers(2, 20, size=(3, 2)) * 2.0], 1)
        table = np.concatenate([chosen + jitter, duplicates, false])
        scores = np.round(rng.random(len(table)), 2)  # coarse: ties between scores too
        predictions[image.key] = rows(*np.concatenate([table, scores[:, None]], axis=1))
    return WiderGroundTruth(images), predictions


# ------------------------------------------------------------------------------ the protocol


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_protocol_equals_the_official_loops(seed):
    ground_truth, predictions = random_case(seed)
    ours = evaluate_wider(ground_truth, predictions).ap
    reference = official_reference(ground_truth, predictions)
    for setting in SETTINGS:
        assert ours[setting] == pytest.approx(reference[setting], abs=1e-12)


def test_perfect_detector_scores_one():
    images = [
        gt_image("0--A", "a", [[10, 10, 20, 24], [50, 10, 18, 20]], [True, False]),
        gt_image("0--A", "b", [[0, 0, 30, 30]]),
        gt_image("1--B", "c", [[5, 5, 8, 9], [40, 40, 50, 60], [100, 10, 20, 20]]),
    ]
    ground_truth = WiderGroundTruth(images)
    predictions = {image.key: rows(*[(*box, 0.5 + 0.1 * k) for k, box in enumerate(image.boxes)]) for image in images}
    assert evaluate_wider(ground_truth, predictions).ap == pytest.approx(dict.fromkeys(SETTINGS, 1.0))
    # All scores equal: the official code would divide by zero; we keep every prediction.
    constant = {key: np.concatenate([table[:, :4], np.ones((len(table), 1))], 1) for key, table in predictions.items()}
    assert evaluate_wider(ground_truth, constant).ap == pytest.approx(dict.fromkeys(SETTINGS, 1.0))


def test_detection_on_an_ignored_face_is_neither_true_nor_false():
    ground_truth = WiderGroundTruth([gt_image("0--A", "a", [[10, 10, 20, 20], [100, 100, 20, 20]], [True, False])])
    on_ignored = rows((100, 100, 20, 20, 0.9), (10, 10, 20, 20, 0.5))
    assert evaluate_wider(ground_truth, {"0--A/a": on_ignored}).ap["hard"] == pytest.approx(1.0)
    # The same top detection on background is a false positive: precision 1/2 when recall is reached.
    on_background = rows((300, 300, 20, 20, 0.9), (10, 10, 20, 20, 0.5))
    assert evaluate_wider(ground_truth, {"0--A/a": on_background}).ap["hard"] == pytest.approx(0.5)


def test_duplicates_recall_once_and_count_as_false_positives():
    ground_truth = WiderGroundTruth([gt_image("0--A", "a", [[10, 10, 20, 20], [100, 100, 20, 20]])])
    predictions = {"0--A/a": rows((10, 10, 20, 20, 3.0), (11, 10, 20, 20, 2.0), (100, 100, 20, 20, 1.0))}
    # thresholds above 0.5: P 1, R 1/2; down to 0: P 1/2 then 2/3 at R 1 -> 1/2 * 1 + 1/2 * 2/3.
    assert evaluate_wider(ground_truth, predictions).ap["easy"] == pytest.approx(5 / 6)


def test_images_without_faces_or_predictions():
    ground_truth = WiderGroundTruth(
        [
            gt_image("0--A", "faces", [[10, 10, 20, 20]]),
            gt_image("0--A", "empty", []),
            gt_image("1--B", "unpredicted", [[10, 10, 20, 20]]),
        ]
    )
    predictions = {
        "0--A/faces": rows((10, 10, 20, 20, 0.5)),
        # the official code skips images without faces, their predictions included
        "0--A/empty": rows((10, 10, 20, 20, 0.9)),
    }
    result = evaluate_wider(ground_truth, predictions)
    assert result.ap == pytest.approx(dict.fromkeys(SETTINGS, 0.5))  # one of two faces, precision 1
    assert result.curves["easy"].num_faces == 2


def test_overlap_exactly_at_half_counts():
    # Official +1 convention: [0, 9] x [0, 9] (100 px) vs [0, 9] x [0, 19] (200 px) overlap 100 / 200.
    ground_truth = WiderGroundTruth([gt_image("0--A", "a", [[0, 0, 9, 19]])])
    assert evaluate_wider(ground_truth, {"0--A/a": rows((0, 0, 9, 9, 1.0))}).ap["easy"] == pytest.approx(1.0)
    assert evaluate_wider(ground_truth, {"0--A/a": rows((0, 0, 9, 8.9, 1.0))}).ap["easy"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------ files


def test_ground_truth_and_prediction_files_round_trip(tmp_path):
    ground_truth, predictions = random_case(7)
    loaded = load_ground_truth(write_ground_truth(tmp_path / "gt", ground_truth.images))
    assert [image.key for image in loaded.images] == [image.key for image in ground_truth.images]
    for ours, theirs in zip(loaded.images, ground_truth.images):
        np.testing.assert_array_equal(ours.boxes, theirs.boxes)
        for setting in SETTINGS:
            np.testing.assert_array_equal(ours.listed[setting], theirs.listed[setting])
    pred_dir = tmp_path / "predictions"
    for image in ground_truth.images:
        table = predictions.get(image.key)
        if table is not None:
            xyxy = np.concatenate([table[:, :2], table[:, :2] + table[:, 2:4]], axis=1)
            write_predictions(pred_dir, image.event, image.name, xyxy, table[:, 4])
    assert not list(pred_dir.rglob(".*"))  # no temporary left beside the files
    read = read_prediction_dir(pred_dir, loaded)
    assert read.missing == ["1--Event/image_5"]
    for key, table in predictions.items():
        np.testing.assert_allclose(read.rows[key], table, atol=1e-8)
    assert evaluate_wider(loaded, read).ap == pytest.approx(evaluate_wider(ground_truth, predictions).ap, abs=1e-12)


def test_prediction_text_is_sorted_by_score_in_xywh():
    text = format_predictions("x", np.array([[1, 2, 11, 22], [5, 5, 8, 9]]), np.array([0.2, 0.9]))
    assert text.splitlines() == ["x", "2", "5.00 5.00 3.00 4.00 0.90000000", "1.00 2.00 10.00 20.00 0.20000000"]
    np.testing.assert_allclose(parse_predictions(text), [[5, 5, 3, 4, 0.9], [1, 2, 10, 20, 0.2]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("name\n3\n1 2 3 4 0.5\n", "line 2 says 3 faces but 1 box lines follow"),
        ("name\n1\n1 2 3 4 0.5\n1 2 3 4 0.5\n", "line 2 says 1 faces but 2 box lines follow"),
        ("name\nmany\n", "line 2: expected the face count"),
        ("name\n1\n1 2 3 0.5\n", "line 3: expected 'x y w h score'"),
        ("name\n1\n1 2 nan 4 0.5\n", "line 3: expected 'x y w h score'"),
        ("name\n", "face count on line 2"),
    ],
)
def test_bad_prediction_files_name_file_and_line(text, message):
    with pytest.raises(DataError, match=message) as error:
        parse_predictions(text, "DIR/0--A/a.txt")
    assert str(error.value).startswith("DIR/0--A/a.txt: ")


def test_bad_ground_truth_folder(tmp_path):
    with pytest.raises(DataError, match="ground-truth folder not found"):
        load_ground_truth(tmp_path / "nowhere")
    write_ground_truth(tmp_path / "gt", [gt_image("0--A", "a", [[1, 1, 5, 5]])])
    (tmp_path / "gt" / "wider_hard_val.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="wider_hard_val.mat: not a readable"):
        load_ground_truth(tmp_path / "gt")
    (tmp_path / "gt" / "wider_hard_val.mat").unlink()
    with pytest.raises(DataError, match="wider_hard_val.mat: WIDER FACE ground-truth file not found"):
        load_ground_truth(tmp_path / "gt")


# ------------------------------------------------------------------------------ the kit


def test_reference_predictions_score_the_official_figures(kit):
    official = json.loads((kit / "reference_weights" / "wider_val_official_ap.json").read_text())
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    predictions = read_prediction_dir(kit / "reference_weights" / "wider_val_predictions", ground_truth)
    assert not predictions.missing
    result = evaluate_wider(ground_truth, predictions)
    for setting in SETTINGS:
        assert result.ap[setting] == pytest.approx(official["official_protocol_ap"][setting], abs=1e-4)


def test_vectorised_equals_official_loops_on_real_predictions(kit):
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    subset = WiderGroundTruth(ground_truth.images[::10])
    predictions = read_prediction_dir(kit / "reference_weights" / "wider_val_predictions", subset).rows
    ours = evaluate_wider(subset, predictions).ap
    reference = official_reference(subset, predictions)
    for setting in SETTINGS:
        assert ours[setting] == pytest.approx(reference[setting], abs=1e-12)


def test_ground_truth_boxes_as_predictions_score_one(kit):
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    predictions = {
        image.key: np.concatenate([image.boxes, np.linspace(1, 0.5, len(image.boxes))[:, None]], 1)
        for image in ground_truth.images
    }
    for setting, ap in evaluate_wider(ground_truth, predictions).ap.items():
        assert ap > 0.999, setting  # only exactly repeated ground-truth boxes could cost anything


def test_cli_scores_a_prediction_folder(kit, tmp_path, capsys):
    out = tmp_path / "report.json"
    status = main(
        [
            "eval",
            "wider",
            "--predictions",
            str(kit / "reference_weights" / "wider_val_predictions"),
            "--gt-dir",
            str(kit / "widerface" / "eval_tools" / "ground_truth"),
            "--out",
            str(out),
            "--tensorboard",
            str(tmp_path / "tb"),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "Easy AP    0.8082" in printed and "Medium AP  0.7791" in printed and "Hard AP    0.5701" in printed
    report = json.loads(out.read_text())
    assert report["ap"] == pytest.approx({"easy": 0.808178, "medium": 0.779099, "hard": 0.570111}, abs=1e-4)
    assert len(report["pr_curves"]["hard"]["precision"]) == 1000
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_cli_reports_a_bad_prediction_file(kit, tmp_path, capsys):
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    image = ground_truth.images[0]
    bad = tmp_path / "pred" / image.event / f"{image.name}.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text(f"{image.name}\n2\n1 2 3 4 0.5\n")
    status = main(
        [
            "eval",
            "wider",
            "--predictions",
            str(tmp_path / "pred"),
            "--gt-dir",
            str(kit / "widerface" / "eval_tools" / "ground_truth"),
        ]
    )
    assert status == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: line 2 says 2 faces but 1 box lines follow"


# ------------------------------------------------------------------------------ running the detector


class CountingDetector:
    """Stands in for MTCNN in resume tests: a fixed box per image, counting the images it sees."""

    batch_size = 2

    def __init__(self):
        self.seen = 0

    def detect(self, images):
        from mtcnn.detect.cascade import Faces

        self.seen += len(images)
        return [
            Faces(
                np.array([[10, 20, 60, 90]], np.float32), np.array([0.9], np.float32), np.zeros((1, 5, 2), np.float32)
            )
            for _ in images
        ]


def test_detect_wider_saves_resumes_and_refuses_other_settings(kit, tmp_path):
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    subset = WiderGroundTruth(ground_truth.images[:3])
    images = kit / "widerface" / "WIDER_val" / "images"
    save = tmp_path / "pred"
    detector = CountingDetector()
    first = detect_wider(detector, subset, images, save, {"min_face_size": 20}, progress=False)
    assert detector.seen == 3
    assert (save / DETECTOR_RECORD).is_file()
    written = save / subset.images[0].event / f"{subset.images[0].name}.txt"
    assert written.read_text().splitlines() == [subset.images[0].name, "1", "10.00 20.00 50.00 70.00 0.89999998"]
    written.unlink()  # as if interrupted before this image
    second = detect_wider(detector, subset, images, save, {"min_face_size": 20}, progress=False)
    assert detector.seen == 4  # only the missing image ran again
    assert evaluate_wider(subset, first).to_dict() == evaluate_wider(subset, second).to_dict()
    with pytest.raises(DataError, match="min_face_size differ"):
        detect_wider(detector, subset, images, save, {"min_face_size": 10}, progress=False)
    (save / DETECTOR_RECORD).unlink()
    with pytest.raises(DataError, match="not empty and without detector.json"):
        detect_wider(detector, subset, images, save, {"min_face_size": 20}, progress=False)
    with pytest.raises(DataError, match="image listed in the ground truth not found"):
        detect_wider(detector, subset, tmp_path, None, progress=False)


def _weights_record(onet_file: str, onet_digest: str) -> dict:
    """A ``weights`` record as :func:`mtcnn.model.weights.weights_fingerprint` writes it."""
    return {
        "pnet": {"file": "/w/pnet.pt", "sha256": "p" * 64},
        "rnet": {"file": "/w/rnet.pt", "sha256": "r" * 64},
        "onet": {"file": onet_file, "sha256": onet_digest},
    }


def test_detect_wider_compares_weights_by_content_not_path(kit, tmp_path):
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    subset = WiderGroundTruth(ground_truth.images[:2])
    images = kit / "widerface" / "WIDER_val" / "images"
    save = tmp_path / "pred"
    detector = CountingDetector()
    settings = {"weights": _weights_record("/w/onet.pt", "a" * 64), "min_face_size": 20}
    detect_wider(detector, subset, images, save, settings, progress=False)
    # The same content elsewhere is the same detector: the folder resumes, nothing runs again.
    moved = {"weights": _weights_record("/elsewhere/onet.pt", "a" * 64), "min_face_size": 20}
    detect_wider(detector, subset, images, save, moved, progress=False)
    assert detector.seen == 2
    # Another file under the same name is another detector.
    replaced = {"weights": _weights_record("/w/onet.pt", "b" * 64), "min_face_size": 20}
    with pytest.raises(DataError) as error:
        detect_wider(detector, subset, images, save, replaced, progress=False)
    assert str(error.value) == (
        f"{save}: holds predictions of other onet weights: /w/onet.pt is not the file recorded in "
        "detector.json (its content differs); use another folder or empty it"
    )
    # A record of paths only (as older versions wrote) cannot vouch for the files' content.
    (save / DETECTOR_RECORD).write_text(
        json.dumps({"weights": {stage: f"/w/{stage}.pt" for stage in ("pnet", "rnet", "onet")}, "min_face_size": 20})
    )
    with pytest.raises(DataError, match="without their content digest .* use another folder or empty it"):
        detect_wider(detector, subset, images, save, settings, progress=False)
    assert detector.seen == 2


@pytest.mark.slow
def test_cli_refuses_to_resume_with_a_weights_file_replaced_in_place(kit, reference_weights, tmp_path, capsys):
    """Replacing onet.pt in the --weights folder and rerunning must not score a mix of two detectors."""
    from mtcnn.model.weights import packaged_weights_dir

    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    gt_dir = write_ground_truth(tmp_path / "gt", ground_truth.images[:2])
    weights = tmp_path / "weights"
    weights.mkdir()
    for stage in ("pnet", "rnet", "onet"):
        shutil.copy(packaged_weights_dir() / f"{stage}.pt", weights)
    save = tmp_path / "pred"

    def run(*extra: str) -> int:
        command = [
            "eval",
            "wider",
            "--gt-dir",
            str(gt_dir),
            "--images",
            str(kit / "widerface" / "WIDER_val" / "images"),
        ]
        return main([*command, "--device", "cpu", "--min-face-size", "40", "--save-predictions", str(save), *extra])

    assert run("--weights", str(weights)) == 0
    first = capsys.readouterr().out
    record = json.loads((save / DETECTOR_RECORD).read_text())
    assert record["weights"]["onet"] == {
        "file": str((weights / "onet.pt").resolve()),
        "sha256": hashlib.sha256((packaged_weights_dir() / "onet.pt").read_bytes()).hexdigest(),
    }
    files = {path: path.stat().st_mtime_ns for path in save.rglob("*.txt")}
    assert len(files) == 2
    # Another O-Net under the same name: refused, in one line naming the file.
    shutil.copy(reference_weights / "onet.pt", weights / "onet.pt")
    assert run("--weights", str(weights)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {save}: holds predictions of other onet weights: {(weights / 'onet.pt').resolve()} is not the "
        "file recorded in detector.json (its content differs); use another folder or empty it"
    )
    assert {path: path.stat().st_mtime_ns for path in save.rglob("*.txt")} == files
    # The shipped weights are fingerprinted too: the same content as the first run's, so the folder
    # resumes untouched (the path does not count).
    assert run() == 0
    assert capsys.readouterr().out == first
    assert {path: path.stat().st_mtime_ns for path in save.rglob("*.txt")} == files


@pytest.mark.slow
def test_real_detector_on_part_of_wider_val(kit, reference_weights, tmp_path, capsys):
    """The whole command on a ground truth cut to a few real images: detector, files, scoring."""
    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    subset = ground_truth.images[::60]
    gt_dir = write_ground_truth(tmp_path / "gt", subset)
    save = tmp_path / "pred"
    status = main(
        [
            "eval",
            "wider",
            "--gt-dir",
            str(gt_dir),
            "--images",
            str(kit / "widerface" / "WIDER_val" / "images"),
            "--weights",
            str(reference_weights),
            "--device",
            "cpu",
            "--save-predictions",
            str(save),
            "--out",
            str(tmp_path / "report.json"),
        ]
    )
    assert status == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == len(subset) and report["detector"]["min_face_size"] == 20
    # Rescoring the saved files gives the same figures; and the original detector's predictions for
    # the same images score close to ours (same weights, independent implementation).
    rescored = evaluate_wider(WiderGroundTruth(subset), read_prediction_dir(save, WiderGroundTruth(subset)))
    assert rescored.to_dict(include_curves=False)["ap"] == report["ap"]
    reference = evaluate_wider(
        WiderGroundTruth(subset),
        read_prediction_dir(kit / "reference_weights" / "wider_val_predictions", WiderGroundTruth(subset)),
    )
    for setting in SETTINGS:
        assert report["ap"][setting] == pytest.approx(reference.ap[setting], abs=0.1)
