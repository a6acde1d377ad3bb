"""The three-part loss against a slow per-sample reference; missing sample types; mining."""

from __future__ import annotations

import math

import pytest
import torch

from mtcnn.model.nets import NetOutput
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE
from mtcnn.train.losses import combine_loss, hard_example_mask, loss_sums, ohem_kept_count

WEIGHTS = (1.0, 0.5, 0.25)


def _batch(labels: list[int], seed: int = 0, pnet_maps: bool = False):
    generator = torch.Generator().manual_seed(seed)
    count = len(labels)
    output = NetOutput(
        torch.randn(count, 2, generator=generator) * 2,
        torch.randn(count, 4, generator=generator),
        torch.rand(count, 10, generator=generator),
    )
    if pnet_maps:
        output = NetOutput(*(tensor[:, :, None, None] for tensor in output))
    targets = (
        torch.tensor(labels, dtype=torch.int8),
        torch.randn(count, 4, generator=generator) * 0.2,
        torch.rand(count, 10, generator=generator),
    )
    return output, targets


def _reference(output: NetOutput, labels, boxes, landmarks, keep: float, weights) -> tuple[float, list[float]]:
    """Sample by sample, in plain Python: the paper's loss."""
    logits, box_out, point_out = (tensor.reshape(tensor.shape[0], -1) for tensor in output)
    class_losses, box_losses, point_losses = [], [], []
    for i, label in enumerate(labels.tolist()):
        if label in (LABEL_POSITIVE, LABEL_NEGATIVE):
            target = 1 if label == LABEL_POSITIVE else 0
            z = logits[i].tolist()
            log_sum = math.log(math.exp(z[0]) + math.exp(z[1]))
            class_losses.append(log_sum - z[target])
        if label in (LABEL_POSITIVE, LABEL_PART):
            box_losses.append(sum((a - b) ** 2 for a, b in zip(box_out[i].tolist(), boxes[i].tolist())))
        if label == LABEL_LANDMARK:
            point_losses.append(sum((a - b) ** 2 for a, b in zip(point_out[i].tolist(), landmarks[i].tolist())))
    kept = sorted(class_losses, reverse=True)[: math.ceil(keep * len(class_losses) - 1e-9)]
    parts = [sum(values) / len(values) if values else 0.0 for values in (kept, box_losses, point_losses)]
    return sum(w * p for w, p in zip(weights, parts)), parts


MIXED = [0, 1, -1, -2, 0, 0, 1, -2, 0, -1, 0, 1, 0, -2, 0, 0, 1, -1, -2, 0]


@pytest.mark.parametrize("keep", [1.0, 0.7, 0.35, 0.01])
@pytest.mark.parametrize("pnet_maps", [False, True])
def test_loss_matches_per_sample_reference(keep, pnet_maps):
    output, targets = _batch(MIXED, seed=int(keep * 100), pnet_maps=pnet_maps)
    total, parts = combine_loss(loss_sums(output, *targets, ohem_keep=keep), WEIGHTS)
    ref_total, ref_parts = _reference(output, *targets, keep, WEIGHTS)
    assert total.item() == pytest.approx(ref_total, rel=1e-5)
    for name, value in zip(("classification", "box", "landmark"), ref_parts):
        assert parts[name].item() == pytest.approx(value, rel=1e-5), name


@pytest.mark.parametrize(
    "labels,zero_parts",
    [
        ([0, 0, 0, 0], ("box", "landmark")),
        ([-2, -2, -2], ("classification", "box")),
        ([-1, -1], ("classification", "landmark")),
        ([1, 1, 1], ("landmark",)),
    ],
)
def test_a_missing_sample_type_contributes_zero_not_nan(labels, zero_parts):
    output, (label_tensor, boxes, landmarks) = _batch(labels)
    # targets that do not apply may hold anything, even NaN; they must not leak in
    boxes = torch.where(((label_tensor == 1) | (label_tensor == -1))[:, None], boxes, torch.nan)
    landmarks = torch.where((label_tensor == -2)[:, None], landmarks, torch.nan)
    leaves = [tensor.clone().requires_grad_() for tensor in output]
    total, parts = combine_loss(loss_sums(NetOutput(*leaves), label_tensor, boxes, landmarks), WEIGHTS)
    for name in zero_parts:
        assert parts[name].item() == 0.0
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_only_the_hardest_examples_get_gradient():
    labels = torch.tensor([0] * 6 + [1] * 4, dtype=torch.int8)
    logits = torch.zeros(10, 2)
    logits[:, 1] = torch.tensor([-3.0, 2.0, -1.0, 0.5, 4.0, -2.0, 3.0, -4.0, 1.0, 0.0])  # face logit
    logits.requires_grad_()
    output = NetOutput(logits, torch.zeros(10, 4), torch.zeros(10, 10))
    sums = loss_sums(output, labels, torch.zeros(10, 4), torch.zeros(10, 10), ohem_keep=0.5)
    assert int(sums.classification_count) == 5 and int(sums.classification_candidates) == 10
    combine_loss(sums, WEIGHTS)[0].backward()
    # hardest: negatives with large face logits (4, 2, 0.5) and positives with small ones (-4, 0)
    assert torch.nonzero(logits.grad.abs().sum(1)).flatten().tolist() == [1, 3, 4, 7, 9]


def test_kept_count_is_ceil_of_fraction_without_rounding_surprises():
    for count, keep, expected in ((10, 0.7, 7), (1, 0.7, 1), (0, 0.7, 0), (3, 0.7, 3), (100, 0.7, 70), (7, 1.0, 7)):
        assert ohem_kept_count(count, keep) == expected
        assert int(ohem_kept_count(torch.tensor(count), keep)) == expected


def test_mask_ties_are_deterministic_and_exclude_non_candidates():
    losses = torch.tensor([1.0, 5.0, 1.0, 1.0, 9.0])
    candidates = torch.tensor([True, True, True, True, False])
    assert hard_example_mask(losses, candidates, 0.5).tolist() == [True, True, False, False, False]


def test_whole_batch_denominators_make_chunks_add_up_to_the_batch_mean():
    output, (labels, boxes, landmarks) = _batch(MIXED, seed=3)
    whole_total, _ = combine_loss(loss_sums(output, labels, boxes, landmarks, ohem_keep=1.0), WEIGHTS)
    counts = loss_sums(output, labels, boxes, landmarks, ohem_keep=1.0).counts()
    chunked = 0.0
    for start in range(0, len(MIXED), 6):
        part = slice(start, start + 6)
        chunk_output = NetOutput(*(tensor[part] for tensor in output))
        sums = loss_sums(chunk_output, labels[part], boxes[part], landmarks[part], ohem_keep=1.0)
        chunked += combine_loss(sums, WEIGHTS, counts)[0]
    assert chunked.item() == pytest.approx(whole_total.item(), rel=1e-6)
