"""Resampling for the cascade and data preparation: the image pyramid's scales and sizes, and
area-averaged resizes and crops computed from summed-area tables (integral images).

Images are ``float`` tensors ``[3, H, W]`` (or ``[B, 3, H, W]`` where stated) of RGB pixel values;
boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates, as in :mod:`mtcnn.ops.boxes`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch


def pyramid_scales(min_side: int, min_face_size: float, scale_factor: float, net_size: int = 12) -> list[float]:
    """Scales of the image pyramid: ``net_size / min_face_size`` times powers of ``scale_factor``.

    The first scale maps the smallest face sought onto the P-Net window; scales continue while
    the image's shorter side still holds one window. Empty for images smaller than the window
    at the first scale.
    """
    if not 0.0 < scale_factor < 1.0:
        raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be positive, got {min_face_size}")
    scales = []
    scale = net_size / min_face_size
    while min_side * scale >= net_size:
        scales.append(scale)
        scale *= scale_factor
    return scales


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The pixel size of an image scaled by ``scale`` (rounded up, at least 1)."""
    return max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale))


def integral_image(image: torch.Tensor) -> torch.Tensor:
    """Summed-area table ``[H + 1, W + 1, C]`` of a ``[C, H, W]`` image; row and column 0 are zero.

    On the CPU OpenCV builds it (about 40 times faster than ``torch.cumsum`` there): int32 when every
    pixel is an integer in [0, 255] and the whole sum fits (under 8.4 million pixels), float64
    otherwise. Both hold the sums exactly, so crops and resizes come out the same from either, but
    the int32 table is half the size, and gathering crops from it, which misses the cache on every
    read, takes about a third of the time. On other devices it is float64, two cumulative sums on
    the device.
    """
    if image.device.type != "cpu":
        return integral_image_torch(image)
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).to(torch.float32).numpy())
    if pixels.shape[0] * pixels.shape[1] * 255 < 2**31:
        # NumPy's cast and comparison: about half the time of torch's here. NaN, infinities and
        # values off [0, 255] (which the cast garbles; its warning is silenced) fail the comparison.
        with np.errstate(invalid="ignore"):
            as_bytes = pixels.astype(np.uint8)
        if np.array_equal(as_bytes, pixels):
            table = cv2.integral(as_bytes, sdepth=cv2.CV_32S)
            return torch.from_numpy(table.reshape(pixels.shape[0] + 1, pixels.shape[1] + 1, pixels.shape[2]))
    table = cv2.integral(pixels, sdepth=cv2.CV_64F)
    return torch.from_numpy(table.reshape(pixels.shape[0] + 1, pixels.shape[1] + 1, pixels.shape[2]))


def integral_image_torch(image: torch.Tensor) -> torch.Tensor:
    """:func:`integral_image` with torch ops only, on any device."""
    table = image.permute(1, 2, 0).to(torch.float64).cumsum(dim=0).cumsum(dim=1)
    return torch.nn.functional.pad(table, (0, 0, 1, 0, 1, 0))


def _area_bins(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel ranges ``[first, end)`` ``[N, size]`` of each output pixel when ``length`` input pixels
    from ``start`` are area-resampled to ``size``: the bins of ``adaptive_avg_pool``."""
    steps = torch.arange(size, device=start.device)
    first = start[:, None] + (steps[None, :] * length[:, None]) // size
    end = start[:, None] + ((steps[None, :] + 1) * length[:, None] + size - 1) // size
    return first, end


#: Values of the summed-area table that :func:`resize_from_integral` reads per band of output rows.
RESIZE_BAND_VALUES = 4_000_000


def resize_from_integral(integral: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-resample a whole image to ``[C, height, width]`` float32 from its summed-area table
    ``[H + 1, W + 1, C]``: the same bins, hence the same pixels, as
    ``F.interpolate(image, size=(height, width), mode="area")``.

    Its cost grows with the output rather than the input, so it is the cheaper way to make the
    smaller levels of an image pyramid once the table exists.
    """
    rows, cols, channels = integral.shape[0] - 1, integral.shape[1] - 1, integral.shape[2]
    origin = torch.zeros(1, dtype=torch.long, device=integral.device)
    row_first, row_end = (bins[0] for bins in _area_bins(origin, origin + rows, height))
    col_first, col_end = (bins[0] for bins in _area_bins(origin, origin + cols, width))
    col_counts = (col_end - col_first).to(torch.float64)
    resized = torch.empty((height, width, channels), dtype=torch.float32, device=integral.device)
    # In bands of output rows: the row sums of a whole level of a 48-megapixel photo's table are
    # three [height, W + 1, 3] float64 arrays of about 0.5 GB each.
    band = max(1, RESIZE_BAND_VALUES // ((cols + 1) * channels))
    for start in range(0, height, band):
        first, end = row_first[start : start + band], row_end[start : start + band]
        band_sums = integral.index_select(0, end) - integral.index_select(0, first)  # [band, W + 1, C]
        total = band_sums.index_select(1, col_end) - band_sums.index_select(1, col_first)  # [band, width, C]
        count = (end - first).to(torch.float64)[:, None] * col_counts[None, :]
        resized[start : start + band] = total / count[..., None]
    return resized.permute(2, 0, 1)


def crop_and_resize(
    image: torch.Tensor, boxes: torch.Tensor, size: int, integral: torch.Tensor | None = None
) -> torch.Tensor:
    """Cut ``boxes`` out of one image and area-resample each to ``size`` x ``size``, all at once.

    ``image`` is ``[C, H, W]`` float, ``boxes`` ``[N, 4]`` (floored to the pixel grid); returns
    ``[N, C, size, size]`` float32 (in channels-last memory order). Each output pixel is the mean
    of the input pixels of its bin, exactly as ``F.interpolate(mode="area")`` would give for each
    crop on its own, but computed for every box in one gather from the summed-area table (pass
    ``integral`` to reuse one). Parts of a box outside the image count as black (0), as the
    original cascade pads them.
    """
    channels, height, width = image.shape
    if boxes.shape[0] == 0:
        return image.new_zeros((0, channels, size, size), dtype=torch.float32)
    if integral is None:
        integral = integral_image(image)
    corners = boxes.floor().to(torch.long)
    box_width = (corners[:, 2] - corners[:, 0]).clamp(min=1)
    box_height = (corners[:, 3] - corners[:, 1]).clamp(min=1)
    col_first, col_end = _area_bins(corners[:, 0], box_width, size)
    row_first, row_end = _area_bins(corners[:, 1], box_height, size)
    count = ((row_end - row_first)[:, :, None] * (col_end - col_first)[:, None, :]).to(torch.float64)
    # Only the part of a bin inside the image adds to its sum; the divisor stays the whole bin.
    # The table at every pair of a bin edge row (first rows, then end rows) and a bin edge column,
    # [N, 2 size, 2 size, C], in one index_select of whole C-vectors by flat position: the same
    # reads as four 2-D gathers with a quarter of the index arithmetic.
    rows = torch.cat([row_first, row_end], dim=1).clamp_(0, height).mul_(width + 1)
    cols = torch.cat([col_first, col_end], dim=1).clamp_(0, width)
    flat = (rows[:, :, None] + cols[:, None, :]).reshape(-1)
    table = integral.reshape(-1, channels).index_select(0, flat).reshape(-1, 2 * size, 2 * size, channels)
    # Right edge minus left edge, then bottom minus top: the bins' sums [N, size, size, C], exact
    # in any order for integer pixels, whose sums both kinds of table hold exactly.
    band = table[:, :, size:] - table[:, :, :size]
    total = band[:, size:] - band[:, :size]
    return (total / count[..., None]).to(torch.float32).permute(0, 3, 1, 2)
