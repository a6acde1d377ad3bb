"""Reading images into RGB arrays, and turning any accepted image type into a tensor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from mtcnn.errors import ImageReadError
from mtcnn.spec import IMAGE_EXTENSIONS

#: What :func:`to_pixel_tensor` accepts: an array, a tensor, a PIL image or a file path.
ImageInput = np.ndarray | torch.Tensor | str | Path | Any


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into ``uint8 [H, W, 3]`` RGB.

    EXIF orientation is applied, grayscale is expanded to three channels, an alpha channel is
    dropped and 16-bit images are scaled to 8 bits. Raises :class:`ImageReadError` naming the
    file when it is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile, unlike cv2.imread, takes any path
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1|3|4]`` arrays of uint8/uint16/float to ``[H, W, 3]`` (same dtype family)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"{name}: expected an [H, W], [H, W, 3] or [H, W, 4] array, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def to_pixel_tensor(image: ImageInput, name: str = "image") -> torch.Tensor:
    """Any accepted image as a float tensor ``[3, H, W]`` of RGB values in ``[0, 255]``.

    Accepted: numpy arrays ``[H, W, 3]`` RGB (or grayscale ``[H, W]``, RGBA), uint8, uint16 or
    float in [0, 255]; torch tensors ``[3, H, W]`` RGB in the torchvision layout (uint8 or float in
    [0, 255]); PIL images; and file paths (read with :func:`read_image`). A float image whose
    values all lie in [0, 1] (torchvision's ``ToTensor``) is refused: the nets would see it as
    black and find nothing.
    """
    if isinstance(image, (str, Path)):
        array = read_image(image)
    elif isinstance(image, torch.Tensor):
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ImageReadError(f"{name}: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        tensor = image[:3] if image.shape[0] != 1 else image.expand(3, -1, -1)
        if tensor.is_floating_point() and tensor.numel():
            _check_not_unit_range(float(tensor.max()), name)
        return tensor.to(torch.float32)
    elif isinstance(image, np.ndarray):
        array = _array_to_rgb(image, name)
        if array.dtype == np.uint16:
            array = array.astype(np.float32) / 257.0
        elif np.issubdtype(array.dtype, np.floating) and array.size:
            _check_not_unit_range(float(array.max()), name)  # NumPy's peak: no copy, no read-only warning
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL
        array = np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only buffers
    else:
        raise ImageReadError(f"{name}: unsupported image type {type(image).__name__}")
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # np.asarray(PIL image) is read-only, and torch warns on those
        array = array.astype(np.float32)  # the float copy made below anyway
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32)


def _check_not_unit_range(peak: float, name: str) -> None:
    """Refuse float pixels whose ``peak`` (largest value) lies in (0, 1]: values meant for
    [0, 1], not [0, 255]."""
    if 0 < peak <= 1.0:
        raise ImageReadError(
            f"{name}: float pixel values all in [0, 1] (torchvision's ToTensor?); the detector takes "
            "values in [0, 255]: pass image * 255"
        )


def _image_files(folder: Path) -> list[Path]:
    """The image files below ``folder``, sorted, following symlinked subfolders but searching each
    real folder once: by its own path when it lies in the tree, else by the first link to it."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    tops = [folder]
    while tops:  # the tree without following links, then the linked folders found in it, and so on
        links: list[Path] = []
        for root, folders, names in os.walk(tops.pop(0)):
            status = os.stat(root)
            if (status.st_dev, status.st_ino) in seen:
                folders.clear()  # searched already, by another path, or a link loops back up
                continue
            seen.add((status.st_dev, status.st_ino))
            links.extend(Path(root, name) for name in folders if os.path.islink(os.path.join(root, name)))
            files.extend(
                Path(root, name)
                for name in names
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and Path(root, name).is_file()
            )
        tops.extend(sorted(links))
    return sorted(files)


def expand_image_arguments(entries: list[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, folders (recursively, image extensions only) and glob patterns, in order.

    Returns ``(path, name)`` pairs: ``name`` is the path below the folder it was found in (for a
    folder argument) or the file name, for naming outputs. Symlinked subfolders are searched too,
    each real folder once (a link back up the tree does not loop). A pattern that matches nothing
    and a path that does not exist are kept as given, so the caller reports them as missing files.
    """
    found: list[tuple[Path, Path]] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found.extend((file, file.relative_to(path)) for file in _image_files(path))
        elif any(char in str(entry) for char in "*?[") and not path.exists():
            anchor = Path(path.anchor) if path.is_absolute() else Path(".")
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else str(entry)
            matches = sorted(p for p in anchor.glob(pattern) if p.is_file())
            found.extend((match, Path(match.name)) for match in matches or [path])
        else:
            found.append((path, Path(path.name)))
    return found
