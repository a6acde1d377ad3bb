"""``mtcnn eval wider|landmarks|stages``: WIDER FACE AP, landmark error, recall per stage."""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

from mtcnn.cli.options import add_detector_options, detector_from_args, landmark_scales_from_args
from mtcnn.errors import MtcnnError
from mtcnn.spec import STAGES

log = logging.getLogger("mtcnn")


def _detector_settings(args: argparse.Namespace) -> dict:
    """What determines a detector's output, recorded beside saved predictions and in reports; the
    weights by content (and path), so that a file replaced under the same name is not mistaken for
    the one saved predictions were made with."""
    from mtcnn.model.weights import resolve_weight_files, weights_fingerprint

    return {
        "weights": weights_fingerprint(resolve_weight_files(args.weights)),
        "min_face_size": args.min_face_size,
        "scale_factor": args.scale_factor,
        "thresholds": list(args.thresholds),
        "mirror_onet": args.mirror_onet,
        "landmark_scales": list(landmark_scales_from_args(args)),
    }


def _print_and_write(document: dict, text: str, out: Path | None) -> None:
    from mtcnn.atomic import write_json_atomic

    print(text)
    if out is not None:
        write_json_atomic(out, document)
        log.info("report written to %s", out)


def _add_wider_val_options(parser: argparse.ArgumentParser) -> None:
    """``--gt-dir`` and ``--images``: the WIDER_val ground truth and images that AP is scored on."""
    from mtcnn.config import KIT_WIDER_VAL_IMAGES as images

    parser.add_argument(
        "--gt-dir",
        type=Path,
        default=Path("data/widerface/eval_tools/ground_truth"),
        metavar="DIR",
        help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat "
        "(default data/widerface/eval_tools/ground_truth)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=images,
        metavar="DIR",
        help=f"WIDER_val images folder, <event>/<name>.jpg (default {images})",
    )


def add_parser(subparsers) -> None:
    from mtcnn.config import KIT_LANDMARK_VAL_LIST

    parser = subparsers.add_parser(
        "eval",
        help="measure a detector: WIDER FACE AP, landmark error, stage recall",
        description="Measure a detector by the standard protocols.",
    )
    kinds = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    wider = kinds.add_parser(
        "wider",
        help="WIDER FACE easy/medium/hard AP (official protocol)",
        description="Run the detector over every image of the WIDER FACE evaluation ground truth (or read "
        "existing predictions in the official format) and score easy, medium and hard AP by the "
        "official protocol.",
    )
    _add_wider_val_options(wider)
    wider.add_argument(
        "--predictions",
        type=Path,
        default=None,
        metavar="DIR",
        help="score these official-format predictions (DIR/<event>/<name>.txt) instead of running the detector",
    )
    wider.add_argument(
        "--save-predictions",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the detector's predictions here in the official format; a rerun with the "
        "same settings and weights (compared by content) resumes from the files already there",
    )
    add_detector_options(wider)
    wider.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="write a JSON report (APs, settings, PR curves); the curves also go to FILE.png "
        "unless --plot says otherwise",
    )
    wider.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="draw the three PR curves here")
    wider.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="LOGDIR",
        help="also log the PR curves and APs to TensorBoard in LOGDIR",
    )
    wider.set_defaults(run=_run_eval_wider)

    landmarks = kinds.add_parser(
        "landmarks",
        help="normalised landmark error on a CNN_FacePoint list",
        description="Normalised mean error (by inter-ocular distance) of the five points, per point and "
        "overall, and the failure rate, with faces found by the detector or given by the list.",
    )
    landmarks.add_argument(
        "--list",
        type=Path,
        default=KIT_LANDMARK_VAL_LIST,
        metavar="FILE",
        help=f"CNN_FacePoint-format list (default {KIT_LANDMARK_VAL_LIST})",
    )
    landmarks.add_argument(
        "--images-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder the list's image paths are relative to (default: the list's folder)",
    )
    landmarks.add_argument(
        "--use-boxes", action="store_true", help="run O-Net on the annotated boxes instead of detecting the faces"
    )
    landmarks.add_argument(
        "--match-iou",
        type=float,
        default=0.5,
        metavar="T",
        help="a detection locates an annotated face when their IoU is at least T (default 0.5)",
    )
    landmarks.add_argument(
        "--failure-threshold",
        type=float,
        default=0.1,
        metavar="E",
        help="a face fails when its mean normalised error exceeds E (default 0.1)",
    )
    add_detector_options(landmarks)
    landmarks.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write a JSON report")
    landmarks.set_defaults(run=_run_eval_landmarks)

    stages = kinds.add_parser(
        "stages",
        help="recall and boxes per image after P-Net, R-Net and O-Net",
        description="Recall of the annotated faces by the boxes left after each stage, and boxes per image: "
        "whether P-Net (or R-Net) proposes enough to train the next stage on its output. "
        "Runs up to the last stage whose weights the --weights folder holds.",
    )
    stages.add_argument(
        "--split",
        choices=("train", "val"),
        default="val",
        help="WIDER FACE split, with the paths of the default config (default val)",
    )
    stages.add_argument("--images", type=Path, default=None, metavar="DIR", help="images folder (overrides --split)")
    stages.add_argument(
        "--annotations", type=Path, default=None, metavar="FILE", help="*_bbx_gt.txt boxes (overrides --split)"
    )
    stages.add_argument(
        "--min-size",
        type=float,
        default=None,
        metavar="N",
        help="count faces at least N px wide and high (default: --min-face-size)",
    )
    stages.add_argument(
        "--last-stage", choices=STAGES, default=None, help="stop after this stage (default: the last one with weights)"
    )
    stages.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N images")
    add_detector_options(stages, weights_help="folder with pnet.pt and, if trained, rnet.pt and onet.pt")
    stages.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write a JSON report")
    stages.set_defaults(run=_run_eval_stages)


def _run_eval_wider(args: argparse.Namespace) -> int:
    from mtcnn.eval.plots import plot_pr_curves
    from mtcnn.eval.wider import evaluate_wider
    from mtcnn.eval.wider_files import detect_wider, load_ground_truth, read_prediction_dir

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

        from mtcnn.eval.plots import log_pr_curves

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
    result = evaluate_landmarks(
        faces, detector, use_boxes=args.use_boxes, match_iou=args.match_iou, failure_threshold=args.failure_threshold
    )
    report = {
        "list": str(args.list),
        "use_boxes": args.use_boxes,
        "match_iou": args.match_iou,
        "detector": _detector_settings(args),
        **result.to_dict(),
    }
    _print_and_write(report, result.format(), args.out)
    return 0


def _run_eval_stages(args: argparse.Namespace) -> int:
    from mtcnn.config import DataConfig
    from mtcnn.data.readers import read_wider
    from mtcnn.eval.recall import evaluate_stages, format_stage_table
    from mtcnn.model.weights import resolve_weight_files
    from mtcnn.spec import STAGES

    kit = getattr(DataConfig(), args.split).faces[0]  # the kit's WIDER set of the split
    images_dir = args.images or kit.images
    annotations = args.annotations or kit.annotations
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
    report = {
        "images_dir": str(images_dir),
        "annotations": str(annotations),
        "min_size": min_size,
        "weights": {stage: str(path) for stage, path in files.items()},
        "thresholds": list(args.thresholds),
        "min_face_size": args.min_face_size,
        "stages": {stage: result.to_dict() for stage, result in results.items()},
    }
    _print_and_write(report, format_stage_table(results), args.out)
    return 0
