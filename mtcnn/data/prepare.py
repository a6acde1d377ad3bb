"""Running a preparation: inputs split into shards, worked on by several processes, resumable.

The inputs are the WIDER images of a split, then the faces of its landmark list. They are cut
into shards of ``images_per_shard`` images or ``faces_per_shard`` faces; each shard is one task,
written atomically by :func:`mtcnn.data.store.write_shard`. Every image or face draws its random
numbers from a generator seeded by ``(seed, source, index)``, so the samples are the same
whatever the number of workers and whichever shards were finished before an interruption.

A fingerprint of everything that decides the samples (stage, split, settings, input names, weight
files) is kept in each shard. A rerun into the same folder keeps the shards that carry the same
fingerprint and redoes the rest; a folder prepared with other settings is refused unless
``overwrite`` is given. ``manifest.json`` is removed first and written last, so the store opens
only once every shard is there.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtcnn.allocator import retain_freed_memory
from mtcnn.config import StageConfig, to_dict
from mtcnn.data.readers import (
    LandmarkFace,
    WiderImage,
    faces_inside,
    points_outside,
    read_face_source,
    read_landmark_source,
)
from mtcnn.data.samples import Samples, face_crops, landmark_crops
from mtcnn.data.store import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARDS_DIR,
    complete_shard_meta,
    finish_store,
    read_shard_meta,
    remove_temporary_shards,
    shard_name,
    write_shard,
)
from mtcnn.detect.inputs import read_image
from mtcnn.errors import DataError, ImageReadError, MtcnnError
from mtcnn.model.checkpoint import software_versions
from mtcnn.model.weights import file_digest
from mtcnn.spec import INPUT_SIZES, LABEL_NAMES

log = logging.getLogger(__name__)

#: Source codes in each sample's ``origin``: face images (of all face sources) or landmark faces.
SOURCE_FACES, SOURCE_LANDMARKS = 0, 1
#: Messages kept in the manifest per kind (the count is always complete).
MAX_MESSAGES = 200


@dataclass(frozen=True)
class ShardTask:
    """One shard's inputs: ``items`` (WIDER images or landmark faces) from index ``start`` of
    their list."""

    index: int
    source: int
    start: int
    items: tuple


@dataclass(frozen=True)
class PrepJob:
    """What every task of one preparation shares (sent to each worker process once per task)."""

    stage: str
    out: Path
    config: StageConfig
    fingerprint: str
    weights: Mapping[str, str] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def size(self) -> int:
        return INPUT_SIZES[self.stage]


@dataclass
class PrepSummary:
    """What a preparation did: the manifest it wrote and how long it took."""

    manifest: dict[str, Any]
    shards_total: int
    shards_done_before: int
    wall_seconds: float

    @property
    def samples(self) -> int:
        return int(self.manifest["count"])


# ------------------------------------------------------------------------------ inputs


def split_inputs(
    config: StageConfig, split: str, problems: list[str]
) -> tuple[list[WiderImage], list[LandmarkFace], dict[str, Any]]:
    """The face images and landmark faces of ``split`` (``train`` or ``val``): every source of
    ``data.<split>`` in config order, limited as the config says, and a description of the
    sources for the manifest (each with how many of its images or faces are used)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = getattr(config.data, split)
    if not data.faces and not data.landmarks:
        raise DataError(f"data.{split} lists no face or landmark sources")
    faces: list[list[WiderImage]] = [read_face_source(source, problems) for source in data.faces]
    marks: list[list[LandmarkFace]] = [read_landmark_source(source, problems) for source in data.landmarks]
    prep = config.prep
    wider = _first(faces, prep.limit_images)
    landmarks = _first(marks, prep.limit_landmark_faces)
    sources = {
        "split": split,
        "faces": [
            {**_source_record(source), "images": len(images), "faces": int(sum(len(image) for image in images))}
            for source, images in zip(data.faces, faces)
        ],
        "landmarks": [{**_source_record(source), "faces": len(found)} for source, found in zip(data.landmarks, marks)],
        "face_images_used": len(wider),
        "landmark_faces_used": len(landmarks),
    }
    return wider, landmarks, sources


def _first(per_source: Sequence[Sequence[Any]], limit: int | None) -> list[Any]:
    """The items of all sources in order, the first ``limit`` of them when given."""
    items = [item for items in per_source for item in items]
    return items if limit is None else items[:limit]


def _source_record(source: Any) -> dict[str, Any]:
    """A config source as the manifest lists it: its format and the paths set."""
    return {key: value for key, value in to_dict(source).items() if value is not None}


def source_counts(out: Path, shard_indices: Sequence[int], sources: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Samples per label of each source, from the shards' ``origin`` arrays: which face or
    landmark source each sample's image or face came from."""
    counted = {"faces": SOURCE_FACES, "landmarks": SOURCE_LANDMARKS}
    result: dict[str, list[dict]] = {}
    for kind, code in counted.items():
        sizes = [entry["images" if kind == "faces" else "faces"] for entry in sources[kind]]
        ends = np.cumsum(sizes)
        per_source = [dict.fromkeys(LABEL_NAMES.values(), 0) for _ in sizes]
        for index in shard_indices:
            folder = out / SHARDS_DIR / shard_name(index)
            origin = np.load(folder / "origin.npy", mmap_mode="r")
            labels = np.load(folder / "labels.npy", mmap_mode="r")
            mine = origin[:, 0] == code
            which = np.searchsorted(ends, origin[mine, 1], side="right")  # the source of each sample
            pairs, numbers = np.unique(np.stack([which, labels[mine]]), axis=1, return_counts=True)
            for (source_index, label), number in zip(pairs.T.tolist(), numbers.tolist()):
                per_source[source_index][LABEL_NAMES[label]] += number
        result[kind] = per_source
    return result


def plan_shards(
    wider: Sequence[WiderImage], landmarks: Sequence[LandmarkFace], images_per_shard: int, faces_per_shard: int
) -> list[ShardTask]:
    """WIDER shards first, then landmark shards, numbered from 0."""
    tasks: list[ShardTask] = []
    for source, items, step in (
        (SOURCE_FACES, wider, images_per_shard),
        (SOURCE_LANDMARKS, landmarks, faces_per_shard),
    ):
        for start in range(0, len(items), step):
            tasks.append(ShardTask(len(tasks), source, start, tuple(items[start : start + step])))
    return tasks


def fingerprint(
    stage: str, config: StageConfig, sources: Mapping[str, Any], tasks: Sequence[ShardTask], weights: Mapping[str, str]
) -> str:
    """A digest of everything that decides the samples: stage, settings, inputs, weight files."""
    recipe = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "split": sources["split"],
        "prep": to_dict(config.prep),
        "mining": to_dict(config.mining) if stage != "pnet" else None,
        "inputs": [[task.source, task.start, _task_digest(task)] for task in tasks],
        "weights": {name: file_digest(path) for name, path in sorted(weights.items())},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _task_digest(task: ShardTask) -> str:
    """A digest of a shard's inputs: file names and annotations."""
    digest = hashlib.sha256()
    for item in task.items:
        digest.update(str(item.path).encode())
        digest.update(np.ascontiguousarray(item.boxes if isinstance(item, WiderImage) else item.box).tobytes())
        if isinstance(item, WiderImage):
            digest.update(item.invalid.tobytes())
        else:
            digest.update(item.points.tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------ one shard


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and OpenCV on one thread each (restored afterwards).

    Preparation parallelises over processes; the many small ops of one image gain nothing from
    threads, and on a busy machine spinning thread pools made them ten to a hundred times slower.
    """
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


def _worker_init(parent: int) -> None:
    exit_with_parent(parent)
    retain_freed_memory()  # spawned workers do not inherit the parent's malloc settings
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


#: ``prctl`` option: the signal the kernel sends this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """End this (worker) process when process ``parent`` ends, however it ends.

    A pool's workers otherwise outlive a parent that was killed outright (``kill -9``, the OOM
    killer): each keeps its memory and goes on writing shards nobody collects. On Linux the kernel
    kills the worker (``prctl(PR_SET_PDEATHSIG)``; strictly, when the parent's thread that started
    it ends: the pool is made and awaited by one thread); elsewhere a daemon thread polls the parent
    id. Either way, a parent that died before this was set up is caught by the id check.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # orphaned already (adopted by init or a subreaper)
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(poll_seconds)
            os._exit(1)

        threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_DETECTORS: dict[tuple, Any] = {}


def _detector(job: PrepJob):
    """The mining detector of this process, built once per job."""
    from mtcnn.data.mining import mining_detector

    key = (job.fingerprint, job.device)
    if key not in _DETECTORS:
        _DETECTORS.clear()
        _DETECTORS[key] = mining_detector(job.stage, job.weights, job.config.mining, job.device)
    return _DETECTORS[key]


def _read(path: Path, skipped: list[str]) -> np.ndarray | None:
    try:
        return read_image(path)
    except ImageReadError as exc:
        skipped.append(f"{exc}; skipped")
        return None


def _rng(seed: int, source: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, source, index])


def _wider_samples(
    job: PrepJob, task: ShardTask, skipped: list[str], problems: list[str], meta: dict[str, Any]
) -> list[tuple[int, Samples]]:
    prep = job.config.prep
    images = [_read(item.path, skipped) for item in task.items]
    present = [i for i, image in enumerate(images) if image is not None]
    items = list(task.items)
    for i in present:
        items[i], outside = faces_inside(items[i], *images[i].shape[:2])
        problems.extend(outside)
    results: list[tuple[int, Samples]] = []
    if job.stage == "pnet":
        for i in present:
            item, index = items[i], task.start + i
            samples = face_crops(
                images[i], item.boxes, item.invalid, _rng(prep.seed, SOURCE_FACES, index), prep, job.size
            )
            results.append((index, samples))
        return results
    from mtcnn.data.mining import Recall, mine_image, mined_windows

    windows = mined_windows(_detector(job), [images[i] for i in present], job.stage)
    recall = Recall()
    for i, image_windows in zip(present, windows):
        index = task.start + i
        samples, image_recall = mine_image(
            images[i],
            items[i],
            image_windows,
            _rng(prep.seed, SOURCE_FACES, index),
            prep,
            job.config.mining,
            job.size,
        )
        recall.faces += image_recall.faces
        recall.found += image_recall.found
        results.append((index, samples))
    meta["recall"] = {"faces": recall.faces, "found": recall.found}
    return results


def _landmark_samples(
    job: PrepJob, task: ShardTask, skipped: list[str], problems: list[str]
) -> list[tuple[int, Samples]]:
    prep = job.config.prep
    results: list[tuple[int, Samples]] = []
    for i, face in enumerate(task.items):
        image = _read(face.path, skipped)
        if image is None:
            continue
        outside = points_outside(face, *image.shape[:2])
        if outside is not None:
            problems.append(outside)
            continue
        index = task.start + i
        results.append(
            (index, landmark_crops(image, face, _rng(prep.seed, SOURCE_LANDMARKS, index), prep.landmarks, job.size))
        )
    return results


def run_shard(job: PrepJob, task: ShardTask) -> dict[str, Any]:
    """Make and write one shard; returns its metadata (also saved in its ``shard.json``)."""
    skipped: list[str] = []
    problems: list[str] = []
    meta: dict[str, Any] = {
        "fingerprint": job.fingerprint,
        "source": task.source,
        "start": task.start,
        "items": len(task.items),
        "digest": _task_digest(task),
    }
    if task.source == SOURCE_FACES:
        results = _wider_samples(job, task, skipped, problems, meta)
    else:
        results = _landmark_samples(job, task, skipped, problems)
    samples = Samples.concat([samples for _, samples in results], job.size)
    origin = (
        np.concatenate([np.full((len(s), 2), (task.source, index), np.int32) for index, s in results])
        if results
        else np.zeros((0, 2), np.int32)
    )
    transform = np.stack([samples.mirrored.astype(np.float32), samples.rotation], axis=1)
    meta.update(skipped=skipped, problems=problems)
    write_shard(
        job.out,
        task.index,
        job.size,
        samples.images,
        samples.labels,
        samples.boxes,
        samples.landmarks,
        meta=meta,
        extras={"origin": origin.reshape(-1, 2), "window": samples.windows, "transform": transform},
    )
    return read_shard_meta(job.out, task.index)


def _run_shard_in_process(job: PrepJob, task: ShardTask) -> dict[str, Any]:
    """One shard in this process: on one thread when the work is on the CPU (the processes are
    the parallelism there); with every thread when the nets mine on a GPU, where this process is
    the only one and decodes and cuts on the CPU meanwhile."""
    if torch.device(job.device).type != "cpu":
        return run_shard(job, task)
    with single_threaded():
        return run_shard(job, task)


# ------------------------------------------------------------------------------ a whole run


def _shard_is_done(out: Path, task: ShardTask, job_fingerprint: str) -> bool:
    meta = complete_shard_meta(out, task.index)
    return (
        meta is not None
        and meta.get("fingerprint") == job_fingerprint
        and meta.get("start") == task.start
        and meta.get("source") == task.source
        and meta.get("digest") == _task_digest(task)
    )


def _check_folder(out: Path, job_fingerprint: str, overwrite: bool) -> None:
    """Refuse to mix with a store prepared with other settings, unless told to overwrite it."""
    if overwrite:
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        return
    found: set[str] = set()
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        try:
            found.add(json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint"))
        except (OSError, ValueError):
            found.add("unreadable")
    shards = out / SHARDS_DIR
    if shards.is_dir():
        for folder in shards.iterdir():
            if not folder.name.startswith("."):
                meta = read_shard_meta(out, int(folder.name)) if folder.name.isdigit() else None
                found.add(meta.get("fingerprint") if meta else "unknown")
    foreign = found - {job_fingerprint}
    if foreign:
        raise DataError(
            f"{out}: holds samples prepared from other settings or inputs; choose another --out "
            "or pass --overwrite to replace them"
        )


def _messages(metas: Sequence[Mapping[str, Any]], key: str, first: Sequence[str] = ()) -> dict[str, Any]:
    messages = list(first) + [message for meta in metas for message in meta.get(key, [])]
    return {"count": len(messages), "messages": messages[:MAX_MESSAGES]}


def _run_tasks(job: PrepJob, tasks: Sequence[ShardTask], workers: int, total: int, done: int) -> None:
    """Run ``tasks`` in-process (one worker) or in a pool of ``workers`` processes, with a bar."""
    desc = f"prep {job.stage}"
    with logging_redirect_tqdm(), tqdm(total=total, initial=done, unit="input", desc=desc, smoothing=0.1) as bar:

        def finished(meta: Mapping[str, Any]) -> None:
            for message in [*meta.get("skipped", []), *meta.get("problems", [])]:
                log.warning("%s", message)
            bar.update(meta["items"])

        if workers <= 1:
            try:
                for task in tasks:
                    finished(_run_shard_in_process(job, task))
            finally:
                _DETECTORS.clear()  # do not keep the mining nets alive in the caller's process
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
        )
        try:
            pending: set[Future] = {pool.submit(run_shard, job, task) for task in tasks}
            while pending:
                completed, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in completed:
                    finished(future.result())
        except BrokenProcessPool:
            raise MtcnnError(
                "a preparation worker process died (out of memory? started from an interactive "
                "session? try --workers 1); finished shards are kept, run again to resume"
            ) from None
        finally:
            # On an error or Ctrl-C, drop the queued shards rather than wait for them all.
            pool.shutdown(wait=True, cancel_futures=True)


def prepare(
    stage: str,
    config: StageConfig,
    out: str | Path,
    split: str = "train",
    workers: int = 1,
    overwrite: bool = False,
    weights: Mapping[str, str | Path] | None = None,
    device: str = "cpu",
) -> PrepSummary:
    """Prepare the ``stage`` sample store of ``split`` in ``out``, resuming a run stopped there.

    ``weights`` ``{stage: file}`` are the earlier stages' nets (R-Net and O-Net sets only);
    ``device`` runs them (mining then uses one process when it is a GPU).
    """
    started = time.perf_counter()
    if config.stage != stage:
        raise MtcnnError(f"the config is for {config.stage}, not {stage}; pass configs/{stage}.yaml")
    out = Path(out)
    weights = {name: str(path) for name, path in (weights or {}).items()}
    for name, path in weights.items():
        if not Path(path).is_file():
            raise MtcnnError(f"{path}: no such {name} weights file")
    if stage != "pnet" and torch.device(device).type == "cuda" and workers > 1:
        # one process keeps the GPU busy; several would each hold a copy of the nets
        log.info(
            "mining on %s: one process with %d torch threads, not %d workers", device, torch.get_num_threads(), workers
        )
        workers = 1
    problems: list[str] = []
    wider, landmarks, sources = split_inputs(config, split, problems)
    tasks = plan_shards(wider, landmarks, config.prep.images_per_shard, config.prep.faces_per_shard)
    if not tasks:
        raise DataError(f"data.{split}: its sources hold no images or landmark faces to prepare from")
    job_fingerprint = fingerprint(stage, config, sources, tasks, weights)
    _check_folder(out, job_fingerprint, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    remove_temporary_shards(out)
    remaining = [task for task in tasks if not _shard_is_done(out, task, job_fingerprint)]
    if remaining:
        manifest_path.unlink(missing_ok=True)
        done_items = sum(len(task.items) for task in tasks) - sum(len(task.items) for task in remaining)
        if len(remaining) < len(tasks):
            log.info("%s: resuming, %d of %d shards already done", out, len(tasks) - len(remaining), len(tasks))
        job = PrepJob(stage=stage, out=out, config=config, fingerprint=job_fingerprint, weights=weights, device=device)
        _run_tasks(
            job, remaining, max(1, min(workers, len(remaining))), sum(len(task.items) for task in tasks), done_items
        )
    metas = [read_shard_meta(out, task.index) for task in tasks]
    counts = source_counts(out, [task.index for task in tasks], sources)
    for kind in ("faces", "landmarks"):
        for entry, samples in zip(sources[kind], counts[kind]):
            entry["samples"] = samples
    extra: dict[str, Any] = {
        "fingerprint": job_fingerprint,
        "split": split,
        "seed": config.prep.seed,
        "sources": sources,
        "thresholds": {
            "negative_iou": config.prep.negative_iou,
            "part_iou": config.prep.part_iou,
            "positive_iou": config.prep.positive_iou,
            "min_face_size": config.prep.min_face_size,
        },
        "skipped_inputs": _messages(metas, "skipped"),
        "annotation_problems": _messages(metas, "problems", problems),
        "config": {
            "stage": stage,
            "data": to_dict(config.data),
            "prep": to_dict(config.prep),
            **({"mining": to_dict(config.mining)} if stage != "pnet" else {}),
        },
        "versions": software_versions(),
        "extras_meaning": {
            "origin": "[source (0 face image, 1 landmark face), index in the sources' images or faces in order]",
            "window": "crop window x1 y1 x2 y2 in source image pixels, before mirroring",
            "transform": "[mirrored (0/1), rotation in degrees]",
        },
    }
    if stage != "pnet":
        extra["weights"] = weights
        faces = sum(meta.get("recall", {}).get("faces", 0) for meta in metas)
        found = sum(meta.get("recall", {}).get("found", 0) for meta in metas)
        extra["recall"] = {
            "faces": faces,
            "found": found,
            "value": found / faces if faces else None,
            "iou": config.prep.positive_iou,
            "min_face_size": config.prep.min_face_size,
        }
    manifest = finish_store(out, stage, [task.index for task in tasks], extra)
    return PrepSummary(
        manifest=manifest,
        shards_total=len(tasks),
        shards_done_before=len(tasks) - len(remaining),
        wall_seconds=time.perf_counter() - started,
    )


def default_workers() -> int:
    """Worker processes by default: one per CPU core."""
    return max(1, os.cpu_count() or 1)


def format_summary(summary: PrepSummary) -> str:
    """Lines for the console: what was written, counts per label, speed, recall, problems."""
    manifest = summary.manifest
    counts = manifest["counts"]
    made = summary.shards_total - summary.shards_done_before
    lines = [
        f"{manifest['stage']} {manifest['split']} set: {summary.samples:,} samples of "
        f"{manifest['size']}x{manifest['size']} px in {summary.shards_total} shards",
        "  " + ", ".join(f"{name} {count:,}" for name, count in counts.items()),
    ]
    if made:
        rate = summary.samples * made / summary.shards_total / summary.wall_seconds
        lines.append(
            f"  {made} shards made in {summary.wall_seconds:.1f} s (~{rate:,.0f} crops/s)"
            + (f"; {summary.shards_done_before} were already done" if summary.shards_done_before else "")
        )
    else:
        lines.append("  every shard was already done; nothing to make")
    recall = manifest.get("recall")
    if recall:
        value = "n/a" if recall["value"] is None else f"{recall['value']:.1%}"
        lines.append(
            f"  earlier stages' recall: {value} ({recall['found']:,} of {recall['faces']:,} faces with longer "
            f"side >= {recall['min_face_size']:g} px got a box with IoU >= {recall['iou']:g})"
        )
    for key, what in (("skipped_inputs", "unreadable inputs skipped"), ("annotation_problems", "annotations left out")):
        if manifest[key]["count"]:
            lines.append(f"  {manifest[key]['count']} {what} (listed in manifest.json)")
    return "\n".join(lines)
