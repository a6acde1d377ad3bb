"""Loading net weights from files: this project's checkpoints or the original MTCNN release.

Two formats are recognised by their content, not their name:

- this project's checkpoints (:mod:`mtcnn.model.checkpoint`), which name their stage;
- the original MTCNN weights as converted to PyTorch state dicts by facenet-pytorch
  (``pnet.pt``, ``rnet.pt``, ``onet.pt``). They differ from our nets in two ways that are
  converted here: their dense layers read the last feature map flattened in (W, H, C) order
  (a relic of the Caffe/MATLAB originals) where ours flatten (C, H, W), and O-Net's landmark
  head emits ``x1..x5, y1..y5`` where ours emits interleaved ``x1, y1, ..., x5, y5``. They have
  no landmark head for P-Net and R-Net; those keep their fresh initialisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mtcnn.errors import WeightsError
from mtcnn.model.checkpoint import check_checkpoint, is_checkpoint, load_file
from mtcnn.model.nets import build_net
from mtcnn.spec import STAGE_NAMES, STAGES

#: Keys only the original release's files have, telling which net a file holds.
_ORIGINAL_MARKERS = {"onet": "dense6_1.weight", "rnet": "dense5_1.weight", "pnet": "conv4_1.weight"}
#: The landmark heads the original release lacks.
_ORIGINAL_MISSING = {
    "pnet": ("conv4_3.weight", "conv4_3.bias"),
    "rnet": ("dense5_3.weight", "dense5_3.bias"),
    "onet": (),
}
#: Dense layers that read a flattened (C=channels, 3, 3) feature map.
_FLATTENED_DENSE = {"rnet": ("dense4.weight", 64), "onet": ("dense5.weight", 128)}
#: Row order taking (x1..x5, y1..y5) to (x1, y1, ..., x5, y5).
_INTERLEAVE_POINTS = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]


def _original_stage(state: Mapping[str, torch.Tensor]) -> str | None:
    for stage, marker in _ORIGINAL_MARKERS.items():
        if marker in state:
            return stage
    return None


def convert_original_state(state: Mapping[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
    """Map an original-release (facenet-pytorch) state dict onto this package's layout.

    Dense weights ``[out, W*H*C]`` are reordered to ``[out, C*H*W]``; O-Net's landmark rows are
    interleaved. The result lacks the landmark heads the release does not have.
    """
    converted = {key: value.clone() for key, value in state.items()}
    if stage in _FLATTENED_DENSE:
        key, channels = _FLATTENED_DENSE[stage]
        weight = converted[key]
        side = int(round((weight.shape[1] // channels) ** 0.5))
        converted[key] = (
            weight.reshape(weight.shape[0], side, side, channels).permute(0, 3, 2, 1).reshape(weight.shape[0], -1)
        )
    if stage == "onet":
        for key in ("dense6_3.weight", "dense6_3.bias"):
            converted[key] = converted[key][_INTERLEAVE_POINTS]
    return converted


def _load_state_into(net: nn.Module, state: Mapping[str, torch.Tensor], path: Path, allowed_missing: tuple) -> None:
    expected = net.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state) - set(allowed_missing))
    if unexpected or missing:
        detail = "; ".join(
            part
            for part in (
                f"unexpected keys {', '.join(unexpected[:4])}" if unexpected else "",
                f"missing keys {', '.join(missing[:4])}" if missing else "",
            )
            if part
        )
        raise WeightsError(f"{path}: does not fit {STAGE_NAMES[net.stage]} ({detail})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"{path}: {key} has shape {tuple(value.shape)}, {STAGE_NAMES[net.stage]} needs "
                f"{tuple(expected[key].shape)}"
            )
    net.load_state_dict(state, strict=False)
    # Heads the file lacks are zeroed rather than left at their random initialisation, so that two
    # loads (or exports) of the same file give the same net.
    with torch.no_grad():
        for key in allowed_missing:
            net.get_parameter(key).zero_()


def load_net(path: str | Path, stage: str | None = None) -> nn.Module:
    """Build a net and load its weights from ``path`` (either format), in eval mode on the CPU.

    ``stage``, when given, is checked against what the file holds, so that an O-Net file passed
    as P-Net is a clear error rather than a shape mismatch deep inside.
    """
    path = Path(path)
    obj = load_file(path)
    if is_checkpoint(obj):
        checkpoint = check_checkpoint(obj, path)
        found, state, allowed_missing = checkpoint["stage"], checkpoint["model"], ()
    elif isinstance(obj, Mapping) and all(isinstance(value, torch.Tensor) for value in obj.values()):
        found = _original_stage(obj)
        if found is None:
            raise WeightsError(f"{path}: a state dict, but not of an MTCNN net (no P-Net, R-Net or O-Net output layer)")
        state, allowed_missing = convert_original_state(obj, found), _ORIGINAL_MISSING[found]
    else:
        raise WeightsError(f"{path}: neither an mtcnn checkpoint nor an MTCNN state dict")
    if stage is not None and found != stage:
        raise WeightsError(f"{path}: holds {STAGE_NAMES[found]} weights, expected {STAGE_NAMES[stage]}")
    net = build_net(found)
    _load_state_into(net, state, path, allowed_missing)
    # The original detection code maps P-Net cells back to windows with its own rounding; the
    # released weights' thresholds were set with it, so the cascade keeps it for them.
    net.original_window_mapping = not is_checkpoint(obj)
    return net.eval()


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content (hex): what identifies a weights file in records, so that a
    file replaced under the same name is told apart from the one it replaced."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(files: Mapping[str, str | Path]) -> dict[str, dict[str, str]]:
    """``{stage: {"file": absolute path, "sha256": content digest}}`` for the weights a detector
    loads, as recorded beside its saved predictions: the digest decides whether two detectors are
    the same, the path only tells a reader where the file was."""
    try:
        return {
            stage: {"file": str(Path(path).resolve()), "sha256": file_digest(path)} for stage, path in files.items()
        }
    except OSError as exc:
        raise WeightsError(f"{exc.filename}: cannot read ({exc.strerror or type(exc).__name__})") from None


def packaged_weights_dir() -> Path:
    """The folder of weights shipped inside the package (``mtcnn/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


#: The word that names the package's own weights where a weights file is expected (``--pnet shipped``,
#: ``train.init_weights: shipped``), so that fine-tuning the shipped detector needs no site-packages path.
SHIPPED = "shipped"


def stage_weights_file(value: str | Path, stage: str) -> Path:
    """The weights file ``value`` names for ``stage``: :data:`SHIPPED` gives the package's own."""
    if str(value) != SHIPPED:
        return Path(value)
    path = packaged_weights_dir() / f"{stage}.pt"
    if not path.is_file():
        raise WeightsError(f"'{SHIPPED}': this installation ships no {path.name} (looked in {path.parent})")
    return path


def resolve_weight_files(weights: str | Path | Mapping[str, str | Path] | None) -> dict[str, Path]:
    """The ``pnet``/``rnet``/``onet`` files to load.

    ``weights`` is a folder holding ``pnet.pt``, ``rnet.pt`` and ``onet.pt``, a mapping from
    stage to file, or ``None`` for the weights shipped with the package.
    """
    if weights is None:
        folder = packaged_weights_dir()
        files = {stage: folder / f"{stage}.pt" for stage in STAGES}
        if not all(path.is_file() for path in files.values()):
            raise WeightsError(
                "no weights given and none are shipped with this installation; pass a folder with "
                "pnet.pt, rnet.pt and onet.pt (e.g. the original MTCNN weights or your own checkpoints)"
            )
        return files
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(STAGES))
        if unknown:
            raise WeightsError(f"unknown stage(s) {', '.join(unknown)} in weights; expected {', '.join(STAGES)}")
        return {stage: Path(path) for stage, path in weights.items()}
    folder = Path(weights)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: weights must be a folder holding pnet.pt, rnet.pt and onet.pt")
    files = {stage: folder / f"{stage}.pt" for stage in STAGES}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise WeightsError(f"{folder}: missing {', '.join(missing)}")
    return files
