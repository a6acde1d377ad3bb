"""Annotation readers on the kit's real files and on broken copies of their lines."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mtcnn.data.readers import LandmarkFace, points_outside, read_celeba, read_landmark_list, read_wider
from mtcnn.errors import DataError


def _wider_paths(kit: Path, split: str = "train") -> tuple[Path, Path]:
    root = kit / "widerface"
    return (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt", root / f"WIDER_{split}" / "images")


def _raw_wider(annotation: Path) -> dict[str, list[list[int]]]:
    """The obvious reading of the file: every image's face lines as integer lists."""
    lines = annotation.read_text().splitlines()
    faces, i = {}, 0
    while i < len(lines) and lines[i].strip():
        name, count = lines[i].strip(), int(lines[i + 1])
        faces[name] = [list(map(int, line.split())) for line in lines[i + 2 : i + 2 + count]]
        i += 2 + max(count, 1)
    return faces


@pytest.mark.parametrize("split", ["train", "val"])
def test_read_wider_real_file_converts_xywh_once(kit: Path, split: str):
    annotation, images_dir = _wider_paths(kit, split)
    problems: list[str] = []
    images = read_wider(annotation, images_dir, problems)
    raw = _raw_wider(annotation)
    assert [image.name for image in images] == list(raw)
    for image in images[::50]:
        rows = [row for row in raw[image.name] if row[2] > 0 and row[3] > 0]
        assert len(image) == len(rows)
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h, *_ in rows], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(image.boxes, expected)
        np.testing.assert_array_equal(image.invalid, [row[7] == 1 for row in rows])
        np.testing.assert_array_equal(image.occlusion, [row[8] for row in rows])
        np.testing.assert_array_equal(image.blur, [row[4] for row in rows])
        assert image.path == images_dir / image.name and image.path.is_file()
        assert image.boxes.dtype == np.float32 and image.invalid.dtype == bool
    first = images[0]
    assert raw[first.name][0][:4] == [
        int(v)
        for v in (
            first.boxes[0, 0],
            first.boxes[0, 1],
            first.boxes[0, 2] - first.boxes[0, 0],
            first.boxes[0, 3] - first.boxes[0, 1],
        )
    ]
    if split == "train":  # the kit's train file has one face of width 0, on line 7891
        assert len(problems) == 1 and problems[0].startswith(f"{annotation}:7891:")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_wider_image_without_faces_and_short_face_lines(tmp_path: Path):
    annotation = _write(
        tmp_path / "gt.txt", "a/1.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \nb/2.jpg\n2\n1 2 3 4\n5 6 7 8 1 0 0 1 2 0\nc/3.jpg\n0\n"
    )
    images = read_wider(annotation, tmp_path)
    assert [len(image) for image in images] == [0, 2, 0]
    assert images[0].boxes.shape == (0, 4) and images[0].invalid.shape == (0,)
    np.testing.assert_array_equal(images[1].boxes, [[1, 2, 4, 6], [5, 6, 12, 14]])
    np.testing.assert_array_equal(images[1].invalid, [False, True])
    np.testing.assert_array_equal(images[1].occlusion, [0, 2])
    assert images[1].line == 4


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("a.jpg\nx\n", 2, "expected the face count of 'a.jpg'"),
        ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\nb.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n", 4, "declared 2 faces"),
        ("a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\nb.jpg\n0\n", 4, "expected an image file name"),
        ("a.jpg\n1\n1 2 3 4 0 0 q 0 0 0\n", 3, "expected a face line of numbers"),
        ("a.jpg\n1\n1 2 3\n", 3, "expected a face line"),
        ("a.jpg\n0\n1 2 3 4 0 0 0 0 0 0\n", 3, "declares 0 faces but a face line follows"),
        ("a.jpg\n-1\n", 2, "negative face count"),
    ],
)
def test_read_wider_structural_errors_name_file_and_line(tmp_path: Path, text: str, line: int, match: str):
    annotation = _write(tmp_path / "gt.txt", text)
    with pytest.raises(DataError, match=match) as exc:
        read_wider(annotation, tmp_path)
    assert str(exc.value).startswith(f"{annotation}:{line}:") and "\n" not in str(exc.value)


def test_read_wider_truncated_file_and_missing_file(tmp_path: Path):
    annotation = _write(tmp_path / "gt.txt", "a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match=r"file ends inside image 'a.jpg' \(line 1\), which declares 3 faces"):
        read_wider(annotation, tmp_path)
    with pytest.raises(DataError, match="file ends after image"):
        read_wider(_write(tmp_path / "b.txt", "a.jpg\n"), tmp_path)
    with pytest.raises(DataError, match="cannot read annotation file"):
        read_wider(tmp_path / "absent.txt", tmp_path)


def test_read_wider_reports_empty_boxes_and_keeps_going(tmp_path: Path, caplog):
    annotation = _write(
        tmp_path / "gt.txt", "a.jpg\n3\n1 2 0 4 0 0 0 0 0 0\n1 2 3 -4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n"
    )
    problems: list[str] = []
    with caplog.at_level(logging.WARNING):
        images = read_wider(annotation, tmp_path, problems)
    assert len(images[0]) == 1
    assert [p.split(": ")[0] for p in problems] == [f"{annotation}:3", f"{annotation}:4"]
    assert f"{annotation}:3:" in caplog.text


def test_read_landmark_list_real_file_box_order(kit: Path):
    list_file = kit / "landmarks" / "trainImageList.txt"
    faces = read_landmark_list(list_file)
    lines = list_file.read_text().splitlines()
    assert len(faces) == len(lines) == 5849
    for index in (0, 1, 2000, 5848):
        fields = lines[index].split()
        left, right, top, bottom = map(float, fields[1:5])
        face = faces[index]
        assert face.path == list_file.parent / fields[0] and face.path.is_file()
        np.testing.assert_allclose(face.box, [left, top, right, bottom])
        np.testing.assert_allclose(face.points.reshape(-1), list(map(float, fields[5:])))
        assert face.line == index + 1 and face.where == f"{list_file}:{index + 1}"
    # Left/right as seen in the image: the left eye and mouth corner have the smaller x.
    points = np.stack([face.points for face in faces])
    assert (points[:, 0, 0] < points[:, 1, 0]).mean() > 0.99
    assert (points[:, 3, 0] < points[:, 4, 0]).mean() > 0.99
    # Every point lies within its face box's neighbourhood: a box-order mix-up would break this.
    boxes = np.stack([face.box for face in faces])
    inside = (
        (points[..., 0] >= boxes[:, None, 0])
        & (points[..., 0] <= boxes[:, None, 2])
        & (points[..., 1] >= boxes[:, None, 1])
        & (points[..., 1] <= boxes[:, None, 3])
    )
    assert inside.mean() > 0.99


def test_read_landmark_list_errors_and_warnings(tmp_path: Path):
    good = "img\\a.jpg 10 50 20 60 20 30 40 30 30 40 22 50 38 50\n"
    faces = read_landmark_list(_write(tmp_path / "l.txt", good), images_root=tmp_path / "root")
    assert faces[0].path == tmp_path / "root" / "img" / "a.jpg"
    np.testing.assert_array_equal(faces[0].box, [10, 20, 50, 60])
    bad_count = _write(tmp_path / "l.txt", good + "a.jpg 1 2 3\n")
    with pytest.raises(DataError, match=r"l.txt:2: expected 'path left right top bottom'"):
        read_landmark_list(bad_count)
    bad_number = _write(tmp_path / "l.txt", good + good.replace("22", "2x"))
    with pytest.raises(DataError, match=r"l.txt:2: expected 14 numbers"):
        read_landmark_list(bad_number)
    problems: list[str] = []
    flipped = good.replace("10 50 20 60", "50 10 20 60")
    negative = good.replace("20 30 40", "-3 30 40")
    faces = read_landmark_list(_write(tmp_path / "l.txt", good + flipped + negative), problems=problems)
    assert len(faces) == 1
    assert problems[0].startswith(f"{tmp_path / 'l.txt'}:2: box") and "zero or negative size" in problems[0]
    assert problems[1].startswith(f"{tmp_path / 'l.txt'}:3: landmark point outside the image")


def test_points_outside_the_decoded_image():
    face = LandmarkFace(
        Path("x.jpg"),
        np.array([0, 0, 10, 10], np.float32),
        np.array([[1, 1], [5, 1], [3, 4], [2, 8], [12, 8]], np.float32),
        Path("l.txt"),
        7,
    )
    assert points_outside(face, height=20, width=20) is None
    message = points_outside(face, height=20, width=11)
    assert message.startswith("l.txt:7: landmark point 5 (12, 8) lies outside the 11x20 image")


CELEBA_BBOX = """3
image_id x_1 y_1 width height
000001.jpg    95  71 226 313
000002.jpg    72  94 221 306
000003.jpg   216  59  91 126
"""
CELEBA_LANDMARKS = """3
lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y
000001.jpg 165  184  244  176  196  249  194  271  266  260
000002.jpg 140  204  220  204  168  254  146  289  226  289
000003.jpg 244  104  264  105  263  121  235  134  251  140
"""


def test_read_celeba_formats(tmp_path: Path):
    bbox = _write(tmp_path / "list_bbox_celeba.txt", CELEBA_BBOX)
    marks = _write(tmp_path / "list_landmarks_celeba.txt", CELEBA_LANDMARKS)
    faces = read_celeba(bbox, marks, tmp_path / "img_celeba")
    assert [face.path.name for face in faces] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert faces[0].path == tmp_path / "img_celeba" / "000001.jpg"
    np.testing.assert_array_equal(faces[0].box, [95, 71, 321, 384])
    np.testing.assert_array_equal(faces[2].points, [[244, 104], [264, 105], [263, 121], [235, 134], [251, 140]])
    assert faces[1].where == f"{bbox}:4"


@pytest.mark.parametrize(
    "which, text, match",
    [
        ("bbox", CELEBA_BBOX.replace("3\n", "4\n", 1), r"list_bbox_celeba.txt:1: declares 4 images but lists 3"),
        ("bbox", CELEBA_BBOX.replace(" 91 126", " 91"), r"list_bbox_celeba.txt:5: expected an image id and 4 numbers"),
        ("bbox", CELEBA_BBOX.replace("image_id", "id"), r"list_bbox_celeba.txt:2: expected the header line"),
        ("marks", CELEBA_LANDMARKS.replace("196", "1x6"), r"list_landmarks_celeba.txt:3: expected 10 numbers"),
        (
            "marks",
            CELEBA_LANDMARKS.replace("000003", "000004"),
            r"list_bbox_celeba.txt:5: image '000003.jpg' has no landmarks",
        ),
        ("bbox", CELEBA_BBOX.replace("000002", "000001"), r"list_bbox_celeba.txt:4: image '000001.jpg' listed twice"),
    ],
)
def test_read_celeba_errors(tmp_path: Path, which: str, text: str, match: str):
    bbox = _write(tmp_path / "list_bbox_celeba.txt", text if which == "bbox" else CELEBA_BBOX)
    marks = _write(tmp_path / "list_landmarks_celeba.txt", text if which == "marks" else CELEBA_LANDMARKS)
    with pytest.raises(DataError, match=match) as exc:
        read_celeba(bbox, marks, tmp_path)
    assert "\n" not in str(exc.value)
