"""Benchmarks that print figures: detection speed (and helpers shared by the other benchmarks).

Speed targets are checked here, never by timed tests. Every figure is the median of several runs
and comes with a description of the machine.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtcnn.detect.cascade import LANDMARK_SCALES, MTCNN
from mtcnn.detect.inputs import read_image
from mtcnn.spec import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


def machine_description(device: torch.device | str = "cpu") -> str:
    """One line naming the processor (and GPU), core count, torch threads and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.device(device).type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``run()`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = [wall_seconds(run) for _ in range(repeats)]
    return statistics.median(times), times


def wall_seconds(run: Callable[[], object]) -> float:
    """Wall time of one ``run()``, CUDA work included."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def benchmark_images(folder: Path, count: int) -> list[Path]:
    """A fixed, varied set: ``count`` images spread evenly over the sorted files of ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{folder}: no images")
    step = max(1, len(files) // count)
    return files[::step][:count]


@dataclass(frozen=True)
class DetectRow:
    """One benchmark line: who ran, with which settings, and the median throughput."""

    detector: str
    min_face_size: int
    batch_size: int
    images_per_second: float
    faces: int
    #: Peak resident memory of a fresh process that detects on the images once (None: not measured).
    peak_memory_bytes: int | None = None


def bench_detect(
    weights: Path | None,
    images: Sequence[Path],
    min_face_sizes: Sequence[int] = (20, 40),
    batch_sizes: Sequence[int] = (1, 8),
    repeats: int = 3,
    device: str = "auto",
    compare_facenet: bool = True,
    mirror_onet: bool = True,
    landmark_scales: Sequence[float] = LANDMARK_SCALES,
    measure_memory: bool = True,
) -> list[DetectRow]:
    """Time the cascade over decoded ``images`` for each min face size and batch size
    (``mirror_onet`` and ``landmark_scales`` as in :class:`~mtcnn.detect.cascade.MTCNN`).

    When facenet-pytorch is importable (and ``compare_facenet``), its MTCNN is timed on the same
    images with the same settings, one image at a time as it requires for images of different sizes.
    The detectors of one min face size take turns within every round (see
    :func:`alternating_medians`), so that a machine whose speed drifts slows them alike; with
    ``measure_memory`` each row's peak memory comes from a fresh process of its own (a process's
    peak never goes down), which decodes the images and detects on them once.
    """
    decoded = [read_image(path) for path in images]
    name = "mtcnn" if mirror_onet else "mtcnn, O-Net once"
    rows = []
    for min_face in min_face_sizes:
        # (row name, batch size, a run that returns the faces found, what its memory process builds)
        contenders: list[tuple[str, int, Callable[[], int], dict]] = []
        for batch in batch_sizes:
            settings = {
                "weights": weights,
                "min_face_size": min_face,
                "device": device,
                "batch_size": batch,
                "mirror_onet": mirror_onet,
                "landmark_scales": tuple(landmark_scales),
            }
            detector = MTCNN(**settings)
            run = functools.partial(_faces_found, detector, decoded)
            contenders.append((name, batch, run, {"detector": "mtcnn", "settings": settings}))
        if compare_facenet:
            run = _facenet_run(decoded, min_face, device)
            if run is not None:
                memory = {"detector": "facenet-pytorch", "settings": {"min_face_size": min_face, "device": device}}
                contenders.append(("facenet-pytorch", 1, run, memory))
        faces = [run() for _, _, run, _ in contenders]  # untimed: warms each detector up
        seconds = alternating_medians([run for _, _, run, _ in contenders], repeats)
        for (row_name, batch, _, memory), found, median in zip(contenders, faces, seconds):
            peak = _peak_memory(memory["detector"], memory["settings"], images) if measure_memory else None
            rows.append(DetectRow(row_name, min_face, batch, len(decoded) / median, found, peak))
            speed = rows[-1].images_per_second
            log.info("%s  min face %3d  batch %2d  %7.2f images/s", row_name, min_face, batch, speed)
    return rows


def _faces_found(detector: MTCNN, images: list[np.ndarray]) -> int:
    return sum(len(faces) for faces in detector.detect(images))


def alternating_medians(runs: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each of ``runs`` over ``repeats`` rounds in which every run is timed
    once, in turn: ``[len(runs)]`` seconds."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, timed in zip(runs, times):
            timed.append(wall_seconds(run))
    return [statistics.median(timed) for timed in times]


def _peak_memory(detector: str, settings: dict, images: Sequence[Path]) -> int | None:
    """Peak resident memory (bytes) of a fresh process that runs :func:`_detect_once`; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(_detect_once, detector, settings, list(images), torch.get_num_threads()).result()


def _detect_once(detector: str, settings: dict, images: list[Path], threads: int) -> int:
    """In a child process: decode ``images``, detect on them once with ``detector`` built from
    ``settings``, and return the process's peak resident memory in bytes."""
    torch.set_num_threads(threads)
    decoded = [read_image(path) for path in images]
    if detector == "mtcnn":
        MTCNN(**settings).detect(decoded)
    else:
        from PIL import Image

        model = _facenet_detector(settings["min_face_size"], settings["device"])
        for image in decoded:
            model.detect(Image.fromarray(image))
    return own_peak_resident_bytes()


def own_peak_resident_bytes() -> int:
    """Peak resident memory (bytes) of this process's own image since it started: the kernel's
    ``VmHWM``. Not ``getrusage``'s ``ru_maxrss``, which Linux carries across ``exec``: a child
    started by forking a parent of 1.4 GB reports at least 1.4 GB, whatever it uses itself."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError("/proc/self/status has no VmHWM line")


def _facenet_detector(min_face: int, device: str):
    """facenet-pytorch's MTCNN with our cascade's default settings (raises ImportError without it)."""
    from facenet_pytorch import MTCNN as FacenetMTCNN

    from mtcnn.model.device import resolve_device

    return FacenetMTCNN(
        min_face_size=min_face, thresholds=[0.6, 0.7, 0.7], factor=0.709, keep_all=True, device=resolve_device(device)
    )


def _facenet_run(decoded: list[np.ndarray], min_face: int, device: str) -> Callable[[], int] | None:
    """A run of facenet-pytorch's MTCNN over ``decoded``, one image at a time, returning the
    faces found; None when facenet-pytorch is not installed."""
    try:
        model = _facenet_detector(min_face, device)
    except ImportError:
        log.info("facenet-pytorch is not installed: no comparison")
        return None
    from PIL import Image

    pil_images = [Image.fromarray(image) for image in decoded]

    def run() -> int:
        return sum(0 if boxes is None else len(boxes) for boxes, _ in (model.detect(im) for im in pil_images))

    return run


def format_detect_table(
    rows: Sequence[DetectRow], machine: str, image_count: int, repeats: int, image_folder: str | Path
) -> str:
    """A Markdown table of the rows, with the images, the machine and the method underneath."""
    facenet = {row.min_face_size: row.images_per_second for row in rows if row.detector == "facenet-pytorch"}
    lines = [
        "| detector | min face | batch | images/s | x facenet-pytorch | faces found | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        memory = "-" if row.peak_memory_bytes is None else f"{row.peak_memory_bytes / 2**30:.2f} GiB"
        reference = facenet.get(row.min_face_size)
        ratio = f"{row.images_per_second / reference:.2f}" if reference and row.detector != "facenet-pytorch" else "-"
        lines.append(
            f"| {row.detector} | {row.min_face_size} | {row.batch_size} | {row.images_per_second:.2f} | {ratio}"
            f" | {row.faces} | {memory} |"
        )
    lines.append("")
    lines.append(
        f"{image_count} images from {image_folder}, decoded beforehand; median of {repeats} rounds, the detectors of"
        f" a min face size timed in turn in each; peak memory: a fresh process per row, decoding the images"
        f" and detecting once; {machine}"
    )
    return "\n".join(lines)
