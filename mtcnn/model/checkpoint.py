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
per-epoch history, with the random generators' states and the torch thread count: batch order
and augmentation are seeded by epoch, dropout draws from the generators, so together they are all
a resumed run needs to continue exactly. A weights-only file (as shipped with the package) leaves
them out. Only plain Python types and tensors go in, so that ``torch.load(..., weights_only=True)``
reads every file.
"""

from __future__ import annotations

import pickle
import platform
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from mtcnn.atomic import atomic_path
from mtcnn.errors import OutputError, WeightsError
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
    a new file (``0o666`` less the umask), so weights exported for others can be loaded by them.

    A write the system refuses (a full disk) raises :class:`~mtcnn.atomic.OutputError` naming
    ``path`` and the reason, and leaves no temporary behind.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            # Through a Python file, not a name: a refused write then raises OSError with its errno,
            # which atomic_path reports; torch's own file writer says only "unexpected pos".
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
        except RuntimeError as exc:
            if not any(words in str(exc) for words in _TORCH_WRITE_FAILURES):
                raise
            raise OutputError(f"{path}: cannot write ({_save_failure_reason(path, exc)})") from exc


#: Words of the errors torch's zip writer raises when its file cannot be written; they carry no
#: errno (``[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``).
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "iostream error")


def _save_failure_reason(path: Path, exc: RuntimeError) -> str:
    """Why ``torch.save`` could not write ``path``, in a few words: a full disk when its folder has
    (next to) no space left, else the first line of torch's message."""
    try:
        if shutil.disk_usage(path.parent).free < 1 << 20:
            return "no space left on device"
    except OSError:
        pass
    return f"torch.save failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"


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
    """``torch.load`` with ``weights_only=True``: tensors and plain Python values only, never code.

    Raises :class:`WeightsError` with one line naming the file and saying what it is not (missing,
    a folder, empty, truncated, not a PyTorch file, holding other Python objects). PyTorch's own
    text is not passed on: it runs to many lines and, for a file holding Python objects, advises
    ``weights_only=False``, which would run whatever code the file carries.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if path.is_dir():
        raise WeightsError(f"{path}: a folder, not a weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: not a regular file, so not a weights file")
    try:
        if path.stat().st_size == 0:
            raise WeightsError(f"{path}: empty file (0 bytes), not a weights file")
        with warnings.catch_warnings():
            # Torch warns (asking for an issue to be filed) about pickle protocols it did not write.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except WeightsError:
        raise
    except OSError as exc:
        # Torch also raises OSError from inside a damaged archive (a seek past its end): only a
        # file that cannot be read at all is reported as such.
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as unreadable:
            raise WeightsError(f"{path}: cannot read ({unreadable.strerror or type(unreadable).__name__})") from None
        raise WeightsError(f"{path}: {_why_unloadable(path, exc)}") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise WeightsError(f"{path}: {_why_unloadable(path, exc)}") from None


#: The start of a zip archive, the container ``torch.save`` writes.
_ZIP_MAGIC = b"PK\x03\x04"


def _why_unloadable(path: Path, exc: Exception) -> str:
    """What ``path`` is not, told from the file and the error ``torch.load`` raised on it (one line)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"holds Python objects other than tensors{what}; refused for safety (only weights files are loaded)"
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
    except OSError:
        head = b""
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return "truncated or damaged zip archive (an interrupted save or copy?), not a complete weights file"
        return "a zip archive, but not a readable PyTorch weights file (damaged, or another program's)"
    if isinstance(exc, EOFError):
        return "ends early: a truncated weights file (an interrupted save or copy?) or not one at all"
    return "not a PyTorch weights file (random bytes? torch.save writes a zip archive)"


def check_checkpoint(obj: Any, path: str | Path) -> dict[str, Any]:
    """``obj`` (loaded from ``path``) if it is a checkpoint this package reads, else a one-line
    :class:`WeightsError` naming ``path``."""
    if not is_checkpoint(obj):
        raise WeightsError(f"{path}: not an mtcnn checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    version = obj.get("format_version", 0)
    if not isinstance(version, int):
        raise WeightsError(f"{path}: not an mtcnn checkpoint (format_version {version!r} is not a number)")
    if version > CHECKPOINT_VERSION:
        raise WeightsError(
            f"{path}: checkpoint format {version} is newer than this mtcnn reads "
            f"({CHECKPOINT_VERSION}); upgrade the package"
        )
    for key in ("stage", "model"):
        if key not in obj:
            raise WeightsError(f"{path}: checkpoint has no {key!r} entry")
    if obj["stage"] not in STAGES:
        raise WeightsError(f"{path}: unknown stage {obj['stage']!r} in checkpoint")
    model = obj["model"]
    if not isinstance(model, dict) or not all(isinstance(value, torch.Tensor) for value in model.values()):
        raise WeightsError(f"{path}: checkpoint's 'model' entry is not a state dict (names to tensors)")
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate one of this project's checkpoints."""
    return check_checkpoint(load_file(path, map_location), path)


#: Entries of a checkpoint's ``training`` dict that resuming needs.
TRAINING_KEYS = ("optimizer", "schedule", "scaler", "epoch", "step", "best", "history")


def training_state(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``training`` dict of a checkpoint written by a training run, checked for resuming.

    Besides :data:`TRAINING_KEYS` it holds, since they were added, ``random`` (the random state
    of every process) and ``threads`` (the torch thread count): see
    :meth:`mtcnn.train.trainer.Trainer.state_dict`. A checkpoint without them still resumes.
    Raises :class:`WeightsError` naming ``path`` for a weights-only file or a missing entry.
    """
    state = checkpoint.get("training")
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds weights only, no training state to resume from")
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise WeightsError(f"{path}: training state lacks {', '.join(missing)}; cannot resume from it")
    return state
