"""``mtcnn export``: the nets as ONNX or TorchScript files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("mtcnn")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the three nets to ONNX or TorchScript",
        description="Write pnet, rnet and onet as ONNX or TorchScript files with a dynamic batch (and dynamic "
        "image size for P-Net), plus export.json describing their inputs and outputs.",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with pnet.pt, rnet.pt, onet.pt (default: the weights shipped with the package)",
    )
    parser.add_argument("--format", choices=("onnx", "torchscript"), required=True, help="file format")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the files into")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from mtcnn.model.export import export_nets

    written = export_nets(args.weights, args.format, args.out)
    for stage, path in written.items():
        print(f"{stage}: {path}")
    return 0
