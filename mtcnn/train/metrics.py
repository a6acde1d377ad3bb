"""Validation metrics of one net on a whole store: loss parts without hard example mining,
classification accuracy, recall, precision and F1, and the box and landmark errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE, LOSS_PARTS
from mtcnn.train.batches import SampleTensors
from mtcnn.train.losses import flatten_output, loss_sums

#: The sums :func:`validate_net` accumulates over a store, in order.
_SUM_KEYS = (
    "classification",
    "box",
    "landmark",
    "classification_count",
    "box_count",
    "landmark_count",
    "correct",
    "true_positive",
    "predicted_positive",
    "actual_positive",
    "box_abs_error",
    "landmark_distance",
)


def classification_stats(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``int64 [4]``: correct, true positives, predicted positives and actual positives among
    the positives and negatives of a batch (``logits [N, 2]``, ``labels [N]``); a sample is
    called a face when its face logit is the larger (probability > 0.5)."""
    labels = labels.to(torch.long)
    is_class = (labels == LABEL_POSITIVE) | (labels == LABEL_NEGATIVE)
    predicted = (logits[:, 1] > logits[:, 0]) & is_class
    actual = labels == LABEL_POSITIVE
    correct = (predicted == actual) & is_class
    return torch.stack([correct.sum(), (predicted & actual).sum(), predicted.sum(), actual.sum()])


def validation_metrics(sums: Mapping[str, float], task_weights: tuple[float, float, float]) -> dict[str, float]:
    """Metrics from summed validation statistics (see :func:`validate_net`)."""
    parts = {name: sums[name] / max(sums[f"{name}_count"], 1.0) for name in LOSS_PARTS}
    recall = sums["true_positive"] / max(sums["actual_positive"], 1.0)
    precision = sums["true_positive"] / max(sums["predicted_positive"], 1.0)
    return {
        "val_loss": sum(weight * parts[name] for weight, name in zip(task_weights, LOSS_PARTS)),
        **{f"val_loss_{name}": value for name, value in parts.items()},
        "val_accuracy": sums["correct"] / max(sums["classification_count"], 1.0),
        "val_recall": recall,
        "val_precision": precision,
        "val_f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "val_box_error": sums["box_abs_error"] / max(4.0 * sums["box_count"], 1.0),
        "val_landmark_error": sums["landmark_distance"] / max(5.0 * sums["landmark_count"], 1.0),
    }


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` for a metric that is minimised (``mode`` "min") or
    maximised ("max"); anything beats no best yet."""
    if best is None:
        return True
    return value < best if mode == "min" else value > best


@torch.no_grad()
def validate_net(
    net: nn.Module,
    data: SampleTensors,
    device: torch.device,
    chunk_size: int,
    task_weights: tuple[float, float, float],
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, float]:
    """:func:`validation_metrics` of ``net`` over the whole of ``data``, in chunks of
    ``chunk_size`` samples; box errors and landmark distances are in units of the crop side.
    ``autocast`` gives the mixed-precision context the net runs in. Leaves ``net`` in train mode."""
    net.eval()
    totals = torch.zeros(len(_SUM_KEYS), dtype=torch.float64, device=device)
    for chunk in torch.split(torch.arange(len(data)), chunk_size):
        batch = data.gather(chunk, device)
        with autocast():
            output = net(batch.pixels)
        output = flatten_output(output)
        sums = loss_sums(output, batch.labels, batch.boxes, batch.landmarks, ohem_keep=1.0)
        stats = classification_stats(output.logits, batch.labels)
        labels = batch.labels.to(torch.long)
        has_box = (labels == LABEL_POSITIVE) | (labels == LABEL_PART)
        box_error = torch.where(has_box[:, None], (output.box.float() - batch.boxes).abs(), 0.0).sum()
        has_points = labels == LABEL_LANDMARK
        distance = (output.landmarks.float() - batch.landmarks).reshape(-1, 5, 2).norm(dim=-1)
        landmark_error = torch.where(has_points[:, None], distance, 0.0).sum()
        totals += torch.stack(
            [
                sums.classification,
                sums.box,
                sums.landmark,
                sums.classification_count,
                sums.box_count,
                sums.landmark_count,
                *stats,
                box_error,
                landmark_error,
            ]
        ).double()
    net.train()
    return validation_metrics(dict(zip(_SUM_KEYS, totals.tolist())), task_weights)
