"""MTCNN face detection: the cascade, its training data, trainers and evaluation."""

from mtcnn.detector import MTCNN, Faces
from mtcnn.errors import MtcnnError
from mtcnn.nets import ONet, PNet, RNet

__all__ = ["MTCNN", "Faces", "MtcnnError", "PNet", "RNet", "ONet"]
__version__ = "0.1.0"
