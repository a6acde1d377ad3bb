"""The training loop on real kit crops: it learns, resumes exactly, stops on a non-finite loss,
full-batch gradients do not depend on chunking, and it logs what TensorBoard should show."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mtcnn.config import StageConfig, build_config, read_yaml
from mtcnn.data.store import SampleStore
from mtcnn.errors import DataError, MtcnnError
from mtcnn.model.checkpoint import load_checkpoint
from mtcnn.model.nets import NetOutput, build_net
from mtcnn.model.weights import load_net, packaged_weights_dir
from mtcnn.train.batches import SampleTensors
from mtcnn.train.run import load_train_config, run_training
from mtcnn.train.trainer import LAST_CHECKPOINT, NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny" / "pnet.yaml"


def _config(kit_store, tmp_path: Path, *overrides: str) -> StageConfig:
    return load_train_config(
        "pnet",
        TINY,
        [
            f"train_store={kit_store('pnet', 'train')}",
            f"val_store={kit_store('pnet', 'val')}",
            f"out_dir={tmp_path}",
            *overrides,
        ],
    )


def _tensors(path: Path) -> SampleTensors:
    return SampleTensors.from_store(SampleStore.open(path))


def test_training_learns_every_task_on_real_crops(kit_store, tmp_path):
    config = _config(kit_store, tmp_path, "epochs=4", "val_image_count=0").train
    torch.manual_seed(0)
    trainer = Trainer(
        "pnet",
        build_net("pnet"),
        config,
        _tensors(kit_store("pnet", "train")),
        _tensors(kit_store("pnet", "val")),
        "cpu",
        tmp_path,
        {"stage": "pnet"},
        show_progress=False,
    )
    before = trainer.validate()
    result = trainer.fit()
    after = result.final_metrics
    assert result.epochs_done == 4 and len(result.history) == 4
    assert after["val_loss"] < 0.5 * before["val_loss"]
    assert after["val_f1"] > 0.5  # calling everything a face gives 0.4 here, nothing a face 0
    assert after["val_box_error"] < 0.9 * before["val_box_error"]
    assert after["val_landmark_error"] < 0.3 * before["val_landmark_error"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["training"]["best"]["epoch"] == result.best_epoch
    assert best["training"]["best"]["value"] == min(entry["val_loss"] for entry in result.history)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_two_epochs_equal_one_plus_resume_plus_one_bit_for_bit(kit_store, tmp_path):
    # momentum state, a step schedule and warm-up crossing the epoch boundary all have to carry over
    extra = (
        "optim.name=momentum",
        "optim.lr=0.02",
        "optim.momentum=0.9",
        "schedule.name=step",
        "schedule.step_epochs=1",
        "schedule.gamma=0.5",
        "schedule.warmup_steps=15",
        "val_image_count=0",
    )
    straight = run_training(_config(kit_store, tmp_path / "straight", "epochs=2", *extra), "cpu", show_progress=False)
    run_training(_config(kit_store, tmp_path / "split", "epochs=1", *extra), "cpu", show_progress=False)
    resumed_config = _config(kit_store, tmp_path / "split", "epochs=2", *extra)
    resumed = run_training(resumed_config, "cpu", resume=tmp_path / "split" / LAST_CHECKPOINT, show_progress=False)
    a, b = _weights(tmp_path / "straight" / LAST_CHECKPOINT), _weights(tmp_path / "split" / LAST_CHECKPOINT)
    assert all(torch.equal(a[key], b[key]) for key in a)
    opt_a = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)["training"]["optimizer"]["state"]
    opt_b = load_checkpoint(tmp_path / "split" / LAST_CHECKPOINT)["training"]["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]) for k in opt_a)
    assert straight.history[1]["val_loss"] == resumed.history[1]["val_loss"]
    assert resumed.history[0] == straight.history[0] | {"train_seconds": resumed.history[0]["train_seconds"]}


def test_resume_refuses_a_weights_only_file_and_a_run_folder_is_not_overwritten(kit_store, tmp_path):
    config = _config(kit_store, tmp_path / "run", "epochs=1", "val_image_count=0")
    run_training(config, "cpu", show_progress=False)
    with pytest.raises(MtcnnError, match="already holds a run; continue it with --resume"):
        run_training(config, "cpu", show_progress=False)
    weights_only = tmp_path / "weights.pt"
    torch.save(
        {
            "format": "mtcnn-checkpoint",
            "format_version": 1,
            "stage": "pnet",
            "model": build_net("pnet").state_dict(),
            "config": {},
        },
        weights_only,
    )
    with pytest.raises(MtcnnError, match="weights only, no training state"):
        run_training(config, "cpu", resume=weights_only, show_progress=False)


class _PoisonedAfter(torch.nn.Module):
    """A net whose outputs turn NaN after ``calls`` training forwards: a diverging run."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.inner = build_net("pnet")
        self.stage = "pnet"
        self.calls = calls

    def forward(self, pixels):
        output = self.inner(pixels)
        if self.training:
            self.calls -= 1
            if self.calls < 0:
                return NetOutput(output.logits * torch.nan, output.box, output.landmarks)
        return output


def test_non_finite_loss_stops_naming_step_and_parts_and_keeps_last_good_checkpoint(kit_store, tmp_path):
    config = _config(kit_store, tmp_path, "epochs=3", "val_image_count=0").train
    train, val = _tensors(kit_store("pnet", "train")), _tensors(kit_store("pnet", "val"))
    steps_per_epoch = len(train) // 70
    net = _PoisonedAfter(steps_per_epoch + 3)  # the 4th step of epoch 2 diverges
    trainer = Trainer("pnet", net, config, train, val, "cpu", tmp_path, {"stage": "pnet"}, show_progress=False)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert f"step {steps_per_epoch + 4} (epoch 2, batch 4 of {steps_per_epoch})" in message
    assert "classification=nan" in message and "box=" in message and "landmark=" in message
    assert f"last good checkpoint is {tmp_path / LAST_CHECKPOINT} (epoch 1)" in message
    saved = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    assert saved["training"]["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in saved["model"].values())


def _one_full_batch_step(train: SampleTensors, chunk_size: int, tmp_path: Path, kit_store) -> dict:
    config = _config(
        kit_store,
        tmp_path,
        "batch_size=full",
        f"chunk_size={chunk_size}",
        "loss.ohem_keep=1.0",
        "augment.flip=false",
        "augment.brightness=0",
        "augment.contrast=0",
        "augment.saturation=0",
        "optim.name=sgd",
        "optim.lr=0.1",
        "optim.weight_decay=0",
    ).train
    torch.manual_seed(0)
    trainer = Trainer("pnet", build_net("pnet"), config, train, None, "cpu", show_progress=False)
    trainer.full_batch_step(trainer.planner.epoch_plan(0)[0])
    return trainer.net.state_dict()


def test_full_batch_gradient_does_not_depend_on_the_chunk_size(kit_store, tmp_path):
    train = _tensors(kit_store("pnet", "train"))
    whole = _one_full_batch_step(train, len(train), tmp_path, kit_store)
    chunked = _one_full_batch_step(train, 97, tmp_path, kit_store)
    assert all(torch.allclose(whole[key], chunked[key], atol=1e-6) for key in whole)
    torch.manual_seed(0)
    initial = build_net("pnet").state_dict()
    assert any(not torch.equal(initial[key], whole[key]) for key in whole)


def test_store_of_the_wrong_crop_size_is_an_error(kit_store, tmp_path):
    config = load_train_config(
        "pnet",
        TINY,
        [f"train_store={kit_store('rnet', 'train')}", f"val_store={kit_store('pnet', 'val')}", f"out_dir={tmp_path}"],
    )
    with pytest.raises(DataError, match=r"holds 24 px crops \(a rnet store\); pnet trains on 12 px crops"):
        run_training(config, "cpu", show_progress=False)


def test_early_stop_when_the_metric_stalls(kit_store, tmp_path):
    config = _config(
        kit_store,
        tmp_path,
        "epochs=6",
        "optim.lr=1e-12",
        "best_metric=val_accuracy",
        "early_stop_patience=2",
        "val_image_count=0",
    )
    result = run_training(config, "cpu", show_progress=False)
    assert result.stopped_early and result.epochs_done == 3 and result.best_epoch == 1


def test_no_epoch_before_best_from_epoch_becomes_best(kit_store, tmp_path):
    # a near-zero rate keeps val_accuracy flat: without the setting epoch 1 stays best and patience
    # 2 would stop the run after epoch 3 (the test above); here epochs 1-2 are not eligible, so epoch
    # 3 is best and the patience runs out after epoch 5
    config = _config(
        kit_store,
        tmp_path,
        "epochs=6",
        "optim.lr=1e-12",
        "best_metric=val_accuracy",
        "best_from_epoch=3",
        "early_stop_patience=2",
        "val_image_count=0",
    )
    result = run_training(config, "cpu", show_progress=False)
    assert result.best_epoch == 3 and result.stopped_early and result.epochs_done == 5
    assert load_checkpoint(tmp_path / "best.pt")["training"]["epoch"] == 3
    # a run shorter than best_from_epoch still gets a best.pt: its last epoch
    short = _config(
        kit_store,
        tmp_path / "short",
        "epochs=2",
        "optim.lr=1e-12",
        "best_metric=val_accuracy",
        "best_from_epoch=19",
        "val_image_count=0",
    )
    assert run_training(short, "cpu", show_progress=False).best_epoch == 2
    assert load_checkpoint(tmp_path / "short" / "best.pt")["training"]["epoch"] == 2


def test_tensorboard_gets_every_part_metric_image_and_hparams(kit_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(_config(kit_store, tmp_path, "epochs=1", "grad_clip_norm=5.0"), "cpu", show_progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/loss_classification",
        "train/loss_box",
        "train/loss_landmark",
        "train/accuracy",
        "train/lr",
        "train/grad_norm",
        "train/ohem_kept_fraction",
        "train/samples_per_s",
        "val/loss",
        "val/accuracy",
        "val/recall",
        "val/precision",
        "val/box_error",
        "val/landmark_error",
    ):
        assert tag in scalars, tag
    assert "val/crops" in events.Tags()["images"]
    kept = [event.value for event in events.Scalars("train/ohem_kept_fraction")]
    assert all(0.69 < value < 0.75 for value in kept)
    norms = [event.value for event in events.Scalars("train/grad_norm")]
    assert all(value > 0 for value in norms)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert {"optimizer", "lr", "batch_size", "schedule"} <= set(start.session_start_info.hparams)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {info.name.tag for info in experiment.experiment.metric_infos}
    assert {"hparam/val_recall", "hparam/val_accuracy", "hparam/best_val_loss"} <= metrics


def test_resolved_config_is_written_and_stored_in_every_checkpoint(kit_store, tmp_path):
    config = _config(kit_store, tmp_path, "epochs=1", "val_image_count=0")
    run_training(config, "cpu", show_progress=False)
    written = read_yaml(tmp_path / "config.yaml")
    assert written["train"]["loss"]["task_weights"] == [1.0, 0.5, 0.5]
    assert written["train"]["train_store"] == str(kit_store("pnet", "train"))
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(tmp_path / name)["config"] == written
    rebuilt = build_config(StageConfig, written)
    assert dataclasses.asdict(rebuilt.train.optim) == dataclasses.asdict(config.train.optim)


def test_resume_with_another_optimizer_is_refused_with_the_way_out(kit_store, tmp_path):
    run_training(_config(kit_store, tmp_path, "epochs=1", "val_image_count=0"), "cpu", show_progress=False)
    other = _config(kit_store, tmp_path, "epochs=2", "optim.name=sgd", "optim.momentum=null")
    with pytest.raises(MtcnnError, match=r"was trained with adam, this config uses sgd.*init_weights="):
        run_training(other, "cpu", resume=tmp_path / LAST_CHECKPOINT, show_progress=False)


def test_gradient_clipping_bounds_the_update(kit_store, tmp_path):
    config = _config(
        kit_store, tmp_path, "optim.name=sgd", "optim.lr=1.0", "optim.weight_decay=0", "grad_clip_norm=0.001"
    ).train
    torch.manual_seed(0)
    trainer = Trainer(
        "pnet", build_net("pnet"), config, _tensors(kit_store("pnet", "train")), None, "cpu", show_progress=False
    )
    before = torch.cat([p.detach().flatten().clone() for p in trainer.net.parameters()])
    _, norm = trainer.train_step(trainer.next_batch(trainer.planner.epoch_plan(0)[0]))
    after = torch.cat([p.detach().flatten() for p in trainer.net.parameters()])
    assert float(norm) > 0.01  # the raw gradient was far larger than the limit ...
    assert float((after - before).norm()) == pytest.approx(0.001, rel=1e-3)  # ... the step is lr x limit


def test_configured_dropout_reaches_the_trained_net(kit_store, tmp_path, monkeypatch):
    built = []

    def recording_build_net(stage: str, dropout: float = 0.0, dropout_heads: str = "all") -> torch.nn.Module:
        net = build_net(stage, dropout, dropout_heads)
        built.append(net)
        return net

    monkeypatch.setattr("mtcnn.train.run.build_net", recording_build_net)
    config = load_train_config(
        "rnet",
        TINY.parent / "rnet.yaml",
        [
            f"train_store={kit_store('rnet', 'train')}",
            f"val_store={kit_store('rnet', 'val')}",
            f"out_dir={tmp_path}",
            "epochs=1",
            "dropout=0.3",
            "dropout_heads=classification",
            "val_image_count=0",
        ],
    )
    run_training(config, "cpu", show_progress=False)
    assert [(net.dropout.p, net.dropout_heads) for net in built] == [(0.3, "classification")]
    saved = load_checkpoint(tmp_path / LAST_CHECKPOINT)["config"]["train"]
    assert (saved["dropout"], saved["dropout_heads"]) == (0.3, "classification")


def test_init_weights_shipped_starts_from_the_package_weights(kit_store, tmp_path):
    # A vanishing rate leaves the weights where they started, so the saved net shows the start.
    config = _config(
        kit_store,
        tmp_path,
        "epochs=1",
        "steps_per_epoch=2",
        "init_weights=shipped",
        "optim.name=sgd",
        "optim.lr=1e-12",
        "optim.weight_decay=0",
        "val_image_count=0",
    )
    run_training(config, "cpu", show_progress=False)
    trained = load_net(tmp_path / LAST_CHECKPOINT, "pnet").state_dict()
    shipped = load_net(packaged_weights_dir() / "pnet.pt", "pnet").state_dict()
    assert trained.keys() == shipped.keys()
    for name, value in shipped.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=name)
    fresh = build_net("pnet").state_dict()
    assert not torch.allclose(fresh["conv1.weight"], shipped["conv1.weight"])  # the check above can fail


def test_a_missing_init_weights_file_fails_before_the_stores_load(kit_store, tmp_path, monkeypatch):
    def no_store(*args, **kwargs):
        raise AssertionError("the stores were opened before the weights file was checked")

    monkeypatch.setattr("mtcnn.train.run.open_stage_store", no_store)
    config = _config(kit_store, tmp_path, f"init_weights={tmp_path / 'nowhere.pt'}")
    with pytest.raises(MtcnnError, match=r"^train\.init_weights: .*nowhere\.pt: no such file$"):
        run_training(config, "cpu", show_progress=False)


def test_an_init_weights_file_of_another_stage_fails_before_the_stores_load(kit_store, tmp_path, monkeypatch):
    def no_store(*args, **kwargs):
        raise AssertionError("the stores were opened before the weights file was checked")

    monkeypatch.setattr("mtcnn.train.run.open_stage_store", no_store)
    onet = packaged_weights_dir() / "onet.pt"
    config = _config(kit_store, tmp_path, f"init_weights={onet}")
    with pytest.raises(MtcnnError, match=r"^train\.init_weights: .*onet\.pt: holds O-Net weights, expected P-Net$"):
        run_training(config, "cpu", show_progress=False)
