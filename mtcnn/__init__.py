"""MTCNN face detection: the cascade, its training data, trainers and evaluation."""

from mtcnn.detect.cascade import MTCNN, Faces
from mtcnn.errors import MtcnnError
from mtcnn.model.nets import ONet, PNet, RNet

__all__ = ["MTCNN", "Faces", "MtcnnError", "PNet", "RNet", "ONet"]
__version__ = "0.1.0"
