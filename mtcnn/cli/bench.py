"""``mtcnn bench detect|prep|train``: speed and memory figures, printed side by side."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mtcnn.cli.options import (
    add_onet_options,
    add_overrides_option,
    device_from_args,
    landmark_scales_from_args,
    mining_weights,
)
from mtcnn.errors import MtcnnError
from mtcnn.spec import EARLIER_STAGES, STAGES

log = logging.getLogger("mtcnn")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that print speed figures")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    detect = benches.add_parser(
        "detect",
        help="detection images/s on a fixed set of WIDER images",
        description="Time the cascade (min face 20 and 40; one image at a time and "
        "batched), median of several runs; also facenet-pytorch when installed.",
    )
    detect.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped weights)")
    detect.add_argument(
        "--images",
        type=Path,
        default=Path("data/widerface/WIDER_val/images"),
        help="folder of images to sample from (default data/widerface/WIDER_val/images)",
    )
    detect.add_argument("--count", type=int, default=24, help="images in the set (default 24)")
    detect.add_argument("--min-face-sizes", type=int, nargs="+", default=[20, 40], metavar="N")
    detect.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N")
    detect.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default 3)")
    detect.add_argument("--device", default="auto")
    detect.add_argument("--no-compare", action="store_true", help="do not time facenet-pytorch")
    detect.add_argument("--no-memory", action="store_true", help="do not measure peak memory (a fresh process per row)")
    add_onet_options(detect)
    detect.set_defaults(run=_run_bench_detect)
    _add_bench_prep_parser(benches)
    _add_bench_train_parser(benches)


def _run_bench_detect(args: argparse.Namespace) -> int:
    from mtcnn.detect.bench import bench_detect, benchmark_images, format_detect_table, machine_description

    device = device_from_args(args.device)
    if not args.images.is_dir():
        raise MtcnnError(f"{args.images}: no such folder (run scripts/link_kit.sh or pass --images)")
    images = benchmark_images(args.images, args.count)
    rows = bench_detect(
        args.weights,
        images,
        args.min_face_sizes,
        args.batch_sizes,
        args.repeats,
        args.device,
        compare_facenet=not args.no_compare,
        mirror_onet=args.mirror_onet,
        landmark_scales=landmark_scales_from_args(args),
        measure_memory=not args.no_memory,
    )
    print(format_detect_table(rows, machine_description(device), len(images), args.repeats, args.images))
    return 0


def _add_bench_prep_parser(benches) -> None:
    prep = benches.add_parser(
        "prep",
        help="sample preparation wall time and crops/s on the train set",
        description="Prepare a whole train set from scratch several times (into a scratch "
        "folder, deleted afterwards) and print median wall time, crops/s and "
        "CPU seconds.",
    )
    prep.add_argument("--stage", choices=STAGES, default="pnet")
    prep.add_argument("--config", type=Path, default=None, help="stage config (default configs/STAGE.yaml)")
    add_overrides_option(prep, "prep.random.crops_per_face=10")
    prep.add_argument(
        "--pnet", type=Path, default=None, metavar="CKPT", help="P-Net weights, or 'shipped' (rnet, onet)"
    )
    prep.add_argument("--rnet", type=Path, default=None, metavar="CKPT", help="R-Net weights, or 'shipped' (onet)")
    prep.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="worker counts to time (default: one per CPU core)",
    )
    prep.add_argument("--repeats", type=int, default=3, help="timed runs per worker count (default 3)")
    prep.add_argument("--device", default="cpu", help="device of the mining nets (default cpu)")
    prep.add_argument(
        "--scratch",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the temporary stores go (default: the system's temporary folder)",
    )
    prep.set_defaults(run=_run_bench_prep)


def _run_bench_prep(args: argparse.Namespace) -> int:
    from mtcnn.config import load_config
    from mtcnn.data.bench import bench_prep, format_prep_table
    from mtcnn.data.prepare import default_workers
    from mtcnn.detect.bench import machine_description

    config = load_config(args.config or Path(f"configs/{args.stage}.yaml"), args.overrides)
    needs = EARLIER_STAGES[args.stage]
    missing = [f"--{net}" for net in needs if getattr(args, net) is None]
    if missing:
        raise MtcnnError(f"bench prep --stage {args.stage} needs {' and '.join(missing)}")
    if args.repeats < 1:
        raise MtcnnError(f"--repeats must be at least 1, got {args.repeats}")
    workers = args.workers or [default_workers()]
    rows = bench_prep(args.stage, config, workers, args.repeats, mining_weights(args, needs), args.device, args.scratch)
    print(format_prep_table(rows, machine_description(args.device), args.repeats))
    return 0


def _add_bench_train_parser(benches) -> None:
    train = benches.add_parser(
        "train",
        help="training samples/s per net",
        description="Time whole training steps (gather, augmentation, forward, loss, "
        "backward, optimizer step) on random crops with each stage's train "
        "settings; print median samples/s and the data handling share.",
    )
    train.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    train.add_argument(
        "--configs",
        type=Path,
        default=Path("configs"),
        metavar="DIR",
        help="folder of the stage configs (default configs)",
    )
    add_overrides_option(train, "batch_size=1024 (train settings of every stage)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    train.add_argument("--steps", type=int, default=40, help="steps per timed run (default 40)")
    train.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    train.set_defaults(run=_run_bench_train)


def _run_bench_train(args: argparse.Namespace) -> int:
    import torch

    from mtcnn.detect.bench import machine_description
    from mtcnn.train.bench import bench_train, format_train_table
    from mtcnn.train.run import load_train_config

    if args.repeats < 1 or args.steps < 1:
        raise MtcnnError("--steps and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_from_args(args.device)
    configs = {
        stage: load_train_config(stage, args.configs / f"{stage}.yaml", args.overrides).train for stage in args.stages
    }
    rows = bench_train(configs, device, steps=args.steps, repeats=args.repeats)
    print(format_train_table(rows, machine_description(device), args.repeats))
    return 0
