"""The cascade: agreement with the reference implementation, input types, batching, edge cases."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from mtcnn.detect.cascade import MTCNN, Faces
from mtcnn.errors import MemoryLimitError
from mtcnn.model.nets import MirrorAveraged
from mtcnn.spec import STAGES

SAMPLE = "samples/2007_007763.jpg"  # seven faces, 375 x 500


@pytest.fixture(scope="module")
def detector(reference_weights) -> MTCNN:
    # O-Net once per crop and landmarks from that one window, as the original cascade that made
    # the reference detections runs it.
    return MTCNN(reference_weights, device="cpu", mirror_onet=False, landmark_scales=())


@pytest.fixture(scope="module")
def reference(kit) -> dict:
    return json.loads((kit / "reference_detections.json").read_text())


@pytest.fixture(scope="module")
def reference_results(detector, reference, kit) -> tuple[list[str], list[Faces]]:
    names = list(reference["images"])
    return names, detector.detect([kit / name for name in names])


def to_continuous(box: list[float]) -> list[float]:
    """facenet-pytorch reports x1, y1 as 1-based pixel indices (MATLAB heritage: its crop of a box is
    pixels x1 - 1 ... x2 - 1, 0-based); ours are continuous coordinates, so x1, y1 are one less."""
    return [box[0] - 1, box[1] - 1, box[2], box[3]]


def test_agrees_with_the_reference_implementation(reference, reference_results):
    names, results = reference_results
    assert reference["settings"]["min_face_size"] == 20 and reference["settings"]["thresholds"] == [0.6, 0.7, 0.7]
    reference_faces = found = landmarks_close = our_faces = ours_matched = 0
    for name, ours in zip(names, results):
        theirs = [face for face in reference["images"][name]]
        their_boxes = torch.tensor([to_continuous(face["box"]) for face in theirs]).reshape(-1, 4)
        their_scores = torch.tensor([face["score"] for face in theirs])
        their_points = torch.tensor([face["landmarks"] for face in theirs]).reshape(-1, 5, 2)
        iou = box_iou(their_boxes, torch.from_numpy(ours.boxes))
        for i in torch.nonzero(their_scores >= 0.9).flatten().tolist():
            reference_faces += 1
            if iou.shape[1] and iou[i].max() >= 0.8:
                found += 1
                j = int(iou[i].argmax())
                side = float((their_boxes[i, 2:] - their_boxes[i, :2]).max())
                error = (torch.from_numpy(ours.landmarks[j]) - their_points[i]).norm(dim=1).max() / side
                landmarks_close += bool(error <= 0.1)
        for j in np.nonzero(ours.scores >= 0.9)[0]:
            our_faces += 1
            ours_matched += bool(iou.shape[0] and iou[:, j].max() >= 0.8)
    assert reference_faces > 250
    assert found / reference_faces >= 0.95, f"found {found} of {reference_faces} reference faces"
    assert landmarks_close / found >= 0.95, f"landmarks within 10% for {landmarks_close} of {found}"
    assert ours_matched / our_faces >= 0.95, f"{ours_matched} of our {our_faces} faces match the reference"


def test_no_face_gives_empty_arrays(detector, kit):
    faces = detector.detect(kit / "samples" / "dogs.jpg")
    assert isinstance(faces, Faces) and len(faces) == 0
    assert faces.boxes.shape == (0, 4) and faces.scores.shape == (0,) and faces.landmarks.shape == (0, 5, 2)
    assert faces.boxes.dtype == faces.scores.dtype == faces.landmarks.dtype == np.float32


def test_image_smaller_than_the_window_has_no_faces(detector):
    results = detector.detect([np.full((11, 40, 3), 128, np.uint8), np.zeros((1, 1, 3), np.uint8)])
    assert [len(faces) for faces in results] == [0, 0]


def assert_same_faces(a: Faces, b: Faces, atol: float = 0.05) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=atol)


def test_input_types_give_the_same_faces(detector, kit):
    path = kit / SAMPLE
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    expected = detector.detect(path)
    assert len(expected) == 7
    for image in (str(path), rgb, torch.from_numpy(rgb).permute(2, 0, 1), Image.open(path), rgb.astype(np.float32)):
        assert_same_faces(detector.detect(image), expected)


def test_batching_images_of_different_sizes_changes_nothing(detector, kit):
    paths = [
        kit / SAMPLE,
        kit / "samples" / "astronaut.png",
        kit / "samples" / "2008_002079.jpg",
        kit / "samples" / "dogs.jpg",
    ]
    for mirror_onet in (False, True):
        plain = MTCNN(nets=detector.nets, device="cpu", mirror_onet=mirror_onet)
        one_by_one = [plain.detect(path) for path in paths]
        chunked = MTCNN(
            nets=detector.nets,
            device="cpu",
            batch_size=3,
            pnet_pixel_budget=150_000,
            crop_pixel_budget=3_000,
            mirror_onet=mirror_onet,
        )
        for batched in (plain.detect(paths), chunked.detect(paths)):
            for single, together in zip(one_by_one, batched):
                assert_same_faces(together, single)


def in_position_order(faces: Faces) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores ordered by position: scores that differ only by rounding may swap places."""
    order = np.lexsort((faces.boxes[:, 1].round(2), faces.boxes[:, 0].round(2)))
    return faces.boxes[order], faces.scores[order]


def test_every_stage_of_an_image_is_the_same_alone_or_in_a_batch(kit):
    # P-Net's windows two cells apart overlap by exactly the NMS threshold (IoU 0.5), so the
    # rounding of that overlap decides whether one suppresses the other; it must not depend on
    # the other images of the batch. With the shipped weights (windows mapped back exactly, so
    # not on whole pixels) and torchvision's batched NMS, two of these WIDER_val images of
    # several sizes lost or gained a P-Net box when batched.
    paths = sorted((kit / "widerface" / "WIDER_val" / "images").glob("*/*.jpg"))[:6]
    detector = MTCNN(device="cpu", batch_size=len(paths))
    alone = [detector.detect_stages([path])[0] for path in paths]
    together = detector.detect_stages(paths)
    for path, single, batched in zip(paths, alone, together):
        for stage in STAGES:
            assert len(batched[stage]) == len(single[stage]), f"{path.name}, {stage}"
            (boxes, scores), (expected_boxes, expected_scores) = map(in_position_order, (batched[stage], single[stage]))
            np.testing.assert_allclose(boxes, expected_boxes, atol=1e-3, err_msg=f"{path.name}, {stage}")
            np.testing.assert_allclose(scores, expected_scores, atol=1e-5, err_msg=f"{path.name}, {stage}")


def test_grayscale_rgba_16_bit_and_exif_rotated_files(detector, kit, tmp_path):
    rgb = cv2.cvtColor(cv2.imread(str(kit / SAMPLE)), cv2.COLOR_BGR2RGB)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    cv2.imwrite(str(tmp_path / "deep.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    # Stored rotated 90 degrees clockwise, with EXIF orientation 8 saying "rotate back".
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=-1)))
    exif = Image.Exif()
    exif[0x0112] = 8
    rotated.save(tmp_path / "rotated.jpg", exif=exif, quality=95)

    upright = detector.detect(rgb)
    for name in ("rgba.png", "deep.png"):
        assert_same_faces(detector.detect(tmp_path / name), upright, atol=0.5)
    gray_faces = detector.detect(tmp_path / "gray.png")
    assert len(gray_faces) >= 5 and gray_faces.boxes.shape[1] == 4
    exif_faces = detector.detect(tmp_path / "rotated.jpg")
    assert len(exif_faces) == len(upright)
    iou = box_iou(torch.from_numpy(exif_faces.boxes), torch.from_numpy(upright.boxes))
    assert (iou.max(dim=1).values > 0.8).all()


def test_thousands_of_candidates_and_a_large_image(detector, kit):
    # Thresholds of 0 let every P-Net window through: thousands of boxes reach R-Net and O-Net.
    permissive = MTCNN(nets=detector.nets, device="cpu", thresholds=(0.0, 0.0, 0.0), min_face_size=40)
    stages = permissive.detect_stages([kit / SAMPLE])[0]
    assert len(stages["pnet"]) > 1000
    assert len(stages["onet"]) > 7
    large = cv2.resize(cv2.cvtColor(cv2.imread(str(kit / SAMPLE)), cv2.COLOR_BGR2RGB), (4000, 3000))
    faces = MTCNN(nets=detector.nets, device="cpu", min_face_size=80).detect(large)
    assert len(faces) >= 6


@pytest.mark.parametrize("height", [11, 12, 57, 58, 203])
def test_pnet_in_bands_of_rows_gives_the_maps_of_the_whole_level(detector, height):
    # Odd and even heights: the last band carries the ceil-mode row of the whole level's pooling.
    torch.manual_seed(height)
    level = (torch.rand(2, 3, height, 37) * 255).contiguous(memory_format=torch.channels_last)
    pnet = detector.nets["pnet"]
    with torch.inference_mode():
        whole = pnet.forward_detect(level)
        for budget in (1, 2 * 37 * 20, 2 * 37 * 31):
            banded = MTCNN(nets=detector.nets, device="cpu", pnet_pixel_budget=budget)._pnet_in_bands(pnet, level)
            for ours, reference in zip(banded, whole):
                assert ours.shape == reference.shape
                torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_a_level_over_the_pnet_budget_gives_the_same_faces(detector, kit):
    banded = MTCNN(nets=detector.nets, device="cpu", mirror_onet=False, landmark_scales=(), pnet_pixel_budget=20_000)
    assert_same_faces(banded.detect(kit / SAMPLE), detector.detect(kit / SAMPLE))


def test_images_too_large_for_the_free_memory_are_refused_in_one_line(detector, kit, monkeypatch):
    import mtcnn.detect.cascade as cascade

    # The sample (500 x 375) needs about 8 MiB of working memory: it fits in 15 MiB alone, two do not.
    monkeypatch.setattr(cascade, "available_memory_bytes", lambda: 15 * 2**20)
    assert len(detector.detect(kit / SAMPLE)) == 7
    assert len(detector.detect([kit / SAMPLE, kit / SAMPLE])[1]) == 7  # one image per batch on the CPU
    detector = MTCNN(nets=detector.nets, device="cpu", batch_size=2, mirror_onet=False, landmark_scales=())
    pair = "2007_007763.jpg and 1 more: detecting in 0.4 megapixels at once needs about 16 MiB more memory"
    with pytest.raises(MemoryLimitError, match=pair + ", and 15 MiB is free; detect fewer images at a time"):
        detector.detect([kit / SAMPLE, kit / SAMPLE])
    monkeypatch.setattr(cascade, "available_memory_bytes", lambda: 5 * 2**20)
    with pytest.raises(MemoryLimitError, match=r"2007_007763.jpg: detecting in a 500 x 375 image needs about"):
        detector.detect(kit / SAMPLE)


def test_stage_outputs_narrow_down(detector, kit):
    stages = detector.detect_stages([kit / SAMPLE], last_stage="onet")[0]
    assert len(stages["pnet"]) >= len(stages["rnet"]) >= len(stages["onet"]) == 7
    assert np.isnan(stages["pnet"].landmarks).all() and np.isfinite(stages["onet"].landmarks).all()
    only_pnet = MTCNN(nets={"pnet": detector.nets["pnet"]}, device="cpu")
    assert set(only_pnet.detect_stages([kit / SAMPLE], last_stage="pnet")[0]) == {"pnet"}
    with pytest.raises(ValueError, match="needs weights for R-Net, O-Net"):
        only_pnet.detect(kit / SAMPLE)


def test_mirrored_onet_changes_the_onet_stage_only(detector, kit):
    plain = MTCNN(nets=detector.nets, device="cpu", mirror_onet=False).detect_stages([kit / SAMPLE])[0]
    mirrored = MTCNN(nets=detector.nets, device="cpu").detect_stages([kit / SAMPLE])[0]
    by_hand = MTCNN(
        nets={**detector.nets, "onet": MirrorAveraged(detector.nets["onet"])}, device="cpu", mirror_onet=False
    ).detect_stages([kit / SAMPLE])[0]
    for stage in ("pnet", "rnet"):
        assert_same_faces(mirrored[stage], plain[stage], atol=0.0)
    assert_same_faces(mirrored["onet"], by_hand["onet"], atol=1e-3)
    assert len(mirrored["onet"]) == len(plain["onet"]) == 7
    assert not np.allclose(mirrored["onet"].scores, plain["onet"].scores, atol=1e-6, rtol=0)
    assert not np.allclose(mirrored["onet"].landmarks, plain["onet"].landmarks, atol=0.1)


def test_landmark_scales_average_the_points_of_the_scaled_onet_windows(kit):
    # Slow reference: O-Net's points on each window it saw (the R-Net boxes, squared) and on that
    # window scaled, averaged by hand, against the cascade's points for the face from that window.
    single = MTCNN(device="cpu", landmark_scales=())
    averaged = MTCNN(nets=single.nets, device="cpu", landmark_scales=(0.8, 1.25))
    stages = single.detect_stages([kit / SAMPLE])[0]
    faces = averaged.detect(kit / SAMPLE)
    np.testing.assert_array_equal(faces.boxes, stages["onet"].boxes)
    np.testing.assert_array_equal(faces.scores, stages["onet"].scores)
    windows = stages["rnet"].boxes
    points_per_window = single.landmarks_in_boxes(kit / SAMPLE, windows)
    by_hand = averaged.landmarks_in_boxes(kit / SAMPLE, windows)
    assert len(faces) >= 7  # the photo's seven faces (the shipped weights add a box on a shirt)
    for face, points in enumerate(stages["onet"].landmarks):
        # the window a face came from is the one whose single-window points are the face's
        distance = np.abs(points_per_window - points).max(axis=(1, 2))
        window = int(distance.argmin())
        assert distance[window] < 1e-3 and np.sort(distance)[1] > 0.1  # one window only
        np.testing.assert_allclose(faces.landmarks[face], by_hand[window], atol=1e-3)
    assert np.abs(faces.landmarks - stages["onet"].landmarks).max() > 0.5


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("thresholds", (0.6, 0.7), "thresholds needs 3 values"),
        ("thresholds", (0.6, 0.7, 1.5), "threshold must be in"),
        ("scale_factor", 1.2, "scale_factor must be in"),
        ("min_face_size", 0, "min_face_size must be positive"),
        ("landmark_scales", (1.1, 0.0), "landmark_scales must be positive"),
    ],
)
def test_bad_settings_are_rejected(detector, option, value, message):
    with pytest.raises(ValueError, match=message):
        MTCNN(nets=detector.nets, device="cpu", **{option: value})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("settings", ["original cascade", "defaults"])
def test_cuda_finds_the_faces_the_cpu_finds(detector, kit, settings):
    if settings == "defaults":  # shipped weights, mirrored O-Net, landmark windows
        on_cpu, on_gpu = MTCNN(device="cpu"), MTCNN(device="cuda")
    else:  # .to() would move the fixture's shared nets: a copy goes to the GPU
        on_cpu = detector
        on_gpu = MTCNN(nets=copy.deepcopy(detector.nets), device="cuda", mirror_onet=False, landmark_scales=())
    expected, found = on_cpu.detect(kit / SAMPLE), on_gpu.detect(kit / SAMPLE)
    # The nets' outputs agree to 1e-5 on both devices (TF32 is off: full_float32), but sums in
    # another order can tip a near tie between two P-Net windows, and the other window then gives
    # R-Net and O-Net another crop: on an H200 one face of the seven moved by 0.57 px and its
    # score by 0.006 (0.9895 against 0.9954). So: the same faces, matched by overlap, not the same bits.
    count = len(expected)
    assert count >= 7 and len(found) == count
    overlap = box_iou(torch.from_numpy(found.boxes), torch.from_numpy(expected.boxes)).numpy()
    match = overlap.argmax(axis=1)
    assert sorted(match) == list(range(count)), "each GPU face overlaps a different CPU face most"
    assert overlap[range(count), match].min() > 0.9
    np.testing.assert_allclose(found.scores, expected.scores[match], atol=0.02)
    np.testing.assert_allclose(found.landmarks, expected.landmarks[match], atol=2.0)
