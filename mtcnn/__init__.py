"""MTCNN face detection: the cascade, its training data, trainers and evaluation.

``from mtcnn import MTCNN, Faces`` is the detector API. The names are loaded on first use, so that
the ``mtcnn`` command answers ``--help`` and ``--version`` without importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module defining it.
_EXPORTS = {
    "MTCNN": "mtcnn.detect.cascade",
    "Faces": "mtcnn.detect.cascade",
    "MtcnnError": "mtcnn.errors",
    "PNet": "mtcnn.model.nets",
    "RNet": "mtcnn.model.nets",
    "ONet": "mtcnn.model.nets",
}
__all__ = ["MTCNN", "Faces", "MtcnnError", "PNet", "RNet", "ONet", "__version__"]

if TYPE_CHECKING:
    from mtcnn.detect.cascade import MTCNN, Faces
    from mtcnn.errors import MtcnnError
    from mtcnn.model.nets import ONet, PNet, RNet


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
