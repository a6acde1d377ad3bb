"""What the research instruments share: a cascade from a few flags and WIDER_val AP reports,
built on the package's public API only (``mtcnn.MTCNN``, ``mtcnn.eval.wider``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from mtcnn import MTCNN
from mtcnn.atomic import write_json_atomic
from mtcnn.eval.wider import WiderResult, evaluate_wider
from mtcnn.eval.wider_files import detect_wider, load_ground_truth
from mtcnn.model.weights import load_net, resolve_weight_files

log = logging.getLogger("experiments")


def add_cascade_options(parser: argparse.ArgumentParser, weights_help: str) -> None:
    """``--weights``, ``--no-mirror-onet``, ``--device``: the cascade an experiment runs (the
    other settings are the defaults of :class:`mtcnn.MTCNN`: min face 20, thresholds 0.6 0.7 0.7)."""
    parser.add_argument("--weights", type=Path, default=None, metavar="DIR", help=weights_help)
    parser.add_argument(
        "--mirror-onet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average O-Net over each crop and its mirror image, as the cascade does by default",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def cascade(args: argparse.Namespace, replace: Mapping[str, nn.Module] | None = None) -> MTCNN:
    """The cascade of ``--weights`` with the nets in ``replace`` ``{stage: net}`` put in place of
    its own."""
    nets = {stage: load_net(path, stage) for stage, path in resolve_weight_files(args.weights).items()}
    nets.update(replace or {})
    return MTCNN(nets=nets, mirror_onet=args.mirror_onet, device=args.device)


def add_wider_val_options(parser: argparse.ArgumentParser) -> None:
    """``--gt-dir``, ``--images`` and ``--out``: what WIDER_val AP is scored on and where it goes."""
    parser.add_argument("--gt-dir", type=Path, default=Path("data/widerface/eval_tools/ground_truth"), metavar="DIR")
    parser.add_argument("--images", type=Path, default=Path("data/widerface/WIDER_val/images"), metavar="DIR")
    parser.add_argument("--out", type=Path, default=None, help="write the AP as JSON here")


def report_wider_ap(detector: MTCNN, args: argparse.Namespace, report: Mapping[str, Any]) -> WiderResult:
    """Score ``detector`` on WIDER_val (``--gt-dir``, ``--images``), log the easy / medium / hard
    AP and write ``report`` with the AP added to ``--out`` when given."""
    ground_truth = load_ground_truth(args.gt_dir)
    result = evaluate_wider(ground_truth, detect_wider(detector, ground_truth, args.images))
    log.info("easy / medium / hard AP: %s", " / ".join(f"{ap:.4f}" for ap in result.ap.values()))
    if args.out is not None:
        write_json_atomic(args.out, {**report, "ap": result.ap})
    return result
