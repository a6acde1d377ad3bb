"""Train P-Net with each optimizer and batch mode for the same wall-clock budget; compare.

Every run starts from the same initial weights, trains on the same P-Net store with the same
loss (hard example mining), augmentation and constant learning rate (no schedule, so that
the optimizers alone differ) for ``--seconds`` of training time, and is then validated on
the validation store. Runs:

- mini-batch (``--batch-size``, default 384): every registered optimizer;
- stochastic (batch of 1) and full-batch gradient descent: ``sgd`` and ``adam``.

Writes ``results.md`` (table), ``results.json`` and ``loss_curves.png`` (training loss against
time and against samples seen) into ``--out``. Prepare the stores first:

    python3 -m mtcnn prep pnet --out runs/prep/pnet-train
    python3 -m mtcnn prep pnet --split val --out runs/prep/pnet-val
    python3 scripts/compare_optimizers.py --out docs/optimizers
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtcnn.atomic import atomic_path, write_json_atomic, write_text_atomic
from mtcnn.config import StageConfig, build_config, read_yaml
from mtcnn.detect.bench import machine_description
from mtcnn.errors import MtcnnError
from mtcnn.model.nets import build_net
from mtcnn.spec import OPTIMIZER_NAMES
from mtcnn.train.batches import SampleTensors
from mtcnn.train.run import open_stage_store
from mtcnn.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

#: Learning rate per optimizer: each one's customary rate for a net of this size.
LEARNING_RATES = {
    "sgd": 0.05,
    "momentum": 0.01,
    "nesterov": 0.01,
    "adagrad": 0.01,
    "rmsprop": 0.001,
    "adam": 0.001,
    "adamw": 0.001,
}
#: Plain SGD on one sample at a time needs a smaller step than on averaged batches.
STOCHASTIC_RATES = {"sgd": 0.005, "adam": 0.0002}
#: Optimizers also run as stochastic and full-batch gradient descent.
MODE_OPTIMIZERS = ("sgd", "adam")
#: Training samples whose loss is the curve (a fixed subset, no augmentation); smaller stores whole.
PROBE_SAMPLES = 8192


@dataclass
class Run:
    """One configuration and what it measured."""

    name: str
    optimizer: str
    batch_size: int | str
    lr: float
    seconds: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    final_train_loss: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)


def train_for(
    trainer: Trainer, run: Run, budget: float, store_size: int, probe: SampleTensors, points: int = 25
) -> None:
    """Train until ``budget`` seconds of training time are used (a step begun within the budget
    finishes: a full-batch step can overshoot it), recording the loss curve.

    The curve is the loss on ``probe``, a fixed subset of the training store (no augmentation,
    no hard example mining), taken ``points`` times over the budget and not counted in it, so
    that stochastic, mini-batch and full-batch runs are measured alike.
    """
    full = trainer.planner.full_batch

    def record(elapsed: float, samples_seen: int) -> None:
        run.seconds.append(elapsed)
        run.samples.append(samples_seen)
        run.losses.append(trainer.validate(probe)["val_loss"])

    samples_seen, elapsed, epoch = 0, 0.0, 0
    record(0.0, 0)
    # spaced evenly in log-time, so that the first seconds (where most of the loss goes) show
    times = iter([*np.geomspace(budget / 400, budget, points)[1:], math.inf])
    next_point = budget / 400
    while elapsed < budget:
        plan = trainer.planner.epoch_plan(epoch)
        trainer.augmenter.reseed(trainer.config.seed, epoch)
        for index in range(plan.shape[0]):
            started = time.perf_counter()
            if full:
                row, _ = trainer.full_batch_step(plan[0])
                samples_seen += store_size
            else:
                row, _ = trainer.train_step(trainer.next_batch(plan[index]))
                samples_seen += plan.shape[1]
            elapsed += time.perf_counter() - started
            if not np.isfinite(float(row[0])):
                raise MtcnnError(f"{run.name}: the loss became {float(row[0])} at step {trainer.step}; lower its rate")
            if elapsed >= next_point or elapsed >= budget:
                record(elapsed, samples_seen)
                while next_point <= elapsed:
                    next_point = next(times)
            if elapsed >= budget:
                break
        epoch += 1
    run.steps, run.train_seconds = trainer.step, elapsed
    run.final_train_loss = run.losses[-1]


def plan_runs(batch_size: int) -> list[Run]:
    runs = [
        Run(f"{name} (mini-batch {batch_size})", name, batch_size, LEARNING_RATES[name]) for name in OPTIMIZER_NAMES
    ]
    for name in MODE_OPTIMIZERS:
        runs.append(Run(f"{name} (stochastic, batch 1)", name, 1, STOCHASTIC_RATES[name]))
        runs.append(Run(f"{name} (full batch)", name, "full", LEARNING_RATES[name] * (10 if name == "sgd" else 1)))
    return runs


def format_table(
    runs: list[Run], budget: float, machine: str, train_count: int, val_count: int, probe_count: int
) -> str:
    lines = [
        "| optimizer (batch mode) | lr | steps | samples seen | train loss | val loss | "
        "val accuracy | val recall | val precision | train time s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        m = run.metrics
        lines.append(
            f"| {run.name} | {run.lr:g} | {run.steps:,} | {run.samples[-1] if run.samples else 0:,} | "
            f"{run.final_train_loss:.4f} | {m['val_loss']:.4f} | {m['val_accuracy']:.4f} | "
            f"{m['val_recall']:.4f} | {m['val_precision']:.4f} | {run.train_seconds:.1f} |"
        )
    lines += [
        "",
        f"P-Net, {budget:g} s of training per run from the same initial weights, constant rate, "
        f"hard example mining (0.7), flip and colour jitter; {train_count:,} training and {val_count:,} "
        "validation samples. Losses are the weighted three-part total without mining; train loss on a "
        f"fixed {probe_count:,}-sample subset of the training store. Machine: {machine}.",
    ]
    return "\n".join(lines)


def plot(runs: list[Run], path: Path, probe_count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (by_time, by_samples) = plt.subplots(1, 2, figsize=(14, 5.5))
    for run in runs:
        style = "-" if run.batch_size not in (1, "full") else ("--" if run.batch_size == 1 else ":")
        marker = "o" if run.batch_size == "full" else None
        # log axes: the starting point (0 s, 0 samples) is drawn as the dashed line instead
        by_time.plot(run.seconds[1:], run.losses[1:], style, marker=marker, label=run.name, linewidth=1.2)
        by_samples.plot(run.samples[1:], run.losses[1:], style, marker=marker, label=run.name, linewidth=1.2)
    for axes, label in ((by_time, "training time (s)"), (by_samples, "samples seen")):
        axes.axhline(runs[0].losses[0], color="grey", linestyle="--", linewidth=0.8, label="initial weights")
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set_xlabel(label)
        axes.set_ylabel(f"loss on {probe_count:,} training samples")
        axes.grid(alpha=0.3)
    by_time.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    by_samples.legend(fontsize=8)
    figure.suptitle("P-Net: the gradient-descent family on the same time budget")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "pnet.yaml")
    parser.add_argument("--train-store", type=Path, default=Path("runs/prep/pnet-train"))
    parser.add_argument("--val-store", type=Path, default=Path("runs/prep/pnet-val"))
    parser.add_argument("--seconds", type=float, default=40.0, help="training time per run (default 40)")
    parser.add_argument("--batch-size", type=int, default=384, help="the mini-batch size (default 384)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only configurations whose name starts with one of these",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_optimizers"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train_store = open_stage_store(args.train_store, "pnet", "training")
        val_store = open_stage_store(args.val_store, "pnet", "validation")
    except MtcnnError as exc:
        print(f"error: {exc} (prepare it with `python3 -m mtcnn prep pnet`, see --help)", file=sys.stderr)
        return 2
    train_data, val_data = SampleTensors.from_store(train_store), SampleTensors.from_store(val_store)
    # a small store (a quick trial) is probed whole
    probe_count = min(PROBE_SAMPLES, len(train_data))
    probe_indices = torch.from_numpy(np.random.default_rng(0).choice(len(train_data), probe_count, replace=False))
    probe = SampleTensors(
        *(
            tensor[probe_indices]
            for tensor in (train_data.images, train_data.labels, train_data.boxes, train_data.landmarks)
        )
    )
    runs = [
        run
        for run in plan_runs(args.batch_size)
        if args.only is None or any(run.name.startswith(prefix) for prefix in args.only)
    ]
    for run in runs:
        data = read_yaml(args.config)
        train = data.setdefault("train", {})
        # whole sections replaced: a setting one optimizer takes would be an error for another
        train["optim"] = {
            "name": run.optimizer,
            "lr": run.lr,
            "weight_decay": 0.0005,
            **({"momentum": 0.9} if run.optimizer in ("momentum", "nesterov") else {}),
        }
        train["schedule"] = {"name": "constant"}
        train["batch_size"] = run.batch_size
        config = build_config(StageConfig, data).train
        torch.manual_seed(config.seed)
        trainer = Trainer("pnet", build_net("pnet"), config, train_data, val_data, "cpu", show_progress=False)
        train_for(trainer, run, args.seconds, len(train_data), probe)
        run.metrics = trainer.validate()
        print(
            f"{run.name:34} steps {run.steps:>7,}  train loss {run.final_train_loss:.4f}  "
            f"val loss {run.metrics['val_loss']:.4f}  accuracy {run.metrics['val_accuracy']:.4f}  "
            f"recall {run.metrics['val_recall']:.4f}",
            flush=True,
        )
    machine = machine_description("cpu")
    table = format_table(runs, args.seconds, machine, len(train_data), len(val_data), probe_count)
    write_text_atomic(args.out / "results.md", table + "\n")
    write_json_atomic(
        args.out / "results.json",
        {
            "seconds_per_run": args.seconds,
            "machine": machine,
            "runs": [{key: value for key, value in vars(run).items()} for run in runs],
        },
    )
    plot(runs, args.out / "loss_curves.png", probe_count)
    print()
    print(table)
    print(f"\nwritten: {args.out / 'results.md'}, {args.out / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
