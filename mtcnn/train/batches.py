"""Training batches: the whole store as tensors, ratio-keeping batch plans, augmentation on the device.

The store is loaded once into memory (or onto the GPU) and batches are gathered by index, so
there is no data loader and no per-sample Python: a batch is one ``index_select`` per array,
one flip and one colour jitter over the whole batch. Everything random comes from generators
seeded by ``(seed, epoch, rank)``, so an epoch's batches and augmentation are the same whether
the run was resumed or not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from mtcnn.data.store import SampleStore
from mtcnn.errors import DataError
from mtcnn.model.nets import mirror_outputs
from mtcnn.spec import LABEL_NAMES

log = logging.getLogger(__name__)

#: Store labels by the names used in ratios and manifests.
LABELS_BY_NAME = {name: label for label, name in LABEL_NAMES.items()}


class Batch(NamedTuple):
    """One batch on the training device.

    ``pixels``: ``float32 [B, 3, S, S]`` RGB in [0, 255]; ``labels``: ``int8 [B]`` store labels;
    ``boxes``: ``float32 [B, 4]`` box offsets; ``landmarks``: ``float32 [B, 10]`` in [0, 1].
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    landmarks: torch.Tensor


@dataclass
class SampleTensors:
    """A whole sample store as tensors on one device (see :class:`~mtcnn.data.store.SampleStore`).

    ``images``: ``uint8 [N, S, S, 3]``; ``labels``: ``int8 [N]``; ``boxes``: ``float32 [N, 4]``;
    ``landmarks``: ``float32 [N, 10]``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    landmarks: torch.Tensor

    @classmethod
    def from_store(cls, store: SampleStore, device: torch.device | str = "cpu") -> SampleTensors:
        """Read the whole store into memory on ``device``."""
        return cls(
            *(
                torch.from_numpy(np.array(array, copy=True)).to(device)
                for array in (store.images, store.labels, store.boxes, store.landmarks)
            )
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def gather_raw(self, indices: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """The samples at ``indices [B]`` on ``device``, as stored: ``images uint8 [B, S, S, 3]``,
        ``labels``, ``boxes``, ``landmarks``."""
        indices = indices.to(self.device)
        return tuple(
            tensor.index_select(0, indices).to(device)
            for tensor in (self.images, self.labels, self.boxes, self.landmarks)
        )

    def gather(self, indices: torch.Tensor, device: torch.device | str) -> Batch:
        """The samples at ``indices [B]`` as a :class:`Batch` on ``device``, without augmentation."""
        images, labels, boxes, landmarks = self.gather_raw(indices, device)
        return Batch(to_net_layout(images.float()), labels, boxes, landmarks)


def to_net_layout(images: torch.Tensor) -> torch.Tensor:
    """``[B, S, S, 3]`` float -> ``[B, 3, S, S]``: a permuted view, channels-last in memory, which
    the convolutions take as it is (no copy)."""
    return images.permute(0, 3, 1, 2)


def label_indices(labels: np.ndarray | torch.Tensor) -> dict[int, np.ndarray]:
    """Sample indices per store label: ``{label: int64 [n_label]}``."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return {label: np.flatnonzero(labels == label) for label in LABEL_NAMES}


def slot_pattern(ratio: Mapping[int, int]) -> list[int]:
    """One cycle of batch slots, the labels interleaved evenly: ``{0: 3, 1: 1, -1: 1, -2: 2}`` ->
    ``[0, -2, 0, 1, -1, -2, 0]``. Batches take consecutive slots of the repeated cycle, so any
    batch holds the ratio to within one sample per type and the stream holds it exactly."""
    places = []
    for order, (label, share) in enumerate(ratio.items()):
        places += [((k + 0.5) / share, order, label) for k in range(share)]
    return [label for _, _, label in sorted(places)]


class BatchPlanner:
    """Which samples each step of an epoch trains on.

    Mini-batch mode (``batch_size`` an int): ``steps_per_epoch`` batches of ``batch_size``, whose
    slots follow :func:`slot_pattern` of ``ratio`` (label name -> share); each label's slots are
    filled from a fresh random permutation of that label's samples, repeated as needed. Labels
    with share 0 or no samples in the store are left out (with a warning for the latter).
    Full-batch mode (``batch_size="full"``): one step over every sample, in chunks.
    """

    def __init__(
        self,
        labels: np.ndarray | torch.Tensor,
        batch_size: int | str,
        ratio: Mapping[str, int],
        steps_per_epoch: int | None,
        seed: int,
    ) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.count = int(labels.shape[0])
        self.indices = label_indices(labels)
        shares = {}
        for name, share in ratio.items():
            label = LABELS_BY_NAME[name]
            if share > 0 and len(self.indices[label]) == 0:
                log.warning("the store has no %s samples; batches go without them", name)
            elif share > 0:
                shares[label] = share
        if not shares:
            raise DataError(
                f"the training store has none of the sample types the batch ratio asks for "
                f"({', '.join(name for name, share in ratio.items() if share > 0)})"
            )
        self.pattern = np.array(slot_pattern(shares), dtype=np.int64)
        if batch_size == "full":
            self.steps_per_epoch = 1
        else:
            self.steps_per_epoch = steps_per_epoch or max(1, self.count // int(batch_size))

    @property
    def full_batch(self) -> bool:
        return self.batch_size == "full"

    def epoch_plan(self, epoch: int) -> torch.Tensor:
        """``int64 [steps_per_epoch, batch_size]`` sample indices of ``epoch`` (mini-batch mode),
        or ``[1, N]`` all samples in store order (full-batch mode). Depends only on the seed and
        the epoch."""
        if self.full_batch:
            return torch.arange(self.count).unsqueeze(0)
        rng = np.random.default_rng([self.seed, epoch])
        total = self.steps_per_epoch * int(self.batch_size)
        slots = np.resize(self.pattern, total)
        plan = np.empty(total, dtype=np.int64)
        for label, members in self.indices.items():
            where = np.flatnonzero(slots == label)
            if where.size == 0:
                continue
            repeats = -(-where.size // members.size)
            plan[where] = np.concatenate([rng.permutation(members) for _ in range(repeats)])[: where.size]
        return torch.from_numpy(plan.reshape(self.steps_per_epoch, int(self.batch_size)))


def flip_batch(
    images: torch.Tensor, boxes: torch.Tensor, landmarks: torch.Tensor, flip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror the samples where ``flip [B]`` (bool) is set, left to right, with their targets.

    ``images [B, S, S, 3]`` (store layout, any dtype); ``boxes [B, 4]`` offsets ``dx1 dy1 dx2 dy2``
    become ``-dx2 dy1 -dx1 dy2`` (the box's right edge becomes the left one); ``landmarks
    [B, 10]`` get ``x' = 1 - x`` and the left/right eyes and mouth corners swapped, so that
    "left eye" still names the eye on the image's left.
    """
    images = torch.where(flip[:, None, None, None], images.flip(2), images)
    mirrored_boxes, mirrored_points = mirror_outputs(boxes, landmarks)
    boxes = torch.where(flip[:, None], mirrored_boxes, boxes)
    landmarks = torch.where(flip[:, None], mirrored_points, landmarks)
    return images, boxes, landmarks


#: Grey level weights of R, G, B (ITU-R 601, as torchvision's ``rgb_to_grayscale``).
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def jitter_colours(
    images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor
) -> torch.Tensor:
    """Per-sample colour jitter of float ``images [B, S, S, 3]`` (RGB, [0, 255]) by factors ``[B]``.

    In order: brightness scales the pixels; contrast blends each crop with its mean grey level;
    saturation blends each pixel with its own grey level (torchvision's ``adjust_*`` definitions,
    clamped once at the end rather than after each). The three are linear, so they are applied
    as one ``3 x 3`` colour matrix and one offset per crop: a single batched matmul.
    Factors of 1 leave a crop as it is. Returns ``[B, S, S, 3]`` in [0, 255].
    """
    count = images.shape[0]
    weights = images.new_tensor(GREY_WEIGHTS)
    # brightness b, then contrast c around the mean grey m' = b * m, then saturation s:
    # out = c b (s p + (1 - s) grey(p)) + (1 - c) b m; the offset is grey, so saturation keeps it.
    scale = (contrast * brightness).view(-1, 1, 1)
    identity = torch.eye(3, dtype=images.dtype, device=images.device)
    matrix = scale * (
        saturation.view(-1, 1, 1) * identity
        + (1 - saturation).view(-1, 1, 1) * weights.view(1, 1, 3).expand(count, 3, 3)
    )
    mean_grey = images.reshape(count, -1, 3).mean(1) @ weights
    offset = ((1 - contrast) * brightness * mean_grey).view(-1, 1, 1)
    flat = images.reshape(count, -1, 3)
    # row-vector pixels: out_row = p_row @ matrix^T, with matrix[i, j] = weight of input j in output i
    out = torch.baddbmm(offset, flat, matrix.transpose(1, 2))
    return out.clamp_(0.0, 255.0).reshape(images.shape)


class Augmenter:
    """Random flips and colour jitter for whole batches, from one generator on the device."""

    def __init__(
        self, flip: bool, brightness: float, contrast: float, saturation: float, device: torch.device | str
    ) -> None:
        self.flip = flip
        self.ranges = (brightness, contrast, saturation)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)

    def reseed(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Start the random stream of ``epoch`` (on ``rank``) afresh."""
        mixed = np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0]
        self.generator.manual_seed(int(mixed))

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, landmarks: torch.Tensor
    ) -> Batch:
        """Augment gathered samples (``images uint8 [B, S, S, 3]`` as stored) into a :class:`Batch`.

        Flips happen on the ``uint8`` crops (a quarter of the bytes of floats), colour jitter on
        the floats.
        """
        count = labels.shape[0]
        draws = torch.rand((4, count), generator=self.generator, device=self.device)
        if self.flip:
            images, boxes, landmarks = flip_batch(images, boxes, landmarks, draws[0] < 0.5)
        images = images.float()
        if any(spread > 0 for spread in self.ranges):
            factors = [1.0 + (2.0 * draw - 1.0) * spread for draw, spread in zip(draws[1:], self.ranges)]
            images = jitter_colours(images, *factors)
        return Batch(to_net_layout(images), labels, boxes, landmarks)
