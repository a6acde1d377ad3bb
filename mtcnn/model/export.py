"""Export the three nets to ONNX or TorchScript for use outside this package.

Each net becomes one file (``pnet.onnx`` ... or ``pnet.torchscript.pt`` ...) taking float RGB pixels
in ``[0, 255]``, ``[N, 3, H, W]``, named ``pixels``, and returning ``logits``, ``box`` and
``landmarks`` exactly as :class:`~mtcnn.model.nets.NetOutput` does (raw logits: apply a softmax over
the 2 classes for the face probability). The batch is dynamic for all three nets, and the image
size too for P-Net (any ``H, W >= 12``). The pixel normalisation is inside the nets, so it is
inside the exported files as well.

``export.json`` beside the files records what they hold, including ``original_window_mapping``
per net: the original MTCNN weights expect P-Net cells mapped back to windows with the original
code's rounding (see :mod:`mtcnn.detect.cascade`), which a cascade built on the exported files should
reproduce.

The nets are exported alone, from synthetic inputs, never by tracing the cascade on an image:
so exporting cannot fail or specialise on an image with no face, and an empty batch (no
candidates reached R-Net) runs through every exported net.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mtcnn.atomic import atomic_path, write_json_atomic
from mtcnn.errors import MtcnnError
from mtcnn.model.weights import load_net, resolve_weight_files
from mtcnn.spec import INPUT_SIZES, STAGES

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "box", "landmarks")


def example_input(stage: str, batch: int = 2) -> torch.Tensor:
    """A synthetic ``[batch, 3, S, S']`` pixel batch for tracing ``stage`` (P-Net gets a non-square
    size, so that no export step can mistake height for width)."""
    size = INPUT_SIZES[stage]
    height, width = (size, size) if stage != "pnet" else (3 * size, 2 * size + 7)
    generator = torch.Generator().manual_seed(0)
    return torch.rand((batch, 3, height, width), generator=generator) * 255.0


def export_onnx(net: nn.Module, path: str | Path) -> Path:
    """Write ``net`` as a self-contained ONNX file (weights inside), atomically.

    Needs the ``onnx`` extra (``onnx``, ``onnxscript``): PyTorch's exporter builds on them.
    """
    try:
        import onnx  # noqa: F401  (imported to fail early with a clear message)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MtcnnError(
            f"ONNX export needs the onnx extra: pip install 'mtcnn[onnx]' ({exc.name} is missing)"
        ) from None
    from torch.export import Dim

    path = Path(path)
    stage = net.stage
    batch = Dim("batch")
    shape = {0: batch}
    if stage == "pnet":
        # P-Net is fully convolutional: any size that holds one 12 px window.
        shape.update({2: Dim("height", min=INPUT_SIZES["pnet"]), 3: Dim("width", min=INPUT_SIZES["pnet"])})
    net = net.eval()
    # The exporter's own passes log every rewrite at INFO; they say nothing a user can act on.
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings(), atomic_path(path) as tmp:
            warnings.simplefilter("ignore")  # exporter notices about opsets and deprecations
            torch.onnx.export(
                net,
                (example_input(stage),),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: shape},
                external_data=False,
                verbose=False,
                dynamo=True,
            )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return path


def export_torchscript(net: nn.Module, path: str | Path) -> Path:
    """Write ``net`` as a scripted TorchScript module (load with ``torch.jit.load``), atomically.

    Scripting, not tracing, keeps every shape dynamic. PyTorch marks TorchScript as deprecated in
    favour of ``torch.export``; it is still what many C++ and mobile runtimes load.
    """
    path = Path(path)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", FutureWarning)  # the deprecation notice of torch.jit
        scripted = torch.jit.script(net.eval())
        torch.jit.save(scripted, str(tmp))
    return path


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}


def export_nets(
    weights: str | Path | Mapping[str, str | Path] | None, fmt: str, out_dir: str | Path
) -> dict[str, Path]:
    """Export the nets of ``weights`` (as :func:`mtcnn.model.weights.resolve_weight_files` takes) in
    ``fmt`` (``onnx`` or ``torchscript``) into ``out_dir``; returns ``{stage: file}`` and writes
    ``export.json`` describing them."""
    files = resolve_weight_files(weights)
    nets = {stage: load_net(files[stage], stage) for stage in STAGES if stage in files}
    return export_modules(nets, fmt, out_dir, sources={stage: str(path) for stage, path in files.items()})


def export_modules(
    nets: Mapping[str, nn.Module], fmt: str, out_dir: str | Path, sources: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Export nets already in memory (``{stage: module}``) in ``fmt`` into ``out_dir``, with
    ``export.json``; ``sources`` names the weights each came from, for the record."""
    if fmt not in EXPORTERS:
        raise MtcnnError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    manifest: dict[str, object] = {
        "format": fmt,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "pixels": "float32 RGB in [0, 255], [N, 3, H, W]; normalised inside",
        "nets": {},
    }
    for stage in STAGES:
        if stage not in nets:
            continue
        net = nets[stage]
        path = out_dir / f"{stage}{SUFFIXES[fmt]}"
        log.info("exporting %s to %s", stage, path)
        written[stage] = EXPORTERS[fmt](net, path)
        size = INPUT_SIZES[stage]
        entry = {
            "file": path.name,
            "weights": (sources or {}).get(stage),
            "input_shape": ["N", 3, "H>=12" if stage == "pnet" else size, "W>=12" if stage == "pnet" else size],
        }
        if stage == "pnet":
            entry["original_window_mapping"] = bool(getattr(net, "original_window_mapping", False))
        manifest["nets"][stage] = entry
    manifest_path = out_dir / "export.json"
    write_json_atomic(manifest_path, manifest)
    return written
