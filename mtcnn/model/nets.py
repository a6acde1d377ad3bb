"""The three MTCNN networks with the original layer shapes.

Every net takes float RGB pixel values in ``[0, 255]`` laid out ``[N, 3, H, W]`` and
normalises them itself with :func:`normalize_pixels`, so that training, detection and
export cannot disagree on the input scaling. They return raw outputs in a
:class:`NetOutput`: face logits (no softmax), box offsets and landmark positions.

Conventions shared by the whole package:

- box offsets are ``(dx1, dy1, dx2, dy2)``: the true box corners minus the input window's
  corners, divided by the window size;
- landmarks are ten numbers ``(x1, y1, x2, y2, ..., x5, y5)`` for left eye, right eye, nose,
  left and right mouth corner, each in ``[0, 1]`` of the input window.

Layer names follow the original release (``conv1``, ``prelu1``, ``conv4_1`` ...), so that the
original weights map onto these modules (see :mod:`mtcnn.model.weights`). P-Net and R-Net also have
the landmark head that the paper's loss trains (``conv4_3``, ``dense5_3``), which the original
release does not include.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mtcnn.spec import STAGES

#: Point order after a left-right flip: the eyes swap, the nose stays, the mouth corners swap.
MIRRORED_POINT_ORDER = (1, 0, 2, 4, 3)


class NetOutput(NamedTuple):
    """Raw outputs of one net.

    For R-Net and O-Net: ``logits [N, 2]``, ``box [N, 4]``, ``landmarks [N, 10]``.
    For P-Net, which is fully convolutional, the same with a trailing ``[h, w]`` map:
    ``logits [N, 2, h, w]`` and so on, one cell per 12 px window at stride 2.
    """

    logits: torch.Tensor
    box: torch.Tensor
    landmarks: torch.Tensor


def mirror_outputs(box: torch.Tensor, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box offsets ``[N, 4]`` and landmarks ``[N, 10]`` of a window mirrored left to right,
    from those of the window: ``(dx1, dy1, dx2, dy2)`` becomes ``(-dx2, dy1, -dx1, dy2)`` (the
    right edge becomes the left one), each point's ``x`` becomes ``1 - x``, and the left and
    right eyes and mouth corners swap, so that "left eye" still names the eye on the image's left.
    Mirroring twice gives the inputs back.
    """
    mirrored_box = torch.stack([-box[:, 2], box[:, 1], -box[:, 0], box[:, 3]], dim=1)
    points = landmarks.reshape(-1, 5, 2)[:, list(MIRRORED_POINT_ORDER)]
    mirrored_points = torch.stack([1.0 - points[..., 0], points[..., 1]], dim=-1).reshape(-1, 10)
    return mirrored_box, mirrored_points


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Map RGB pixel values in [0, 255] to the nets' input scale, ``(p - 127.5) / 128``.

    This is the only place where the scaling is written down.
    """
    return (pixels - 127.5) * (1.0 / 128.0)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """The 2 x 2, stride 2, ceil-mode max pooling of ``x [N, C, H, W]``. Without autograd it is
    the elementwise maximum of strided views, rows then columns: the same values in less CPU time
    than the pooling kernel on channels-last maps (that kernel also writes the argmax indices,
    which only a backward pass needs). In ceil mode an odd last row or column is a window of its
    own and is copied as it is: padding the map with -inf first copied all of it, which doubled
    the time (1.05 against 0.54 ms on P-Net's first level of a 1024 x 768 image)."""
    if torch.is_grad_enabled():
        return nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
    batch, channels, height, width = x.shape
    rows = _empty_in_format_of(x, [batch, channels, (height + 1) // 2, width])
    torch.maximum(x[:, :, 0 : height - 1 : 2], x[:, :, 1:height:2], out=rows[:, :, : height // 2])
    if height % 2:
        rows[:, :, height // 2 :] = x[:, :, height - 1 :]
    out = _empty_in_format_of(x, [batch, channels, (height + 1) // 2, (width + 1) // 2])
    torch.maximum(rows[..., 0 : width - 1 : 2], rows[..., 1:width:2], out=out[..., : width // 2])
    if width % 2:
        out[..., width // 2 :] = rows[..., width - 1 :]
    return out


def _empty_in_format_of(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format)


def prelu(x: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """``F.prelu(x, slopes)``; without autograd, on channels-last maps ``[N, C, H, W]`` whose
    channel count is not a multiple of 16, the same values about twice as fast: PyTorch's
    kernel runs its vector loop over the innermost dimension, here the C channels of one pixel (10
    in P-Net's first layer), so the map is taken as rows of ``W * C`` values instead, with the
    slopes repeated along them."""
    if (
        torch.is_grad_enabled()
        or x.dim() != 4
        or x.shape[1] % 16 == 0
        or slopes.numel() != x.shape[1]
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        return nn.functional.prelu(x, slopes)
    batch, channels, height, width = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(batch * height, width * channels)
    slopes_along_rows = slopes.repeat(width)
    return nn.functional.prelu(rows, slopes_along_rows).reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2.

    Input ``[N, 3, H, W]`` with H, W >= 12; outputs maps of ``h = (H - 10) // 2``,
    ``w = (W - 10) // 2`` cells (rounding as the ceil-mode pooling does).
    """

    stage = "pnet"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        self.conv4_3 = nn.Conv2d(32, 10, kernel_size=1)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` pixels -> ``[N, 32, h, w]`` features shared by the three heads."""
        x = prelu(self.conv1(normalize_pixels(pixels)), self.prelu1.weight)
        x = max_pool_2x2(x)
        x = prelu(self.conv2(x), self.prelu2.weight)
        return prelu(self.conv3(x), self.prelu3.weight)

    def forward(self, pixels: torch.Tensor) -> NetOutput:
        x = self.features(pixels)
        return NetOutput(self.conv4_1(x), self.conv4_2(x), self.conv4_3(x))

    def forward_detect(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Face logits ``[N, 2, h, w]`` and box offsets ``[N, 4, h, w]`` only: what the cascade needs,
        without the landmark head. The two heads run as one 1 x 1 convolution of six channels,
        which reads the features once: the same values in half the time of two."""
        x = self.features(pixels)
        weight = torch.cat([self.conv4_1.weight, self.conv4_2.weight])
        bias = torch.cat([self.conv4_1.bias, self.conv4_2.bias])
        both = nn.functional.conv2d(x, weight, bias)
        return both[:, :2], both[:, 2:]


class RNet(nn.Module):
    """Refinement net on 24x24 crops: ``[N, 3, 24, 24]`` -> ``[N, 2]``, ``[N, 4]``, ``[N, 10]``."""

    stage = "rnet"

    def __init__(self, dropout: float = 0.0, dropout_heads: str = "all") -> None:
        """``dropout``: probability of zeroing each of the 128 shared features while training, before
        the heads ``dropout_heads`` names (see :func:`build_net`)."""
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dropout = nn.Dropout(dropout)
        self.dropout_heads = _check_dropout_heads(dropout_heads)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)
        self.dense5_3 = nn.Linear(128, 10)

    def forward(self, pixels: torch.Tensor) -> NetOutput:
        x = prelu(self.conv1(normalize_pixels(pixels)), self.prelu1.weight)
        x = self.pool1(x)
        x = prelu(self.conv2(x), self.prelu2.weight)
        x = self.pool2(x)
        x = prelu(self.conv3(x), self.prelu3.weight)
        features = self.prelu4(self.dense4(x.flatten(1)))
        dropped = self.dropout(features)
        kept = dropped if self.dropout_heads == "all" else features
        return NetOutput(self.dense5_1(dropped), self.dense5_2(kept), self.dense5_3(kept))


class ONet(nn.Module):
    """Output net on 48x48 crops: ``[N, 3, 48, 48]`` -> ``[N, 2]``, ``[N, 4]``, ``[N, 10]``."""

    stage = "onet"

    def __init__(self, dropout: float = 0.0, dropout_heads: str = "all") -> None:
        """``dropout``: probability of zeroing each of the 256 shared features while training, before
        the heads ``dropout_heads`` names (see :func:`build_net`)."""
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dropout = nn.Dropout(dropout)
        self.dropout_heads = _check_dropout_heads(dropout_heads)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, pixels: torch.Tensor) -> NetOutput:
        x = prelu(self.conv1(normalize_pixels(pixels)), self.prelu1.weight)
        x = self.pool1(x)
        x = prelu(self.conv2(x), self.prelu2.weight)
        x = self.pool2(x)
        x = prelu(self.conv3(x), self.prelu3.weight)
        x = max_pool_2x2(x)
        x = self.prelu4(self.conv4(x))
        features = self.prelu5(self.dense5(x.flatten(1)))
        dropped = self.dropout(features)
        kept = dropped if self.dropout_heads == "all" else features
        return NetOutput(self.dense6_1(dropped), self.dense6_2(kept), self.dense6_3(kept))


NET_CLASSES: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


class MirrorAveraged(nn.Module):
    """R-Net or O-Net run on each crop and on its left-right mirror image, the two outputs
    averaged: ``[N, 3, S, S]`` -> logits ``[N, 2]``, box offsets ``[N, 4]``, landmarks ``[N, 10]``.

    The mirror's box offsets and landmarks are mapped back by :func:`mirror_outputs` before
    averaging, and the face logits are averaged as they are. The result is the same for a crop
    and its mirror image (up to mirroring the outputs), which a net trained on randomly flipped
    crops only approximates, and the errors of the two views that are not common to both partly
    cancel. It costs a second forward pass per crop.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> NetOutput:
        count = pixels.shape[0]
        both = self.net(torch.cat([pixels, pixels.flip(3)]))  # both views in one call: larger, faster batches
        box, landmarks = mirror_outputs(both.box[count:], both.landmarks[count:])
        return NetOutput(
            (both.logits[:count] + both.logits[count:]) / 2,
            (both.box[:count] + box) / 2,
            (both.landmarks[:count] + landmarks) / 2,
        )


DROPOUT_HEADS = ("all", "classification")


def _check_dropout_heads(dropout_heads: str) -> str:
    if dropout_heads not in DROPOUT_HEADS:
        raise ValueError(f"dropout_heads must be one of {', '.join(DROPOUT_HEADS)}, got {dropout_heads!r}")
    return dropout_heads


def build_net(stage: str, dropout: float = 0.0, dropout_heads: str = "all") -> nn.Module:
    """A freshly initialised net for ``stage`` ('pnet', 'rnet' or 'onet').

    ``dropout`` (R-Net and O-Net only) acts on the features the three heads share, in training
    mode only; it adds no weights, so checkpoints load either way. ``dropout_heads`` says which
    heads see the dropped features: ``all`` three, or only the face ``classification`` head (the box
    and landmark heads then regress from the whole features: dropout before a linear regression
    head acts like a ridge penalty and shrinks its outputs).
    """
    if stage not in NET_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    _check_dropout_heads(dropout_heads)
    if stage == "pnet":
        if dropout:
            raise ValueError("P-Net has no dropout layer (it is fully convolutional); use dropout 0")
        return PNet()
    return NET_CLASSES[stage](dropout, dropout_heads)
