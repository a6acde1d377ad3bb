"""The MTCNN cascade: image pyramid -> P-Net -> NMS -> R-Net -> NMS -> O-Net -> faces.

Many images of any sizes go through in one call. Every step runs on the chosen device: the
pyramid levels of all images are batched per level, NMS is torchvision's on the CPU (elsewhere
the same arithmetic op by op, so ties go the same way: see :func:`mtcnn.ops.boxes.nms`), R-Net and O-Net
inputs are cut and area-resampled from each image's summed-area table in one gather per image;
O-Net runs again on the kept faces' scaled windows for their landmarks. Work is chunked by a pixel
budget (P-Net) and a crop budget (R-Net, O-Net) so that large images and crowded scenes do not
exhaust memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtcnn.allocator import available_memory_bytes, retain_freed_memory_once
from mtcnn.detect.inputs import ImageInput, to_pixel_tensor
from mtcnn.errors import MemoryLimitError
from mtcnn.model.device import full_float32, resolve_device
from mtcnn.model.nets import MirrorAveraged
from mtcnn.model.weights import load_net, resolve_weight_files
from mtcnn.ops.boxes import apply_box_offsets, nms, square_boxes
from mtcnn.ops.resample import crop_and_resize, integral_image, pyramid_scales, resize_from_integral, scaled_size
from mtcnn.spec import INPUT_SIZES, STAGE_NAMES, STAGES

# Scale factors of the extra O-Net windows whose landmarks are averaged with the cascade's own.
# Picked on the landmark training list, not the test list: with the shipped weights four scales
# cut its NME from 0.0664 to 0.0637, two (0.9, 1.1) to 0.0644, six shifted windows no further.
LANDMARK_SCALES = (0.8, 0.9, 1.1, 1.2)

log = logging.getLogger(__name__)

#: P-Net's stride and window, in pixels of the scaled image.
PNET_STRIDE = 2
PNET_WINDOW = INPUT_SIZES["pnet"]


@dataclass(frozen=True)
class Faces:
    """Faces found in one image, sorted by falling score; empty arrays when there are none.

    - ``boxes``: ``float32 [K, 4]``, ``x1 y1 x2 y2`` in pixels (may extend past the image edge);
    - ``scores``: ``float32 [K]``, face probability from the last stage run;
    - ``landmarks``: ``float32 [K, 5, 2]``, ``(x, y)`` of left eye, right eye, nose, left and right
      mouth corner; NaN for the P-Net and R-Net stages, which do not predict them in the cascade.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Faces:
        return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


@dataclass
class _Candidates:
    """Boxes of a whole chunk of images, on the device: ``boxes [M, 4]``, ``scores [M]``,
    ``image_index [M]`` (which image of the chunk), ``landmarks [M, 5, 2]`` or None."""

    boxes: torch.Tensor
    scores: torch.Tensor
    image_index: torch.Tensor
    landmarks: torch.Tensor | None = None

    def select(self, keep: torch.Tensor) -> _Candidates:
        return _Candidates(
            self.boxes[keep],
            self.scores[keep],
            self.image_index[keep],
            None if self.landmarks is None else self.landmarks[keep],
        )

    def per_image(self, count: int) -> list[Faces]:
        boxes, scores, index = self.boxes.float().cpu(), self.scores.float().cpu(), self.image_index.cpu()
        landmarks = (
            self.landmarks.float().cpu()
            if self.landmarks is not None
            else torch.full((boxes.shape[0], 5, 2), float("nan"))
        )
        results = []
        for image in range(count):
            members = torch.nonzero(index == image).squeeze(1)
            members = members[torch.argsort(scores[members], descending=True, stable=True)]
            results.append(Faces(boxes[members].numpy(), scores[members].numpy(), landmarks[members].numpy()))
        return results


#: Images per batch on the CPU: one. On 24 WIDER images batches of 8 ran no faster (5.86 and 6.17
#: against 6.43 and 6.49 images/s) and peaked at 1.31-1.33 GiB against 1.01-1.04 GiB.
CPU_BATCH_SIZE = 1
#: Images per batch on a GPU, whose speed comes from large batches.
DEVICE_BATCH_SIZE = 16
#: P-Net input pixels per call on the CPU. Its activations take about 100 bytes per input pixel, so
#: one call stays near 200 MB: a 12-megapixel photo's first level runs in three bands of rows.
CPU_PNET_PIXEL_BUDGET = 2_000_000
#: On a GPU: more images of a level per batch.
DEVICE_PNET_PIXEL_BUDGET = 8_000_000
#: Memory the cascade takes per image pixel beyond the decoded and float pixels it holds when
#: :meth:`MTCNN.detect_stages` checks: the summed-area table (8 bytes a value above 8.4 megapixels),
#: pyramid levels, P-Net bands and the heap kept for reuse. Measured: an 8000 x 6000 photo peaked
#: 2.5 GB above the imported libraries (53 bytes a pixel, 15 of them already held at the check).
WORKING_BYTES_PER_PIXEL = 45
#: R-Net/O-Net input pixels per call on the CPU: 260 R-Net crops or 65 O-Net crops. On 2 cores
#: (AMD EPYC, channels-last) a crop cost the same from 128 to 512 R-Net crops or 32 to 64 O-Net
#: crops per call and 1.4 to 2.2 times as much at 2048 R-Net or 256 O-Net crops, whose activations
#: (hundreds of MB) no longer fit the caches: fewer crops per call are faster and leaner.
CPU_CROP_PIXEL_BUDGET = 150_000
#: On a GPU larger calls keep the device busy: about 17,000 R-Net or 4,300 O-Net crops.
DEVICE_CROP_PIXEL_BUDGET = 10_000_000


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class MTCNN:
    """Detect faces and five landmarks with the three-stage cascade.

    Args:
        weights: a folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (this project's checkpoints
            or the original MTCNN weights), a mapping ``{stage: file}`` (earlier stages only are
            enough for :meth:`detect_stages` with an earlier ``last_stage``), or None for the
            weights shipped with the package.
        min_face_size: smallest face side sought, in pixels.
        scale_factor: ratio between pyramid levels.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        nms_thresholds: overlap thresholds of the four NMS steps: P-Net within one pyramid
            level, P-Net across levels, R-Net (IoU), and O-Net (intersection over the smaller box).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        batch_size: images per batch when detecting in a list of images; None:
            :data:`CPU_BATCH_SIZE` on the CPU, :data:`DEVICE_BATCH_SIZE` elsewhere.
        mirror_onet: run O-Net on each crop and on its mirror image and average the two face
            scores, boxes and landmarks (:class:`~mtcnn.model.nets.MirrorAveraged`); False runs O-Net
            once per crop, as the original MTCNN cascade does.
        landmark_scales: run O-Net again on each detected face's window scaled by each of these
            factors about its centre, and average the landmarks of all the runs (faces, boxes and
            scores do not change); empty: landmarks from the one window, as the original cascade.
        nets: already built nets ``{stage: module}`` instead of ``weights`` (used by training and
            mining to run nets that are in memory).
        pnet_pixel_budget: most input pixels (padding included) of one P-Net call: pyramid levels
            of several images are batched up to it, and a larger level is run in bands of rows that
            give exactly its maps; None: :data:`CPU_PNET_PIXEL_BUDGET` on the CPU,
            :data:`DEVICE_PNET_PIXEL_BUDGET` elsewhere.
        crop_pixel_budget: most input pixels of one R-Net or O-Net call (crops times side squared,
            mirror views included); None: :data:`CPU_CROP_PIXEL_BUDGET` on the CPU, where calls
            small enough for the caches run fastest and keep memory low,
            :data:`DEVICE_CROP_PIXEL_BUDGET` elsewhere.
    """

    def __init__(
        self,
        weights: str | Path | Mapping[str, str | Path] | None = None,
        min_face_size: float = 20.0,
        scale_factor: float = 0.709,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        nms_thresholds: Sequence[float] = (0.5, 0.7, 0.7, 0.7),
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        mirror_onet: bool = True,
        landmark_scales: Sequence[float] = LANDMARK_SCALES,
        nets: Mapping[str, nn.Module] | None = None,
        pnet_pixel_budget: int | None = None,
        crop_pixel_budget: int | None = None,
    ) -> None:
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs 3 values (P-Net, R-Net, O-Net), got {len(thresholds)}")
        if len(nms_thresholds) != 4:
            raise ValueError(f"nms_thresholds needs 4 values, got {len(nms_thresholds)}")
        if min_face_size <= 0:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if any(not scale > 0 for scale in landmark_scales):
            raise ValueError(f"landmark_scales must be positive, got {list(landmark_scales)}")
        self.min_face_size = float(min_face_size)
        self.scale_factor = float(scale_factor)
        self.thresholds = tuple(_check_probability("threshold", t) for t in thresholds)
        self.nms_thresholds = tuple(_check_probability("NMS threshold", t) for t in nms_thresholds)
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            # What every command does at start, here so that Python callers need not remember it: on
            # glibc, freed activation blocks stay in the heap instead of being unmapped and faulted
            # in again on every call (2.7 to 3.7 times faster detection; the user's MALLOC_* win).
            retain_freed_memory_once()
        on_cpu = self.device.type == "cpu"
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if on_cpu else DEVICE_BATCH_SIZE
        self.batch_size = int(batch_size)
        self.mirror_onet = bool(mirror_onet)
        self.landmark_scales = tuple(float(scale) for scale in landmark_scales)
        if pnet_pixel_budget is None:
            pnet_pixel_budget = CPU_PNET_PIXEL_BUDGET if on_cpu else DEVICE_PNET_PIXEL_BUDGET
        self.pnet_pixel_budget = int(pnet_pixel_budget)
        if crop_pixel_budget is None:
            crop_pixel_budget = CPU_CROP_PIXEL_BUDGET if on_cpu else DEVICE_CROP_PIXEL_BUDGET
        self.crop_pixel_budget = int(crop_pixel_budget)
        if nets is None:
            nets = {stage: load_net(path, stage) for stage, path in resolve_weight_files(weights).items()}
        # Channels-last runs these small convolutions and poolings about twice as fast on the CPU.
        self.nets = {
            stage: net.to(self.device, memory_format=torch.channels_last).eval() for stage, net in nets.items()
        }
        # The nets as the cascade runs them: O-Net, with mirror_onet, averaged over each crop and its
        # mirror image; R-Net and O-Net take [N, 3, S, S] crops, P-Net whole images.
        self._runners: dict[str, nn.Module] = {
            stage: MirrorAveraged(net) if stage == "onet" and self.mirror_onet else net
            for stage, net in self.nets.items()
        }

    # ----------------------------------------------------------------------------- public API

    def detect(self, images: ImageInput | Sequence[ImageInput]) -> Faces | list[Faces]:
        """Faces in one image (returns :class:`Faces`) or in a list of images (returns a list).

        Images may differ in size; see :func:`mtcnn.detect.inputs.to_pixel_tensor` for the accepted types.
        """
        single = not isinstance(images, (list, tuple))
        results = [stages["onet"] for stages in self.detect_stages([images] if single else images)]
        return results[0] if single else results

    def detect_stages(self, images: Sequence[ImageInput], last_stage: str = "onet") -> list[dict[str, Faces]]:
        """The boxes after each stage up to ``last_stage``, per image: ``[{stage: Faces}]``.

        P-Net and R-Net boxes are those passed to the next stage, before squaring.
        """
        if last_stage not in STAGES:
            raise ValueError(f"unknown stage {last_stage!r}; expected one of {', '.join(STAGES)}")
        needed = STAGES[: STAGES.index(last_stage) + 1]
        missing = [STAGE_NAMES[stage] for stage in needed if stage not in self.nets]
        if missing:
            raise ValueError(f"running up to {STAGE_NAMES[last_stage]} needs weights for {', '.join(missing)}")
        results: list[dict[str, Faces]] = []
        with torch.inference_mode(), full_float32():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                names = [
                    str(image) if isinstance(image, (str, Path)) else f"image {start + i}"
                    for i, image in enumerate(chunk)
                ]
                pixels = [to_pixel_tensor(image, name).to(self.device) for image, name in zip(chunk, names)]
                _check_memory_for(pixels, names, self.device)
                per_stage = self._run_cascade(pixels, needed)
                for i in range(len(chunk)):
                    results.append({stage: per_stage[stage][i] for stage in needed})
        return results

    def landmarks_in_boxes(self, image: ImageInput, boxes: np.ndarray | torch.Tensor) -> np.ndarray:
        """O-Net's five points ``[N, 5, 2]`` (pixels, x y) for given face ``boxes [N, 4]``
        (x1 y1 x2 y2) in one image, placed as the cascade places them: each box squared and run
        through O-Net as the cascade runs it, on the ``landmark_scales`` windows too, without
        box regression."""
        if "onet" not in self.nets:
            raise ValueError("landmarks need weights for O-Net")
        with torch.inference_mode(), full_float32():
            pixels = to_pixel_tensor(image).to(self.device)
            windows = square_boxes(torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4))
            if windows.shape[0] == 0:
                return np.zeros((0, 5, 2), np.float32)
            image_index = torch.zeros(windows.shape[0], dtype=torch.long, device=self.device)
            scales = (1.0, *self.landmark_scales)
            summed = self._landmarks_at_scales([pixels], [integral_image(pixels)], windows, image_index, scales)
            return (summed / len(scales)).float().cpu().numpy()

    # ----------------------------------------------------------------------------- stages

    def _run_cascade(self, pixels: list[torch.Tensor], stages: Sequence[str]) -> dict[str, list[Faces]]:
        count = len(pixels)
        out: dict[str, list[Faces]] = {}
        # Summed-area tables: the smaller pyramid levels and every R-Net and O-Net crop come from them.
        integrals = [integral_image(image) for image in pixels]
        candidates = self._pnet_stage(pixels, integrals)
        out["pnet"] = candidates.per_image(count)
        for stage in ("rnet", "onet"):
            if stage in stages:
                candidates = self._refine_stage(pixels, integrals, candidates, stage)
                out[stage] = candidates.per_image(count)
        return out

    def _pnet_stage(self, pixels: list[torch.Tensor], integrals: list[torch.Tensor]) -> _Candidates:
        """Windows P-Net scores above its threshold, over the whole pyramid of every image,
        after per-level and cross-level NMS and box regression."""
        pnet = self.nets["pnet"]
        min_sides = [min(image.shape[1:]) for image in pixels]
        scales = pyramid_scales(max(min_sides), self.min_face_size, self.scale_factor, PNET_WINDOW)
        found: list[_Candidates] = []
        offsets_found: list[torch.Tensor] = []
        for scale in scales:
            members = [i for i, side in enumerate(min_sides) if side * scale >= PNET_WINDOW]
            for batch in self._pnet_batches(pixels, members, scale):
                level_candidates, level_offsets = self._pnet_forward(pnet, pixels, integrals, batch, scale)
                # NMS within one level of one image; groups keep images apart.
                keep = nms(
                    level_candidates.boxes,
                    level_candidates.scores,
                    self.nms_thresholds[0],
                    groups=level_candidates.image_index,
                )
                found.append(level_candidates.select(keep))
                offsets_found.append(level_offsets[keep])
        device = self.device
        if not found:
            return _Candidates(
                torch.zeros((0, 4), device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
        candidates = _Candidates(
            torch.cat([c.boxes for c in found]),
            torch.cat([c.scores for c in found]),
            torch.cat([c.image_index for c in found]),
        )
        offsets = torch.cat(offsets_found)
        keep = nms(candidates.boxes, candidates.scores, self.nms_thresholds[1], groups=candidates.image_index)
        candidates, offsets = candidates.select(keep), offsets[keep]
        candidates.boxes = apply_box_offsets(candidates.boxes, offsets)
        return candidates

    def _pnet_batches(self, pixels: list[torch.Tensor], members: list[int], scale: float) -> list[list[int]]:
        """Group the images of one pyramid level into batches of similar size within the pixel
        budget, so that padding to a common size wastes little work."""
        sizes = {i: scaled_size(pixels[i].shape[1], pixels[i].shape[2], scale) for i in members}
        order = sorted(members, key=lambda i: sizes[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for index in order:
            trial = current + [index]
            height = max(sizes[i][0] for i in trial)
            width = max(sizes[i][1] for i in trial)
            padded = height * width * len(trial)
            actual = sum(sizes[i][0] * sizes[i][1] for i in trial)
            if current and (padded > self.pnet_pixel_budget or padded > 1.25 * actual):
                batches.append(current)
                trial = [index]
            current = trial
        if current:
            batches.append(current)
        return batches

    def _pnet_forward(
        self, pnet: nn.Module, pixels: list[torch.Tensor], integrals: list[torch.Tensor], batch: list[int], scale: float
    ) -> tuple[_Candidates, torch.Tensor]:
        """P-Net over one batch of one pyramid level: candidate windows in original-image
        pixels ``[M, 4]``, their scores and image indices, and their box offsets ``[M, 4]``."""
        sizes = [scaled_size(pixels[i].shape[1], pixels[i].shape[2], scale) for i in batch]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)

        def level(index: int, h: int, w: int) -> torch.Tensor:
            # Same pixels either way; the table is cheaper below half size (its cost follows the output).
            if scale < 0.5:
                return resize_from_integral(integrals[index], h, w)
            return F.interpolate(pixels[index][None], size=(h, w), mode="area")[0]

        if len(batch) == 1:
            # One image (always so when detecting one at a time): the level as it comes, without
            # zeroing and copying into a padded batch; channels-last as the nets are.
            scaled = level(batch[0], *sizes[0])[None].contiguous(memory_format=torch.channels_last)
        else:
            scaled = torch.empty(
                (len(batch), 3, height, width), device=self.device, memory_format=torch.channels_last
            ).zero_()
            for slot, (index, (h, w)) in enumerate(zip(batch, sizes)):
                scaled[slot, :, :h, :w] = level(index, h, w)
        logits, offsets = self._pnet_in_bands(pnet, scaled)
        probability = torch.softmax(logits, dim=1)[:, 1]  # [B, rows, cols]
        rows = torch.arange(probability.shape[1], device=self.device)
        cols = torch.arange(probability.shape[2], device=self.device)
        # A cell counts only if its whole window lies inside the (unpadded) scaled image.
        heights = torch.tensor([s[0] for s in sizes], device=self.device)
        widths = torch.tensor([s[1] for s in sizes], device=self.device)
        inside = (rows[None, :, None] * PNET_STRIDE + PNET_WINDOW <= heights[:, None, None]) & (
            cols[None, None, :] * PNET_STRIDE + PNET_WINDOW <= widths[:, None, None]
        )
        slot, row, col = torch.nonzero((probability > self.thresholds[0]) & inside, as_tuple=True)
        first_x, first_y = (col * PNET_STRIDE).float(), (row * PNET_STRIDE).float()
        if getattr(pnet, "original_window_mapping", False):
            # The original MTCNN code: 1-based first pixel floor((2j + 1) / s), last floor((2j + 12) / s).
            x1, y1 = torch.floor((first_x + 1) / scale) - 1, torch.floor((first_y + 1) / scale) - 1
            x2, y2 = torch.floor((first_x + PNET_WINDOW) / scale), torch.floor((first_y + PNET_WINDOW) / scale)
        else:
            # Exact: the window [2j, 2j + 12) of the scaled image, mapped back with the per-axis
            # ratio of the resize.
            original_h = torch.tensor([float(pixels[i].shape[1]) for i in batch], device=self.device)
            original_w = torch.tensor([float(pixels[i].shape[2]) for i in batch], device=self.device)
            x_ratio, y_ratio = (original_w / widths)[slot], (original_h / heights)[slot]
            x1, y1 = first_x * x_ratio, first_y * y_ratio
            x2, y2 = (first_x + PNET_WINDOW) * x_ratio, (first_y + PNET_WINDOW) * y_ratio
        image_index = torch.tensor(batch, device=self.device)[slot]
        candidates = _Candidates(torch.stack([x1, y1, x2, y2], dim=1), probability[slot, row, col], image_index)
        return candidates, offsets[slot, :, row, col]

    def _pnet_in_bands(self, pnet: nn.Module, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net's face logits ``[B, 2, h, w]`` and box offsets ``[B, 4, h, w]`` on ``scaled [B, 3, H, W]``,
        in bands of rows within the pixel budget. Output row ``r`` sees input rows ``2r`` to
        ``2r + 11`` only, so bands of ``2R + 10`` input rows starting at even rows give exactly
        ``R`` rows each (the last band, ending where the image ends, ceil-mode rows included)."""
        batch, _, height, width = scaled.shape
        overlap = PNET_WINDOW - PNET_STRIDE
        rows_per_band = max(1, (self.pnet_pixel_budget // (batch * width) - overlap) // PNET_STRIDE)
        if PNET_STRIDE * rows_per_band + overlap >= height:
            return pnet.forward_detect(scaled)
        logits, offsets = [], []
        for first in range(0, height, PNET_STRIDE * rows_per_band):
            band_logits, band_offsets = pnet.forward_detect(
                scaled[:, :, first : first + PNET_STRIDE * rows_per_band + overlap]
            )
            logits.append(band_logits)
            offsets.append(band_offsets)
            if first + PNET_STRIDE * rows_per_band + overlap >= height:
                break
        return torch.cat(logits, dim=2), torch.cat(offsets, dim=2)

    def _refine_stage(
        self, pixels: list[torch.Tensor], integrals: list[torch.Tensor], previous: _Candidates, stage: str
    ) -> _Candidates:
        """R-Net or O-Net on square crops around the previous stage's boxes."""
        net = self._runners[stage]
        windows = square_boxes(previous.boxes)
        logits, offsets, points = [], [], []
        for crops in self._crop_chunks(pixels, integrals, windows, previous.image_index, stage):
            output = net(crops)
            logits.append(output.logits)
            offsets.append(output.box)
            points.append(output.landmarks)
        if logits:
            scores = torch.softmax(torch.cat(logits), dim=1)[:, 1]
            offsets_all, points_all = torch.cat(offsets), torch.cat(points)
        else:
            scores = windows.new_zeros(0)
            offsets_all, points_all = windows.new_zeros((0, 4)), windows.new_zeros((0, 10))
        threshold = self.thresholds[STAGES.index(stage)]
        passed = torch.nonzero(scores > threshold).squeeze(1)
        candidates = _Candidates(windows[passed], scores[passed], previous.image_index[passed])
        offsets_all, points_all = offsets_all[passed], points_all[passed]
        if stage == "rnet":
            keep = nms(candidates.boxes, candidates.scores, self.nms_thresholds[2], groups=candidates.image_index)
            candidates, offsets_all = candidates.select(keep), offsets_all[keep]
            candidates.boxes = apply_box_offsets(candidates.boxes, offsets_all)
            return candidates
        # O-Net: landmarks are relative to the square window it saw, then the box is regressed.
        windows = candidates.boxes
        candidates.landmarks = _points_in_windows(windows, points_all)
        candidates.boxes = apply_box_offsets(windows, offsets_all)
        keep = nms(
            candidates.boxes, candidates.scores, self.nms_thresholds[3], mode="min", groups=candidates.image_index
        )
        faces = candidates.select(keep)
        if self.landmark_scales and faces.boxes.shape[0]:
            # Only the faces kept are run again: a few per image against dozens of O-Net inputs.
            more = self._landmarks_at_scales(pixels, integrals, windows[keep], faces.image_index, self.landmark_scales)
            faces.landmarks = (faces.landmarks + more) / (1 + len(self.landmark_scales))
        return faces

    def _landmarks_at_scales(
        self,
        pixels: list[torch.Tensor],
        integrals: list[torch.Tensor],
        windows: torch.Tensor,
        image_index: torch.Tensor,
        scales: Sequence[float],
    ) -> torch.Tensor:
        """The sum over ``scales`` of O-Net's points ``[N, 5, 2]`` (pixels) on the square
        ``windows [N, 4]``, each scaled by the factor about its centre."""
        centre = (windows[:, :2] + windows[:, 2:]) / 2
        half = (windows[:, 2:] - windows[:, :2]) / 2
        # All the scaled windows in one pass: bigger batches run faster than one pass per scale.
        scaled = torch.cat([torch.cat([centre - half * scale, centre + half * scale], dim=1) for scale in scales])
        net = self._runners["onet"]
        points = [
            net(crops).landmarks
            for crops in self._crop_chunks(pixels, integrals, scaled, image_index.repeat(len(scales)), "onet")
        ]
        return _points_in_windows(scaled, torch.cat(points)).reshape(len(scales), -1, 5, 2).sum(dim=0)

    def _crop_chunks(
        self,
        pixels: list[torch.Tensor],
        integrals: list[torch.Tensor],
        windows: torch.Tensor,
        image_index: torch.Tensor,
        stage: str,
    ):
        """Yield ``[n, 3, S, S]`` crops of ``windows`` for ``stage``'s net in their order, as many
        per call as ``crop_pixel_budget`` allows, from each image's summed-area table."""
        size = INPUT_SIZES[stage]
        views = 2 if isinstance(self._runners[stage], MirrorAveraged) else 1
        per_call = max(1, self.crop_pixel_budget // (size * size * views))
        for start in range(0, windows.shape[0], per_call):
            chunk_windows = windows[start : start + per_call]
            chunk_index = image_index[start : start + per_call]
            images = torch.unique(chunk_index).tolist()
            if len(images) == 1:
                # All from one image (always so when detecting one image at a time): the crops as
                # they come, already in channels-last order, without a copy into a shared batch.
                yield crop_and_resize(pixels[images[0]], chunk_windows, size, integrals[images[0]])
                continue
            crops = torch.empty(
                (chunk_windows.shape[0], 3, size, size), device=self.device, memory_format=torch.channels_last
            )
            for image in images:
                members = torch.nonzero(chunk_index == image).squeeze(1)
                crops[members] = crop_and_resize(pixels[image], chunk_windows[members], size, integrals[image])
            yield crops


def _check_memory_for(pixels: list[torch.Tensor], names: list[str], device: torch.device) -> None:
    """Refuse, in one line, images that would take more memory than is free on ``device``, before
    the work rather than by the kernel's out-of-memory kill (or CUDA's error) in the middle of it."""
    if device.type == "cuda":
        # The summed-area tables are float64 there: a batch of 16 photos of 12 MP takes 6.9 GB.
        available = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        available = available_memory_bytes()
    else:
        return
    if available is None:
        return
    sizes = [image.shape[1] * image.shape[2] for image in pixels]
    needed = WORKING_BYTES_PER_PIXEL * sum(sizes)
    if needed <= available:
        return
    amounts = f"about {_in_binary_units(needed)} more memory, and {_in_binary_units(available)} is free"
    if len(pixels) == 1:
        height, width = pixels[0].shape[1:]
        detail = f"detecting in a {width} x {height} image needs {amounts}; downscale it (and min_face_size with it)"
        raise MemoryLimitError(names[0], detail)
    raise MemoryLimitError(
        f"{names[0]} and {len(names) - 1} more",
        f"detecting in {sum(sizes) / 1e6:.1f} megapixels at once needs {amounts};"
        " detect fewer images at a time (batch_size) or downscale them",
    )


def _in_binary_units(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _points_in_windows(windows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """O-Net's points ``[N, 10]`` (x, y pairs as fractions of the window side) as pixels
    ``[N, 5, 2]`` in the image of the square ``windows [N, 4]``."""
    side = (windows[:, 2:] - windows[:, :2])[:, None, :]
    return windows[:, None, :2] + points.reshape(-1, 5, 2).to(windows.dtype) * side
