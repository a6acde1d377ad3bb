"""A sample store cut down to a random share of the images and landmark faces it came from.

    python3 experiments/subset_store.py runs/prep/onet-train runs/prep/onet-train-quarter \\
        --wider-fraction 0.25

Keeps every sample of the chosen WIDER images and landmark faces (the store's ``origin`` array
says where each came from), in a one-shard store, and drops the rest. As preparation draws each
image's samples from its own random generator, the result holds what preparing only those images
would give, so that training on it measures what fewer images cost: a point of a learning curve.
The chosen indices go into the new store's manifest (``subset``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtcnn.data.prepare import SOURCE_FACES, SOURCE_LANDMARKS
from mtcnn.data.store import MANIFEST_NAME, SampleStore, write_store
from mtcnn.errors import MtcnnError

log = logging.getLogger(__name__)

#: The manifest's count of the inputs of each source (``origin[:, 0]``).
SOURCE_COUNT_KEYS = {SOURCE_FACES: "face_images_used", SOURCE_LANDMARKS: "landmark_faces_used"}
#: Manifest keys that :func:`mtcnn.data.store.write_store` writes afresh for the new store.
STRUCTURAL_KEYS = ("format", "format_version", "stage", "size", "count", "counts", "shards", "extras")


def choose_inputs(total: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``int64 [round(fraction * total)]``: sorted indices of a random share of ``total`` inputs."""
    if not 0.0 < fraction <= 1.0:
        raise MtcnnError(f"a fraction must be in (0, 1], got {fraction}")
    return np.sort(rng.choice(total, size=round(fraction * total), replace=False))


def kept_rows(origin: np.ndarray, chosen: dict[int, np.ndarray]) -> np.ndarray:
    """``bool [N]``: which samples of ``origin int [N, 2]`` (source, index) came from a chosen
    input, ``chosen`` mapping each source code to its chosen indices."""
    keep = np.zeros(len(origin), bool)
    for source, indices in chosen.items():
        from_source = origin[:, 0] == source
        keep |= from_source & np.isin(origin[:, 1], indices)
    return keep


def input_total(manifest: dict, origin_max: int, source: int) -> int:
    """How many inputs of ``source`` the store was prepared from: the manifest's count, or for a
    store without one, one more than the largest index seen."""
    return int(manifest.get("sources", {}).get(SOURCE_COUNT_KEYS[source], origin_max + 1))


def choose_subset(
    store: SampleStore, wider_fraction: float, landmark_fraction: float, seed: int
) -> dict[int, np.ndarray]:
    """``{source code: sorted chosen indices}``: a random share of the store's WIDER images and of
    its landmark faces."""
    origin = store.extra("origin")
    rng = np.random.default_rng(seed)
    chosen: dict[int, np.ndarray] = {}
    for code, fraction in ((SOURCE_FACES, wider_fraction), (SOURCE_LANDMARKS, landmark_fraction)):
        from_source = origin[:, 0] == code
        largest = int(origin[from_source, 1].max()) if from_source.any() else -1
        chosen[code] = choose_inputs(input_total(store.manifest, largest, code), fraction, rng)
    return chosen


def subset_store(store: SampleStore, out: Path, chosen: dict[int, np.ndarray], record: dict | None = None) -> dict:
    """Write the samples of ``store`` that come from the ``chosen`` inputs (``{source code:
    indices}``) into a new one-shard store at ``out``, in their order, the manifest last;
    ``record`` goes into the manifest's ``subset`` beside the chosen indices. Returns the new
    manifest."""
    if (out / MANIFEST_NAME).exists():
        raise MtcnnError(f"{out}: already holds a finished store; choose another folder")
    keep = kept_rows(store.extra("origin"), chosen)
    if not keep.any():
        raise MtcnnError(f"{store.path}: no sample comes from the chosen inputs; raise the fractions")
    manifest = {key: value for key, value in store.manifest.items() if key not in STRUCTURAL_KEYS}
    manifest["subset"] = {
        "of": str(store.path),
        **(record or {}),
        "wider_images": chosen.get(SOURCE_FACES, np.zeros(0, int)).tolist(),
        "landmark_faces": chosen.get(SOURCE_LANDMARKS, np.zeros(0, int)).tolist(),
    }
    write_store(
        out,
        store.stage,
        store.images[keep],
        store.labels[keep],
        store.boxes[keep],
        store.landmarks[keep],
        manifest,
        extras={name: store.extra(name)[keep] for name in store.manifest.get("extras", [])},
    )
    return SampleStore.open(out).manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="a sample store folder written by mtcnn prep")
    parser.add_argument("out", type=Path, help="folder for the new store")
    parser.add_argument(
        "--wider-fraction",
        type=float,
        required=True,
        metavar="F",
        help="share of the WIDER images whose samples are kept, in (0, 1]",
    )
    parser.add_argument(
        "--landmark-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="share of the landmark faces whose samples are kept (default 1: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="picks which images and faces (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        store = SampleStore.open(args.store)
        chosen = choose_subset(store, args.wider_fraction, args.landmark_fraction, args.seed)
        manifest = subset_store(
            store,
            args.out,
            chosen,
            {"seed": args.seed, "wider_fraction": args.wider_fraction, "landmark_fraction": args.landmark_fraction},
        )
    except (MtcnnError, OSError, ValueError) as exc:  # bad paths, arrays or fractions: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{count:,d} {name}" for name, count in manifest["counts"].items())
    log.info(
        "%s: %s samples (%s) from %d WIDER images and %d landmark faces",
        args.out,
        f"{manifest['count']:,d}",
        counts,
        len(manifest["subset"]["wider_images"]),
        len(manifest["subset"]["landmark_faces"]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
