"""WIDER_val AP with an O-Net whose face scores come from one net and whose boxes from another.

    python3 experiments/onet_head_swap.py --weights DIR --boxes-from OTHER/onet.pt --out swap.json

Runs the cascade of ``--weights`` (P-Net, R-Net and the O-Net that scores the faces) but takes
O-Net's box and landmark outputs from ``--boxes-from``, then scores WIDER_val by the official
protocol. The cascade runs the swapped O-Net as any other (averaged over each crop and its mirror
image unless ``--no-mirror-onet``). Beside the two plain cascades it splits an O-Net's AP gap into
what its face scores cost and what its box regression costs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from mtcnn import MtcnnError
from mtcnn.model.nets import NetOutput
from mtcnn.model.weights import load_net, resolve_weight_files

from common import add_cascade_options, add_wider_val_options, cascade, report_wider_ap


class SwappedHeads(torch.nn.Module):
    """``[N, 3, 48, 48]`` -> the face logits ``[N, 2]`` of ``score_net``, the box ``[N, 4]`` and
    landmark ``[N, 10]`` outputs of ``box_net``."""

    stage = "onet"

    def __init__(self, score_net: torch.nn.Module, box_net: torch.nn.Module) -> None:
        super().__init__()
        self.score_net = score_net
        self.box_net = box_net

    def forward(self, pixels: torch.Tensor) -> NetOutput:
        scored = self.score_net(pixels)
        boxed = self.box_net(pixels)
        return NetOutput(scored.logits, boxed.box, boxed.landmarks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes-from", type=Path, required=True, help="the O-Net giving boxes and landmarks")
    add_wider_val_options(parser)
    add_cascade_options(
        parser, "folder with pnet.pt, rnet.pt and the O-Net giving the face scores (default: the shipped weights)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        score_net = load_net(resolve_weight_files(args.weights)["onet"], "onet")
        swapped = SwappedHeads(score_net, load_net(args.boxes_from, "onet")).eval()
        report_wider_ap(
            cascade(args, replace={"onet": swapped}),
            args,
            {"weights": str(args.weights), "boxes_from": str(args.boxes_from)},
        )
    except (MtcnnError, ValueError) as exc:  # bad paths or settings: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
