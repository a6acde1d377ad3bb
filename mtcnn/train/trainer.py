"""The train/validate loop: one :class:`Trainer` for the three nets
(:func:`mtcnn.train.run.run_training` builds one from a config).

The trainer takes objects (a net, a :class:`~mtcnn.config.TrainConfig`, the stores as tensors)
rather than files. Per epoch it trains on batches planned by :class:`~mtcnn.train.batches.BatchPlanner`
(or one full batch accumulated in chunks), validates, keeps ``last.pt`` and ``best.pt``
(atomically), logs to TensorBoard (:mod:`~mtcnn.train.tensorboard`, with the validation
picture of :mod:`~mtcnn.train.previews`), and stops early when asked. A non-finite
loss stops the run before anything is saved, naming the step and the loss parts, so the last
checkpoint on disk is the last good one. A checkpoint carries the random state too (dropout draws
from torch's global generators), so a resumed run repeats an unbroken one exactly. Under
``torchrun`` the net is wrapped in DistributedDataParallel; every rank validates on its own (the
same numbers, without communication) and rank 0 alone logs and saves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mtcnn.config import DEFAULT_TASK_WEIGHTS, TrainConfig
from mtcnn.errors import MtcnnError
from mtcnn.model.checkpoint import atomic_save, make_checkpoint, training_state
from mtcnn.spec import LABEL_LANDMARK, LABEL_NEGATIVE, LABEL_PART, LABEL_POSITIVE, LOSS_PARTS, METRIC_MODES
from mtcnn.train.batches import Augmenter, Batch, BatchPlanner, SampleTensors
from mtcnn.train.distributed import DistributedContext
from mtcnn.train.losses import combine_loss, flatten_output, loss_sums, ohem_kept_count
from mtcnn.train.metrics import classification_stats, is_better, validate_net
from mtcnn.train.optim import LRSchedule, build_optimizer, set_learning_rate
from mtcnn.train.previews import validation_grid
from mtcnn.train.tensorboard import TrainingLog

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
#: Columns of the per-step statistics kept on the device between two log points.
_STEP_COLUMNS = ("loss", *LOSS_PARTS, "kept", "candidates", "correct", "samples")


def random_state(device: torch.device) -> dict[str, Any]:
    """The global generators training draws from (dropout), as tensors a checkpoint can hold:
    ``{"device": device kind, "cpu": torch's CPU generator state}`` plus ``"cuda"`` (the state of
    ``device``'s generator) when training on a GPU, or ``"mps"``."""
    state: dict[str, Any] = {"device": device.type, "cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_random_state(state: dict[str, Any], device: torch.device) -> None:
    """Set the generators :func:`random_state` read (on the same kind of ``device``)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


class NonFiniteLossError(MtcnnError):
    """The loss became NaN or infinite; training stopped without saving."""


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


class Trainer:
    """Trains one net on a store held as tensors; see the module docstring.

    ``net`` is moved to ``device``; ``run_config`` (the resolved stage config as plain data) goes
    into every checkpoint; ``out_dir`` None trains without saving or logging to files (tests,
    benchmarks).
    """

    def __init__(
        self,
        stage: str,
        net: nn.Module,
        config: TrainConfig,
        train_data: SampleTensors,
        val_data: SampleTensors | None,
        device: torch.device | str,
        out_dir: Path | None = None,
        run_config: dict[str, Any] | None = None,
        distributed: DistributedContext | None = None,
        show_progress: bool = True,
    ) -> None:
        self.stage = stage
        self.config = config
        self.device = torch.device(device)
        # Batches arrive channels-last (a view of the store's NHWC crops); weights in the same
        # layout give gradients in it too, which DDP's buckets and the convolutions expect.
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self.distributed = distributed = distributed or DistributedContext()
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
        self.schedule = LRSchedule(
            config.schedule.name,
            config.epochs,
            config.schedule.warmup_steps,
            config.schedule.warmup_start_factor,
            mode=METRIC_MODES[config.best_metric],
            **config.schedule.specific_settings(),
        )
        self.planner = BatchPlanner(
            train_data.labels, config.batch_size, dataclasses.asdict(config.ratio), config.steps_per_epoch, config.seed
        )
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
        self.tensorboard = TrainingLog(self.out_dir if distributed.is_main else None)

    # -------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The ``training`` entry of a checkpoint (see :mod:`mtcnn.model.checkpoint`).

        Besides :data:`~mtcnn.model.checkpoint.TRAINING_KEYS` it holds ``random``, one
        :func:`random_state` per rank (gathered from every rank, so every rank must call this),
        and ``threads``, the torch thread count, on which CPU results depend to the last bit.
        The batch planner and the augmenter need nothing saved: they derive their generators
        from ``(seed, epoch, rank)`` at the start of each epoch, and checkpoints fall between
        epochs. NumPy's and Python's global generators are not used in training.
        """
        return {
            "random": self.distributed.gather(random_state(self.device)),
            "threads": torch.get_num_threads(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": {
                "metric": self.config.best_metric,
                "value": self.best_value,
                "epoch": self.best_epoch,
                "epochs_without_improvement": self.epochs_without_improvement,
            },
            "history": self.history,
        }

    def load_state_dict(self, checkpoint: dict[str, Any], path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model and training state)."""
        state = training_state(checkpoint, path)
        self.net.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        else:  # trained without float16 loss scaling (bfloat16 or the CPU): the scale starts afresh
            log.info("%s: the run had no float16 loss scaling; the scaler starts at its initial scale", path)
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        best = state["best"]
        if best["metric"] == self.config.best_metric:
            self.best_value, self.best_epoch = best["value"], best["epoch"]
            self.epochs_without_improvement = int(best["epochs_without_improvement"])
        else:
            log.warning(
                "%s: the best checkpoint was chosen by %s, this run uses %s; starting the best afresh",
                path,
                best["metric"],
                self.config.best_metric,
            )
        self.history = [dict(entry) for entry in state["history"]]
        self._restore_random_state(state.get("random"), path)

    def _restore_random_state(self, saved: list[dict[str, Any]] | None, path: str | Path) -> None:
        """Continue the random streams of the run that wrote ``saved`` (this rank's entry), or
        warn that they start afresh: an older checkpoint, another process count or device kind."""
        world, rank = self.distributed.world_size, self.distributed.rank
        if saved is None:
            problem = "an older checkpoint without random state"
        elif len(saved) != world:
            problem = f"written by {len(saved)} processes, resumed by {world}"
        elif saved[rank].get("device") != self.device.type:
            torch.set_rng_state(saved[rank]["cpu"])
            problem = f"written on {saved[rank].get('device')}, resumed on {self.device.type}"
        else:
            restore_random_state(saved[rank], self.device)
            return
        if self.distributed.is_main:
            log.warning(
                "%s: %s; the random state starts afresh, so dropout draws differ from an unbroken run", path, problem
            )

    def save(self, name: str) -> Path | None:
        """Write checkpoint ``name`` into the run folder (rank 0 only), atomically. Under DDP every
        rank must call it: the checkpoint gathers every rank's random state."""
        if self.out_dir is None:
            return None
        training = self.state_dict()
        if not self.distributed.is_main:
            return None
        path = self.out_dir / name
        atomic_save(make_checkpoint(self.stage, self.net, self.run_config, training=training), path)
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
        row = torch.stack(
            [
                total.detach(),
                *(parts[name].detach() for name in LOSS_PARTS),
                sums.classification_count.float(),
                sums.classification_candidates.float(),
                correct.float(),
                total.new_tensor(float(batch.labels.shape[0])),
            ]
        ).float()
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

    def full_batch_step(
        self, plan: torch.Tensor, compute_norm: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One gradient-descent step over all samples in ``plan [N]``, accumulated in chunks of
        ``chunk_size``. Hard example mining keeps its fraction per chunk; every part is divided
        by its whole-batch count, so the gradient is that of the whole-batch mean whatever the
        chunking. Under DDP each rank takes every ``world_size``-th chunk (none when there are
        fewer chunks than ranks) and the gradients are summed over the ranks."""
        chunks = list(torch.split(plan, self.config.chunk_size))
        labels = self.train_data.labels.cpu().to(torch.long)
        totals = np.zeros(3, dtype=np.int64)
        for chunk in chunks:
            chunk_labels = labels[chunk]
            candidates = int(((chunk_labels == LABEL_POSITIVE) | (chunk_labels == LABEL_NEGATIVE)).sum())
            totals += [
                ohem_kept_count(candidates, self.config.loss.ohem_keep),
                int(((chunk_labels == LABEL_POSITIVE) | (chunk_labels == LABEL_PART)).sum()),
                int((chunk_labels == LABEL_LANDMARK).sum()),
            ]
        denominators = tuple(int(value) for value in totals)
        rank, world = self.distributed.rank, self.distributed.world_size
        self.optimizer.zero_grad(set_to_none=True)
        row = torch.zeros(len(_STEP_COLUMNS), device=self.device)
        mine = chunks[rank::world]
        for chunk in mine:
            # the bare net, not DDP: gradients are summed over the ranks once, below
            total, chunk_row = self._forward_loss(self.net, self.next_batch(chunk), denominators)
            self.scaler.scale(total).backward()
            row += chunk_row
        if not mine:
            # Fewer chunks than ranks: this rank adds zero gradients and statistics to the sums
            # below. Its float16 loss scaler makes its scale on first use, so it must still scale
            # this step (nothing) or its step raises and leaves the other ranks waiting.
            self.scaler.scale(row.new_zeros(()))
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
        raise NonFiniteLossError(
            f"non-finite loss at {where}: {parts}; stopped, {self._last_good()}. "
            "Lower train.optim.lr, add train.grad_clip_norm or check the store"
        )

    def _check_weights_finite(self, epoch: int) -> None:
        """The last step's loss was finite but its update may not have been: never save such weights."""
        if all(bool(torch.isfinite(parameter).all()) for parameter in self.net.parameters()):
            return
        raise NonFiniteLossError(
            f"the weights became non-finite at the end of epoch {epoch + 1} (step {self.step}); "
            f"stopped, {self._last_good()}. Lower train.optim.lr or add train.grad_clip_norm"
        )

    def _log_interval(self, rows: list[torch.Tensor], norm: torch.Tensor | None, seconds: float, progress_bar) -> None:
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
        self.tensorboard.steps(values, self.step)
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
        progress_bar = tqdm(
            total=steps,
            desc=f"{self.stage} epoch {epoch + 1}/{self.config.epochs}",
            unit="step",
            leave=False,
            disable=not self.show_progress or None,
            dynamic_ncols=True,
        )
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
                indices = plan[index, self.distributed.rank :: self.distributed.world_size]
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

    def validate(self, data: SampleTensors | None = None) -> dict[str, float]:
        """Validation metrics (:func:`~mtcnn.train.metrics.validate_net`) over the whole
        validation store, or over ``data``, in float32 even when training runs in mixed
        precision: the best checkpoint, early stopping and the plateau schedule follow these
        figures, and they must not depend on the device's reduced-precision arithmetic."""
        data = data if data is not None else self.val_data
        return validate_net(self.net, data, self.device, self.config.chunk_size, self.task_weights)

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
            metrics = {
                "epoch": float(epoch + 1),
                "train_loss": train_loss,
                "train_seconds": time.perf_counter() - started,
            }
            if self.val_data is not None:
                metrics.update(self.validate())
            metrics = self.distributed.from_main(metrics)
            self._check_weights_finite(epoch)
            value = metrics[config.best_metric]
            self.schedule.report(value)
            # epochs before best_from_epoch neither become best nor count towards early stopping; the
            # last epoch always may, so a run shortened with --set epochs=N still writes best.pt
            eligible = epoch + 1 >= min(config.best_from_epoch, config.epochs)
            improved = eligible and is_better(value, self.best_value, mode)
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
                    log.info(
                        "early stop: %s did not improve for %d epochs (best %.5g at epoch %d)",
                        config.best_metric,
                        patience,
                        self.best_value,
                        self.best_epoch,
                    )
                stopped_early = True
                break
        self._log_hparams()
        self.tensorboard.close()
        return TrainResult(
            self.out_dir,
            self.epoch,
            config.best_metric,
            self.best_value,
            self.best_epoch,
            stopped_early,
            list(self.history),
        )

    def _log_epoch(self, metrics: dict[str, float], improved: bool) -> None:
        if not self.distributed.is_main:
            return
        shown = (
            "train_loss",
            "val_loss",
            "val_accuracy",
            "val_recall",
            "val_precision",
            "val_box_error",
            "val_landmark_error",
        )
        summary = "  ".join(f"{name} {metrics[name]:.4f}" for name in shown if name in metrics)
        log.info(
            "%s epoch %d/%d  %s  (%.1f s)%s",
            self.stage,
            self.epoch,
            self.config.epochs,
            summary,
            metrics["train_seconds"],
            "  best" if improved else "",
        )
        picture = None
        if self.tensorboard.active and self.val_data is not None:
            picture = validation_grid(self.net, self.val_data, self.config.val_image_count, self.device, self._autocast)
        self.tensorboard.epoch(metrics, self.optimizer.param_groups[0]["lr"], self.epoch, picture)

    def _log_hparams(self) -> None:
        if not self.history:
            return
        config = self.config
        hparams = {
            "stage": self.stage,
            "optimizer": config.optim.name,
            "lr": config.optim.lr,
            "weight_decay": config.optim.weight_decay,
            "batch_size": str(config.batch_size),
            "schedule": config.schedule.name,
            "epochs": config.epochs,
            "ohem_keep": config.loss.ohem_keep,
            "seed": config.seed,
        }
        final = {name: value for name, value in self.history[-1].items() if name != "epoch"}
        if self.best_value is not None:
            final[f"best_{config.best_metric}"] = self.best_value
        self.tensorboard.hyperparameters(hparams, final)
