"""``mtcnn train`` and the ``train-pnet``/``train-rnet``/``train-onet`` console scripts."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mtcnn.cli.options import add_overrides_option
from mtcnn.errors import MtcnnError
from mtcnn.spec import STAGES

log = logging.getLogger("mtcnn")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="YAML",
        help="stage config file, e.g. configs/pnet.yaml (default with --resume: the config saved in the checkpoint)",
    )
    add_overrides_option(parser, "train.optim.lr=0.01 (the 'train.' may be left out)")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="CKPT",
        help="continue exactly from this checkpoint (last.pt of an earlier run; an earlier one, such as "
        "best.pt, only into another --out-dir)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto: CUDA if available)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="run folder for checkpoints, config and TensorBoard logs (default: train.out_dir, "
        "or the checkpoint's folder with --resume)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's choice, or with --resume the count the run was "
        "trained with; on a CPU shared with other jobs 1 can be much faster than all cores)",
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train P-Net, R-Net or O-Net on a prepared store",
        description="Train one net of the cascade on its prepared sample store, as its config says "
        "(the same as train-pnet, train-rnet, train-onet; this form suits torchrun).",
    )
    parser.add_argument("stage", choices=STAGES, help="which net to train")
    add_train_options(parser)
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from mtcnn.train.run import load_train_config, run_training

    if args.threads is not None and args.threads < 1:
        raise MtcnnError(f"--threads must be at least 1, got {args.threads}")
    config = load_train_config(args.stage, args.config, args.overrides, args.resume)
    result = run_training(config, device=args.device, out_dir=args.out_dir, resume=args.resume, threads=args.threads)
    if result.best_value is not None and int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 reports
        log.info(
            "%s: %d epochs; best %s %.5g at epoch %d; checkpoints in %s",
            config.stage,
            result.epochs_done,
            result.best_metric,
            result.best_value,
            result.best_epoch,
            result.out_dir,
        )
    return 0
