"""Small real sample stores cut from the kit's faces, for the training tests.

A deliberately plain cutter (not the prep pipeline): square windows around WIDER FACE boxes,
jittered until their IoU with the face makes them positives (>= 0.65) or part faces
(0.4 .. 0.65), random windows (12 to 120 px) overlapping no face (IoU < 0.3) as negatives, and windows
around the landmark set's faces with their five points. Crops are resampled with
:func:`mtcnn.ops.resample.crop_and_resize`, as the detector does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from mtcnn.data.readers import read_landmark_list, read_wider
from mtcnn.data.store import write_store
from mtcnn.detect.inputs import read_image
from mtcnn.ops.resample import crop_and_resize
from mtcnn.spec import INPUT_SIZES, LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE


def reference_offsets(windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Offsets ``[N, 4]`` taking ``windows`` to ``targets`` (both ``[N, 4]`` x1 y1 x2 y2), per unit
    of window width and height: what the box heads are trained to regress."""
    widths, heights = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    return (targets - windows) / torch.stack([widths, heights, widths, heights], dim=1)


def _pixels(path: Path) -> torch.Tensor:
    """``uint8 [3, H, W]``; only the regions cut out are made float."""
    return torch.from_numpy(read_image(path)).permute(2, 0, 1)


def _crop(pixels: torch.Tensor, window: np.ndarray, size: int) -> torch.Tensor:
    """``crop_and_resize`` of one window, run on just the part of the image under it (integer
    shifts keep the flooring, and pixels outside the image stay 0), which is much quicker than
    a summed-area table of the whole photo per crop."""
    height, width = pixels.shape[1:]
    corners = np.floor(window).astype(int)
    x0, y0 = min(max(corners[0], 0), width), min(max(corners[1], 0), height)
    x1, y1 = min(max(corners[2] + 1, x0), width), min(max(corners[3] + 1, y0), height)
    region = pixels[:, y0:y1, x0:x1].float()
    if region.numel() == 0:
        region = torch.zeros((3, 1, 1))
    shifted = torch.from_numpy(window - np.array([x0, y0, x0, y0], dtype=window.dtype))
    return crop_and_resize(region, shifted[None], size)


def _square_around(box: np.ndarray, rng: np.random.Generator, shift: float, scale: float) -> np.ndarray:
    width, height = box[2] - box[0], box[3] - box[1]
    side = max(width, height) * rng.uniform(1 - scale, 1 + scale)
    cx = (box[0] + box[2]) / 2 + rng.uniform(-shift, shift) * width
    cy = (box[1] + box[3]) / 2 + rng.uniform(-shift, shift) * height
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float32)


def cut_samples(kit: Path, stage: str, split: str, faces: int, seed: int = 0) -> dict[str, np.ndarray]:
    """About ``faces`` positives, as many part faces, 3x negatives and 2x landmark samples from
    the kit's ``split`` ("train" or "val") images; arrays as :func:`mtcnn.data.store.write_store` takes."""
    size = INPUT_SIZES[stage]
    rng = np.random.default_rng(seed)
    wider = kit / "widerface"
    images = read_wider(
        wider / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt", wider / f"WIDER_{split}" / "images"
    )
    crops, labels, boxes, points = [], [], [], []

    def add(pixels, windows, label, targets, landmarks):
        crops.extend(_crop(pixels, window, size).round().clamp(0, 255) for window in windows)
        labels.append(np.full(len(windows), label, np.int8))
        boxes.append(targets.astype(np.float32))
        points.append(landmarks.astype(np.float32))

    wanted = {LABEL_POSITIVE: faces, LABEL_PART: faces, LABEL_NEGATIVE: 3 * faces}
    made = dict.fromkeys(wanted, 0)
    for image in images:
        if all(made[label] >= wanted[label] for label in wanted):
            break
        big = image.boxes[
            (np.minimum(image.boxes[:, 2] - image.boxes[:, 0], image.boxes[:, 3] - image.boxes[:, 1]) >= 20)
            & ~image.invalid
        ]
        if len(big) == 0:
            continue
        pixels = _pixels(image.path)
        height, width = pixels.shape[1:]
        all_faces = torch.from_numpy(image.boxes)
        for face in big[:4]:
            for label, shift, low, high in ((LABEL_POSITIVE, 0.1, 0.65, 1.01), (LABEL_PART, 0.35, 0.4, 0.65)):
                for _ in range(60):
                    window = _square_around(face, rng, shift, 0.15)
                    iou = float(box_iou(torch.from_numpy(window[None]), torch.from_numpy(face[None]))[0, 0])
                    if low <= iou < high and made[label] < wanted[label]:
                        target = reference_offsets(torch.from_numpy(window[None]), torch.from_numpy(face[None])).numpy()
                        add(pixels, window[None], label, target, np.zeros((1, 10)))
                        made[label] += 1
                        break
        for _ in range(40):
            if made[LABEL_NEGATIVE] >= wanted[LABEL_NEGATIVE]:
                break
            side = rng.uniform(size, max(size + 1, min(height, width, 240) / 2))
            x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
            window = np.array([[x, y, x + side, y + side]], dtype=np.float32)
            if float(box_iou(torch.from_numpy(window), all_faces).max()) < 0.3:
                add(pixels, window, LABEL_NEGATIVE, np.zeros((1, 4)), np.zeros((1, 10)))
                made[LABEL_NEGATIVE] += 1

    list_name = "trainImageList.txt" if split == "train" else "testImageList.txt"
    for face in read_landmark_list(kit / "landmarks" / list_name)[: 2 * faces]:
        window = _square_around(face.box, rng, 0.05, 0.05)
        side = window[2] - window[0]
        target = ((face.points - window[None, :2]) / side).reshape(1, 10)
        add(_pixels(face.path), window[None], LABEL_LANDMARK, np.zeros((1, 4)), target)

    return {
        "images": torch.cat(crops).permute(0, 2, 3, 1).to(torch.uint8).numpy(),
        "labels": np.concatenate(labels),
        "boxes": np.concatenate(boxes),
        "landmarks": np.concatenate(points),
    }


def write_kit_store(kit: Path, stage: str, split: str, faces: int, path: Path, seed: int = 0) -> Path:
    """Cut samples with :func:`cut_samples` and write them as a store at ``path``."""
    arrays = cut_samples(kit, stage, split, faces, seed)
    return write_store(
        path,
        stage,
        arrays["images"],
        arrays["labels"],
        arrays["boxes"],
        arrays["landmarks"],
        extra_manifest={"source": f"kit {split} (test cutter)"},
    )
