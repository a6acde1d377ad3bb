"""Where the nets run: a device name as users write it, checked against this machine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"device '{device}' was asked for, but PyTorch sees {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}"
        )
    return device


@contextmanager
def full_float32() -> Iterator[None]:
    """Inside the block, CUDA convolutions (cuDNN) and matrix products (cuBLAS) on float32
    tensors run in IEEE float32; the caller's settings come back on leaving, even on an error.

    PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default on Ampere and later
    GPUs, and that moves the cascade's boxes by more than half a pixel from the CPU's (0.63 px on
    the GPU test's image, emulated). The settings are process-wide but only CUDA kernels read
    them, so on the CPU this changes nothing. It uses the ``fp32_precision`` settings, not the
    ``allow_tf32`` flags that PyTorch is phasing out.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
