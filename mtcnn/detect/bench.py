"""Benchmarks that print figures: detection speed (and helpers shared by the other benchmarks).

Speed targets are checked here, never by timed tests. Every figure is the median of several runs
and comes with a description of the machine.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mtcnn.detect.cascade import LANDMARK_SCALES
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
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


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
    Timings alternate in this process; with ``measure_memory`` each row's peak memory comes from a
    fresh process of its own (a process's peak never goes down), which decodes the images and
    detects on them once.
    """
    from mtcnn.detect.cascade import MTCNN

    decoded = [read_image(path) for path in images]
    name = "mtcnn" if mirror_onet else "mtcnn, O-Net once"
    rows = []
    for min_face in min_face_sizes:
        for batch in batch_sizes:
            detector = MTCNN(
                weights,
                min_face_size=min_face,
                device=device,
                batch_size=batch,
                mirror_onet=mirror_onet,
                landmark_scales=landmark_scales,
            )
            faces = sum(len(f) for f in detector.detect(decoded))
            seconds, _ = median_seconds(lambda detector=detector: detector.detect(decoded), repeats)
            settings = {
                "weights": weights,
                "min_face_size": min_face,
                "device": device,
                "batch_size": batch,
                "mirror_onet": mirror_onet,
                "landmark_scales": tuple(landmark_scales),
            }
            peak = _peak_memory("mtcnn", settings, images) if measure_memory else None
            rows.append(DetectRow(name, min_face, batch, len(decoded) / seconds, faces, peak))
            log.info("%s  min face %3d  batch %2d  %7.2f images/s", name, min_face, batch, rows[-1].images_per_second)
        if compare_facenet:
            row = _bench_facenet(decoded, min_face, repeats, device)
            if row is not None:
                if measure_memory:
                    settings = {"min_face_size": min_face, "device": device}
                    row = replace(row, peak_memory_bytes=_peak_memory("facenet-pytorch", settings, images))
                rows.append(row)
    return rows


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
        from mtcnn.detect.cascade import MTCNN

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


def _bench_facenet(decoded: list[np.ndarray], min_face: int, repeats: int, device: str) -> DetectRow | None:
    try:
        model = _facenet_detector(min_face, device)
    except ImportError:
        log.info("facenet-pytorch is not installed: no comparison")
        return None
    from PIL import Image

    pil_images = [Image.fromarray(image) for image in decoded]

    def run() -> int:
        return sum(0 if boxes is None else len(boxes) for boxes, _ in (model.detect(im) for im in pil_images))

    faces = run()
    seconds, _ = median_seconds(run, repeats, warmup=0)
    row = DetectRow("facenet-pytorch", min_face, 1, len(decoded) / seconds, faces)
    log.info("facenet-pytorch min face %3d  batch  1  %7.2f images/s", min_face, row.images_per_second)
    return row


def format_detect_table(rows: Sequence[DetectRow], machine: str, image_count: int, repeats: int) -> str:
    """A Markdown table of the rows, with the machine and method underneath."""
    lines = ["| detector | min face | batch | images/s | faces found | peak memory |", "|---|---|---|---|---|---|"]
    for row in rows:
        memory = "-" if row.peak_memory_bytes is None else f"{row.peak_memory_bytes / 2**30:.2f} GiB"
        lines.append(
            f"| {row.detector} | {row.min_face_size} | {row.batch_size} | {row.images_per_second:.2f} | {row.faces}"
            f" | {memory} |"
        )
    lines.append("")
    lines.append(
        f"{image_count} WIDER_val images, decoded beforehand; median of {repeats} runs; peak memory: a fresh"
        f" process per row, decoding the images and detecting once; {machine}"
    )
    return "\n".join(lines)
