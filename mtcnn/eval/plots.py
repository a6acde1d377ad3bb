"""WIDER FACE precision-recall curves: a PNG, and TensorBoard PR curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mtcnn.atomic import atomic_path
from mtcnn.eval.wider import WiderResult


def plot_pr_curves(result: WiderResult, path: str | Path, title: str = "WIDER FACE") -> Path:
    """Draw the three precision-recall curves with their AP into a PNG, written atomically."""
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(6, 5), dpi=120)
    axes = figure.subplots()
    for setting, curve in result.curves.items():
        defined = ~np.isnan(curve.precision)
        axes.plot(curve.recall[defined], curve.precision[defined], label=f"{setting}: AP {curve.ap:.4f}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def log_pr_curves(writer: Any, result: WiderResult, step: int = 0, prefix: str = "wider") -> None:
    """Add the three PR curves and APs to a TensorBoard ``SummaryWriter`` at ``step``.

    TensorBoard wants thresholds rising, so the curves are reversed; an undefined precision (no
    proposal) is shown as 1, its usual convention.
    """
    for setting, curve in result.curves.items():
        recalled = curve.recalled[::-1].astype(np.float64)
        proposals = curve.proposals[::-1].astype(np.float64)
        precision = np.where(proposals > 0, recalled / np.maximum(proposals, 1), 1.0)
        recall = recalled / max(curve.num_faces, 1)
        writer.add_pr_curve_raw(
            f"{prefix}/{setting}",
            true_positive_counts=recalled,
            false_positive_counts=proposals - recalled,
            true_negative_counts=np.zeros_like(recalled),
            false_negative_counts=curve.num_faces - recalled,
            precision=precision,
            recall=recall,
            global_step=step,
            num_thresholds=len(recalled),
        )
        if not math.isnan(curve.ap):
            writer.add_scalar(f"{prefix}/{setting}_ap", curve.ap, step)
    writer.flush()
