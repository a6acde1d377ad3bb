"""WIDER_val AP with an O-Net whose face scores come from one net and whose boxes from another.

    python3 scripts/onet_head_swap.py --weights DIR --boxes-from OTHER/onet.pt --out swap.json

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

from mtcnn.cli import add_detector_options, add_wider_val_options, detector_from_args
from mtcnn.errors import MtcnnError
from mtcnn.model.nets import NetOutput
from mtcnn.model.weights import load_net
from mtcnn.eval.wider import load_ground_truth, report_wider_ap


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
    parser.add_argument("--out", type=Path, default=None, help="write the AP as JSON here")
    add_detector_options(parser, weights_help="folder with pnet.pt, rnet.pt and the O-Net giving the face "
                         "scores (default: the shipped weights)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        detector = detector_from_args(args)
        box_net = load_net(args.boxes_from, "onet")
        ground_truth = load_ground_truth(args.gt_dir)
    except (MtcnnError, ValueError) as exc:  # bad paths or settings: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    box_net = box_net.to(detector.device, memory_format=torch.channels_last).eval()
    detector.nets["onet"] = SwappedHeads(detector.nets["onet"], box_net).eval()
    report_wider_ap(detector, ground_truth, args.images, args.out,
                    {"weights": str(args.weights), "boxes_from": str(args.boxes_from)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
