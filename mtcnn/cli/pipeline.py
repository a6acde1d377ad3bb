"""``mtcnn pipeline``: every step from annotated images to a measured detector."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mtcnn.cli.options import add_overrides_option

log = logging.getLogger("mtcnn")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="prepare, train and evaluate the whole cascade, resumably",
        description="Run every step from data to a measured detector: prep, train and recall check for P-Net, "
        "R-Net and O-Net, then WIDER FACE AP and landmark error. Finished steps are skipped, so the "
        "same command resumes an interrupted run.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/pipeline.yaml"),
        metavar="YAML",
        help="pipeline config (default configs/pipeline.yaml)",
    )
    add_overrides_option(parser, "run_dir=runs/try2")
    parser.set_defaults(run=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    import json

    from mtcnn.pipeline import run_pipeline

    summary = run_pipeline(args.config, args.overrides)
    print(json.dumps({key: summary[key] for key in ("wider_ap", "landmarks", "seconds")}, indent=1))
    return 0
