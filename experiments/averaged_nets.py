"""WIDER_val AP with one stage of the cascade run as the average of several nets of that stage.

    python3 experiments/averaged_nets.py --stage rnet --nets a/rnet.pt b/rnet.pt --out averaged.json

Runs the cascade of ``--weights`` (default: the shipped weights) with R-Net or O-Net replaced by
the ``--nets`` given, each run on every crop and their face logits, box offsets and landmarks
averaged, then scores WIDER_val by the official protocol. It measures whether averaging runs of a
recipe (an ensemble, at the cost of one forward pass per net) beats its single runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mtcnn import MtcnnError
from mtcnn.model.nets import NetOutput
from mtcnn.model.weights import load_net

from common import add_cascade_options, add_wider_val_options, cascade, report_wider_ap


class AveragedNets(torch.nn.Module):
    """``[N, 3, S, S]`` -> the mean over ``nets`` of their logits ``[N, 2]``, box offsets
    ``[N, 4]`` and landmarks ``[N, 10]``."""

    def __init__(self, nets: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, pixels: torch.Tensor) -> NetOutput:
        outputs = [net(pixels) for net in self.nets]
        return NetOutput(*(torch.stack(parts).mean(dim=0) for parts in zip(*outputs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("rnet", "onet"), required=True, help="the stage whose nets are averaged")
    parser.add_argument(
        "--nets",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="checkpoints of that stage (this project's or the original weights)",
    )
    add_wider_val_options(parser)
    add_cascade_options(parser, "folder with the nets of the other stages (default: the shipped weights)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        averaged = AveragedNets([load_net(path, args.stage) for path in args.nets]).eval()
        detector = cascade(args, replace={args.stage: averaged})
        report = {"weights": str(args.weights), "stage": args.stage, "nets": [str(path) for path in args.nets]}
        report_wider_ap(detector, args, report)
    except (MtcnnError, ValueError) as exc:  # bad paths or settings: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
