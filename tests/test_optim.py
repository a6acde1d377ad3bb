"""Optimizer registry and LR schedules: every registered name, against torch's own classes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from mtcnn import config
from mtcnn.config import (
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    build_config,
    check_optimizer_settings,
)
from mtcnn.errors import ConfigError
from mtcnn.model.nets import PNet
from mtcnn.spec import OPTIMIZER_NAMES, SCHEDULE_NAMES
from mtcnn.train.optim import OPTIMIZERS, LRSchedule, build_optimizer

SPECIFIC = {"momentum": 0.5, "betas": (0.8, 0.9), "eps": 1e-6, "alpha": 0.9}


def _choices(cls, name: str) -> set[str]:
    return set(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"])


def test_config_offers_exactly_the_registered_names():
    assert _choices(OptimConfig, "name") == set(OPTIMIZER_NAMES)
    assert _choices(ScheduleConfig, "name") == set(SCHEDULE_NAMES)
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES and tuple(config.SCHEDULE_SETTINGS) == SCHEDULE_NAMES
    # every optimizer-specific setting of the registry is a config field, and vice versa
    fields = {f.name for f in dataclasses.fields(OptimConfig)} - {"name", "lr", "weight_decay"}
    assert fields == {key for spec in OPTIMIZERS.values() for key in spec.settings}


def _reference_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, settings: dict):
    """The torch optimizer configured by hand, with the same two parameter groups."""
    weights = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    classes = {
        "sgd": torch.optim.SGD,
        "momentum": torch.optim.SGD,
        "nesterov": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
    }
    extra = {"nesterov": True} if name == "nesterov" else {}
    return classes[name](groups, lr=lr, **settings, **extra)


def _taken_settings(name: str) -> dict:
    return {key: SPECIFIC[key] for key in OPTIMIZERS[name].settings}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_optimizer_matches_hand_configured_torch_class(name):
    torch.manual_seed(0)
    ours_net, ref_net = PNet(), PNet()
    ref_net.load_state_dict(ours_net.state_dict())
    settings = _taken_settings(name)
    ours = build_optimizer(ours_net, name, lr=0.01, weight_decay=0.01, **settings)
    ref = _reference_optimizer(name, ref_net, 0.01, 0.01, settings)
    assert type(ours) is type(ref)
    pixels = torch.rand(8, 3, 12, 12) * 255
    for _ in range(3):
        for net, optimizer in ((ours_net, ours), (ref_net, ref)):
            optimizer.zero_grad()
            out = net(pixels)
            (out.logits.square().mean() + out.box.sum() + out.landmarks.abs().mean()).backward()
            optimizer.step()
    for (key, a), b in zip(ours_net.state_dict().items(), ref_net.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_weight_decay_skips_biases_and_prelu_slopes(name):
    net = PNet()
    optimizer = build_optimizer(net, name, lr=0.1, weight_decay=0.5, **_taken_settings(name))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.5 and plain["weight_decay"] == 0.0
    assert {id(p) for p in plain["params"]} == {
        id(p) for n, p in net.named_parameters() if n.endswith(".bias") or n.startswith("prelu")
    }
    assert len(decayed["params"]) + len(plain["params"]) == len(list(net.parameters()))


def test_sgd_step_is_the_textbook_update():
    net = nn.Sequential(nn.Linear(3, 2))
    weight, bias = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    optimizer = build_optimizer(net, "sgd", lr=0.1, weight_decay=0.01)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    net(x).sum().backward()
    grad_w, grad_b = net[0].weight.grad.clone(), net[0].bias.grad.clone()
    optimizer.step()
    assert torch.allclose(net[0].weight, weight - 0.1 * (grad_w + 0.01 * weight))
    assert torch.allclose(net[0].bias, bias - 0.1 * grad_b)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_settings_an_optimizer_does_not_take_are_config_errors(name):
    for key, value in SPECIFIC.items():
        if key in OPTIMIZERS[name].settings:
            continue
        value = list(value) if isinstance(value, tuple) else value
        with pytest.raises(ConfigError, match=rf"train\.optim: optimizer '{name}' does not take '{key}'"):
            build_config(StageConfig, {"stage": "pnet", "train": {"optim": {"name": name, key: value}}})
    # and the ones it takes are accepted
    taken = {key: list(v) if isinstance(v, tuple) else v for key, v in _taken_settings(name).items()}
    config = build_config(StageConfig, {"stage": "pnet", "train": {"optim": {"name": name, **taken}}})
    assert config.train.optim.name == name


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_optimizers_need_positive_momentum(name):
    with pytest.raises(ValueError, match="needs momentum > 0"):
        check_optimizer_settings(name, {"momentum": 0.0})
    assert build_optimizer(PNet(), name, lr=0.1).param_groups[0]["momentum"] == 0.9


# ------------------------------------------------------------------------------ schedules

EPOCHS, STEPS = 6, 5
SCHEDULE_SETTINGS = {
    "constant": {},
    "step": {"step_epochs": 2, "gamma": 0.5},
    "multistep": {"milestones": (1, 4), "gamma": 0.3},
    "exponential": {"gamma": 0.8},
    "cosine": {"min_lr_factor": 0.1},
    "plateau": {"gamma": 0.5, "patience": 1, "threshold": 0.01},
}
#: a validation metric per epoch that improves, stalls, improves a little (below threshold) ...
PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.899, 0.7, 0.71]


def _torch_reference(name: str, optimizer: torch.optim.Optimizer):
    """torch's scheduler for ``name`` and whether it steps per optimizer step or per epoch."""
    s = SCHEDULE_SETTINGS[name]
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0), "epoch"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, s["step_epochs"], s["gamma"]), "epoch"
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(s["milestones"]), s["gamma"]), "epoch"
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, s["gamma"]), "epoch"
    if name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, EPOCHS * STEPS, eta_min=base * s["min_lr_factor"]
        ), "step"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, "min", factor=s["gamma"], patience=s["patience"], threshold=s["threshold"]
    ), "plateau"


def test_every_schedule_has_a_reference():
    assert set(SCHEDULE_SETTINGS) == set(SCHEDULE_NAMES)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_schedule_matches_torch_scheduler(name):
    schedule = LRSchedule(name, EPOCHS, **SCHEDULE_SETTINGS[name])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    reference, stepping = _torch_reference(name, optimizer)
    step = 0
    for epoch in range(EPOCHS):
        for index in range(STEPS):
            ours = 0.1 * schedule.factor(epoch, index / STEPS, step)
            assert math.isclose(ours, optimizer.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-15), (epoch, index)
            optimizer.step()
            if stepping == "step":
                reference.step()
            step += 1
        if stepping == "epoch":
            reference.step()
        elif stepping == "plateau":
            reference.step(PLATEAU_METRICS[epoch])
            schedule.report(PLATEAU_METRICS[epoch])


def test_plateau_reduces_and_its_state_round_trips():
    schedule = LRSchedule("plateau", EPOCHS, **SCHEDULE_SETTINGS["plateau"])
    for metric in PLATEAU_METRICS[:3]:  # 0.95 is one bad epoch: within patience
        schedule.report(metric)
    assert schedule.factor(3, 0.0, 100) == 1.0
    schedule.report(PLATEAU_METRICS[3])  # 0.899 is not 1% better than 0.9: the second bad epoch
    assert schedule.factor(4, 0.0, 100) == 0.5
    copy = LRSchedule("plateau", EPOCHS, **SCHEDULE_SETTINGS["plateau"])
    copy.load_state_dict(schedule.state_dict())
    for metric in PLATEAU_METRICS[4:]:
        schedule.report(metric)
        copy.report(metric)
        assert copy.factor(5, 0.0, 100) == schedule.factor(5, 0.0, 100)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_warmup_ramps_linearly_on_top_of_every_schedule(name):
    plain = LRSchedule(name, EPOCHS, **SCHEDULE_SETTINGS[name])
    warm = LRSchedule(name, EPOCHS, warmup_steps=4, warmup_start_factor=0.2, **SCHEDULE_SETTINGS[name])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.2, total_iters=4)
    for step in range(8):
        ramp = optimizer.param_groups[0]["lr"]
        assert math.isclose(warm.factor(0, step / 8, step), ramp * plain.factor(0, step / 8, step), rel_tol=1e-12)
        optimizer.step()
        linear.step()


def test_schedule_settings_are_checked_per_schedule():
    with pytest.raises(ConfigError, match="schedule 'cosine' does not take 'gamma'"):
        build_config(StageConfig, {"stage": "pnet", "train": {"schedule": {"name": "cosine", "gamma": 0.5}}})
    with pytest.raises(ConfigError, match="schedule 'step' needs 'step_epochs'"):
        build_config(StageConfig, {"stage": "pnet", "train": {"schedule": {"name": "step"}}})
    with pytest.raises(ConfigError, match="increasing milestones"):
        build_config(StageConfig, {"stage": "pnet", "train": {"schedule": {"name": "multistep", "milestones": [5, 2]}}})


def test_train_section_types_are_strict():
    for override, message in (
        ("train.batch_size=fll", "expected int or 'full'"),
        ("train.optim.lrr=0.1", "unknown key 'train.optim.lrr'; did you mean lr"),
        ("train.optim.lr=-1", "train.optim.lr: must be > 0.0"),
        ("train.loss.ohem_keep=0", "train.loss.ohem_keep: must be > 0.0"),
        ("train.dropout=0.95", "train.dropout: must be <= 0.9"),
        ("train.dropout=0.25", "train.dropout must be 0 for pnet"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config(StageConfig, {"stage": "pnet"}, [override])
    assert build_config(StageConfig, {"stage": "pnet"}, ["train.batch_size=full"]).train.batch_size == "full"
