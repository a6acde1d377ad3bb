"""Plot the TensorBoard curves of a pipeline run (or any training runs) into one PNG.

    python3 scripts/plot_training_curves.py runs/pipeline/train --out docs/model/training_curves.png

One column per net found under the folder (``pnet``, ``rnet``, ``onet`` sub-folders with a
``tensorboard`` log): the training loss (per logged step) and the validation loss (each epoch) on
top, validation accuracy, recall and precision per epoch below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from mtcnn.atomic import atomic_path  # noqa: E402

NETS = {"pnet": "P-Net", "rnet": "R-Net", "onet": "O-Net"}


def read_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}`` from every event file in ``log_dir`` (runs resumed write several)."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = ([event.step for event in events], [event.value for event in events])
    return scalars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="folder holding pnet/, rnet/, onet/ training runs")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    nets = [net for net in NETS if (args.runs / net / "tensorboard").is_dir()]
    if not nets:
        raise SystemExit(f"error: no pnet/, rnet/ or onet/ run with a tensorboard/ folder under {args.runs}")
    figure, axes = plt.subplots(2, len(nets), figsize=(4.6 * len(nets), 6.4), squeeze=False)
    for column, net in enumerate(nets):
        scalars = read_scalars(args.runs / net / "tensorboard")
        top, bottom = axes[0][column], axes[1][column]
        if "train/loss" in scalars:
            top.plot(*scalars["train/loss"], lw=0.8, alpha=0.7, label="train loss")
        if "val/loss" in scalars:
            # Validation is logged per epoch: place each point at the last step of its epoch.
            epochs, values = scalars["val/loss"]
            steps_per_epoch = scalars["train/loss"][0][-1] / epochs[-1] if "train/loss" in scalars else 1.0
            top.plot(
                [epoch * steps_per_epoch for epoch in epochs], values, "o-", ms=3, label="validation loss (each epoch)"
            )
        top.set_title(NETS[net])
        top.set_xlabel("step")
        top.set_yscale("log")
        top.grid(alpha=0.3)
        top.legend(fontsize=8)
        for tag, label in (("val/accuracy", "accuracy"), ("val/recall", "recall"), ("val/precision", "precision")):
            if tag in scalars:
                bottom.plot(*scalars[tag], "o-", ms=3, label=f"validation {label}")
        bottom.set_xlabel("epoch")
        bottom.set_ylim(0.5, 1.0)
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    with atomic_path(args.out) as tmp:
        figure.savefig(tmp, dpi=110)
    print(f"{args.out}: curves of {', '.join(NETS[net] for net in nets)}")


if __name__ == "__main__":
    main()
