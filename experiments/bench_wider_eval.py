#!/usr/bin/env python3
"""Benchmark: how long WIDER FACE AP scoring takes (the target: the whole val set in seconds).

Times reading the ground truth, reading a prediction folder and scoring it, on the kit's WIDER_val
with the reference predictions; then scoring the same images repeated up to the size of the
official val set (3,226 images), since the kit holds only part of it. Median of several runs.

    python3 experiments/bench_wider_eval.py [--kit ../shared/data] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mtcnn.detect.bench import machine_description, median_seconds
from mtcnn.eval.wider import evaluate_wider
from mtcnn.eval.wider_files import WiderGroundTruth, load_ground_truth, read_prediction_dir

OFFICIAL_VAL_IMAGES = 3226


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--kit",
        type=Path,
        default=Path("data"),
        help="folder holding widerface/ and reference_weights/ (default data, as linked by scripts/link_kit.sh)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gt_dir = args.kit / "widerface" / "eval_tools" / "ground_truth"
    pred_dir = args.kit / "reference_weights" / "wider_val_predictions"

    ground_truth = load_ground_truth(gt_dir)
    predictions = read_prediction_dir(pred_dir, ground_truth)
    copies = -(-OFFICIAL_VAL_IMAGES // len(ground_truth.images))
    big_images, big_rows = [], {}
    for copy in range(copies):
        for image in ground_truth.images:
            renamed = dataclasses.replace(image, name=f"{image.name}_copy{copy}")
            big_images.append(renamed)
            big_rows[renamed.key] = predictions.rows[image.key]
    big = WiderGroundTruth(big_images[:OFFICIAL_VAL_IMAGES])

    rows = [
        ("read ground truth (.mat)", len(ground_truth.images), lambda: load_ground_truth(gt_dir)),
        ("read prediction files", len(ground_truth.images), lambda: read_prediction_dir(pred_dir, ground_truth)),
        ("score easy/medium/hard AP", len(ground_truth.images), lambda: evaluate_wider(ground_truth, predictions)),
        ("score easy/medium/hard AP", len(big.images), lambda: evaluate_wider(big, big_rows)),
    ]
    print("| step | images | median seconds |")
    print("|---|---|---|")
    for name, count, run in rows:
        seconds, _ = median_seconds(run, args.repeats)
        print(f"| {name} | {count} | {seconds:.3f} |")
    print()
    print(
        f"kit WIDER_val with the reference predictions (the larger set repeats its images); median of "
        f"{args.repeats} runs; {machine_description()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
