"""``mtcnn detect``: faces and landmarks in images, as JSON and drawn pictures."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mtcnn.cli.options import add_detector_options, detector_from_args
from mtcnn.errors import MtcnnError

log = logging.getLogger("mtcnn")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect faces and landmarks in images",
        description="Detect faces and five landmarks in image files, folders (recursively) or globs; "
        "write JSON and optionally drawings.",
    )
    parser.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    add_detector_options(parser)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="write the results here (default: print them to standard output)",
    )
    parser.add_argument(
        "--save-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save each image with its boxes and landmarks drawn, under DIR",
    )
    parser.set_defaults(run=_run_detect)


def _run_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mtcnn.atomic import check_output_file, check_output_folder, write_text_atomic
    from mtcnn.detect.files import detect_files, output_image_path, results_text, results_to_json
    from mtcnn.detect.inputs import expand_image_arguments
    from mtcnn.ops.draw import draw_faces, write_image

    found = expand_image_arguments(args.paths)
    if not found:
        raise MtcnnError("no images found in " + " ".join(args.paths))
    if not any(path.exists() for path, _ in found):  # nothing to report on but "missing": say so, write nothing
        raise MtcnnError("no images found: no such file or folder: " + " ".join(args.paths))
    # Outputs are checked before the work, so that a bad name does not throw the detections away.
    if args.output is not None:
        check_output_file(args.output)
    if args.save_images is not None:
        check_output_folder(args.save_images)
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
        write_text_atomic(args.output, results_text(document))
        faces = sum(len(image["faces"]) for image in document["images"])
        log.info("%d faces in %d images written to %s", faces, len(document["images"]), args.output)
    else:
        sys.stdout.write(results_text(document))
    failed = len(document["errors"])
    if failed:
        print(f"error: {failed} of {len(paths)} images could not be read or were too large", file=sys.stderr)
        return 1
    return 0
