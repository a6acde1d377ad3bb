"""Training throughput per net: samples/s of whole training steps (gather, augmentation,
forward, three-part loss with hard example mining, backward, optimizer step), median of
several timed runs, and the share of the step spent gathering and augmenting the batch.

The stores are random crops of the right size with the 3:1:1:2 type mix: speed does not depend
on what the pixels show. Settings are each stage's config file's (optimizer, batch size ...),
which ``--set`` can change for all stages, e.g. ``--set train.batch_size=1024``.

    python3 scripts/bench_train.py                       # P-, R- and O-Net on the best device
    python3 scripts/bench_train.py --stages pnet --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtcnn.batches import SampleTensors  # noqa: E402
from mtcnn.detector import resolve_device  # noqa: E402
from mtcnn.engine import Trainer, load_train_config, measure_throughput  # noqa: E402
from mtcnn.nets import INPUT_SIZES, build_net  # noqa: E402


def random_store(stage: str, count: int, device: torch.device, seed: int = 0) -> SampleTensors:
    """``count`` random crops of ``stage``'s size, labels in the 3:1:1:2 mix, on ``device``."""
    rng = np.random.default_rng(seed)
    size = INPUT_SIZES[stage]
    labels = rng.choice(np.array([0, 0, 0, 1, -1, -2, -2], dtype=np.int8), count)
    return SampleTensors(
        torch.from_numpy(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)).to(device),
        torch.from_numpy(labels).to(device),
        torch.from_numpy(rng.normal(0, 0.1, (count, 4)).astype(np.float32)).to(device),
        torch.from_numpy(rng.random((count, 10), dtype=np.float32)).to(device))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["pnet", "rnet", "onet"], choices=list(INPUT_SIZES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--samples", type=int, default=None, help="store size (default 200k P, 100k R, 50k O)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"{'net':6} {'batch':>6} {'samples/s':>12} {'step ms':>9} {'data %':>7}")
    for stage in args.stages:
        config = load_train_config(stage, REPO / "configs" / f"{stage}.yaml", args.overrides).train
        count = args.samples or {"pnet": 200_000, "rnet": 100_000, "onet": 50_000}[stage]
        data = random_store(stage, count, device)
        torch.manual_seed(0)
        trainer = Trainer(stage, build_net(stage), config, data, None, device, show_progress=False)
        figures = measure_throughput(trainer, steps=args.steps, repeats=args.repeats)
        print(f"{stage:6} {int(figures['batch_size']):>6} {figures['samples_per_s']:>12,.0f} {figures['step_ms']:>9.2f}"
              f" {100 * figures['data_fraction']:>6.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
