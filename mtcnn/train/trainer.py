"""The train/validate loop: one :class:`Trainer` for the three nets, and :func:`run_training`,
which builds one from a loaded config.

The trainer takes objects (a net, a :class:`~mtcnn.config.TrainConfig`, the stores as tensors)
rather than files. Per epoch it trains on batches planned by :class:`~mtcnn.train.batches.BatchPlanner`
(or one full batch accumulated in chunks), validates, keeps ``last.pt`` and ``best.pt``
(atomically), writes TensorBoard scalars and images, and stops early when asked. A non-finite
loss stops the run before anything is saved, naming the step and the loss parts, so the last
checkpoint on disk is the last good one. Under ``torchrun`` the net is wrapped in
DistributedDataParallel; every rank validates on its own (the same numbers, without
communication) and rank 0 alone logs and saves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mtcnn.train.batches import Augmenter, Batch, BatchPlanner, SampleTensors
from mtcnn.model.checkpoint import atomic_save, load_checkpoint, make_checkpoint, training_state
from mtcnn.config import (DEFAULT_TASK_WEIGHTS, StageConfig, TrainConfig, build_config, load_config, to_dict,
                          write_config)
from mtcnn.errors import ConfigError, DataError, MtcnnError
from mtcnn.train.losses import LOSS_PARTS, combine_loss, flatten_output, loss_sums, ohem_kept_count
from mtcnn.model.nets import INPUT_SIZES, build_net
from mtcnn.train.optim import LRSchedule, build_optimizer, set_learning_rate
from mtcnn.data.store import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE, SampleStore

log = logging.getLogger(__name__)

#: Whether each metric a run can select its best checkpoint by is minimised or maximised.
METRIC_MODES = {"val_loss": "min", "val_accuracy": "max", "val_recall": "max", "val_precision": "max",
                "val_f1": "max", "val_box_error": "min", "val_landmark_error": "min", "train_loss": "min"}
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CONFIG_NAME = "config.yaml"
TENSORBOARD_DIR = "tensorboard"
#: Columns of the per-step statistics kept on the device between two log points.
_STEP_COLUMNS = ("loss", *LOSS_PARTS, "kept", "candidates", "correct", "samples")


class NonFiniteLossError(MtcnnError):
    """The loss became NaN or infinite; training stopped without saving."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on CUDA,
    gloo on the CPU (where torchrun gives each process one thread unless ``OMP_NUM_THREADS``
    says otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return context


@dataclass
class TrainResult:
    """What a finished run reports: ``history`` holds one dict of metrics per epoch."""

    out_dir: Path | None
    epochs_done: int
    best_metric: str
    best_value: float | None
    best_epoch: int | None
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def classification_stats(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``int64 [4]``: correct, true positives, predicted positives and actual positives among
    the positives and negatives of a batch (``logits [N, 2]``, ``labels [N]``); a sample is
    called a face when its face logit is the larger (probability > 0.5)."""
    labels = labels.to(torch.long)
    is_class = (labels == LABEL_POSITIVE) | (labels == LABEL_NEGATIVE)
    predicted = (logits[:, 1] > logits[:, 0]) & is_class
    actual = (labels == LABEL_POSITIVE)
    correct = (predicted == actual) & is_class
    return torch.stack([correct.sum(), (predicted & actual).sum(), predicted.sum(), actual.sum()])


def validation_metrics(sums: Mapping[str, float], task_weights: tuple[float, float, float]) -> dict[str, float]:
    """Metrics from summed validation statistics (see :meth:`Trainer.validate`)."""
    parts = {name: sums[name] / max(sums[f"{name}_count"], 1.0) for name in LOSS_PARTS}
    recall = sums["true_positive"] / max(sums["actual_positive"], 1.0)
    precision = sums["true_positive"] / max(sums["predicted_positive"], 1.0)
    return {
        "val_loss": sum(weight * parts[name] for weight, name in zip(task_weights, LOSS_PARTS)),
        **{f"val_loss_{name}": value for name, value in parts.items()},
        "val_accuracy": sums["correct"] / max(sums["classification_count"], 1.0),
        "val_recall": recall,
        "val_precision": precision,
        "val_f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "val_box_error": sums["box_abs_error"] / max(4.0 * sums["box_count"], 1.0),
        "val_landmark_error": sums["landmark_distance"] / max(5.0 * sums["landmark_count"], 1.0),
    }


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best if mode == "min" else value > best


class Trainer:
    """Trains one net on a store held as tensors; see the module docstring.

    ``net`` is moved to ``device``; ``run_config`` (the resolved stage config as plain data) goes
    into every checkpoint; ``out_dir`` None trains without saving or logging to files (tests,
    benchmarks).
    """

    def __init__(self, stage: str, net: nn.Module, config: TrainConfig, train_data: SampleTensors,
                 val_data: SampleTensors | None, device: torch.device | str, out_dir: Path | None = None,
                 run_config: dict[str, Any] | None = None, distributed: DistributedContext = DistributedContext(),
                 show_progress: bool = True) -> None:
        self.stage = stage
        self.config = config
        self.device = torch.device(device)
        # Batches arrive channels-last (a view of the store's NHWC crops); weights in the same
        # layout give gradients in it too, which DDP's buckets and the convolutions expect.
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self.distributed = distributed
        self.model: nn.Module = net
        if distributed.active:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        self.train_data = train_data
        self.val_data = val_data if config.validate else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_config = run_config or {}
        self.show_progress = show_progress and distributed.is_main
        self.task_weights = config.loss.task_weights or DEFAULT_TASK_WEIGHTS[stage]

        optim = config.optim
        self.optimizer = build_optimizer(net, optim.name, optim.lr, optim.weight_decay, **optim.specific_settings())
        self.schedule = LRSchedule(config.schedule.name, config.epochs, config.schedule.warmup_steps,
                                   config.schedule.warmup_start_factor, mode=METRIC_MODES[config.best_metric],
                                   **config.schedule.specific_settings())
        self.planner = BatchPlanner(train_data.labels, config.batch_size, dataclasses.asdict(config.ratio),
                                    config.steps_per_epoch, config.seed)
        augment = config.augment
        self.augmenter = Augmenter(augment.flip, augment.brightness, augment.contrast, augment.saturation, self.device)

        use_amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = getattr(torch, config.amp_dtype) if use_amp else None
        # float16 needs loss scaling against gradient underflow; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # epochs done
        self.step = 0  # optimizer steps done
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0
        self.history: list[dict[str, float]] = []
        self.writer = None
        if self.out_dir is not None and distributed.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR))

    # -------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The ``training`` entry of a checkpoint (see :mod:`mtcnn.model.checkpoint`)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": {"metric": self.config.best_metric, "value": self.best_value, "epoch": self.best_epoch,
                     "epochs_without_improvement": self.epochs_without_improvement},
            "history": self.history,
        }

    def load_state_dict(self, checkpoint: dict[str, Any], path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model and training state)."""
        state = training_state(checkpoint, path)
        self.net.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        best = state["best"]
        if best["metric"] == self.config.best_metric:
            self.best_value, self.best_epoch = best["value"], best["epoch"]
            self.epochs_without_improvement = int(best["epochs_without_improvement"])
        else:
            log.warning("%s: the best checkpoint was chosen by %s, this run uses %s; starting the best afresh",
                        path, best["metric"], self.config.best_metric)
        self.history = [dict(entry) for entry in state["history"]]

    def save(self, name: str) -> Path | None:
        """Write checkpoint ``name`` into the run folder (rank 0 only), atomically."""
        if self.out_dir is None or not self.distributed.is_main:
            return None
        path = self.out_dir / name
        atomic_save(make_checkpoint(self.stage, self.net, self.run_config, training=self.state_dict()), path)
        return path

    # -------------------------------------------------------------------------- training

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _learning_rate(self, epoch: int, progress: float) -> float:
        return self.config.optim.lr * self.schedule.factor(epoch, progress, self.step)

    def next_batch(self, indices: torch.Tensor) -> Batch:
        """Gather and augment the samples at ``indices``."""
        return self.augmenter(*self.train_data.gather_raw(indices, self.device))

    def _forward_loss(self, model: nn.Module, batch: Batch, denominators: tuple[int, int, int] | None = None):
        """Forward ``batch`` through ``model``; the loss total and the step's statistics row
        (``_STEP_COLUMNS``)."""
        with self._autocast():
            output = flatten_output(model(batch.pixels))
        sums = loss_sums(output, batch.labels, batch.boxes, batch.landmarks, self.config.loss.ohem_keep)
        total, parts = combine_loss(sums, self.task_weights, denominators)
        correct = classification_stats(output.logits.detach(), batch.labels)[0]
        row = torch.stack([total.detach(), *(parts[name].detach() for name in LOSS_PARTS),
                           sums.classification_count.float(), sums.classification_candidates.float(), correct.float(),
                           total.new_tensor(float(batch.labels.shape[0]))]).float()
        return total, row

    def _finish_step(self, compute_norm: bool) -> torch.Tensor | None:
        """Clip (when configured), measure the gradient norm (when asked), step the optimizer."""
        norm = None
        if self.config.grad_clip_norm is not None or compute_norm:
            self.scaler.unscale_(self.optimizer)
            limit = self.config.grad_clip_norm if self.config.grad_clip_norm is not None else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), limit)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return norm

    def train_step(self, batch: Batch, compute_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One mini-batch step; returns the step's statistics (``_STEP_COLUMNS``) and the
        gradient norm before clipping (when clipping or ``compute_norm``)."""
        total, row = self._forward_loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        return row, self._finish_step(compute_norm)

    def full_batch_step(self, plan: torch.Tensor,
                        compute_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One gradient-descent step over all samples in ``plan [N]``, accumulated in chunks of
        ``chunk_size``. Hard example mining keeps its fraction per chunk; every part is divided
        by its whole-batch count, so the gradient is that of the whole-batch mean whatever the
        chunking. Under DDP each rank takes every ``world_size``-th chunk and the gradients are
        summed over the ranks."""
        chunks = list(torch.split(plan, self.config.chunk_size))
        labels = self.train_data.labels.cpu().to(torch.long)
        totals = np.zeros(3, dtype=np.int64)
        for chunk in chunks:
            chunk_labels = labels[chunk]
            candidates = int(((chunk_labels == LABEL_POSITIVE) | (chunk_labels == LABEL_NEGATIVE)).sum())
            totals += [ohem_kept_count(candidates, self.config.loss.ohem_keep),
                       int(((chunk_labels == LABEL_POSITIVE) | (chunk_labels == LABEL_PART)).sum()),
                       int((chunk_labels == LABEL_LANDMARK).sum())]
        denominators = tuple(int(value) for value in totals)
        rank, world = self.distributed.rank, self.distributed.world_size
        self.optimizer.zero_grad(set_to_none=True)
        row = torch.zeros(len(_STEP_COLUMNS), device=self.device)
        for chunk in chunks[rank::world]:
            # the bare net, not DDP: gradients are summed over the ranks once, below
            total, chunk_row = self._forward_loss(self.net, self.next_batch(chunk), denominators)
            self.scaler.scale(total).backward()
            row += chunk_row
        if self.distributed.active:
            for parameter in self.net.parameters():
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad)
            dist.all_reduce(row)
        norm = self._finish_step(compute_norm)
        return row, norm

    def _last_good(self) -> str:
        last = self.out_dir / LAST_CHECKPOINT if self.out_dir is not None else None
        if last is not None and last.is_file():
            return f"the last good checkpoint is {last} (epoch {self.epoch})"
        return "no checkpoint was written before it"

    def _check_finite(self, rows: list[torch.Tensor], first_index: int, steps: int, epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` for the first of the latest steps (``rows``, the
        epoch's steps ``first_index`` ...) whose loss is not finite, on every rank together."""
        table = torch.stack(rows).float()
        bad = ~torch.isfinite(table[:, 0])
        flag = bad.any().to(torch.int32)
        if self.distributed.active:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not int(flag):
            return
        if bad.any():
            index = int(torch.nonzero(bad)[0])
            values = table[index].tolist()
            parts = ", ".join(f"{name}={value:.6g}" for name, value in zip(_STEP_COLUMNS[:4], values))
            global_step = self.step - len(rows) + index + 1
            where = f"step {global_step} (epoch {epoch + 1}, batch {first_index + index + 1} of {steps})"
        else:
            parts, where = "on another rank", f"epoch {epoch + 1}"
        raise NonFiniteLossError(f"non-finite loss at {where}: {parts}; stopped, {self._last_good()}. "
                                 "Lower train.optim.lr, add train.grad_clip_norm or check the store")

    def _check_weights_finite(self, epoch: int) -> None:
        """The last step's loss was finite but its update may not have been: never save such weights."""
        if all(bool(torch.isfinite(parameter).all()) for parameter in self.net.parameters()):
            return
        raise NonFiniteLossError(f"the weights became non-finite at the end of epoch {epoch + 1} (step {self.step}); "
                                 f"stopped, {self._last_good()}. Lower train.optim.lr or add train.grad_clip_norm")

    def _log_interval(self, rows: list[torch.Tensor], norm: torch.Tensor | None, seconds: float,
                      progress_bar) -> None:
        table = torch.stack(rows).float().cpu()
        sums = dict(zip(_STEP_COLUMNS, table.sum(0).tolist()))
        steps = len(rows)
        values = {
            "loss": sums["loss"] / steps,
            **{f"loss_{name}": sums[name] / steps for name in LOSS_PARTS},
            "accuracy": sums["correct"] / max(sums["candidates"], 1.0),
            "ohem_kept_fraction": sums["kept"] / max(sums["candidates"], 1.0),
            "samples_per_s": sums["samples"] * self._sample_multiplier() / max(seconds, 1e-9),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if norm is not None:
            values["grad_norm"] = float(norm)
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, self.step)
        progress_bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.3g}")

    def _sample_multiplier(self) -> int:
        # Mini-batch rows count one rank's samples; the full-batch row is already summed over ranks.
        return 1 if self.planner.full_batch else self.distributed.world_size

    def train_epoch(self, epoch: int) -> float:
        """Train one epoch; returns the mean loss of its steps."""
        plan = self.planner.epoch_plan(epoch)
        steps = plan.shape[0]
        self.augmenter.reseed(self.config.seed, epoch, self.distributed.rank)
        self.net.train()
        progress_bar = tqdm(total=steps, desc=f"{self.stage} epoch {epoch + 1}/{self.config.epochs}", unit="step",
                            leave=False, disable=not self.show_progress or None, dynamic_ncols=True)
        rows: list[torch.Tensor] = []
        epoch_loss = torch.zeros((), device=self.device)
        first_step, started = 0, time.perf_counter()
        every = self.config.log_every_steps
        for index in range(steps):
            set_learning_rate(self.optimizer, self._learning_rate(epoch, index / steps))
            log_now = (index + 1) % every == 0 or index + 1 == steps
            if self.planner.full_batch:
                row, norm = self.full_batch_step(plan[0], compute_norm=log_now)
            else:
                indices = plan[index, self.distributed.rank::self.distributed.world_size]
                row, norm = self.train_step(self.next_batch(indices), compute_norm=log_now)
            rows.append(row)
            epoch_loss += row[0]
            progress_bar.update()
            if log_now:
                self._check_finite(rows, first_step, steps, epoch)
                self._log_interval(rows, norm, time.perf_counter() - started, progress_bar)
                rows, first_step, started = [], index + 1, time.perf_counter()
        progress_bar.close()
        if self.distributed.active:  # every rank must see the same train_loss (best, early stop)
            dist.all_reduce(epoch_loss)
            epoch_loss /= self.distributed.world_size
        return float(epoch_loss) / steps

    # -------------------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, data: SampleTensors | None = None) -> dict[str, float]:
        """Loss parts (without hard example mining), classification accuracy, recall, precision
        and F1 over positives and negatives, mean absolute box offset error and mean landmark
        point distance (both in units of the crop side) over the whole validation store."""
        data = data if data is not None else self.val_data
        self.net.eval()
        keys = ("classification", "box", "landmark", "classification_count", "box_count", "landmark_count",
                "correct", "true_positive", "predicted_positive", "actual_positive", "box_abs_error",
                "landmark_distance")
        totals = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        for chunk in torch.split(torch.arange(len(data)), self.config.chunk_size):
            batch = data.gather(chunk, self.device)
            with self._autocast():
                output = self.net(batch.pixels)
            output = flatten_output(output)
            sums = loss_sums(output, batch.labels, batch.boxes, batch.landmarks, ohem_keep=1.0)
            stats = classification_stats(output.logits, batch.labels)
            labels = batch.labels.to(torch.long)
            has_box = (labels == LABEL_POSITIVE) | (labels == LABEL_PART)
            box_error = torch.where(has_box[:, None], (output.box.float() - batch.boxes).abs(), 0.0).sum()
            has_points = labels == LABEL_LANDMARK
            distance = (output.landmarks.float() - batch.landmarks).reshape(-1, 5, 2).norm(dim=-1)
            landmark_error = torch.where(has_points[:, None], distance, 0.0).sum()
            totals += torch.stack([sums.classification, sums.box, sums.landmark, sums.classification_count,
                                   sums.box_count, sums.landmark_count, *stats, box_error, landmark_error]).double()
        self.net.train()
        return validation_metrics(dict(zip(keys, totals.tolist())), self.task_weights)

    @torch.no_grad()
    def validation_image(self, count: int) -> np.ndarray | None:
        """A grid of up to ``count`` validation crops (types mixed), enlarged, with the ground-truth
        box (white), the predicted box and face probability (green) and predicted landmarks."""
        import cv2

        from mtcnn.ops.draw import draw_faces, tile_images

        if self.val_data is None or count == 0:
            return None
        labels = self.val_data.labels.cpu().numpy()
        chosen: list[int] = []
        per_type = []
        for label in (LABEL_POSITIVE, LABEL_LANDMARK, LABEL_PART, LABEL_NEGATIVE):
            members = np.flatnonzero(labels == label)  # spread over the store: many images, not one
            per_type.append(members[np.linspace(0, len(members) - 1, min(count, len(members))).astype(int)]
                            if len(members) else members)
        for rank in range(count):
            chosen += [int(members[rank]) for members in per_type if rank < len(members)]
        chosen = chosen[:count]
        if not chosen:
            return None
        batch = self.val_data.gather(torch.tensor(chosen), self.device)
        self.net.eval()
        with self._autocast():
            output = flatten_output(self.net(batch.pixels))
        self.net.train()
        size = self.val_data.size
        zoom = max(1, 192 // size)
        side = size * zoom
        scores = torch.softmax(output.logits.float(), dim=1)[:, 1].cpu().numpy()
        boxes = (output.box.float().cpu().numpy() + np.array([0, 0, 1, 1])) * side
        points = output.landmarks.float().cpu().numpy().reshape(-1, 5, 2) * side
        true_boxes = (batch.boxes.cpu().numpy() + np.array([0, 0, 1, 1])) * side
        tiles = []
        for k in range(len(chosen)):
            crop = batch.pixels[k].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).cpu().numpy()
            crop = np.repeat(np.repeat(crop, zoom, axis=0), zoom, axis=1)
            if int(labels[chosen[k]]) in (LABEL_POSITIVE, LABEL_PART):
                crop = draw_faces(crop, true_boxes[k:k + 1], colour=(255, 255, 255))
            tile = draw_faces(crop, boxes[k:k + 1], points[k:k + 1])
            # the face probability in the corner: the box often reaches past the crop's edge
            cv2.putText(tile, f"{scores[k]:.2f}", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, f"{scores[k]:.2f}", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        return tile_images(tiles, columns=min(8, len(tiles)))

    # -------------------------------------------------------------------------- the run

    def fit(self) -> TrainResult:
        """Train from the current state (fresh, or loaded by :meth:`load_state_dict`) to
        ``config.epochs``; returns the run's summary."""
        config = self.config
        mode = METRIC_MODES[config.best_metric]
        stopped_early = False
        if self.epoch >= config.epochs:
            log.info("the run already has %d of %d epochs; nothing to do", self.epoch, config.epochs)
        while self.epoch < config.epochs:
            epoch = self.epoch
            started = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            metrics = {"epoch": float(epoch + 1), "train_loss": train_loss,
                       "train_seconds": time.perf_counter() - started}
            if self.val_data is not None:
                metrics.update(self.validate())
            self._check_weights_finite(epoch)
            value = metrics[config.best_metric]
            self.schedule.report(value)
            # epochs before best_from_epoch neither become best nor count towards early stopping; the
            # last epoch always may, so a run shortened with --set epochs=N still writes best.pt
            eligible = epoch + 1 >= min(config.best_from_epoch, config.epochs)
            improved = eligible and _is_better(value, self.best_value, mode)
            if improved:
                self.best_value, self.best_epoch, self.epochs_without_improvement = value, epoch + 1, 0
            elif eligible:
                self.epochs_without_improvement += 1
            self.history.append(metrics)
            self.epoch = epoch + 1
            self._log_epoch(metrics, improved)
            self.save(LAST_CHECKPOINT)
            if improved:
                self.save(BEST_CHECKPOINT)
            patience = config.early_stop_patience
            if patience is not None and self.epochs_without_improvement >= patience and self.epoch < config.epochs:
                if self.distributed.is_main:
                        log.info("early stop: %s did not improve for %d epochs (best %.5g at epoch %d)",
                             config.best_metric, patience, self.best_value, self.best_epoch)
                stopped_early = True
                break
        self._log_hparams()
        if self.writer is not None:
            self.writer.close()
        return TrainResult(self.out_dir, self.epoch, config.best_metric, self.best_value, self.best_epoch,
                           stopped_early, list(self.history))

    def _log_epoch(self, metrics: dict[str, float], improved: bool) -> None:
        if not self.distributed.is_main:
            return
        shown = ("train_loss", "val_loss", "val_accuracy", "val_recall", "val_precision", "val_box_error",
                 "val_landmark_error")
        summary = "  ".join(f"{name} {metrics[name]:.4f}" for name in shown if name in metrics)
        log.info("%s epoch %d/%d  %s  (%.1f s)%s", self.stage, self.epoch, self.config.epochs, summary,
                 metrics["train_seconds"], "  best" if improved else "")
        if self.writer is None:
            return
        for name, value in metrics.items():
            if name.startswith("val_"):
                self.writer.add_scalar(f"val/{name[4:]}", value, self.epoch)
        self.writer.add_scalar("epoch/train_loss", metrics["train_loss"], self.epoch)
        self.writer.add_scalar("epoch/lr", self.optimizer.param_groups[0]["lr"], self.epoch)
        grid = self.validation_image(self.config.val_image_count)
        if grid is not None:
            self.writer.add_image("val/crops", grid, self.epoch, dataformats="HWC")
        self.writer.flush()

    def _log_hparams(self) -> None:
        if self.writer is None or not self.history:
            return
        config = self.config
        hparams = {"stage": self.stage, "optimizer": config.optim.name, "lr": config.optim.lr,
                   "weight_decay": config.optim.weight_decay, "batch_size": str(config.batch_size),
                   "schedule": config.schedule.name, "epochs": config.epochs, "ohem_keep": config.loss.ohem_keep,
                   "seed": config.seed}
        final = {f"hparam/{name}": value for name, value in self.history[-1].items() if name != "epoch"}
        if self.best_value is not None:
            final[f"hparam/best_{config.best_metric}"] = self.best_value
        self.writer.add_hparams(hparams, final, run_name=".")


# ------------------------------------------------------------------------------ from a config


def train_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """``--set`` overrides with ``train.`` put before keys that name no top-level section, so
    that ``optim.lr=0.01`` means ``train.optim.lr=0.01``."""
    sections = {item.name for item in dataclasses.fields(StageConfig)}
    return [text if text.split("=", 1)[0].split(".", 1)[0].strip() in sections else f"train.{text}"
            for text in overrides]


def load_train_config(stage: str, config_path: Path | None, overrides: list[str] | tuple[str, ...] = (),
                      resume: Path | None = None) -> StageConfig:
    """The config of a training run: ``config_path`` with ``overrides``, or without a file the
    config saved in the ``resume`` checkpoint (with ``overrides``). Its stage must be ``stage``."""
    overrides = train_overrides(overrides)
    if config_path is not None:
        config, source = load_config(config_path, overrides), config_path
    elif resume is not None:
        saved = load_checkpoint(resume).get("config")
        if not isinstance(saved, dict) or not saved:
            raise ConfigError(f"{resume}: the checkpoint holds no config; pass --config")
        try:
            config = build_config(StageConfig, saved, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{resume}: saved config: {exc}") from None
        source = resume
    else:
        raise ConfigError("give a stage config with --config (or a checkpoint to continue with --resume)")
    if config.stage != stage:
        raise ConfigError(f"{source}: configures {config.stage}, but this command trains {stage}")
    return config


def store_paths(config: StageConfig) -> tuple[Path, Path]:
    """The training and validation store folders: the config's, else where ``mtcnn prep`` writes."""
    train = config.train
    return (train.train_store or Path("runs/prep") / f"{config.stage}-train",
            train.val_store or Path("runs/prep") / f"{config.stage}-val")


def open_stage_store(path: Path, stage: str, what: str) -> SampleStore:
    """Open a store and check it holds crops of ``stage``'s input size."""
    store = SampleStore.open(path)
    expected = INPUT_SIZES[stage]
    if store.size != expected:
        raise DataError(f"{path}: the {what} store holds {store.size} px crops (a {store.stage} store); "
                        f"{stage} trains on {expected} px crops")
    if len(store) == 0:
        raise DataError(f"{path}: the {what} store is empty")
    return store


def resolve_config(config: StageConfig, out_dir: Path | None) -> StageConfig:
    """``config`` with every default that depends on the stage written out (store paths, run
    folder, task weights), as it goes into the run folder and the checkpoints."""
    train_store, val_store = store_paths(config)
    train = config.train
    resolved = dataclasses.replace(
        train, train_store=train_store, val_store=val_store,
        out_dir=out_dir or train.out_dir or Path("runs/train") / config.stage,
        loss=dataclasses.replace(train.loss,
                                 task_weights=train.loss.task_weights or DEFAULT_TASK_WEIGHTS[config.stage]))
    return dataclasses.replace(config, train=resolved)


def run_training(config: StageConfig, device: str = "auto", out_dir: Path | None = None, resume: Path | None = None,
                 show_progress: bool = True) -> TrainResult:
    """Train ``config.stage``'s net as ``config.train`` says; the console scripts call this.

    ``out_dir`` overrides ``train.out_dir`` (when resuming, the default is the checkpoint's
    folder). ``resume`` continues from a ``last.pt``/``best.pt`` of an earlier run, exactly.
    Raises :class:`MtcnnError` subclasses for bad stores, checkpoints or a diverging loss.
    """
    from mtcnn.detect.cascade import resolve_device
    from mtcnn.model.weights import load_net, stage_weights_file

    try:
        target = resolve_device(device)
    except ValueError as exc:
        raise MtcnnError(str(exc)) from None
    distributed = init_distributed(target)
    if distributed.active and target.type == "cuda":
        target = torch.device("cuda", distributed.local_rank)
        torch.cuda.set_device(target)
    if resume is not None and out_dir is None:
        out_dir = Path(resume).parent
    config = resolve_config(config, out_dir)
    train = config.train
    run_dir = Path(train.out_dir)
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        training_state(checkpoint, resume)
        if checkpoint["stage"] != config.stage:
            raise MtcnnError(f"{resume}: a {checkpoint['stage']} checkpoint; this run trains {config.stage}")
        saved_optimizer = checkpoint.get("config", {}).get("train", {}).get("optim", {}).get("name")
        if saved_optimizer not in (None, train.optim.name):
            raise MtcnnError(f"{resume}: was trained with {saved_optimizer}, this config uses {train.optim.name}; "
                             "a resumed run keeps its optimizer (start a new run from these weights with "
                             f"--set train.init_weights={resume})")
    elif (run_dir / LAST_CHECKPOINT).exists():
        raise MtcnnError(f"{run_dir} already holds a run; continue it with --resume {run_dir / LAST_CHECKPOINT} "
                         "or choose another --out-dir")

    init_file = None
    if train.init_weights is not None and checkpoint is None:
        init_file = stage_weights_file(train.init_weights, config.stage)
        if not init_file.is_file():  # checked before the stores load, which can take minutes
            raise MtcnnError(f"train.init_weights: {init_file}: no such file")

    train_path, val_path = Path(train.train_store), Path(train.val_store)
    train_store = open_stage_store(train_path, config.stage, "training")
    val_store = open_stage_store(val_path, config.stage, "validation") if train.validate else None
    store_device = target if train.store_on_device else torch.device("cpu")

    def tensors(store: SampleStore) -> SampleTensors:
        return SampleTensors.from_store(store, store_device)

    train_data = tensors(train_store)
    val_data = tensors(val_store) if val_store is not None else None
    if distributed.is_main:
        log.info("%s: %d training samples %s from %s%s", config.stage, len(train_data), train_store.counts(),
                 train_path,
                 f", {len(val_data)} validation samples from {val_path}" if val_data is not None else "")

    torch.manual_seed(train.seed)
    net = build_net(config.stage, train.dropout, train.dropout_heads)
    if init_file is not None:
        net.load_state_dict(load_net(init_file, config.stage).state_dict())
    if distributed.is_main:
        write_config(config, run_dir / CONFIG_NAME)
    trainer = Trainer(config.stage, net, train, train_data, val_data, target, run_dir, to_dict(config),
                      distributed, show_progress)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint, resume)
        if distributed.is_main:
            log.info("resuming %s from %s after epoch %d", config.stage, resume, trainer.epoch)
    try:
        return trainer.fit()
    finally:
        if distributed.active:
            dist.destroy_process_group()

