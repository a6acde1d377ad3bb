"""Benchmark of sample preparation: wall time and crops/s of whole ``prep`` runs, median of several.

Each run prepares the configured set from scratch into a scratch folder (the store is deleted
afterwards). CPU seconds (this process and its workers) are printed beside the wall time, and the
load average before each run, because on a shared machine the wall time measures the neighbours
too while the CPU time does not.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtcnn.config import StageConfig
from mtcnn.data.prepare import prepare


@dataclass(frozen=True)
class PrepBenchRow:
    """Medians over the runs of one setting, and every run's wall time."""

    stage: str
    workers: int
    samples: int
    inputs: int
    wall_seconds: float
    cpu_seconds: float
    load_average: float
    runs: tuple[float, ...]

    @property
    def crops_per_second(self) -> float:
        return self.samples / self.wall_seconds


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_prep(
    stage: str,
    config: StageConfig,
    workers: Sequence[int],
    repeats: int,
    weights: Mapping[str, Path] | None = None,
    device: str = "cpu",
    scratch: Path | None = None,
) -> list[PrepBenchRow]:
    """Prepare ``stage``'s train set ``repeats`` times per worker count; one row per count."""
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="mtcnn-bench-prep-", dir=scratch))
    try:
        for count in workers:
            walls, cpus, loads, samples, inputs = [], [], [], 0, 0
            for _ in range(repeats):
                loads.append(os.getloadavg()[0])
                cpu, start = _cpu_seconds(), time.perf_counter()
                summary = prepare(
                    stage, config, folder / "store", workers=count, overwrite=True, weights=weights, device=device
                )
                walls.append(time.perf_counter() - start)
                cpus.append(_cpu_seconds() - cpu)
                samples = summary.samples
                sources = summary.manifest["sources"]
                inputs = sources["face_images_used"] + sources["landmark_faces_used"]
            rows.append(
                PrepBenchRow(
                    stage,
                    count,
                    samples,
                    inputs,
                    statistics.median(walls),
                    statistics.median(cpus),
                    statistics.median(loads),
                    tuple(walls),
                )
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def format_prep_table(rows: Sequence[PrepBenchRow], machine: str, repeats: int) -> str:
    """A Markdown table of the rows, with the machine and method underneath."""
    lines = [
        "| set | workers | inputs | samples | wall s (median) | crops/s | CPU s | load avg before | runs (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = ", ".join(f"{seconds:.1f}" for seconds in row.runs)
        lines.append(
            f"| {row.stage} | {row.workers} | {row.inputs:,} | {row.samples:,} | {row.wall_seconds:.1f} | "
            f"{row.crops_per_second:,.0f} | {row.cpu_seconds:.1f} | {row.load_average:.1f} | {runs} |"
        )
    lines.append("")
    lines.append(
        f"the train set as configured, prepared from scratch (images decoded from disk), "
        f"median of {repeats} runs; {machine}"
    )
    return "\n".join(lines)
