"""Tensor operations the stages share: box geometry, NMS, the image pyramid and crops, drawing."""
