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

# ------------------------------------------------------------------------------------ optimizers


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer: its torch class, the settings it takes (with their defaults,
    ``None`` meaning torch's own), fixed constructor arguments and settings that must be > 0."""

    torch_class: type[torch.optim.Optimizer]
    settings: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    positive: tuple[str, ...] = ()


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(torch.optim.SGD),
    "momentum": OptimizerSpec(torch.optim.SGD, {"momentum": 0.9}, positive=("momentum",)),
    "nesterov": OptimizerSpec(torch.optim.SGD, {"momentum": 0.9}, {"nesterov": True}, positive=("momentum",)),
    "adagrad": OptimizerSpec(torch.optim.Adagrad, {"eps": None}),
    "rmsprop": OptimizerSpec(torch.optim.RMSprop, {"alpha": None, "eps": None, "momentum": None}),
    "adam": OptimizerSpec(torch.optim.Adam, {"betas": None, "eps": None}),
    "adamw": OptimizerSpec(torch.optim.AdamW, {"betas": None, "eps": None}),
}
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
#: Settings every optimizer takes.
COMMON_SETTINGS = ("lr", "weight_decay")


def check_optimizer_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the setting if ``name`` does not take one of ``settings``
    (those that are not ``None``) or if a setting it needs positive is not."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")
    spec = OPTIMIZERS[name]
    for key, value in settings.items():
        if value is None or key in COMMON_SETTINGS:
            continue
        if key not in spec.settings:
            takes = ", ".join((*COMMON_SETTINGS, *spec.settings))
            raise ValueError(f"optimizer {name!r} does not take {key!r} (it takes {takes}); remove it or set "
                             "it to null")
    for key in spec.positive:
        value = settings.get(key)
        if value is not None and not value > 0:
            raise ValueError(f"optimizer {name!r} needs {key} > 0, got {value}")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights (>= 2-D) with ``weight_decay``, biases and PReLU slopes (1-D) without."""
    decayed, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else plain).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                    **settings: Any) -> torch.optim.Optimizer:
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


@dataclass(frozen=True)
class ScheduleSpec:
    """One registered schedule: the settings it takes with their defaults (``None``: required)."""

    settings: Mapping[str, Any]
    per_epoch: bool = True


SCHEDULES: dict[str, ScheduleSpec] = {
    "constant": ScheduleSpec({}),
    "step": ScheduleSpec({"step_epochs": None, "gamma": 0.1}),
    "multistep": ScheduleSpec({"milestones": None, "gamma": 0.1}),
    "exponential": ScheduleSpec({"gamma": 0.9}),
    "cosine": ScheduleSpec({"min_lr_factor": 0.0}, per_epoch=False),
    "plateau": ScheduleSpec({"gamma": 0.1, "patience": 2, "threshold": 1e-4}),
}
SCHEDULE_NAMES = tuple(SCHEDULES)
#: Settings every schedule takes.
WARMUP_SETTINGS = ("warmup_steps", "warmup_start_factor")


def check_schedule_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The full settings of schedule ``name`` (defaults filled in); ``ValueError`` for a setting
    it does not take or a required one missing."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    spec = SCHEDULES[name]
    for key, value in settings.items():
        if value is not None and key not in spec.settings and key not in WARMUP_SETTINGS:
            takes = ", ".join((*spec.settings, *WARMUP_SETTINGS))
            raise ValueError(f"schedule {name!r} does not take {key!r} (it takes {takes}); remove it or set "
                             "it to null")
    resolved = {}
    for key, default in spec.settings.items():
        value = settings.get(key)
        if value is None and default is None:
            raise ValueError(f"schedule {name!r} needs {key!r}")
        resolved[key] = default if value is None else value
    if name == "multistep" and list(resolved["milestones"]) != sorted(resolved["milestones"]):
        raise ValueError(f"schedule 'multistep' needs increasing milestones, got {list(resolved['milestones'])}")
    return resolved


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

    def __init__(self, name: str, epochs: int, warmup_steps: int = 0, warmup_start_factor: float = 0.1,
                 mode: str = "min", **settings: Any) -> None:
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
        return {"plateau_factor": self.plateau_factor, "plateau_best": self.plateau_best,
                "plateau_bad_epochs": self.plateau_bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateau_factor = float(state["plateau_factor"])
        self.plateau_best = None if state["plateau_best"] is None else float(state["plateau_best"])
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate (all groups share one base rate here)."""
    for group in optimizer.param_groups:
        group["lr"] = lr

