"""Face and landmark sources besides WIDER: YOLO label folders, COCO JSON and CelebA lists, read
from real files (the kit's YOLO conversion) and from files the tests write out of the kit's own
WIDER and CNN_FacePoint annotations, so that the same faces can be compared across formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from test_prep import kit_config, wider_source

from mtcnn.cli import main
from mtcnn.config import ConfigError, load_config
from mtcnn.data.prepare import SOURCE_FACES, prepare
from mtcnn.data.readers import (
    default_labels_dir,
    read_coco,
    read_landmark_list,
    read_wider,
    read_yolo,
)
from mtcnn.data.store import SampleStore
from mtcnn.errors import DataError

#: WIDER_train images of the kit the format tests convert: the first with faces and none marked
#: invalid (a flag YOLO files cannot carry), faces of many sizes.
IMAGES = 6


def _kit_wider(kit: Path):
    split = kit / "widerface" / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    images = read_wider(split, kit / "widerface" / "WIDER_train" / "images")
    return [image for image in images if len(image) and not image.invalid.any()][:IMAGES]


def _image_size(path: Path) -> tuple[int, int]:
    height, width = cv2.imread(str(path)).shape[:2]
    return width, height


def write_yolo(images, root: Path) -> Path:
    """The images (symlinked) and their faces as a YOLO set under ``root``: ``images/train`` and
    ``labels/train`` with ``class cx cy w h`` normalised lines, and ``data.yaml``. File names
    start with the image's number, so that the set reads in the order of ``images``."""
    image_dir, label_dir = root / "images" / "train", root / "labels" / "train"
    for number, image in enumerate(images):
        target = image_dir / f"{number:03d}_{image.path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image.path.resolve())
        width, height = _image_size(image.path)
        lines = []
        for x1, y1, x2, y2 in image.boxes.tolist():
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            lines.append(f"0 {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        label = (label_dir / target.name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: face\n")
    return image_dir


def write_coco(images, path: Path, images_dir: Path) -> Path:
    """The images' faces as a COCO file (invalid faces as crowd boxes), with a second category
    whose boxes must be ignored."""
    document = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "face"}, {"id": 7, "name": "car"}]}
    for number, image in enumerate(images, start=1):
        width, height = _image_size(image.path)
        name = image.path.relative_to(images_dir).as_posix()
        document["images"].append({"id": number * 10, "file_name": name, "width": width, "height": height})
        for (x1, y1, x2, y2), invalid in zip(image.boxes.tolist(), image.invalid.tolist()):
            bbox = [x1, y1, x2 - x1, y2 - y1]
            document["annotations"].append(
                {"id": len(document["annotations"]), "image_id": number * 10, "bbox": bbox,
                 "category_id": 3, "iscrowd": int(invalid)}
            )  # fmt: skip
        document["annotations"].append(
            {"id": len(document["annotations"]), "image_id": number * 10, "bbox": [0, 0, 5, 5], "category_id": 7}
        )
    path.write_text(json.dumps(document))
    return path


# ------------------------------------------------------------------------------ readers on real files


def test_the_kits_yolo_conversion_reads_as_published(kit: Path):
    folder = kit / "widerface_yolo"
    problems: list[str] = []
    images = read_yolo(folder / "images" / "train", problems=problems)
    assert len(images) == 25 and sum(len(image) for image in images) == 542
    assert problems == []
    background = [image for image in images if len(image) == 0]
    assert [image.name for image in background] == ["0_Parade_marchingband_1_5.jpg"]
    for image in images:  # boxes lie on their image, taken back to pixels from normalised numbers
        width, height = _image_size(image.path)
        assert (image.boxes[:, 2] > image.boxes[:, 0]).all() and (image.boxes[:, 3] > image.boxes[:, 1]).all()
        assert (image.boxes[:, :2] < [width, height]).all() and (image.boxes[:, 2:] > 0).all()
        assert not image.invalid.any()
    # one line, checked by hand: 0_Parade_Parade_0_70.txt's first face
    first = next(image for image in images if image.name == "0_Parade_Parade_0_70.jpg")
    text = (folder / "labels" / "train" / "0_Parade_Parade_0_70.txt").read_text().split("\n")[0].split()
    cx, cy, w, h = map(float, text[1:])
    width, height = _image_size(first.path)
    expected = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    assert first.boxes[0].tolist() == pytest.approx(expected, abs=1e-3)


def test_default_labels_folder_is_the_ultralytics_one(tmp_path: Path):
    assert default_labels_dir(Path("sets/faces/images/train")) == Path("sets/faces/labels/train")
    assert default_labels_dir(Path("images/x/images/val")) == Path("images/x/labels/val")
    with pytest.raises(DataError, match="no 'images' folder"):
        default_labels_dir(tmp_path / "photos")


def test_the_same_faces_read_from_wider_yolo_and_coco_agree_to_a_pixel(kit: Path, tmp_path: Path):
    wider = _kit_wider(kit)
    yolo = read_yolo(write_yolo(wider, tmp_path / "yolo"))
    images_dir = kit / "widerface" / "WIDER_train" / "images"
    coco = read_coco(write_coco(wider, tmp_path / "faces.json", images_dir), images_dir)
    assert len(yolo) == len(coco) == len(wider)
    for original, from_yolo, from_coco in zip(wider, yolo, coco):
        assert from_yolo.path.name.endswith(original.path.name) and from_coco.path == original.path
        assert np.abs(from_yolo.boxes - original.boxes).max() <= 1.0
        assert np.abs(from_coco.boxes - original.boxes).max() <= 1e-3
        assert (from_coco.invalid == original.invalid).all()


def test_prep_from_wider_yolo_and_coco_gives_the_same_positives(kit: Path, tmp_path: Path):
    wider = _kit_wider(kit)
    images_dir = kit / "widerface" / "WIDER_train" / "images"
    wider_file = tmp_path / "gt.txt"
    lines = []
    for image in wider:
        lines += [image.name, str(len(image))] + [
            f"{x1} {y1} {x2 - x1} {y2 - y1}" for x1, y1, x2, y2 in image.boxes.tolist()
        ]
    wider_file.write_text("\n".join(lines) + "\n")
    sources = {
        "wider": [wider_source(images_dir, wider_file)],
        "yolo": [{"format": "yolo", "images": str(write_yolo(wider, tmp_path / "yolo"))}],
        "coco": [
            {"format": "coco", "images": str(images_dir),
             "annotations": str(write_coco(wider, tmp_path / "faces.json", images_dir))}
        ],
    }  # fmt: skip
    positives = {}
    for name, faces in sources.items():
        config = kit_config(kit, train={"faces": faces, "landmarks": []}, overrides=[f"prep.limit_images={IMAGES}"])
        prepare("pnet", config, tmp_path / name)
        positives[name] = SampleStore.open(tmp_path / name).counts()["positive"]
    assert positives["wider"] > 100
    assert positives["coco"] == positives["wider"]  # the same numbers: the same draws, the same labels
    for name in ("yolo", "coco"):
        assert abs(positives[name] - positives["wider"]) <= 0.03 * positives["wider"], positives


def _wider_file(images, path: Path) -> Path:
    """The images' faces written back as a WIDER ``*_bbx_gt.txt`` (all faces valid)."""
    lines = []
    for image in images:
        lines += [image.name, str(len(image))]
        lines += [f"{x1} {y1} {x2 - x1} {y2 - y1}" for x1, y1, x2, y2 in image.boxes.tolist()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mixed_sources_count_each_source_in_the_manifest(kit: Path, tmp_path: Path):
    wider = _kit_wider(kit)
    images_dir = kit / "widerface" / "WIDER_train" / "images"
    marks = tmp_path / "marks.txt"  # 20 faces of the kit's list, paths made absolute
    lines = (kit / "landmarks" / "trainImageList.txt").read_text().splitlines()[:20]
    marks.write_text("".join(str(kit / "landmarks" / line.replace("\\", "/")) + "\n" for line in lines))
    train = {
        "faces": [
            wider_source(images_dir, _wider_file(wider[3:5], tmp_path / "gt.txt")),
            {"format": "yolo", "images": str(write_yolo(wider[3:6], tmp_path / "yolo"))},
        ],
        "landmarks": [{"format": "cnn_facepoint", "list": str(marks)}] * 2,
    }
    config = kit_config(kit, train=train, overrides=["prep.limit_images=4", "prep.limit_landmark_faces=30"])
    manifest = prepare("pnet", config, tmp_path / "mixed", workers=1).manifest
    sources = manifest["sources"]
    assert [entry["format"] for entry in sources["faces"]] == ["wider", "yolo"]
    assert [entry["images"] for entry in sources["faces"]] == [2, 3]
    assert [entry["faces"] for entry in sources["landmarks"]] == [20, 20]
    # the limits cut the second source of each kind short
    assert sources["face_images_used"] == 4 and sources["landmark_faces_used"] == 30
    store = SampleStore.open(tmp_path / "mixed")
    origin, labels = store.extra("origin"), store.labels
    from_yolo = (origin[:, 0] == SOURCE_FACES) & (origin[:, 1] >= 2)
    assert sources["faces"][1]["samples"]["positive"] == int(((labels == 1) & from_yolo).sum()) > 0
    totals = {name: sum(entry["samples"][name] for kind in ("faces", "landmarks") for entry in sources[kind])
              for name in manifest["counts"]}  # fmt: skip
    assert totals == manifest["counts"]
    landmark_samples = [entry["samples"]["landmark"] for entry in sources["landmarks"]]
    assert landmark_samples[0] > landmark_samples[1] > 0  # 20 faces against the 10 left under the limit


def test_celeba_landmarks_prepare_like_the_same_faces_as_a_cnn_facepoint_list(kit: Path, tmp_path: Path):
    list_file = kit / "landmarks" / "trainImageList.txt"
    faces = read_landmark_list(list_file)[:30]
    images = tmp_path / "celeba"
    images.mkdir()
    boxes = [str(len(faces)), "image_id x_1 y_1 width height"]
    points = [str(len(faces)), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y"
              " rightmouth_x rightmouth_y"]  # fmt: skip
    for number, face in enumerate(faces):
        name = f"{number:06d}.jpg"
        (images / name).symlink_to(face.path.resolve())
        x1, y1, x2, y2 = face.box.tolist()
        boxes.append(f"{name} {x1:g} {y1:g} {x2 - x1:g} {y2 - y1:g}")
        points.append(f"{name} " + " ".join(f"{value:g}" for value in face.points.reshape(-1).tolist()))
    (tmp_path / "list_bbox_celeba.txt").write_text("\n".join(boxes) + "\n")
    (tmp_path / "list_landmarks_celeba.txt").write_text("\n".join(points) + "\n")
    celeba = {"format": "celeba", "images": str(images), "boxes": str(tmp_path / "list_bbox_celeba.txt"),
              "landmarks": str(tmp_path / "list_landmarks_celeba.txt")}  # fmt: skip
    stores = {}
    for name, source in (("list", {"format": "cnn_facepoint", "list": str(list_file)}), ("celeba", celeba)):
        config = kit_config(kit, train={"faces": [], "landmarks": [source]}, overrides=["prep.limit_landmark_faces=30"])
        prepare("pnet", config, tmp_path / name)
        stores[name] = SampleStore.open(tmp_path / name, mmap=False)
    assert stores["celeba"].counts() == stores["list"].counts() and stores["list"].counts()["landmark"] > 0
    assert np.array_equal(stores["celeba"].images, stores["list"].images)
    assert np.allclose(stores["celeba"].landmarks, stores["list"].landmarks, atol=1e-5)


# ------------------------------------------------------------------------------ bad input


def _yolo_set(tmp_path: Path, label: str) -> Path:
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.jpg"), np.zeros((50, 100, 3), np.uint8))
    (tmp_path / "set" / "labels").mkdir()
    (tmp_path / "set" / "labels" / "a.txt").write_text(label)
    return images


@pytest.mark.parametrize(
    ("label", "match"),
    [
        ("0 0.5 0.5 0.1\n", r"a.txt:1: expected 'class cx cy w h', got 4 fields"),
        ("0 0.5 0.5 0.1 0.1\nface 0.5 0.5 0.1 0.1\n", r"a.txt:2: expected an integer class id"),
        ("0 0.5 x 0.1 0.1\n", r"a.txt:1: expected four numbers after the class"),
        ("3 0.5 0.5 0.1 0.1\n", r"a.txt:1: class 3, but no data.yaml names the classes; set face_class"),
    ],
)
def test_yolo_lines_that_do_not_parse_stop_with_file_and_line(tmp_path: Path, label: str, match: str):
    with pytest.raises(DataError, match=match):
        read_yolo(_yolo_set(tmp_path, label))


def test_yolo_bad_faces_are_reported_with_file_and_line_and_left_out(tmp_path: Path):
    label = "0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.1 0.1\n0 0.5 0.5 inf 0.1\n0 0.5 0.5 0 0.1\n0 1.5 0.5 0.2 0.2\n"
    images = _yolo_set(tmp_path, label)
    (tmp_path / "set" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    problems: list[str] = []
    [image] = read_yolo(images, problems=problems)
    assert image.boxes.tolist() == [[40.0, 20.0, 60.0, 30.0]]  # 100 x 50 image: cx 50, cy 25, w 20, h 10
    assert [problem.split(": ", 1)[0].rsplit("/", 1)[-1] for problem in problems] == [
        "a.txt:2", "a.txt:3", "a.txt:4", "a.txt:5", "orphan.txt"
    ]  # fmt: skip
    assert "NaN or infinite" in problems[0] and "zero or negative size" in problems[2]
    assert "wholly outside" in problems[3] and "without an image" in problems[4]


def test_yolo_face_class_by_name_from_data_yaml(tmp_path: Path):
    images = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n")
    (tmp_path / "set" / "data.yaml").write_text(yaml.safe_dump({"names": ["person", "face"]}))
    [image] = read_yolo(images)
    assert image.boxes.tolist() == [[15.0, 7.5, 25.0, 12.5]]  # class 1 is "face"
    [image] = read_yolo(images, face_class="person")
    assert image.boxes.tolist() == [[40.0, 20.0, 60.0, 30.0]]
    with pytest.raises(DataError, match=r"data.yaml: no class named 'cat'"):
        read_yolo(images, face_class="cat")


def test_coco_structure_errors_name_the_file_and_entry(tmp_path: Path):
    path = tmp_path / "c.json"

    def read(document) -> None:
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        read_coco(path, tmp_path)

    categories = [{"id": 1, "name": "face"}]
    image = {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}
    with pytest.raises(DataError, match=r"c.json:2: not valid JSON"):
        read('{"images": [],\n oops}')
    with pytest.raises(DataError, match=r"expected a list 'annotations'"):
        read({"images": [image], "categories": categories})
    with pytest.raises(DataError, match=r"images\[0\] needs 'id', 'file_name', 'width' and 'height'"):
        read({"images": [{"id": 1}], "annotations": [], "categories": categories})
    with pytest.raises(DataError, match=r"annotations\[0\]: image id 9 is not among the images"):
        read({"images": [image], "annotations": [{"image_id": 9, "bbox": [1, 2, 3, 4]}], "categories": categories})
    with pytest.raises(DataError, match=r"annotations\[0\]: expected bbox \[x, y, w, h\]"):
        read({"images": [image], "annotations": [{"image_id": 1, "bbox": [1, 2, 3]}], "categories": categories})
    with pytest.raises(DataError, match=r"no category named 'face' among \['car', 'dog'\]"):
        read({"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "dog"}]})


def test_coco_bad_boxes_are_reported_and_crowds_kept_as_invalid(tmp_path: Path):
    path = tmp_path / "c.json"
    boxes = [[10, 10, 20, 20], [float("nan"), 1, 2, 3], [5, 5, 0, 4], [200, 10, 5, 5], [30, 30, 10, 10]]
    annotations = [{"image_id": 1, "bbox": box, "category_id": 1} for box in boxes]
    annotations[-1]["iscrowd"] = 1
    document = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
                "annotations": annotations, "categories": [{"id": 1, "name": "face"}]}  # fmt: skip
    path.write_text(json.dumps(document))
    problems: list[str] = []
    [image] = read_coco(path, tmp_path, problems=problems)
    assert image.boxes.tolist() == [[10, 10, 30, 30], [30, 30, 40, 40]] and image.invalid.tolist() == [False, True]
    assert [problem.split(": ")[1] for problem in problems] == ["annotations[1]", "annotations[2]", "annotations[3]"]
    assert not any(math.isnan(value) for value in image.boxes.reshape(-1).tolist())


def test_wider_nan_and_infinite_numbers_are_reported_and_left_out(tmp_path: Path):
    path = tmp_path / "gt.txt"
    path.write_text("a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\nnan 2 3 4 0 0 0 0 0 0\n1 2 inf 4 0 0 0 0 0 0\n")
    problems: list[str] = []
    [image] = read_wider(path, tmp_path, problems)
    assert len(image) == 1 and [problem.split(": ")[0] for problem in problems] == [f"{path}:4", f"{path}:5"]


# ------------------------------------------------------------------------------ configs


def test_config_sources_are_checked_per_format(tmp_path: Path):
    base = "stage: pnet\ndata:\n  train:\n    faces:\n      - "
    cases = {
        "{format: yolo, images: a, annotations: b}": "data.train.faces[0]: format yolo does not take 'annotations'",
        "{format: coco, images: a}": "data.train.faces[0]: format coco needs 'annotations'",
        "{format: voc, images: a}": "data.train.faces[0].format: expected one of wider, yolo, coco",
    }
    for source, message in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(base + source + "\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_config_of_the_old_data_layout_says_how_to_write_the_new_one(tmp_path: Path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("stage: pnet\ndata:\n  wider_train_images: data/widerface/WIDER_train/images\n")
    assert main(["prep", "pnet", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "data.wider_train_images: the data section lists sources per split now" in error
    assert "faces: [{format: wider" in error
