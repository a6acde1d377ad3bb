"""The gradient-descent family by name, and learning-rate schedules by name.

Optimizers (a registry in the style of timm's factory):

========== ======================= ===========================================
name       torch class             settings it takes besides ``lr``, ``weight_decay``
========== ======================= ===========================================
sgd        ``SGD``                 none: plain gradient descent
momentum   ``SGD``                 ``momentum`` (> 0, default 0.9)
nesterov   ``SGD(nesterov=True)``  ``momentum`` (> 0, default 0.9)
adagrad    ``Adagrad``             ``eps``
rmsprop    ``RMSprop``             ``alpha``, ``eps``, ``momentum``
adam       ``Adam``                ``betas``, ``eps``
adamw      ``AdamW``               ``betas``, ``eps``
========== ======================= ===========================================

A setting the chosen optimizer does not take is an error (:func:`check_optimizer_settings`),
never silently dropped. Weight decay applies to weights only: 1-D parameters (biases, PReLU
slopes) go into a group without it, since shrinking a bias or a slope towards 0 regularises
nothing and only bends the activation.

Schedules (:class:`LRSchedule`) are pure functions of the training position, so that a resumed
run gets the same rate as an uninterrupted one; only ``plateau`` has state (saved in the
checkpoint). All schedules take an optional linear warm-up over the first steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mtcnn.config import (
    OPTIMIZER_SETTINGS,
    POSITIVE_SETTINGS,
    check_optimizer_settings,
    check_schedule_settings,
)

# ------------------------------------------------------------------------------------ optimizers


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer: its torch class, the settings it takes (with their defaults,
    ``None`` meaning torch's own), fixed constructor arguments and settings that must be > 0."""

    torch_class: type[torch.optim.Optimizer]
    settings: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    positive: tuple[str, ...] = ()


#: The torch class of each optimizer and the constructor arguments its name fixes.
_TORCH_OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {}),
    "nesterov": (torch.optim.SGD, {"nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {}),
    "rmsprop": (torch.optim.RMSprop, {}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
}
OPTIMIZERS: dict[str, OptimizerSpec] = {
    name: OptimizerSpec(torch_class, OPTIMIZER_SETTINGS[name], fixed, POSITIVE_SETTINGS.get(name, ()))
    for name, (torch_class, fixed) in _TORCH_OPTIMIZERS.items()
}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights (>= 2-D) with ``weight_decay``, biases and PReLU slopes (1-D) without."""
    decayed, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else plain).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, **settings: Any
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s parameters.

    ``settings`` are the optimizer-specific ones (``momentum``, ``betas``, ``eps``, ``alpha``);
    ``None`` values mean the registry's default. Raises ``ValueError`` for a setting ``name``
    does not take.
    """
    check_optimizer_settings(name, settings)
    spec = OPTIMIZERS[name]
    kwargs: dict[str, Any] = dict(spec.fixed)
    for key, default in spec.settings.items():
        value = settings.get(key)
        value = default if value is None else value
        if value is not None:
            kwargs[key] = tuple(value) if key == "betas" else value
    return spec.torch_class(parameter_groups(model, weight_decay), lr=lr, **kwargs)


# ------------------------------------------------------------------------------------- schedules


class LRSchedule:
    """Learning rate as a function of the position in training, with optional linear warm-up.

    ``factor(epoch, progress)`` multiplies the base rate: ``progress`` is the fraction of the
    current epoch done, in ``[0, 1)``. Epoch-based schedules (``step``, ``multistep``,
    ``exponential``) change the rate at epoch boundaries, as torch's ``StepLR`` ...  stepped once
    per epoch do; ``cosine`` anneals per step over ``epochs`` (as ``CosineAnnealingLR`` with
    ``T_max`` = all steps); ``plateau`` multiplies the rate by ``gamma`` after ``patience`` epochs
    whose monitored metric did not improve by a relative ``threshold`` (as ``ReduceLROnPlateau``
    in ``rel`` mode), fed by :meth:`report`. Warm-up ramps linearly from ``warmup_start_factor``
    to 1 over the first ``warmup_steps`` optimizer steps, on top of the schedule.
    """

    def __init__(
        self,
        name: str,
        epochs: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.1,
        mode: str = "min",
        **settings: Any,
    ) -> None:
        self.name = name
        self.settings = check_schedule_settings(name, settings)
        self.epochs = epochs
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        # plateau state
        self.plateau_factor = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0

    def factor(self, epoch: int, progress: float, step: int) -> float:
        """The multiplier of the base rate in ``epoch`` (0-based), ``progress`` through it,
        at optimizer step ``step`` (0-based, counted over the whole run)."""
        s = self.settings
        if self.name == "constant":
            value = 1.0
        elif self.name == "step":
            value = s["gamma"] ** (epoch // s["step_epochs"])
        elif self.name == "multistep":
            value = s["gamma"] ** sum(1 for milestone in s["milestones"] if epoch >= milestone)
        elif self.name == "exponential":
            value = s["gamma"] ** epoch
        elif self.name == "cosine":
            position = min((epoch + progress) / self.epochs, 1.0)
            value = s["min_lr_factor"] + (1.0 - s["min_lr_factor"]) * (1.0 + math.cos(math.pi * position)) / 2.0
        else:  # plateau
            value = self.plateau_factor
        if step < self.warmup_steps:
            ramp = step / self.warmup_steps
            value *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * ramp
        return value

    def report(self, metric: float) -> None:
        """Feed the epoch's monitored metric (only ``plateau`` uses it)."""
        if self.name != "plateau":
            return
        threshold = self.settings["threshold"]
        best = self.plateau_best
        if best is None:
            improved = True
        elif self.mode == "min":
            improved = metric < best * (1.0 - threshold)
        else:
            improved = metric > best * (1.0 + threshold)
        if improved:
            self.plateau_best = metric
            self.plateau_bad_epochs = 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.settings["patience"]:
                self.plateau_factor *= self.settings["gamma"]
                self.plateau_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_factor": self.plateau_factor,
            "plateau_best": self.plateau_best,
            "plateau_bad_epochs": self.plateau_bad_epochs,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateau_factor = float(state["plateau_factor"])
        self.plateau_best = None if state["plateau_best"] is None else float(state["plateau_best"])
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate (all groups share one base rate here)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
