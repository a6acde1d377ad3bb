#!/usr/bin/env python3
"""Would another inference engine or precision run the three nets faster on the CPU than PyTorch?

    python3 experiments/net_engines.py [--weights DIR] [--repeats 15] [--threads N]

Times each net of ``--weights`` (default: the shipped weights) at the input shapes the cascade
gives it on the CPU: P-Net on one pyramid level, the first of a 1024 x 768 image at min face 20
(``[1, 3, 461, 615]``), R-Net on a batch of 256 crops and O-Net on 64 crops. The engines:

- PyTorch float32 channels-last under ``torch.inference_mode()``, as the cascade runs the nets
  (P-Net through ``forward_detect``: face logits and box offsets, no landmark head);
- PyTorch bfloat16: the same net and input converted with ``.to(torch.bfloat16)``;
- ONNX Runtime (CPUExecutionProvider) and OpenCV DNN on the net exported with
  :func:`mtcnn.model.export.export_onnx` (P-Net asked for the logits and box offsets only).

Every engine runs on the same pixels (random integers in [0, 255], as decoded images hold, which
bfloat16 stores exactly) with ``--threads`` threads (default: PyTorch's). A cell holds the median
milliseconds of ``--repeats`` calls after 3 warm-up calls, and the largest absolute difference of
the face probability (softmax of the logits, class 1) from PyTorch float32's; an engine that is not
installed or cannot load or run a net reads "n/a (why)".

Run it on an idle machine: PyTorch's OpenMP threads wait for each other at every operator, so
when another process holds a core PyTorch loses far more time than ONNX Runtime and OpenCV
(beside a training run on 2 cores, P-Net took 13 times as long with PyTorch, 3 times with ONNX
Runtime, under 2 with OpenCV), and the table answers another question.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtcnn import MtcnnError
from mtcnn.allocator import retain_freed_memory_once
from mtcnn.detect.bench import machine_description, median_seconds
from mtcnn.model.export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from mtcnn.model.weights import load_net, resolve_weight_files
from mtcnn.spec import INPUT_SIZES, STAGE_NAMES, STAGES

log = logging.getLogger("experiments")


def crop_batch(stage: str, crops: int) -> tuple[int, int, int, int]:
    """The shape ``[crops, 3, S, S]`` of a batch of ``stage``'s square input crops."""
    return (crops, 3, INPUT_SIZES[stage], INPUT_SIZES[stage])


#: What the cascade gives each net on the CPU: one pyramid level, and R-Net's and O-Net's crop batches.
CASCADE_SHAPES = {"pnet": (1, 3, 461, 615), "rnet": crop_batch("rnet", 256), "onet": crop_batch("onet", 64)}
WARMUP_CALLS = 3
#: The outputs the cascade reads from each exported net (P-Net's landmark head is never used).
CASCADE_OUTPUTS = {"pnet": list(OUTPUT_NAMES[:2]), "rnet": list(OUTPUT_NAMES), "onet": list(OUTPUT_NAMES)}

#: ``engine(net, pixels, onnx_file, threads)`` -> a call that runs ``net`` once on ``pixels`` and
#: returns its face logits ``[N, 2]`` (``[N, 2, h, w]`` for P-Net). ``net`` and ``pixels`` are float32
#: channels-last; ``onnx_file()`` exports the net (once) and returns the file, or raises why it cannot.
Engine = Callable[[nn.Module, torch.Tensor, Callable[[], Path], int], Callable[[], object]]


def _torch_call(net: nn.Module, pixels: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return net.forward_detect(pixels)[0] if net.stage == "pnet" else net(pixels)[0]

    return run


def torch_float32(net: nn.Module, pixels: torch.Tensor, onnx_file: Callable[[], Path], threads: int):
    """PyTorch as the cascade runs it: float32, channels-last, inference mode."""
    return _torch_call(net, pixels)


def torch_bfloat16(net: nn.Module, pixels: torch.Tensor, onnx_file: Callable[[], Path], threads: int):
    """PyTorch with the weights and the input in bfloat16 (still channels-last)."""
    return _torch_call(copy.deepcopy(net).to(torch.bfloat16), pixels.to(torch.bfloat16))


def onnx_runtime(net: nn.Module, pixels: torch.Tensor, onnx_file: Callable[[], Path], threads: int):
    """ONNX Runtime's CPU provider, ``threads`` threads inside an operator, one across them."""
    try:
        import onnxruntime
    except ImportError:
        raise MtcnnError("onnxruntime is not installed: pip install 'mtcnn[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notices about unused initialisers say nothing here
    session = onnxruntime.InferenceSession(str(onnx_file()), options, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: pixels.contiguous().numpy()}
    outputs = CASCADE_OUTPUTS[net.stage]
    return lambda: session.run(outputs, feed)[0]


def opencv_dnn(net: nn.Module, pixels: torch.Tensor, onnx_file: Callable[[], Path], threads: int):
    """OpenCV's DNN module on its own CPU backend, ``threads`` threads (OpenCV's setting is global)."""
    import cv2

    cv2.setNumThreads(threads)
    model = cv2.dnn.readNetFromONNX(str(onnx_file()))
    blob = pixels.contiguous().numpy()
    outputs = CASCADE_OUTPUTS[net.stage]

    def run() -> np.ndarray:
        model.setInput(blob, INPUT_NAME)
        return model.forward(outputs)[0]

    return run


ENGINES: dict[str, Engine] = {
    "torch float32": torch_float32,
    "torch bfloat16": torch_bfloat16,
    "ONNX Runtime": onnx_runtime,
    "OpenCV DNN": opencv_dnn,
}
REFERENCE = "torch float32"


@dataclass(frozen=True)
class Cell:
    """One engine on one net: median milliseconds per call and the largest absolute difference of
    the face probability from the reference engine's, or why the engine could not run."""

    milliseconds: float | None = None
    max_difference: float | None = None
    failure: str | None = None


def face_probability(logits: object) -> torch.Tensor:
    """Softmax of the face logits ``[N, 2, ...]`` (a tensor or any engine's array), class 1, in float32."""
    logits = logits if torch.is_tensor(logits) else torch.from_numpy(np.asarray(logits))
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _reason(exc: BaseException) -> str:
    """One short line for a table cell."""
    text = str(exc) if isinstance(exc, MtcnnError) else f"{type(exc).__name__}: {exc}"
    text = (text.strip().splitlines() or [type(exc).__name__])[0].replace("|", "/")
    return text if len(text) <= 120 else text[:117] + "..."


def _exporter(net: nn.Module, path: Path) -> Callable[[], Path]:
    """``export()``: ``net`` written to ``path`` as ONNX on the first call, the same file (or the same
    error) on later ones."""
    done: list[Path | Exception] = []

    def export() -> Path:
        if not done:
            try:
                done.append(export_onnx(net, path))
            except Exception as exc:  # reported in the cells of the engines that need the file
                done.append(exc)
        if isinstance(done[0], Exception):
            raise done[0]
        return done[0]

    return export


def measure_engines(
    nets: Mapping[str, nn.Module],
    shapes: Mapping[str, Sequence[int]],
    repeats: int,
    workdir: Path,
    engines: Mapping[str, Engine] = ENGINES,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Cell]]:
    """``{stage: {engine: Cell}}`` for each stage of ``shapes`` (``{stage: [N, 3, H, W]}``), ONNX files
    written into ``workdir``; the nets are made channels-last in place, as the cascade makes them.
    The reference engine, if among ``engines``, runs first."""
    import cv2

    threads = torch.get_num_threads() if threads is None else threads
    opencv_threads = cv2.getNumThreads()
    order = sorted(engines, key=lambda name: name != REFERENCE)
    results: dict[str, dict[str, Cell]] = {}
    try:
        for stage in (stage for stage in STAGES if stage in shapes):
            net = nets[stage].to(memory_format=torch.channels_last).eval()
            generator = torch.Generator().manual_seed(seed)
            pixels = torch.randint(0, 256, tuple(shapes[stage]), generator=generator).float()
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            onnx_file = _exporter(net, workdir / f"{stage}.onnx")
            reference: torch.Tensor | None = None
            cells: dict[str, Cell] = {}
            for name in order:
                try:
                    run = engines[name](net, pixels, onnx_file, threads)
                    probability = face_probability(run())  # the first of the warm-up calls
                    seconds, _ = median_seconds(run, repeats, warmup=WARMUP_CALLS - 1)
                except Exception as exc:  # any engine's failure becomes its cell, not a crash
                    cells[name] = Cell(failure=_reason(exc))
                    log.info("%s  %-15s n/a (%s)", STAGE_NAMES[stage], name, cells[name].failure)
                    continue
                if name == REFERENCE:
                    reference = probability
                difference = None
                if reference is not None and reference.shape == probability.shape:
                    difference = float((probability - reference).abs().max())
                cells[name] = Cell(seconds * 1000.0, difference)
                log.info("%s  %-15s %8.2f ms", STAGE_NAMES[stage], name, seconds * 1000.0)
            results[stage] = {name: cells[name] for name in engines}
    finally:
        cv2.setNumThreads(opencv_threads)
    return results


def format_table(results: Mapping[str, Mapping[str, Cell]], shapes: Mapping[str, Sequence[int]]) -> str:
    """A Markdown table: one row per net, per engine its milliseconds and (except the reference) its
    largest face probability difference from the reference."""
    engines = list(next(iter(results.values()))) if results else []
    header = ["net", "input"]
    for name in engines:
        header.append(f"{name} ms")
        if name != REFERENCE:
            header.append(f"{name} max Δp")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage, cells in results.items():
        row = [STAGE_NAMES[stage], "[" + ", ".join(str(size) for size in shapes[stage]) + "]"]
        for name in engines:
            cell = cells[name]
            row.append(f"n/a ({cell.failure})" if cell.failure else f"{cell.milliseconds:.2f}")
            if name != REFERENCE:
                row.append("-" if cell.max_difference is None else f"{cell.max_difference:.2g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", type=Path, default=None, metavar="DIR", help="folder with the nets (default: the shipped weights)"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per engine and net (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: PyTorch's)")
    parser.add_argument(
        "--pnet-size", type=int, nargs=2, default=CASCADE_SHAPES["pnet"][2:], metavar=("H", "W"), help="P-Net level"
    )
    parser.add_argument("--rnet-crops", type=int, default=CASCADE_SHAPES["rnet"][0], help="R-Net batch (default 256)")
    parser.add_argument("--onet-crops", type=int, default=CASCADE_SHAPES["onet"][0], help="O-Net batch (default 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    retain_freed_memory_once()  # as the cascade does on the CPU: freed activations stay in the heap
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes = {
        "pnet": (1, 3, *args.pnet_size),
        "rnet": crop_batch("rnet", args.rnet_crops),
        "onet": crop_batch("onet", args.onet_crops),
    }
    try:
        files = resolve_weight_files(args.weights)
        nets = {stage: load_net(files[stage], stage) for stage in STAGES}
    except MtcnnError as exc:  # bad paths: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="net-engines-") as workdir:
        results = measure_engines(nets, shapes, args.repeats, Path(workdir))
    print(format_table(results, shapes))
    print()
    print(
        f"milliseconds per call, median of {args.repeats} after {WARMUP_CALLS} warm-up calls; Δp: largest difference"
        f" of the face probability from {REFERENCE}'s on the same random pixels; {machine_description()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
