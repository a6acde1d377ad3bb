"""How sample stores cut from the same images differ: what each label holds and how hard it is.

    python3 experiments/compare_stores.py runs/a/prep/onet-train runs/b/prep/onet-train \\
        --judge data/reference_weights/facenet_pytorch/onet.pt

For each store, per label: the count; for the samples cut from WIDER images, the best IoU of
each crop window with the faces of its image and the window's side (10th / 50th / 90th
percentile); and with ``--judge``, the face probability a net of the store's stage gives the
negatives and positives (how many negatives it takes for faces, how many positives it misses).
It answers "did the earlier nets mine other samples?" when two runs of a stage differ.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mtcnn.config import DataConfig, build_config
from mtcnn.data.readers import read_face_source, read_wider
from mtcnn.data.store import SampleStore
from mtcnn.errors import MtcnnError
from mtcnn.model.weights import load_net
from mtcnn.ops.boxes import iou_matrix
from mtcnn.spec import LABEL_NAMES, LABEL_NEGATIVE, LABEL_POSITIVE
from mtcnn.train.batches import to_net_layout

PERCENTILES = (10, 50, 90)
#: Face probabilities at which a negative counts as taken for a face and a positive as missed.
JUDGE_THRESHOLDS = (0.5, 0.7)


def best_face_iou(origin: np.ndarray, window: np.ndarray, faces: Sequence[np.ndarray]) -> np.ndarray:
    """``float64 [N]``: for each sample cut from a WIDER image (``origin [N, 2]`` row ``(0, i)``),
    the best IoU of its ``window [N, 4]`` with ``faces[i] [F, 4]`` (0 without faces); NaN for the
    other samples (landmark faces)."""
    best = np.full(len(origin), np.nan)
    wider = np.flatnonzero(origin[:, 0] == 0)
    order = wider[np.argsort(origin[wider, 1], kind="stable")]
    images, starts = np.unique(origin[order, 1], return_index=True)
    for image, rows in zip(images, np.split(order, starts[1:])):
        image_faces = np.asarray(faces[image], np.float64).reshape(-1, 4)
        best[rows] = iou_matrix(window[rows].astype(np.float64), image_faces).max(axis=1, initial=0.0)
    return best


def face_probability(net: torch.nn.Module, images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``float32 [N]``: the face probability ``net`` gives each crop of ``images uint8 [N, S, S, 3]``."""
    probabilities = [np.zeros(0, np.float32)]
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            pixels = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).float()
            probabilities.append(torch.softmax(net(to_net_layout(pixels)).logits, dim=1)[:, 1].numpy())
    return np.concatenate(probabilities)


def store_summary(
    store: SampleStore, faces: Sequence[np.ndarray], judges: Mapping[str, torch.nn.Module]
) -> dict[str, dict[str, object]]:
    """Per label name: ``count``; for WIDER samples ``iou`` and ``side`` percentiles (lists in the
    order of :data:`PERCENTILES`); per judge, the share of negatives it scores at or above each of
    :data:`JUDGE_THRESHOLDS` and the share of positives below them."""
    origin, window = store.extra("origin"), store.extra("window")
    iou = best_face_iou(origin, window, faces)
    side = window[:, 2] - window[:, 0]
    summary: dict[str, dict[str, object]] = {}
    for label, name in LABEL_NAMES.items():
        chosen = store.labels == label
        row: dict[str, object] = {"count": int(chosen.sum())}
        from_wider = chosen & (origin[:, 0] == 0)
        if from_wider.any():
            row["iou"] = np.percentile(iou[from_wider], PERCENTILES).tolist()
            row["side"] = np.percentile(side[from_wider], PERCENTILES).tolist()
        if label in (LABEL_NEGATIVE, LABEL_POSITIVE) and chosen.any():
            for judge_name, net in judges.items():
                probability = face_probability(net, store.images[chosen])
                row[judge_name] = [
                    float(np.mean(probability >= t) if label == LABEL_NEGATIVE else np.mean(probability < t))
                    for t in JUDGE_THRESHOLDS
                ]
        summary[name] = row
    return summary


def _format(values: object, digits: int) -> str:
    return " / ".join(f"{value:.{digits}f}" for value in values) if isinstance(values, list) else "-"


def store_faces(store: SampleStore) -> list[np.ndarray]:
    """The face boxes ``[K, 4]`` of each image a store was prepared from, read from the face
    sources its manifest's config lists for its split."""
    data = build_config(DataConfig, store.manifest["config"]["data"])
    sources = getattr(data, store.manifest["split"]).faces
    return [image.boxes for source in sources for image in read_face_source(source)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "stores",
        type=Path,
        nargs="+",
        metavar="STORE",
        help="sample store folders (with the origin and window arrays that mtcnn prep writes)",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="the WIDER FACE *_bbx_gt.txt the stores were cut from (default: the sources in each store's manifest)",
    )
    parser.add_argument(
        "--judge",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a net of the stores' stage that scores the negatives and positives (repeat for several)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        stores = [SampleStore.open(path, mmap=False) for path in args.stores]
        stages = {store.stage for store in stores}
        if len(stages) != 1:
            raise MtcnnError(f"the stores are of different stages ({', '.join(sorted(stages))})")
        stage = stages.pop()
        judges = {str(path): load_net(path, stage).eval() for path in args.judge}
        summaries = []
        for store in stores:
            if args.annotations is not None:
                faces = [image.boxes for image in read_wider(args.annotations, ".")]
            else:
                faces = store_faces(store)
            summaries.append(store_summary(store, faces, judges))
    except (MtcnnError, OSError) as exc:  # bad paths or stores: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2

    percentiles = "/".join(str(p) for p in PERCENTILES)
    thresholds = " / ".join(str(t) for t in JUDGE_THRESHOLDS)
    for path, summary in zip(args.stores, summaries):
        print(f"== {path}")
        for name, row in summary.items():
            line = (
                f"{name:9s} {row['count']:>9,d}  IoU p{percentiles} {_format(row.get('iou'), 3):21s}"
                f"  side {_format(row.get('side'), 1)}"
            )
            for judge_name in judges:
                if judge_name in row:
                    what = "taken for faces" if name == "negative" else "missed"
                    line += f"\n{'':11s}{judge_name}: {what} at {thresholds}: {_format(row[judge_name], 3)}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
