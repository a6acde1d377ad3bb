"""Training throughput benchmark (``mtcnn bench train``): samples/s per net.

A timed step is a whole training step as :class:`~mtcnn.train.trainer.Trainer` runs it: gather the
batch by index, flip and colour-jitter it, forward, the three-part loss with hard example
mining, backward, optimizer step. The stores are random crops of the stage's size with the
3:1:1:2 type mix, on the training device: speed does not depend on what the pixels show.
Figures are medians of several timed runs, and the data handling share is the time of
gathering and augmenting batches alone over the time of whole steps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mtcnn.config import TrainConfig
from mtcnn.model.nets import build_net
from mtcnn.spec import INPUT_SIZES
from mtcnn.train.batches import SampleTensors
from mtcnn.train.trainer import Trainer

#: Store sizes of the benchmark per stage (enough that batches do not sit in cache).
DEFAULT_SAMPLES = {"pnet": 200_000, "rnet": 100_000, "onet": 50_000}


@dataclass(frozen=True)
class TrainSpeedRow:
    """One benchmark line: the net, its batch size and the median figures."""

    stage: str
    batch_size: int
    samples_per_second: float
    step_ms: float
    data_fraction: float
    runs: tuple[float, ...]


def random_store(stage: str, count: int, device: torch.device | str, seed: int = 0) -> SampleTensors:
    """``count`` random crops of ``stage``'s size with labels in the 3:1:1:2 mix, on ``device``."""
    rng = np.random.default_rng(seed)
    size = INPUT_SIZES[stage]
    labels = rng.choice(np.array([0, 0, 0, 1, -1, -2, -2], dtype=np.int8), count)
    arrays = (
        rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
        labels,
        rng.normal(0, 0.1, (count, 4)).astype(np.float32),
        rng.random((count, 10), dtype=np.float32),
    )
    return SampleTensors(*(torch.from_numpy(array).to(device) for array in arrays))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_trainer(trainer: Trainer, steps: int, repeats: int, warmup: int) -> TrainSpeedRow:
    """Time ``trainer``'s mini-batch steps: ``warmup`` untimed, then ``repeats`` runs of ``steps``."""
    if trainer.planner.full_batch:
        raise ValueError("the benchmark times mini-batch steps; give an integer batch_size")
    plan = trainer.planner.epoch_plan(0)
    trainer.augmenter.reseed(0, 0)
    device = trainer.device

    def rows(count: int, offset: int):
        return (plan[(offset + k) % plan.shape[0]] for k in range(count))

    for indices in rows(warmup, 0):
        trainer.train_step(trainer.next_batch(indices))
    step_times, data_times = [], []
    for repeat in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        for indices in rows(steps, repeat * steps):
            trainer.train_step(trainer.next_batch(indices))
        _synchronize(device)
        step_times.append((time.perf_counter() - started) / steps)
        started = time.perf_counter()
        for indices in rows(steps, repeat * steps):
            trainer.next_batch(indices)
        _synchronize(device)
        data_times.append((time.perf_counter() - started) / steps)
    batch_size = int(plan.shape[1])
    step_time = statistics.median(step_times)
    return TrainSpeedRow(
        trainer.stage,
        batch_size,
        batch_size / step_time,
        1000 * step_time,
        statistics.median(data_times) / step_time,
        tuple(batch_size / t for t in step_times),
    )


def bench_train(
    configs: dict[str, TrainConfig],
    device: torch.device,
    samples: dict[str, int] | None = None,
    steps: int = 40,
    repeats: int = 5,
    warmup: int = 20,
) -> list[TrainSpeedRow]:
    """One :class:`TrainSpeedRow` per stage of ``configs`` (each stage's train settings)."""
    rows = []
    for stage, config in configs.items():
        count = (samples or {}).get(stage, DEFAULT_SAMPLES[stage])
        data = random_store(stage, count, device)
        torch.manual_seed(0)
        trainer = Trainer(stage, build_net(stage), config, data, None, device, show_progress=False)
        rows.append(measure_trainer(trainer, steps, repeats, warmup))
    return rows


def format_train_table(rows: Sequence[TrainSpeedRow], machine: str, repeats: int) -> str:
    """A Markdown table of the rows, with the machine and method underneath."""
    lines = [
        "| net | batch | samples/s (median) | step ms | data handling | runs (samples/s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = ", ".join(f"{value:,.0f}" for value in row.runs)
        lines.append(
            f"| {row.stage} | {row.batch_size} | {row.samples_per_second:,.0f} | {row.step_ms:.2f} | "
            f"{100 * row.data_fraction:.1f}% | {runs} |"
        )
    lines += [
        "",
        f"Machine: {machine}. Median of {repeats} timed runs; a step is gather + flip + colour jitter + "
        "forward + loss (OHEM) + backward + optimizer step on random crops.",
    ]
    return "\n".join(lines)
