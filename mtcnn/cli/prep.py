"""``mtcnn prep``: sample stores for one stage, and ``mtcnn inspect`` of a store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mtcnn.cli.options import add_overrides_option, device_from_args, mining_weights
from mtcnn.errors import MtcnnError
from mtcnn.spec import EARLIER_STAGES

log = logging.getLogger("mtcnn")


#: The earlier nets each stage's sample preparation mines with (its --pnet/--rnet options).
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="prepare training samples (P-Net, R-Net, O-Net sets) and inspect them",
        description="Turn annotated images into a packed sample store for one net; resumable: run the same "
        "command again after an interruption.",
    )
    commands = parser.add_subparsers(dest="prep_command", metavar="STAGE", required=True)
    for stage, needs in EARLIER_STAGES.items():
        what = "random crops around the faces" if stage == "pnet" else f"boxes mined with {' + '.join(needs)}"
        sub = commands.add_parser(
            stage,
            help=f"{stage} samples: {what}, plus landmark crops",
            description=f"Prepare the {stage} sample store from {what} and the landmark list.",
        )
        sub.add_argument(
            "--config",
            type=Path,
            default=Path(f"configs/{stage}.yaml"),
            help=f"stage config (default configs/{stage}.yaml)",
        )
        sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the sample store")
        sub.add_argument(
            "--split",
            choices=("train", "val"),
            default="train",
            help="train: WIDER_train + landmark train list; val: WIDER_val + landmark test list",
        )
        sub.add_argument(
            "--workers",
            type=int,
            default=None,
            metavar="N",
            help="worker processes (default: one per CPU core; mining on a GPU uses one)",
        )
        add_overrides_option(sub, "prep.seed=1")
        sub.add_argument("--overwrite", action="store_true", help="replace a store in DIR prepared with other settings")
        for net in needs:
            sub.add_argument(
                f"--{net}",
                type=Path,
                required=True,
                metavar="CKPT",
                help=f"{net} weights: a checkpoint of this project, the original release's file, "
                "or 'shipped' for the package's own",
            )
        if needs:
            sub.add_argument("--device", default="auto", help="auto, cpu or cuda for the mining nets (default auto)")
        sub.set_defaults(run=_run_prep, stage=stage, needs=needs)
    inspect = commands.add_parser(
        "inspect",
        help="draw random samples of each label with their targets",
        description="Save a grid of random samples of each label, with box and landmark "
        "targets drawn back onto the upscaled crops.",
    )
    inspect.add_argument("store", type=Path, help="sample store folder")
    inspect.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="image to write")
    inspect.add_argument("--per-label", type=int, default=12, metavar="N", help="samples per label (default 12)")
    inspect.add_argument("--seed", type=int, default=0, help="which random samples (default 0)")
    inspect.set_defaults(run=_run_prep_inspect)


def _run_prep(args: argparse.Namespace) -> int:
    from mtcnn.config import load_config
    from mtcnn.data.prepare import default_workers, format_summary, prepare

    config = load_config(args.config, args.overrides)
    device = str(device_from_args(args.device)) if args.needs else "cpu"
    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        raise MtcnnError(f"--workers must be at least 1, got {workers}")
    summary = prepare(
        args.stage,
        config,
        args.out,
        split=args.split,
        workers=workers,
        overwrite=args.overwrite,
        weights=mining_weights(args, args.needs),
        device=device,
    )
    print(format_summary(summary))
    return 0


def _run_prep_inspect(args: argparse.Namespace) -> int:
    from mtcnn.data.inspect import inspect_grid
    from mtcnn.data.store import SampleStore
    from mtcnn.ops.draw import write_image

    if args.per_label < 1:
        raise MtcnnError(f"--per-label must be at least 1, got {args.per_label}")
    store = SampleStore.open(args.store)
    write_image(args.out, inspect_grid(store, args.per_label, args.seed))
    print(f"{args.out}: {args.per_label} random samples per label of {args.store} ({len(store):,} samples)")
    return 0
