"""How far O-Nets move the windows R-Net passes toward the faces, by how well the windows fit.

    python3 experiments/onet_box_bands.py --onet ours=mtcnn/weights/onet.pt \
        --onet original=data/reference_weights/facenet_pytorch/onet.pt --images 300

Runs P-Net and R-Net of ``--weights`` over WIDER_val images, squares R-Net's boxes as the
cascade does, and gives the crops to each O-Net (averaged over each crop and its mirror image
unless ``--no-mirror-onet``, as the cascade runs it). Each window is matched to the valid face it
overlaps most and put in a band by that IoU: positive (>= 0.65), part face (0.4 to 0.65) and
near miss (0.25 to 0.4; no box target in training). Per band and O-Net it reports:

- ``refined IoU``: the mean IoU of the regressed box with the face (the window's own IoU beside it);
- ``>= 0.5``: the share of regressed boxes that WIDER's evaluation would count as found;
- ``correction``: how much of the needed offset the net predicts, ``sum(p * t) / sum(t * t)`` over
  the four offsets (1: all of it; 0: none; MSE-trained nets predict less when unsure);
- ``box MSE``: the squared offset error, as the training loss measures it.

Validation box error averages over the crops of a store; this looks at the windows the cascade
actually scores, where an O-Net's AP is won or lost.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mtcnn.atomic import write_json_atomic
from mtcnn.data.readers import WiderImage, read_wider
from mtcnn.data.samples import box_targets
from mtcnn.detect.inputs import to_pixel_tensor
from mtcnn.errors import MtcnnError
from mtcnn.model.nets import MirrorAveraged
from mtcnn.model.weights import load_net
from mtcnn.ops.boxes import apply_box_offsets, iou_matrix, square_boxes
from mtcnn.ops.resample import crop_and_resize, integral_image
from mtcnn.spec import INPUT_SIZES

from common import add_cascade_options, cascade

log = logging.getLogger("onet_box_bands")

BANDS: dict[str, tuple[float, float]] = {"positive": (0.65, 1.01), "part": (0.4, 0.65), "near miss": (0.25, 0.4)}


@dataclass
class BandStats:
    """One O-Net on the windows of one IoU band."""

    windows: int
    window_iou: float
    refined_iou: float
    found: float  # share of regressed boxes with IoU >= 0.5
    correction: float
    box_mse: float


@dataclass
class Windows:
    """R-Net's square windows over all images: each one's IoU with the face it overlaps most
    ``[N]``, the offsets that would take it onto that face ``[N, 4]``, and per O-Net name the
    offsets the net predicts ``[N, 4]`` and the IoU of the box they give with the face ``[N]``."""

    iou: np.ndarray
    target: np.ndarray
    offsets: dict[str, np.ndarray]
    refined_iou: dict[str, np.ndarray]


def band_stats(window_iou: np.ndarray, target: np.ndarray, offsets: np.ndarray, refined_iou: np.ndarray) -> BandStats:
    """How ``offsets`` ``[N, 4]`` match the ``target`` offsets ``[N, 4]`` of windows whose IoU
    with their faces is ``window_iou`` ``[N]`` before regression and ``refined_iou`` ``[N]`` after."""
    needed = float((target * target).sum())
    return BandStats(
        windows=len(window_iou),
        window_iou=float(window_iou.mean()),
        refined_iou=float(refined_iou.mean()),
        found=float((refined_iou >= 0.5).mean()),
        correction=float((offsets * target).sum()) / needed if needed > 0 else float("nan"),
        box_mse=float(((offsets - target) ** 2).mean()),
    )


def band_table(collected: Windows, bands: Mapping[str, tuple[float, float]] = BANDS) -> dict[str, dict[str, BandStats]]:
    """``{band: {onet name: BandStats}}``; bands with no window are left out."""
    table: dict[str, dict[str, BandStats]] = {}
    for band, (low, high) in bands.items():
        members = (collected.iou >= low) & (collected.iou < high)
        if members.any():
            table[band] = {
                name: band_stats(
                    collected.iou[members],
                    collected.target[members],
                    offsets[members],
                    collected.refined_iou[name][members],
                )
                for name, offsets in collected.offsets.items()
            }
    return table


def measure_windows(
    windows: torch.Tensor, faces: np.ndarray, crops: torch.Tensor, onets: Mapping[str, torch.nn.Module]
) -> Windows:
    """One image: square ``windows`` ``[N, 4]``, its valid faces ``[K, 4]`` (K >= 1) and the
    windows' O-Net crops ``[N, 3, 48, 48]``."""
    boxes = windows.float().cpu()
    overlap = iou_matrix(boxes.numpy(), faces)
    match = overlap.argmax(axis=1)
    rows = np.arange(len(match))
    matched = torch.as_tensor(faces[match], dtype=torch.float32)
    offsets, refined_iou = {}, {}
    for name, onet in onets.items():
        predicted = onet(crops).box.float().cpu()
        offsets[name] = predicted.numpy()
        refined_iou[name] = iou_matrix(apply_box_offsets(boxes, predicted).numpy(), faces)[rows, match]
    return Windows(overlap[rows, match], box_targets(boxes.numpy(), matched.numpy()), offsets, refined_iou)


def collect_windows(detector, onets: Mapping[str, torch.nn.Module], images: Sequence[WiderImage]) -> Windows:
    """R-Net's windows on ``images`` measured by :func:`measure_windows`, all images together.

    Images without valid faces or without R-Net boxes add nothing.
    """
    from tqdm import tqdm

    per_image = []
    with torch.inference_mode():
        for image in tqdm(images, unit="img", desc="windows"):
            valid = image.boxes[~image.invalid]
            if len(valid) == 0:
                continue
            # Read once: the cascade and the crops below take the same pixels.
            pixels = to_pixel_tensor(image.path, str(image.path)).to(detector.device)
            boxes = detector.detect_stages([pixels], last_stage="rnet")[0]["rnet"].boxes
            if len(boxes) == 0:
                continue
            windows = square_boxes(torch.as_tensor(boxes, device=detector.device))
            crops = crop_and_resize(pixels, windows, INPUT_SIZES["onet"], integral_image(pixels))
            per_image.append(measure_windows(windows, valid, crops, onets))
    if not per_image:
        raise MtcnnError("R-Net passed no window on these images, or they have no valid face")
    return Windows(
        np.concatenate([w.iou for w in per_image]),
        np.concatenate([w.target for w in per_image]),
        {name: np.concatenate([w.offsets[name] for w in per_image]) for name in onets},
        {name: np.concatenate([w.refined_iou[name] for w in per_image]) for name in onets},
    )


def format_table(table: Mapping[str, Mapping[str, BandStats]]) -> str:
    lines = [
        f"{'band':<10} {'O-Net':<12} {'windows':>8} {'window IoU':>10} {'refined IoU':>11} {'>= 0.5':>7} "
        f"{'correction':>10} {'box MSE':>8}"
    ]
    for band, per_net in table.items():
        for name, stats in per_net.items():
            lines.append(
                f"{band:<10} {name:<12} {stats.windows:>8} {stats.window_iou:>10.3f} {stats.refined_iou:>11.3f} "
                f"{stats.found:>7.3f} {stats.correction:>10.3f} {stats.box_mse:>8.4f}"
            )
    return "\n".join(lines)


def parse_named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> ``(NAME, PATH)``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--onet",
        type=parse_named_path,
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="an O-Net to measure (repeat to compare)",
    )
    parser.add_argument(
        "--annotations", type=Path, default=Path("data/widerface/wider_face_split/wider_face_val_bbx_gt.txt")
    )
    parser.add_argument("--images-dir", type=Path, default=Path("data/widerface/WIDER_val/images"))
    parser.add_argument(
        "--images", type=int, default=None, metavar="N", help="use N images spread evenly over the list (default: all)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    add_cascade_options(
        parser, "folder with the pnet.pt and rnet.pt whose windows are measured (default: the shipped weights)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.images is not None and args.images < 1:
            raise MtcnnError(f"--images must be at least 1, got {args.images}")
        detector = cascade(args)
        onets = {name: load_net(path, "onet").to(detector.device).eval() for name, path in args.onet}
        if args.mirror_onet:  # each O-Net as the cascade runs it
            onets = {name: MirrorAveraged(net) for name, net in onets.items()}
        images = read_wider(args.annotations, args.images_dir)
        if args.images is not None:
            images = images[:: max(1, len(images) // args.images)][: args.images]
        table = band_table(collect_windows(detector, onets, images))
    except (MtcnnError, ValueError, OSError) as exc:  # bad paths or settings: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s", format_table(table))
    if args.out is not None:
        report = {band: {name: asdict(stats) for name, stats in per_net.items()} for band, per_net in table.items()}
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
