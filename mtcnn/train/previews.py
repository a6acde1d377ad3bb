"""The picture of validation crops TensorBoard shows each epoch: what the net sees and says."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import cv2
import numpy as np
import torch
from torch import nn

from mtcnn.ops.draw import draw_faces, tile_images
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE
from mtcnn.train.batches import SampleTensors
from mtcnn.train.losses import flatten_output

#: Side in pixels a crop is enlarged to (at least), so that boxes and points can be seen.
_TILE_SIDE = 192


def preview_indices(labels: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` sample indices taking the sample types in turn (positive, landmark, part,
    negative), each type's picks spread evenly over the store: many images, not one."""
    per_type = []
    for label in (LABEL_POSITIVE, LABEL_LANDMARK, LABEL_PART, LABEL_NEGATIVE):
        members = np.flatnonzero(labels == label)
        per_type.append(members[np.linspace(0, len(members) - 1, min(count, len(members))).astype(int)])
    chosen: list[int] = []
    for rank in range(count):
        chosen += [int(members[rank]) for members in per_type if rank < len(members)]
    return chosen[:count]


@torch.no_grad()
def validation_grid(
    net: nn.Module,
    data: SampleTensors,
    count: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> np.ndarray | None:
    """``uint8 [H, W, 3]`` RGB: a grid of up to ``count`` crops of ``data`` (types mixed),
    enlarged, with the ground-truth box (white), the predicted box and face probability (green)
    and the predicted landmarks; None when there is nothing to show. Leaves ``net`` in train mode."""
    labels = data.labels.cpu().numpy()
    chosen = preview_indices(labels, count)
    if not chosen:
        return None
    batch = data.gather(torch.tensor(chosen), device)
    net.eval()
    with autocast():
        output = flatten_output(net(batch.pixels))
    net.train()
    zoom = max(1, _TILE_SIDE // data.size)
    side = data.size * zoom
    scores = torch.softmax(output.logits.float(), dim=1)[:, 1].cpu().numpy()
    boxes = (output.box.float().cpu().numpy() + np.array([0, 0, 1, 1])) * side
    points = output.landmarks.float().cpu().numpy().reshape(-1, 5, 2) * side
    true_boxes = (batch.boxes.cpu().numpy() + np.array([0, 0, 1, 1])) * side
    tiles = []
    for k, index in enumerate(chosen):
        crop = batch.pixels[k].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).cpu().numpy()
        crop = np.repeat(np.repeat(crop, zoom, axis=0), zoom, axis=1)
        if int(labels[index]) in (LABEL_POSITIVE, LABEL_PART):
            crop = draw_faces(crop, true_boxes[k : k + 1], colour=(255, 255, 255))
        tile = draw_faces(crop, boxes[k : k + 1], points[k : k + 1])
        # the face probability in the corner: the box often reaches past the crop's edge
        text = f"{scores[k]:.2f}"
        cv2.putText(tile, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    return tile_images(tiles, columns=min(8, len(tiles)))
