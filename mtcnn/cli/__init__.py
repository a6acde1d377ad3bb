"""Console entry points: ``mtcnn <command>`` and ``train-pnet``/``train-rnet``/``train-onet``.

Thin by design: each command parses its options, calls the library and prints results. Errors
the user can fix (a missing file, a bad config key) print as ``error: <one line>`` with exit
status 2; a batch with some unreadable inputs finishes and exits 1.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mtcnn.allocator import retain_freed_memory
from mtcnn.errors import MtcnnError

log = logging.getLogger("mtcnn")


# ------------------------------------------------------------------------------ shared options


def add_detector_options(parser: argparse.ArgumentParser, weights_help: str | None = None) -> None:
    """The cascade options shared by every command that runs the detector."""
    group = parser.add_argument_group("detector")
    group.add_argument("--weights", type=Path, default=None,
                       help=weights_help or "folder with pnet.pt, rnet.pt, onet.pt (this project's "
                       "checkpoints or the original MTCNN weights); default: the weights shipped with the package")
    group.add_argument("--min-face-size", type=float, default=20.0, metavar="N",
                       help="smallest face side sought, in pixels (default 20)")
    group.add_argument("--scale-factor", type=float, default=0.709, metavar="F",
                       help="ratio between image pyramid levels (default 0.709)")
    group.add_argument("--thresholds", type=float, nargs=3, default=(0.6, 0.7, 0.7), metavar=("P", "R", "O"),
                       help="face probability thresholds of P-Net, R-Net, O-Net (default 0.6 0.7 0.7)")
    add_onet_options(group)
    group.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto: CUDA if available)")
    group.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per batch (default 8)")


def add_wider_val_options(parser: argparse.ArgumentParser) -> None:
    """``--gt-dir`` and ``--images``: the WIDER_val ground truth and images that AP is scored on."""
    from mtcnn.config import DataConfig

    images = DataConfig().wider_val_images
    parser.add_argument("--gt-dir", type=Path, default=Path("data/widerface/eval_tools/ground_truth"), metavar="DIR",
                        help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat "
                        "(default data/widerface/eval_tools/ground_truth)")
    parser.add_argument("--images", type=Path, default=images, metavar="DIR",
                        help=f"WIDER_val images folder, <event>/<name>.jpg (default {images})")


def add_onet_options(parser) -> None:
    """``--[no-]mirror-onet`` and ``--landmark-scales``: how :class:`~mtcnn.detect.cascade.MTCNN` runs O-Net."""
    parser.add_argument("--mirror-onet", action=argparse.BooleanOptionalAction, default=True,
                        help="average O-Net over each crop and its mirror image (default: on; --no-mirror-onet "
                        "runs it once per crop, as the original cascade does)")
    parser.add_argument("--landmark-scales", type=scale_list, default=None, metavar="S,S,...|none",
                        help="average each face's landmarks over O-Net runs on its window scaled by these "
                        "comma-separated factors (default 0.8,0.9,1.1,1.2; none: one run, as the original "
                        "cascade)")


def scale_list(text: str) -> tuple[float, ...]:
    """``--landmark-scales`` values: ``0.8,0.9`` -> ``(0.8, 0.9)``; ``none`` -> ``()``. One word, so
    that the option cannot swallow the image paths after it."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or none, got {text!r}") from None


def landmark_scales_from_args(args: argparse.Namespace) -> tuple[float, ...]:
    """``--landmark-scales`` as given, or the detector's default when the option is absent."""
    if args.landmark_scales is None:
        from mtcnn.detect.cascade import LANDMARK_SCALES  # imported here: torch is slow to import for --help

        return LANDMARK_SCALES
    return args.landmark_scales


def add_overrides_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE ...``: config overrides, several after one flag or the flag repeated."""
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"override config values (values read as YAML), e.g. {example}")


def device_from_args(name: str):
    """The torch device for a ``--device`` value, or a one-line error for a bad one."""
    from mtcnn.detect.cascade import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise MtcnnError(str(exc)) from None


def detector_from_args(args: argparse.Namespace, weights: Mapping[str, Path] | None = None):
    """An :class:`~mtcnn.detect.cascade.MTCNN` built from :func:`add_detector_options` options;
    ``weights`` ``{stage: file}`` stands in for ``--weights`` when given."""
    from mtcnn.detect.cascade import MTCNN

    try:
        return MTCNN(weights=args.weights if weights is None else weights, min_face_size=args.min_face_size,
                     scale_factor=args.scale_factor, thresholds=tuple(args.thresholds),
                     mirror_onet=args.mirror_onet, landmark_scales=landmark_scales_from_args(args),
                     device=args.device, batch_size=args.batch_size)
    except ValueError as exc:  # bad option values: report them like any other user error
        raise MtcnnError(str(exc)) from None


# ------------------------------------------------------------------------------ mtcnn detect


def _add_detect_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect", help="detect faces and landmarks in images",
        description="Detect faces and five landmarks in image files, folders (recursively) or globs; "
                    "write JSON and optionally drawings.")
    parser.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    add_detector_options(parser)
    parser.add_argument("--output", type=Path, default=None, metavar="FILE.json",
                        help="write the results here (default: print them to standard output)")
    parser.add_argument("--save-images", type=Path, default=None, metavar="DIR",
                        help="also save each image with its boxes and landmarks drawn, under DIR")
    parser.set_defaults(run=_run_detect)


def _run_detect(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from mtcnn.atomic import write_json_atomic
    from mtcnn.detect.files import detect_files, output_image_path, results_to_json
    from mtcnn.ops.draw import draw_faces, write_image
    from mtcnn.detect.inputs import expand_image_arguments

    found = expand_image_arguments(args.paths)
    if not found:
        raise MtcnnError("no images found in " + " ".join(args.paths))
    paths, names = [path for path, _ in found], dict(found)
    detector = detector_from_args(args)
    results = []
    progress = tqdm(total=len(paths), unit="img", disable=len(paths) < 2 or None, desc="detect")
    for result in detect_files(detector, paths, keep_images=args.save_images is not None):
        if result.error is not None:
            progress.write(f"error: {result.error}", file=sys.stderr)
        elif args.save_images is not None:
            drawing = draw_faces(result.image, result.faces.boxes, result.faces.landmarks, result.faces.scores)
            write_image(output_image_path(names[result.path], args.save_images), drawing)
            result = type(result)(result.path, result.width, result.height, result.faces)  # drop the pixels
        results.append(result)
        progress.update()
    progress.close()
    document = results_to_json(results)
    if args.output is not None:
        write_json_atomic(args.output, document)
        faces = sum(len(image["faces"]) for image in document["images"])
        log.info("%d faces in %d images written to %s", faces, len(document["images"]), args.output)
    else:
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
    failed = len(document["errors"])
    if failed:
        print(f"error: {failed} of {len(paths)} images could not be read", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------ training


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="YAML",
                        help="stage config file, e.g. configs/pnet.yaml (default with --resume: the config "
                        "saved in the checkpoint)")
    add_overrides_option(parser, "train.optim.lr=0.01 (the 'train.' may be left out)")
    parser.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                        help="continue exactly from this checkpoint (last.pt of an earlier run)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto: CUDA if available)")
    parser.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                        help="run folder for checkpoints, config and TensorBoard logs (default: train.out_dir, "
                        "or the checkpoint's folder with --resume)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice; on a CPU shared with other jobs "
                        "1 can be much faster than all cores)")


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train P-Net, R-Net or O-Net on a prepared store",
        description="Train one net of the cascade on its prepared sample store, as its config says "
                    "(the same as train-pnet, train-rnet, train-onet; this form suits torchrun).")
    parser.add_argument("stage", choices=("pnet", "rnet", "onet"), help="which net to train")
    _add_train_options(parser)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from mtcnn.train.trainer import load_train_config, run_training

    if args.threads is not None:
        if args.threads < 1:
            raise MtcnnError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = load_train_config(args.stage, args.config, args.overrides, args.resume)
    result = run_training(config, device=args.device, out_dir=args.out_dir, resume=args.resume)
    if result.best_value is not None and int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 reports
        log.info("%s: %d epochs; best %s %.5g at epoch %d; checkpoints in %s", config.stage, result.epochs_done,
                 result.best_metric, result.best_value, result.best_epoch, result.out_dir)
    return 0


def _train_command(stage: str, argv: list[str] | None) -> int:
    from mtcnn.model.weights import STAGE_NAMES

    parser = argparse.ArgumentParser(prog=f"train-{stage}",
                                     description=f"Train {STAGE_NAMES[stage]} on its prepared sample store, as the "
                                                 "train section of its config says.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    _add_train_options(parser)
    parser.set_defaults(run=_run_train, stage=stage)
    return run_command(parser, argv)


def train_pnet(argv: list[str] | None = None) -> int:
    """``train-pnet`` console script."""
    return _train_command("pnet", argv)


def train_rnet(argv: list[str] | None = None) -> int:
    """``train-rnet`` console script."""
    return _train_command("rnet", argv)


def train_onet(argv: list[str] | None = None) -> int:
    """``train-onet`` console script."""
    return _train_command("onet", argv)


# ------------------------------------------------------------------------------ mtcnn eval


def _detector_settings(args: argparse.Namespace) -> dict:
    """What determines a detector's output, recorded beside saved predictions and in reports."""
    from mtcnn.model.weights import resolve_weight_files

    return {"weights": {stage: str(path.resolve()) for stage, path in resolve_weight_files(args.weights).items()},
            "min_face_size": args.min_face_size, "scale_factor": args.scale_factor,
            "thresholds": list(args.thresholds), "mirror_onet": args.mirror_onet,
            "landmark_scales": list(landmark_scales_from_args(args))}


def _print_and_write(document: dict, text: str, out: Path | None) -> None:
    from mtcnn.atomic import write_json_atomic

    print(text)
    if out is not None:
        write_json_atomic(out, document)
        log.info("report written to %s", out)


def _add_eval_parser(subparsers) -> None:
    from mtcnn.config import DataConfig

    data = DataConfig()
    parser = subparsers.add_parser("eval", help="measure a detector: WIDER FACE AP, landmark error, stage recall",
                                   description="Measure a detector by the standard protocols.")
    kinds = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    wider = kinds.add_parser(
        "wider", help="WIDER FACE easy/medium/hard AP (official protocol)",
        description="Run the detector over every image of the WIDER FACE evaluation ground truth (or read "
                    "existing predictions in the official format) and score easy, medium and hard AP by the "
                    "official protocol.")
    add_wider_val_options(wider)
    wider.add_argument("--predictions", type=Path, default=None, metavar="DIR",
                       help="score these official-format predictions (DIR/<event>/<name>.txt) instead of "
                       "running the detector")
    wider.add_argument("--save-predictions", type=Path, default=None, metavar="DIR",
                       help="write the detector's predictions here in the official format; a rerun with the "
                       "same settings resumes from the files already there")
    add_detector_options(wider)
    wider.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                       help="write a JSON report (APs, settings, PR curves); the curves also go to FILE.png "
                       "unless --plot says otherwise")
    wider.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="draw the three PR curves here")
    wider.add_argument("--tensorboard", type=Path, default=None, metavar="LOGDIR",
                       help="also log the PR curves and APs to TensorBoard in LOGDIR")
    wider.set_defaults(run=_run_eval_wider)

    landmarks = kinds.add_parser(
        "landmarks", help="normalised landmark error on a CNN_FacePoint list",
        description="Normalised mean error (by inter-ocular distance) of the five points, per point and "
                    "overall, and the failure rate, with faces found by the detector or given by the list.")
    landmarks.add_argument("--list", type=Path, default=data.landmark_val_list, metavar="FILE",
                           help=f"CNN_FacePoint-format list (default {data.landmark_val_list})")
    landmarks.add_argument("--images-root", type=Path, default=None, metavar="DIR",
                           help="folder the list's image paths are relative to (default: the list's folder)")
    landmarks.add_argument("--use-boxes", action="store_true",
                           help="run O-Net on the annotated boxes instead of detecting the faces")
    landmarks.add_argument("--match-iou", type=float, default=0.5, metavar="T",
                           help="a detection locates an annotated face when their IoU is at least T (default 0.5)")
    landmarks.add_argument("--failure-threshold", type=float, default=0.1, metavar="E",
                           help="a face fails when its mean normalised error exceeds E (default 0.1)")
    add_detector_options(landmarks)
    landmarks.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write a JSON report")
    landmarks.set_defaults(run=_run_eval_landmarks)

    stages = kinds.add_parser(
        "stages", help="recall and boxes per image after P-Net, R-Net and O-Net",
        description="Recall of the annotated faces by the boxes left after each stage, and boxes per image: "
                    "whether P-Net (or R-Net) proposes enough to train the next stage on its output. "
                    "Runs up to the last stage whose weights the --weights folder holds.")
    stages.add_argument("--split", choices=("train", "val"), default="val",
                        help="WIDER FACE split, with the paths of the default config (default val)")
    stages.add_argument("--images", type=Path, default=None, metavar="DIR", help="images folder (overrides --split)")
    stages.add_argument("--annotations", type=Path, default=None, metavar="FILE",
                        help="*_bbx_gt.txt boxes (overrides --split)")
    stages.add_argument("--min-size", type=float, default=None, metavar="N",
                        help="count faces at least N px wide and high (default: --min-face-size)")
    stages.add_argument("--last-stage", choices=("pnet", "rnet", "onet"), default=None,
                        help="stop after this stage (default: the last one with weights)")
    stages.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N images")
    add_detector_options(stages, weights_help="folder with pnet.pt and, if trained, rnet.pt and onet.pt")
    stages.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write a JSON report")
    stages.set_defaults(run=_run_eval_stages)


def _run_eval_wider(args: argparse.Namespace) -> int:
    from mtcnn.eval.wider import detect_wider, evaluate_wider, load_ground_truth, plot_pr_curves, read_prediction_dir

    ground_truth = load_ground_truth(args.gt_dir)
    report: dict = {"ground_truth": str(args.gt_dir)}
    if args.predictions is not None:
        if args.save_predictions is not None:
            raise MtcnnError("--save-predictions writes the detector's predictions; with --predictions nothing runs")
        predictions = read_prediction_dir(args.predictions, ground_truth)
        report["predictions"] = str(args.predictions)
    else:
        settings = _detector_settings(args)
        detector = detector_from_args(args)
        predictions = detect_wider(detector, ground_truth, args.images, args.save_predictions, settings)
        report.update({"images_dir": str(args.images), "detector": settings})
    result = evaluate_wider(ground_truth, predictions)
    report.update(result.to_dict())
    lines = [f"{setting.capitalize() + ' AP':<10} {ap:.4f}" for setting, ap in result.ap.items()]
    _print_and_write(report, "\n".join(lines), args.out)
    plot = args.plot or (args.out.with_suffix(".png") if args.out is not None else None)
    if plot is not None:
        plot_pr_curves(result, plot)
        log.info("PR curves drawn in %s", plot)
    if args.tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        from mtcnn.eval.wider import log_pr_curves

        with SummaryWriter(str(args.tensorboard)) as writer:
            log_pr_curves(writer, result)
    if result.unreadable:
        print(f"error: {len(result.unreadable)} images could not be read (scored as no detections)", file=sys.stderr)
        return 1
    return 0


def _run_eval_landmarks(args: argparse.Namespace) -> int:
    from mtcnn.data.readers import read_landmark_list
    from mtcnn.eval.landmarks import evaluate_landmarks

    faces = read_landmark_list(args.list, args.images_root)
    if not faces:
        raise MtcnnError(f"{args.list}: no faces listed")
    detector = detector_from_args(args)
    result = evaluate_landmarks(faces, detector, use_boxes=args.use_boxes, match_iou=args.match_iou,
                                failure_threshold=args.failure_threshold)
    report = {"list": str(args.list), "use_boxes": args.use_boxes, "match_iou": args.match_iou,
              "detector": _detector_settings(args), **result.to_dict()}
    _print_and_write(report, result.format(), args.out)
    return 0


def _run_eval_stages(args: argparse.Namespace) -> int:
    from mtcnn.config import DataConfig
    from mtcnn.data.readers import read_wider
    from mtcnn.eval.landmarks import evaluate_stages, format_stage_table
    from mtcnn.model.nets import STAGES
    from mtcnn.model.weights import resolve_weight_files

    data = DataConfig()
    images_dir = args.images or getattr(data, f"wider_{args.split}_images")
    annotations = args.annotations or getattr(data, f"wider_{args.split}_annotations")
    images = read_wider(annotations, images_dir)
    if args.max_images is not None:
        images = images[: args.max_images]
    if not images:
        raise MtcnnError(f"{annotations}: no images listed")
    if args.weights is not None and args.weights.is_dir():
        # Earlier stages are enough: the check is meant for a P-Net trained before the rest.
        files = {stage: args.weights / f"{stage}.pt" for stage in STAGES}
        files = {stage: path for stage, path in files.items() if path.is_file()}
        if "pnet" not in files:
            raise MtcnnError(f"{args.weights}: no pnet.pt")
    else:
        files = resolve_weight_files(args.weights)
    available = list(itertools.takewhile(lambda stage: stage in files, STAGES))  # a cascade has no gaps
    last_stage = args.last_stage or available[-1]
    if last_stage not in available:
        raise MtcnnError(f"--last-stage {last_stage} needs {last_stage}.pt in {args.weights}")
    detector = detector_from_args(args, weights={stage: files[stage] for stage in available})
    min_size = args.min_face_size if args.min_size is None else args.min_size
    results = evaluate_stages(detector, images, last_stage=last_stage, min_size=min_size)
    report = {"images_dir": str(images_dir), "annotations": str(annotations), "min_size": min_size,
              "weights": {stage: str(path) for stage, path in files.items()},
              "thresholds": list(args.thresholds), "min_face_size": args.min_face_size,
              "stages": {stage: result.to_dict() for stage, result in results.items()}}
    _print_and_write(report, format_stage_table(results), args.out)
    return 0


# ------------------------------------------------------------------------------ mtcnn export


def _add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export the three nets to ONNX or TorchScript",
        description="Write pnet, rnet and onet as ONNX or TorchScript files with a dynamic batch (and dynamic "
                    "image size for P-Net), plus export.json describing their inputs and outputs.")
    parser.add_argument("--weights", type=Path, default=None, metavar="DIR",
                        help="folder with pnet.pt, rnet.pt, onet.pt (default: the weights shipped with the package)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), required=True, help="file format")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the files into")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from mtcnn.model.export import export_nets

    written = export_nets(args.weights, args.format, args.out)
    for stage, path in written.items():
        print(f"{stage}: {path}")
    return 0


# ------------------------------------------------------------------------------ mtcnn prep

#: The earlier nets each stage's sample preparation mines with (its --pnet/--rnet options).
_MINING_NETS = {"pnet": (), "rnet": ("pnet",), "onet": ("pnet", "rnet")}


def _mining_weights(args: argparse.Namespace, nets: tuple[str, ...]) -> dict[str, Path]:
    """The weights files the --pnet/--rnet options name, 'shipped' resolved to the package's own."""
    from mtcnn.model.weights import stage_weights_file

    return {net: stage_weights_file(getattr(args, net), net) for net in nets}


def _add_prep_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep", help="prepare training samples (P-Net, R-Net, O-Net sets) and inspect them",
        description="Turn annotated images into a packed sample store for one net; resumable: run the same "
                    "command again after an interruption.")
    commands = parser.add_subparsers(dest="prep_command", metavar="STAGE", required=True)
    for stage, needs in _MINING_NETS.items():
        what = "random crops around the faces" if stage == "pnet" else f"boxes mined with {' + '.join(needs)}"
        sub = commands.add_parser(stage, help=f"{stage} samples: {what}, plus landmark crops",
                                  description=f"Prepare the {stage} sample store from {what} and the landmark list.")
        sub.add_argument("--config", type=Path, default=Path(f"configs/{stage}.yaml"),
                         help=f"stage config (default configs/{stage}.yaml)")
        sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the sample store")
        sub.add_argument("--split", choices=("train", "val"), default="train",
                         help="train: WIDER_train + landmark train list; val: WIDER_val + landmark test list")
        sub.add_argument("--workers", type=int, default=None, metavar="N",
                         help="worker processes (default: one per CPU core; mining on a GPU uses one)")
        add_overrides_option(sub, "prep.seed=1")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace a store in DIR prepared with other settings")
        for net in needs:
            sub.add_argument(f"--{net}", type=Path, required=True, metavar="CKPT",
                             help=f"{net} weights: a checkpoint of this project, the original release's file, "
                                  "or 'shipped' for the package's own")
        if needs:
            sub.add_argument("--device", default="auto", help="auto, cpu or cuda for the mining nets (default auto)")
        sub.set_defaults(run=_run_prep, stage=stage, needs=needs)
    inspect = commands.add_parser("inspect", help="draw random samples of each label with their targets",
                                  description="Save a grid of random samples of each label, with box and landmark "
                                              "targets drawn back onto the upscaled crops.")
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
    summary = prepare(args.stage, config, args.out, split=args.split, workers=workers, overwrite=args.overwrite,
                      weights=_mining_weights(args, args.needs), device=device)
    print(format_summary(summary))
    return 0


def _run_prep_inspect(args: argparse.Namespace) -> int:
    from mtcnn.ops.draw import write_image
    from mtcnn.data.inspect import inspect_grid
    from mtcnn.data.store import SampleStore

    if args.per_label < 1:
        raise MtcnnError(f"--per-label must be at least 1, got {args.per_label}")
    store = SampleStore.open(args.store)
    write_image(args.out, inspect_grid(store, args.per_label, args.seed))
    print(f"{args.out}: {args.per_label} random samples per label of {args.store} ({len(store):,} samples)")
    return 0


# ------------------------------------------------------------------------------ mtcnn pipeline


def _add_pipeline_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="prepare, train and evaluate the whole cascade, resumably",
        description="Run every step from data to a measured detector: prep, train and recall check for P-Net, "
                    "R-Net and O-Net, then WIDER FACE AP and landmark error. Finished steps are skipped, so the "
                    "same command resumes an interrupted run.")
    parser.add_argument("--config", type=Path, default=Path("configs/pipeline.yaml"), metavar="YAML",
                        help="pipeline config (default configs/pipeline.yaml)")
    add_overrides_option(parser, "run_dir=runs/try2")
    parser.set_defaults(run=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    import json

    from mtcnn.pipeline import run_pipeline

    summary = run_pipeline(args.config, args.overrides)
    print(json.dumps({key: summary[key] for key in ("wider_ap", "landmarks", "seconds")}, indent=1))
    return 0


# ------------------------------------------------------------------------------ mtcnn bench


def _add_bench_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that print speed figures")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    detect = benches.add_parser("detect", help="detection images/s on a fixed set of WIDER images",
                                description="Time the cascade (min face 20 and 40; one image at a time and "
                                            "batched), median of several runs; also facenet-pytorch when installed.")
    detect.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped weights)")
    detect.add_argument("--images", type=Path, default=Path("data/widerface/WIDER_val/images"),
                        help="folder of images to sample from (default data/widerface/WIDER_val/images)")
    detect.add_argument("--count", type=int, default=24, help="images in the set (default 24)")
    detect.add_argument("--min-face-sizes", type=int, nargs="+", default=[20, 40], metavar="N")
    detect.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N")
    detect.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default 3)")
    detect.add_argument("--device", default="auto")
    detect.add_argument("--no-compare", action="store_true", help="do not time facenet-pytorch")
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
    rows = bench_detect(args.weights, images, args.min_face_sizes, args.batch_sizes, args.repeats, args.device,
                        compare_facenet=not args.no_compare, mirror_onet=args.mirror_onet,
                        landmark_scales=landmark_scales_from_args(args))
    print(format_detect_table(rows, machine_description(device), len(images), args.repeats))
    return 0


def _add_bench_prep_parser(benches) -> None:
    prep = benches.add_parser("prep", help="sample preparation wall time and crops/s on the train set",
                              description="Prepare a whole train set from scratch several times (into a scratch "
                                          "folder, deleted afterwards) and print median wall time, crops/s and "
                                          "CPU seconds.")
    prep.add_argument("--stage", choices=("pnet", "rnet", "onet"), default="pnet")
    prep.add_argument("--config", type=Path, default=None, help="stage config (default configs/STAGE.yaml)")
    add_overrides_option(prep, "prep.random.crops_per_face=10")
    prep.add_argument("--pnet", type=Path, default=None, metavar="CKPT",
                      help="P-Net weights, or 'shipped' (rnet, onet)")
    prep.add_argument("--rnet", type=Path, default=None, metavar="CKPT", help="R-Net weights, or 'shipped' (onet)")
    prep.add_argument("--workers", type=int, nargs="+", default=None, metavar="N",
                      help="worker counts to time (default: one per CPU core)")
    prep.add_argument("--repeats", type=int, default=3, help="timed runs per worker count (default 3)")
    prep.add_argument("--device", default="cpu", help="device of the mining nets (default cpu)")
    prep.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                      help="where the temporary stores go (default: the system's temporary folder)")
    prep.set_defaults(run=_run_bench_prep)


def _run_bench_prep(args: argparse.Namespace) -> int:
    from mtcnn.detect.bench import machine_description
    from mtcnn.config import load_config
    from mtcnn.data.bench import bench_prep, format_prep_table
    from mtcnn.data.prepare import default_workers

    config = load_config(args.config or Path(f"configs/{args.stage}.yaml"), args.overrides)
    needs = _MINING_NETS[args.stage]
    missing = [f"--{net}" for net in needs if getattr(args, net) is None]
    if missing:
        raise MtcnnError(f"bench prep --stage {args.stage} needs {' and '.join(missing)}")
    if args.repeats < 1:
        raise MtcnnError(f"--repeats must be at least 1, got {args.repeats}")
    workers = args.workers or [default_workers()]
    rows = bench_prep(args.stage, config, workers, args.repeats, _mining_weights(args, needs), args.device,
                      args.scratch)
    print(format_prep_table(rows, machine_description(args.device), args.repeats))
    return 0


def _add_bench_train_parser(benches) -> None:
    train = benches.add_parser("train", help="training samples/s per net",
                               description="Time whole training steps (gather, augmentation, forward, loss, "
                                           "backward, optimizer step) on random crops with each stage's train "
                                           "settings; print median samples/s and the data handling share.")
    train.add_argument("--stages", nargs="+", choices=("pnet", "rnet", "onet"), default=["pnet", "rnet", "onet"])
    train.add_argument("--configs", type=Path, default=Path("configs"), metavar="DIR",
                       help="folder of the stage configs (default configs)")
    add_overrides_option(train, "batch_size=1024 (train settings of every stage)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    train.add_argument("--steps", type=int, default=40, help="steps per timed run (default 40)")
    train.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    train.set_defaults(run=_run_bench_train)


def _run_bench_train(args: argparse.Namespace) -> int:
    import torch

    from mtcnn.detect.bench import machine_description
    from mtcnn.train.trainer import load_train_config
    from mtcnn.train.bench import bench_train, format_train_table

    if args.repeats < 1 or args.steps < 1:
        raise MtcnnError("--steps and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_from_args(args.device)
    configs = {stage: load_train_config(stage, args.configs / f"{stage}.yaml", args.overrides).train
               for stage in args.stages}
    rows = bench_train(configs, device, steps=args.steps, repeats=args.repeats)
    print(format_train_table(rows, machine_description(device), args.repeats))
    return 0


# ------------------------------------------------------------------------------ entry points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtcnn", description="MTCNN face detection: detect, prepare data, "
                                     "train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_detect_parser(subparsers)
    _add_train_parser(subparsers)
    _add_prep_parser(subparsers)
    _add_eval_parser(subparsers)
    _add_export_parser(subparsers)
    _add_pipeline_parser(subparsers)
    _add_bench_parser(subparsers)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv``, run the chosen command, and turn user errors into one line and a status."""
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    retain_freed_memory()
    try:
        return args.run(args)
    except MtcnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """``mtcnn`` console script."""
    return run_command(build_parser(), argv)
