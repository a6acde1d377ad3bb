"""The MTCNN multi-task loss: face classification with online hard example mining, box
regression and landmark regression, each on its own sample types.

- classification: cross-entropy on positives and negatives; only the hardest ``ohem_keep``
  fraction of them (by loss, per batch) count, as in the paper;
- box regression: squared Euclidean distance of the 4 offsets, on positives and part faces;
- landmark regression: squared Euclidean distance of the 10 coordinates, on landmark samples.

Each part is a mean over the samples it applies to, and the total is their weighted sum. The
parts are computed as sums and counts (:class:`LossSums`) so that full-batch training can add
chunks up and divide by whole-store counts, and so that a batch without some sample type gives
0 for that part (sum 0 over count clamped to 1), never 0/0. Everything stays on the device, with
no host synchronisation, so a GPU step is never stalled by the loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mtcnn.model.nets import NetOutput
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE, LOSS_PARTS


class LossSums(NamedTuple):
    """Summed losses and the number of samples behind each (all 0-d tensors).

    ``classification_candidates`` is the number of positives and negatives before hard example
    mining; ``classification_count`` how many were kept.
    """

    classification: torch.Tensor
    box: torch.Tensor
    landmark: torch.Tensor
    classification_count: torch.Tensor
    box_count: torch.Tensor
    landmark_count: torch.Tensor
    classification_candidates: torch.Tensor

    def counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.classification_count, self.box_count, self.landmark_count


def ohem_kept_count(candidates: torch.Tensor | int, keep: float) -> torch.Tensor | int:
    """How many of ``candidates`` classification losses hard example mining keeps: ``ceil(keep * n)``.

    Works on a Python int or an integer tensor (then without leaving the device). The small
    slack keeps ``0.7 * 10`` at 7 despite floating-point rounding.
    """
    if isinstance(candidates, torch.Tensor):
        return torch.ceil(candidates.to(torch.float64) * keep - 1e-9).to(torch.long)
    return math.ceil(candidates * keep - 1e-9)


def flatten_output(output: NetOutput) -> NetOutput:
    """P-Net's ``[N, C, 1, 1]`` maps (12 px inputs) as ``[N, C]``; R-Net and O-Net outputs unchanged."""
    return NetOutput(*(tensor.reshape(tensor.shape[0], -1) for tensor in output))


def hard_example_mask(losses: torch.Tensor, candidates: torch.Tensor, keep: float) -> torch.Tensor:
    """``bool [N]``: the ``ceil(keep * candidates.sum())`` largest of ``losses [N]`` among ``candidates [N]``.

    Ties keep the earlier sample (stable sort), so the choice is deterministic.
    """
    kept = ohem_kept_count(candidates.sum(), keep)
    ranked = torch.where(candidates, losses.detach(), torch.full_like(losses, -math.inf))
    order = torch.sort(ranked, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return (rank < kept) & candidates


def loss_sums(
    output: NetOutput,
    labels: torch.Tensor,
    box_targets: torch.Tensor,
    landmark_targets: torch.Tensor,
    ohem_keep: float = 0.7,
) -> LossSums:
    """The three loss parts of a batch as sums and counts.

    ``output``: the net's outputs (``[N, 2]``, ``[N, 4]``, ``[N, 10]``, or P-Net's ``[N, C, 1, 1]``);
    ``labels``: ``[N]`` store labels; ``box_targets``: ``float [N, 4]``; ``landmark_targets``:
    ``float [N, 10]``. Targets of samples a part does not apply to are ignored whatever they
    hold (even NaN).
    """
    logits, boxes, landmarks = flatten_output(output)
    labels = labels.to(torch.long)
    is_positive = labels == LABEL_POSITIVE
    is_class = is_positive | (labels == LABEL_NEGATIVE)
    class_losses = F.cross_entropy(logits.float(), is_positive.to(torch.long), reduction="none")
    kept = hard_example_mask(class_losses, is_class, ohem_keep)
    zero = class_losses.new_zeros(())
    classification = torch.where(kept, class_losses, zero).sum()

    has_box = is_positive | (labels == LABEL_PART)
    box_error = torch.where(has_box[:, None], boxes.float() - box_targets.float(), zero)
    has_landmarks = labels == LABEL_LANDMARK
    landmark_error = torch.where(has_landmarks[:, None], landmarks.float() - landmark_targets.float(), zero)
    return LossSums(
        classification=classification,
        box=box_error.square().sum(),
        landmark=landmark_error.square().sum(),
        classification_count=kept.sum(),
        box_count=has_box.sum(),
        landmark_count=has_landmarks.sum(),
        classification_candidates=is_class.sum(),
    )


def combine_loss(
    sums: LossSums, task_weights: tuple[float, float, float], denominators: tuple[torch.Tensor | int, ...] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total and the three part means (0-d tensors, the means unweighted).

    Each part is its sum over its count (``denominators`` overrides the counts, e.g. whole-store
    counts when adding up chunks of a full batch); a count of 0 gives a part of 0.
    """
    counts = sums.counts() if denominators is None else denominators
    parts = {}
    for name, total, count in zip(LOSS_PARTS, (sums.classification, sums.box, sums.landmark), counts):
        count = torch.as_tensor(count, device=total.device)
        parts[name] = total / count.clamp(min=1).to(total.dtype)
    total = sum(weight * parts[name] for weight, name in zip(task_weights, LOSS_PARTS))
    return total, parts
