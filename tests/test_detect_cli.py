"""`mtcnn detect` as a user runs it: JSON output, drawings, bad files, missing weights."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from full_disk import fill_disk, leftovers, one_error_line

from mtcnn import cli


@pytest.fixture()
def photos(kit: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "party").mkdir(parents=True)
    shutil.copy(kit / "samples" / "2007_007763.jpg", folder / "party" / "family.jpg")
    shutil.copy(kit / "samples" / "dogs.jpg", folder / "dogs.jpg")
    shutil.copy(kit / "samples" / "astronaut.png", folder / "astronaut.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_to_json_and_drawings(photos, reference_weights, tmp_path, capsys):
    out, drawn = tmp_path / "faces.json", tmp_path / "drawn"
    status = cli.main(
        [
            "detect",
            str(photos),
            "--weights",
            str(reference_weights),
            "--device",
            "cpu",
            "--output",
            str(out),
            "--save-images",
            str(drawn),
        ]
    )
    assert status == 0
    document = json.loads(out.read_text())
    by_name = {Path(image["path"]).name: image for image in document["images"]}
    assert set(by_name) == {"family.jpg", "dogs.jpg", "astronaut.png"}  # notes.txt is not an image
    assert document["errors"] == []
    family = by_name["family.jpg"]
    assert (family["width"], family["height"]) == (500, 375)
    assert len(family["faces"]) == 7 and by_name["dogs.jpg"]["faces"] == []
    for face in family["faces"]:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 500 and 0 <= y1 < y2 <= 375 and 0.7 <= face["score"] <= 1
        assert len(face["landmarks"]) == 5
        assert all(x1 - 5 <= x <= x2 + 5 and y1 - 5 <= y <= y2 + 5 for x, y in face["landmarks"])
    # Drawings mirror the folder layout below the folder given.
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.*")) == [
        "astronaut.png",
        "dogs.jpg",
        "party/family.jpg",
    ]


def test_bad_files_are_reported_and_the_rest_still_processed(photos, reference_weights, tmp_path, capsys):
    broken = photos / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is no JPEG")
    missing = tmp_path / "missing.jpg"
    status = cli.main(
        [
            "detect",
            str(photos / "party" / "family.jpg"),
            str(broken),
            str(missing),
            "--weights",
            str(reference_weights),
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1
    document = json.loads(captured.out)
    assert [Path(image["path"]).name for image in document["images"]] == ["family.jpg"]
    assert len(document["images"][0]["faces"]) == 7
    assert {Path(error["path"]).name for error in document["errors"]} == {"broken.jpg", "missing.jpg"}
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert any("broken.jpg: not a decodable image" in line for line in errors)
    assert any("missing.jpg: cannot read" in line for line in errors)
    assert "2 of 3 images could not be read or were too large" in captured.err


def test_a_photo_too_large_for_the_free_memory_is_an_error_of_its_own(photos, reference_weights, monkeypatch, capsys):
    import mtcnn.detect.cascade as cascade

    huge = photos / "huge.jpg"
    family = cv2.imread(str(photos / "party" / "family.jpg"))
    cv2.imwrite(str(huge), cv2.resize(family, (2000, 1500)))
    # Room for the 500 x 375 and 900 x 916 photos one at a time, not for the 3-megapixel one nor a batch.
    monkeypatch.setattr(cascade, "available_memory_bytes", lambda: 60 * 2**20)
    paths = [str(photos / "party" / "family.jpg"), str(huge), str(photos / "dogs.jpg")]
    status = cli.main(["detect", *paths, "--weights", str(reference_weights), "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 1
    document = json.loads(captured.out)
    assert [Path(image["path"]).name for image in document["images"]] == ["family.jpg", "dogs.jpg"]
    assert len(document["images"][0]["faces"]) == 7
    assert [Path(error["path"]).name for error in document["errors"]] == ["huge.jpg"]
    assert "huge.jpg: detecting in a 2000 x 1500 image needs about" in captured.err


def test_glob_patterns_expand(photos, reference_weights, capsys):
    status = cli.main(
        [
            "detect",
            str(photos / "*.png"),
            "--weights",
            str(reference_weights),
            "--device",
            "cpu",
            "--min-face-size",
            "40",
            "--thresholds",
            "0.6",
            "0.7",
            "0.8",
            "--batch-size",
            "2",
        ]
    )
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert [Path(image["path"]).name for image in document["images"]] == ["astronaut.png"]
    assert len(document["images"][0]["faces"]) == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--weights", "{tmp}/nowhere"], "nowhere: weights must be a folder holding pnet.pt, rnet.pt and onet.pt"),
        (["--weights", "{weights}", "--scale-factor", "1.5"], "scale_factor must be in (0, 1)"),
        (["--weights", "{weights}", "--device", "tpu"], "unknown device 'tpu'; expected auto, cpu, cuda"),
        (["--weights", "{weights}", "--landmark-scales", "0.9,0"], "landmark_scales must be positive, got [0.9, 0.0]"),
    ],
)
def test_bad_options_are_one_line_errors(photos, reference_weights, tmp_path, capsys, arguments, message):
    arguments = [a.format(tmp=tmp_path, weights=reference_weights) for a in arguments]
    status = cli.main(["detect", str(photos / "dogs.jpg"), *arguments])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_landmark_scales_option_is_one_word_before_or_after_the_paths(photos, reference_weights, capsys):
    from mtcnn.detect.cascade import MTCNN

    family = photos / "party" / "family.jpg"
    options = ["--weights", str(reference_weights), "--device", "cpu"]
    for arguments, expected in (
        (["--landmark-scales", "none", str(family), *options], ()),
        ([str(family), "--landmark-scales", "0.9,1.1", *options], (0.9, 1.1)),
    ):
        assert cli.main(["detect", *arguments]) == 0
        faces = json.loads(capsys.readouterr().out)["images"][0]["faces"]
        library = MTCNN(reference_weights, device="cpu", landmark_scales=expected).detect(family)
        assert len(faces) == len(library) == 7
        np.testing.assert_allclose([face["landmarks"] for face in faces], library.landmarks, atol=0.01)
    with pytest.raises(SystemExit):  # argparse's own usage error
        cli.main(["detect", "--landmark-scales", "0.9,x", str(family)])
    assert "expected comma-separated numbers or none, got '0.9,x'" in capsys.readouterr().err


def test_no_images_found_is_an_error(tmp_path, reference_weights, capsys):
    assert cli.main(["detect", str(tmp_path), "--weights", str(reference_weights)]) == 2
    assert "no images found" in capsys.readouterr().err


@pytest.mark.parametrize("mirror_onet, name", [(True, "mtcnn"), (False, "mtcnn, O-Net once")])
def test_bench_detect_times_the_cascade_it_names(kit, reference_weights, mirror_onet, name):
    from mtcnn.detect.bench import bench_detect, benchmark_images
    from mtcnn.detect.cascade import MTCNN

    images = benchmark_images(kit / "samples", 3)
    rows = bench_detect(
        reference_weights,
        images,
        min_face_sizes=(40,),
        batch_sizes=(1,),
        repeats=1,
        device="cpu",
        compare_facenet=False,
        mirror_onet=mirror_onet,
        measure_memory=mirror_onet,  # one fresh process is enough to check the measurement
    )
    detector = MTCNN(reference_weights, device="cpu", min_face_size=40, mirror_onet=mirror_onet)
    assert [(row.detector, row.min_face_size, row.batch_size) for row in rows] == [(name, 40, 1)]
    assert rows[0].faces == sum(len(faces) for faces in detector.detect(images)) > 0
    assert rows[0].images_per_second > 0
    if mirror_onet:
        # A fresh process that imported torch and ran the nets: hundreds of MB, not this process's peak.
        assert 2**27 < rows[0].peak_memory_bytes < 2**33
    else:
        assert rows[0].peak_memory_bytes is None


def test_bench_rounds_take_turns_and_the_table_gives_the_ratio_to_facenet_pytorch():
    from mtcnn.detect.bench import DetectRow, alternating_medians, format_detect_table

    calls = []
    seconds = alternating_medians([lambda: calls.append("ours"), lambda: calls.append("theirs")], repeats=3)
    assert calls == ["ours", "theirs"] * 3  # every round times each once, in turn
    assert len(seconds) == 2 and all(value >= 0 for value in seconds)
    rows = [
        DetectRow("mtcnn", 20, 1, 9.0, 10),
        DetectRow("facenet-pytorch", 20, 1, 4.5, 9),
        DetectRow("mtcnn", 40, 1, 20.0, 8),  # no facenet-pytorch row at 40: no ratio
    ]
    lines = format_detect_table(rows, "a machine", 24, 3, "data/widerface/WIDER_val/images").splitlines()
    assert lines[2].split(" | ")[4] == "2.00"
    assert lines[3].split(" | ")[4] == "-" and lines[4].split(" | ")[4] == "-"
    assert lines[-1].startswith("24 images from data/widerface/WIDER_val/images, decoded beforehand")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_child_process_reports_its_own_peak_memory_not_its_parents():
    # getrusage's maxrss survives fork and exec: the bench's fresh processes reported this
    # process's size instead of their own whenever it was the larger.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from mtcnn.detect.bench import own_peak_resident_bytes

    ballast = bytearray(3 * 2**30)
    ballast[:: 2**12] = b"\x01" * len(ballast[:: 2**12])  # every page touched: resident here
    assert own_peak_resident_bytes() > 3 * 2**30
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child_peak = pool.submit(own_peak_resident_bytes).result()
    del ballast
    assert 2**20 < child_peak < 2 * 2**30


def test_json_output_is_compact_a_line_per_face(photos, reference_weights, capsys):
    family = photos / "party" / "family.jpg"
    assert cli.main(["detect", str(family), str(photos / "dogs.jpg"), "--weights", str(reference_weights)]) == 0
    text = capsys.readouterr().out
    document = json.loads(text)
    faces = document["images"][0]["faces"]
    assert len(faces) == 7 and document["images"][1]["faces"] == []
    face_lines = [line for line in text.splitlines() if '"box"' in line]
    assert [json.JSONDecoder().raw_decode(line.strip())[0] for line in face_lines] == faces  # one face a line
    assert len(text.splitlines()) == 2 + len(faces) + 2  # opening, image, faces, image, errors


def test_a_full_disk_at_the_outputs_is_one_line_and_leaves_no_temporary(
    photos, reference_weights, tmp_path, capsys, monkeypatch
):
    fill_disk(monkeypatch, ".json", ".jpg")
    out, drawn = tmp_path / "out" / "faces.json", tmp_path / "drawn"
    detect = ["detect", str(photos / "dogs.jpg"), "--weights", str(reference_weights)]
    assert cli.main([*detect, "--output", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {out}: cannot write (no space left on device)"
    assert cli.main([*detect, "--save-images", str(drawn)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {drawn / 'dogs.jpg'}: cannot write (no space left on device)"
    assert leftovers(tmp_path) == [] and not out.exists() and not (drawn / "dogs.jpg").exists()


def test_bad_output_names_are_refused_before_the_detection(photos, reference_weights, tmp_path, capsys, monkeypatch):
    def no_detection(args):
        raise AssertionError("the detector was built before the outputs were checked")

    monkeypatch.setattr(cli.detect, "detector_from_args", no_detection)
    (tmp_path / "results").mkdir()
    (tmp_path / "taken.txt").write_text("a file")
    for option, path, message in (
        ("--output", tmp_path / "results", "results: is a folder; give a file name to write"),
        ("--output", tmp_path / "taken.txt" / "faces.json", "taken.txt is a file, not a folder)"),
        ("--save-images", tmp_path / "taken.txt", "taken.txt: is a file; give a folder to write into"),
    ):
        assert cli.main(["detect", str(photos / "dogs.jpg"), option, str(path)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {tmp_path}") and line.endswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "results", "taken.txt"]


def test_missing_inputs_are_refused_without_writing_anything(reference_weights, tmp_path, capsys):
    out = tmp_path / "faces.json"
    missing = [str(tmp_path / "photos"), str(tmp_path / "*.jpg")]
    assert cli.main(["detect", *missing, "--weights", str(reference_weights), "--output", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: no images found: no such file or folder: {' '.join(missing)}"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_symlinked_subfolders_are_searched_each_real_folder_once(photos, tmp_path):
    from mtcnn.detect.inputs import expand_image_arguments

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(photos / "dogs.jpg", elsewhere / "more.jpg")
    (photos / "linked").symlink_to(elsewhere)
    (photos / "linked-again").symlink_to(elsewhere)
    (photos / "party" / "loop").symlink_to(photos)  # back up the tree: must not loop
    (photos / "another-party").symlink_to(photos / "party")  # in the tree already, by its own path
    found = [(str(path.relative_to(photos)), str(name)) for path, name in expand_image_arguments([photos])]
    assert found == [
        ("astronaut.png", "astronaut.png"),
        ("dogs.jpg", "dogs.jpg"),
        ("linked/more.jpg", "linked/more.jpg"),
        ("party/family.jpg", "party/family.jpg"),
    ]
