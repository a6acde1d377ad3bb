"""scripts/compare_stores.py: what the samples of two stores hold, against by-hand figures."""

import numpy as np
import pytest
import torch
from scripts_dir import load_script

from mtcnn.data.store import SampleStore, finish_store, write_shard
from mtcnn.model.nets import build_net
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE

compare_stores = load_script("compare_stores")

# Two images: the first with two faces, the second with none.
FACES = [np.array([[10, 10, 50, 50], [60, 20, 100, 70]], np.float32), np.zeros((0, 4), np.float32)]
WIDER_TEXT = "a.jpg\n2\n10 10 40 40 0 0 0 0 0 0\n60 20 40 50 0 0 0 0 0 0\nb.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"


def iou_by_hand(a, b):
    a, b = [float(value) for value in a], [float(value) for value in b]
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union


def random_rows(count, seed):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 80, (count, 2))
    window = np.concatenate([corner, corner + rng.uniform(10, 60, (count, 1))], axis=1).astype(np.float32)
    origin = np.stack([rng.integers(0, 2, count) * (rng.random(count) < 0.3), rng.integers(0, 2, count)], axis=1)
    return origin.astype(np.int64), window


def test_best_face_iou_matches_a_loop_over_the_samples():
    origin, window = random_rows(60, seed=0)
    best = compare_stores.best_face_iou(origin, window, FACES)
    for row in range(len(origin)):
        if origin[row, 0] == 1:
            assert np.isnan(best[row])  # a landmark face: no WIDER image
        else:
            expected = max((iou_by_hand(window[row], face) for face in FACES[origin[row, 1]]), default=0.0)
            assert best[row] == pytest.approx(expected, abs=1e-9)
    assert (best[origin[:, 0] == 0] > 0).any()  # some windows do overlap a face


def test_face_probability_matches_one_crop_at_a_time():
    torch.manual_seed(0)
    net = build_net("onet").eval()
    images = np.random.default_rng(1).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
    chunked = compare_stores.face_probability(net, images, chunk=3)
    with torch.no_grad():
        singly = [
            torch.softmax(net(torch.from_numpy(image).permute(2, 0, 1)[None].float()).logits, 1)[0, 1].item()
            for image in images
        ]
    np.testing.assert_allclose(chunked, singly, rtol=1e-5, atol=1e-6)
    assert compare_stores.face_probability(net, images[:0]).shape == (0,)


def write_store_with_windows(path, seed, stage="onet", size=48):
    origin, window = random_rows(40, seed)
    labels = np.array([LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_PART, LABEL_LANDMARK] * 10, np.int8)
    images = np.random.default_rng(seed).integers(0, 256, (40, size, size, 3), dtype=np.uint8)
    write_shard(
        path,
        0,
        size,
        images,
        labels,
        np.zeros((40, 4), np.float32),
        np.zeros((40, 10), np.float32),
        extras={"origin": origin, "window": window},
    )
    finish_store(path, stage, [0])
    return SampleStore.open(path, mmap=False), origin, window


def test_store_summary_gives_each_labels_figures(tmp_path):
    store, origin, window = write_store_with_windows(tmp_path / "s", seed=2)
    torch.manual_seed(0)
    judge = build_net("onet").eval()
    summary = compare_stores.store_summary(store, FACES, {"judge": judge})
    assert {name: row["count"] for name, row in summary.items()} == {
        "positive": 10,
        "negative": 10,
        "part": 10,
        "landmark": 10,
    }
    negatives = (store.labels == LABEL_NEGATIVE) & (origin[:, 0] == 0)
    ious = [
        max((iou_by_hand(window[row], face) for face in FACES[origin[row, 1]]), default=0.0)
        for row in np.flatnonzero(negatives)
    ]
    np.testing.assert_allclose(summary["negative"]["iou"], np.percentile(ious, [10, 50, 90]))
    sides = window[negatives, 2] - window[negatives, 0]
    np.testing.assert_allclose(summary["negative"]["side"], np.percentile(sides, [10, 50, 90]))
    with torch.no_grad():
        pixels = torch.from_numpy(store.images[store.labels == LABEL_NEGATIVE]).permute(0, 3, 1, 2).float()
        probability = torch.softmax(judge(pixels).logits, 1)[:, 1].numpy()
    assert summary["negative"]["judge"] == pytest.approx([np.mean(probability >= 0.5), np.mean(probability >= 0.7)])
    assert "judge" in summary["positive"] and "judge" not in summary["part"]


def test_command_prints_each_store_and_rejects_mixed_stages(tmp_path, capsys, reference_weights):
    (tmp_path / "gt.txt").write_text(WIDER_TEXT)
    annotations = ["--annotations", str(tmp_path / "gt.txt")]
    write_store_with_windows(tmp_path / "a", seed=3)
    write_store_with_windows(tmp_path / "b", seed=4)
    judge = ["--judge", str(reference_weights / "onet.pt")]
    assert compare_stores.main([*judge, str(tmp_path / "a"), str(tmp_path / "b"), *annotations]) == 0
    out = capsys.readouterr().out
    assert out.count("== ") == 2 and out.count("positive         10") == 2
    assert out.count("taken for faces at 0.5 / 0.7") == 2 and out.count("missed at 0.5 / 0.7") == 2

    write_store_with_windows(tmp_path / "r", seed=5, stage="rnet", size=24)
    assert compare_stores.main([str(tmp_path / "a"), str(tmp_path / "r"), *annotations]) == 2
    assert capsys.readouterr().err.strip() == "error: the stores are of different stages (onet, rnet)"
    assert compare_stores.main([str(tmp_path / "missing")]) == 2
    assert "missing: no such sample store folder" in capsys.readouterr().err
