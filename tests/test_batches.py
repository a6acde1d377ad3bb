"""Batch plans keep the type ratio; flips mirror their targets; colour jitter is torchvision's."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from kit_stores import reference_offsets

from mtcnn.data.store import SampleStore
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE
from mtcnn.train.batches import (
    Augmenter,
    BatchPlanner,
    SampleTensors,
    flip_batch,
    jitter_colours,
    slot_pattern,
    to_net_layout,
)

RATIO = {"negative": 3, "positive": 1, "part": 1, "landmark": 2}
LABEL_OF = {"negative": LABEL_NEGATIVE, "positive": LABEL_POSITIVE, "part": LABEL_PART, "landmark": LABEL_LANDMARK}


def _labels(negative=300, positive=100, part=100, landmark=200, seed=0) -> np.ndarray:
    labels = np.array([0] * negative + [1] * positive + [-1] * part + [-2] * landmark, dtype=np.int8)
    return np.random.default_rng(seed).permutation(labels)


# ------------------------------------------------------------------------------ batch plans


def test_slot_pattern_interleaves_the_ratio():
    pattern = slot_pattern({0: 3, 1: 1, -1: 1, -2: 2})
    assert sorted(pattern) == sorted([0, 0, 0, 1, -1, -2, -2])
    assert pattern[:2] != [0, 0]  # spread out, not blocks


@pytest.mark.parametrize("batch_size", [7, 70, 384])
def test_every_batch_keeps_the_ratio(batch_size):
    labels = _labels()
    plan = BatchPlanner(labels, batch_size, RATIO, steps_per_epoch=20, seed=0).epoch_plan(0).numpy()
    assert plan.shape == (20, batch_size)
    for row in labels[plan]:
        for name, share in RATIO.items():
            # within one sample of the exact share, whatever the batch size
            assert abs((row == LABEL_OF[name]).sum() - batch_size * share / 7) <= 1
    stream = labels[plan].ravel()[: (plan.size // 7) * 7]
    for name, share in RATIO.items():
        assert (stream == LABEL_OF[name]).sum() == stream.size * share // 7


def test_stochastic_batches_cycle_through_the_types_in_ratio():
    labels = _labels()
    plan = BatchPlanner(labels, 1, RATIO, steps_per_epoch=70, seed=0).epoch_plan(0).numpy()
    assert plan.shape == (70, 1)
    types = labels[plan[:, 0]]
    assert [(types == LABEL_OF[name]).sum() for name in RATIO] == [30, 10, 10, 20]


def test_each_type_is_drawn_without_repeats_until_exhausted_and_plans_are_seeded_by_epoch():
    labels = _labels()
    planner = BatchPlanner(labels, 70, RATIO, steps_per_epoch=None, seed=5)
    assert planner.steps_per_epoch == len(labels) // 70
    plan = planner.epoch_plan(0).numpy().ravel()
    positives = plan[labels[plan] == LABEL_POSITIVE]
    assert len(set(positives.tolist())) == len(positives)  # 100 positives, 100 slots: each once
    assert np.array_equal(planner.epoch_plan(0).numpy(), BatchPlanner(labels, 70, RATIO, None, 5).epoch_plan(0).numpy())
    assert not np.array_equal(planner.epoch_plan(0).numpy(), planner.epoch_plan(1).numpy())


def test_a_type_missing_from_the_store_is_left_out_with_a_warning(caplog):
    labels = _labels(landmark=0)
    with caplog.at_level(logging.WARNING):
        planner = BatchPlanner(labels, 50, RATIO, steps_per_epoch=4, seed=0)
    assert "no landmark samples" in caplog.text
    rows = labels[planner.epoch_plan(0).numpy()]
    assert (rows == LABEL_LANDMARK).sum() == 0 and rows.shape == (4, 50)
    assert all(abs((row == LABEL_NEGATIVE).sum() - 30) <= 1 for row in rows)


def test_full_batch_plan_is_every_sample():
    labels = _labels()
    planner = BatchPlanner(labels, "full", RATIO, steps_per_epoch=None, seed=0)
    assert planner.steps_per_epoch == 1
    assert planner.epoch_plan(3).tolist() == [list(range(len(labels)))]


# ------------------------------------------------------------------------------ flips


def _reference_flip(image: np.ndarray, offsets: np.ndarray, points: np.ndarray):
    """One crop flipped the slow way: mirror the image, take the true box and landmarks to
    absolute pixel coordinates, mirror those, and recompute the targets from them."""
    size = image.shape[1]
    window = torch.tensor([[0.0, 0.0, size, size]], dtype=torch.float64)
    box = window[0] + torch.tensor(offsets, dtype=torch.float64) * size
    mirrored_box = torch.stack([size - box[2], box[1], size - box[0], box[3]])
    new_offsets = reference_offsets(window, mirrored_box[None])[0].numpy()
    named = dict(
        zip(
            ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"),
            points.reshape(5, 2).astype(np.float64) * size,
        )
    )
    mirrored = {name: np.array([size - xy[0], xy[1]]) for name, xy in named.items()}
    # what was the right eye is now on the image's left, and so on
    renamed = [
        mirrored["right_eye"],
        mirrored["left_eye"],
        mirrored["nose"],
        mirrored["right_mouth"],
        mirrored["left_mouth"],
    ]
    return image[:, ::-1].copy(), new_offsets, np.concatenate(renamed) / size


def test_flip_matches_slow_reference_on_real_crops(kit_store):
    store = SampleStore.open(kit_store("pnet", "train"))
    images, labels, boxes, landmarks = (
        torch.from_numpy(np.array(a)) for a in (store.images, store.labels, store.boxes, store.landmarks)
    )
    flip = torch.from_numpy(np.random.default_rng(0).random(len(labels)) < 0.5)
    out_images, out_boxes, out_points = flip_batch(images, boxes, landmarks, flip)
    for i in range(len(labels)):
        if flip[i]:
            ref_image, ref_box, ref_points = _reference_flip(store.images[i], store.boxes[i], store.landmarks[i])
        else:
            ref_image, ref_box, ref_points = store.images[i], store.boxes[i], store.landmarks[i]
        assert np.array_equal(out_images[i].numpy(), ref_image), i
        np.testing.assert_allclose(out_boxes[i].numpy(), ref_box, atol=1e-6)
        np.testing.assert_allclose(out_points[i].numpy(), ref_points, atol=1e-6)


def test_flipped_faces_keep_the_left_eye_on_the_left(kit_store):
    store = SampleStore.open(kit_store("pnet", "train"))
    faces = store.labels == LABEL_LANDMARK
    points = torch.from_numpy(store.landmarks[faces])
    boxes = torch.zeros(len(points), 4)
    images = torch.from_numpy(np.array(store.images[faces]))
    _, _, flipped = flip_batch(images, boxes, points, torch.ones(len(points), dtype=torch.bool))
    before = (points[:, 0] < points[:, 2]).float().mean()
    after = (flipped[:, 0] < flipped[:, 2]).float().mean()
    assert before > 0.95 and after > 0.95  # left eye x < right eye x, before and after
    # mouth corners too, and flipping twice gives back the targets
    assert (flipped[:, 6] < flipped[:, 8]).float().mean() > 0.95
    _, _, twice = flip_batch(images, boxes, flipped, torch.ones(len(points), dtype=torch.bool))
    assert torch.allclose(twice, points, atol=1e-6)


# ------------------------------------------------------------------------------ colour jitter


def test_colour_jitter_matches_torchvision_per_sample():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 12, 12, 3, generator=generator) * 255
    brightness, contrast, saturation = (0.6 + 0.4 * torch.rand(6, generator=generator) for _ in range(3))
    out = jitter_colours(images, brightness, contrast, saturation)
    for i in range(6):
        reference = images[i].permute(2, 0, 1) / 255  # factors < 1 never clip, so clamping order is moot
        reference = TF.adjust_brightness(reference, float(brightness[i]))
        reference = TF.adjust_contrast(reference, float(contrast[i]))
        reference = TF.adjust_saturation(reference, float(saturation[i]))
        assert torch.allclose(out[i], reference.permute(1, 2, 0) * 255, atol=2e-3)


def test_colour_jitter_with_unit_factors_is_identity_and_clamps():
    images = torch.rand(3, 24, 24, 3) * 255
    ones = torch.ones(3)
    assert torch.allclose(jitter_colours(images, ones, ones, ones), images, atol=1e-3)
    bright = jitter_colours(images, ones * 3, ones, ones)
    assert bright.max() == 255.0 and bright.min() >= 0


def test_augmenter_is_reproducible_per_epoch_and_leaves_labels(kit_store):
    data = SampleTensors.from_store(SampleStore.open(kit_store("pnet", "train")))
    augmenter = Augmenter(True, 0.2, 0.2, 0.2, "cpu")
    indices = torch.arange(0, len(data), 3)
    augmenter.reseed(7, 2)
    first = augmenter(*data.gather_raw(indices, "cpu"))
    augmenter.reseed(7, 2)
    again = augmenter(*data.gather_raw(indices, "cpu"))
    augmenter.reseed(7, 3)
    other = augmenter(*data.gather_raw(indices, "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.pixels, other.pixels)
    assert torch.equal(first.labels, data.labels[indices])
    assert first.pixels.shape == (len(indices), 3, 12, 12) and first.pixels.dtype == torch.float32
    plain = data.gather(indices, "cpu")
    changed = (first.boxes != plain.boxes).any(1) & (plain.labels == LABEL_POSITIVE)
    assert 0.2 < changed.float().sum() / (plain.labels == LABEL_POSITIVE).sum() < 0.8  # about half flipped


def _original_net(reference_weights: Path, stage: str):
    from mtcnn.model.weights import load_net

    return load_net(reference_weights / f"{stage}.pt", stage).eval()


@torch.no_grad()
def test_original_pnet_agrees_with_flipped_box_targets(kit_store, reference_weights):
    """The released P-Net predicts boxes of flipped crops as well as of the crops themselves,
    if and only if the flipped targets are mirrored right."""
    net = _original_net(reference_weights, "pnet")
    data = SampleTensors.from_store(SampleStore.open(kit_store("pnet", "val")))
    has_box = (data.labels == LABEL_POSITIVE) | (data.labels == LABEL_PART)
    images, boxes, points = data.images[has_box], data.boxes[has_box], data.landmarks[has_box]
    flipped_images, flipped_boxes, _ = flip_batch(images, boxes, points, torch.ones(len(boxes), dtype=torch.bool))
    plain_error = (net(to_net_layout(images.float())).box.flatten(1) - boxes).abs().mean()
    predicted = net(to_net_layout(flipped_images.float())).box.flatten(1)
    assert (predicted - flipped_boxes).abs().mean() < 1.15 * plain_error
    assert (predicted - boxes).abs().mean() > 1.4 * plain_error  # targets left as they were: clearly worse


@torch.no_grad()
def test_original_onet_agrees_with_flipped_landmarks_only_with_the_swap(kit_store, reference_weights):
    net = _original_net(reference_weights, "onet")
    data = SampleTensors.from_store(SampleStore.open(kit_store("onet", "val")))
    faces = data.labels == LABEL_LANDMARK
    images, boxes, points = data.images[faces], data.boxes[faces], data.landmarks[faces]
    flipped_images, _, flipped_points = flip_batch(images, boxes, points, torch.ones(len(points), dtype=torch.bool))

    def error(predicted, target):
        return (predicted - target).reshape(-1, 5, 2).norm(dim=-1).mean()

    plain_error = error(net(to_net_layout(images.float())).landmarks, points)
    predicted = net(to_net_layout(flipped_images.float())).landmarks
    mirrored_unswapped = torch.stack([1 - points[:, 0::2], points[:, 1::2]], dim=-1).reshape(-1, 10)
    assert error(predicted, flipped_points) < 1.15 * plain_error
    assert error(predicted, mirrored_unswapped) > 3 * plain_error
