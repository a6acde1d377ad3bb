"""Self-describing checkpoints, written atomically.

A checkpoint is one ``torch.save`` file holding a plain dict:

``format``
    ``"mtcnn-checkpoint"``; ``format_version`` an int.
``stage``
    ``"pnet"``, ``"rnet"`` or ``"onet"``.
``model``
    the net's ``state_dict``.
``config``
    the resolved configuration as plain YAML-able data, so the checkpoint alone rebuilds its net.
``versions``
    the package, torch and Python versions that wrote it.

Training adds ``training`` (:func:`training_state`): the optimizer, LR schedule and gradient
scaler states, the epochs done, the optimizer steps taken, the best metric so far and the
per-epoch history. Batch order and augmentation are seeded by epoch, so these are all a resumed
run needs to continue exactly. A weights-only file (as shipped with the package) leaves them out. Only plain Python
types and tensors go in, so that ``torch.load(..., weights_only=True)`` reads every file.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from mtcnn.atomic import atomic_path
from mtcnn.errors import WeightsError
from mtcnn.spec import STAGES

CHECKPOINT_FORMAT = "mtcnn-checkpoint"
CHECKPOINT_VERSION = 1


def software_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint and run folder."""
    from mtcnn import __version__

    return {"mtcnn": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`mtcnn.atomic.atomic_path`: a kill mid-write leaves the
    previous file (or none), never a truncated one, and the file is readable by whoever may read
    a new file (``0o666`` less the umask), so weights exported for others can be loaded by them."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def make_checkpoint(stage: str, model: torch.nn.Module, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint dict for ``model``; ``extra`` adds training state (optimizer, epoch ...)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "stage": stage,
        "model": state,
        "config": config,
        "versions": software_versions(),
        **extra,
    }


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is one of this project's checkpoints."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise WeightsError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate one of this project's checkpoints."""
    obj = load_file(path, map_location)
    if not is_checkpoint(obj):
        raise WeightsError(f"{path}: not an mtcnn checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    if obj.get("format_version", 0) > CHECKPOINT_VERSION:
        raise WeightsError(
            f"{path}: checkpoint format {obj['format_version']} is newer than this mtcnn reads "
            f"({CHECKPOINT_VERSION}); upgrade the package"
        )
    for key in ("stage", "model"):
        if key not in obj:
            raise WeightsError(f"{path}: checkpoint has no {key!r} entry")
    if obj["stage"] not in STAGES:
        raise WeightsError(f"{path}: unknown stage {obj['stage']!r} in checkpoint")
    return obj


#: Entries of a checkpoint's ``training`` dict that resuming needs.
TRAINING_KEYS = ("optimizer", "schedule", "scaler", "epoch", "step", "best", "history")


def training_state(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``training`` dict of a checkpoint written by a training run, checked for resuming.

    Raises :class:`WeightsError` naming ``path`` for a weights-only file or a missing entry.
    """
    state = checkpoint.get("training")
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds weights only, no training state to resume from")
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise WeightsError(f"{path}: training state lacks {', '.join(missing)}; cannot resume from it")
    return state
