"""A training run from a stage config: the config as the commands load it (``--set`` overrides,
or the one saved in a checkpoint), the stores opened and checked, the run folder guarded, and
:class:`~mtcnn.train.trainer.Trainer` started or resumed."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from mtcnn.config import DEFAULT_TASK_WEIGHTS, StageConfig, build_config, load_config, to_dict, write_config
from mtcnn.data.store import SampleStore
from mtcnn.errors import ConfigError, DataError, MtcnnError
from mtcnn.model.checkpoint import load_checkpoint, training_state
from mtcnn.model.device import resolve_device
from mtcnn.model.nets import build_net
from mtcnn.model.weights import load_net, stage_weights_file
from mtcnn.spec import INPUT_SIZES
from mtcnn.train.batches import SampleTensors
from mtcnn.train.distributed import init_distributed
from mtcnn.train.trainer import LAST_CHECKPOINT, Trainer, TrainResult

log = logging.getLogger(__name__)

#: The resolved config a run folder keeps beside its checkpoints.
CONFIG_NAME = "config.yaml"


def train_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """``--set`` overrides with ``train.`` put before keys that name no top-level section, so
    that ``optim.lr=0.01`` means ``train.optim.lr=0.01``."""
    sections = {item.name for item in dataclasses.fields(StageConfig)}
    return [
        text if text.split("=", 1)[0].split(".", 1)[0].strip() in sections else f"train.{text}" for text in overrides
    ]


def load_train_config(
    stage: str, config_path: Path | None, overrides: list[str] | tuple[str, ...] = (), resume: Path | None = None
) -> StageConfig:
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
    return (
        train.train_store or Path("runs/prep") / f"{config.stage}-train",
        train.val_store or Path("runs/prep") / f"{config.stage}-val",
    )


def open_stage_store(path: Path, stage: str, what: str) -> SampleStore:
    """Open a store and check it holds crops of ``stage``'s input size."""
    store = SampleStore.open(path)
    expected = INPUT_SIZES[stage]
    if store.size != expected:
        raise DataError(
            f"{path}: the {what} store holds {store.size} px crops (a {store.stage} store); "
            f"{stage} trains on {expected} px crops"
        )
    if len(store) == 0:
        raise DataError(f"{path}: the {what} store is empty")
    return store


def resolve_config(config: StageConfig, out_dir: Path | None) -> StageConfig:
    """``config`` with every default that depends on the stage written out (store paths, run
    folder, task weights), as it goes into the run folder and the checkpoints."""
    train_store, val_store = store_paths(config)
    train = config.train
    resolved = dataclasses.replace(
        train,
        train_store=train_store,
        val_store=val_store,
        out_dir=out_dir or train.out_dir or Path("runs/train") / config.stage,
        loss=dataclasses.replace(
            train.loss, task_weights=train.loss.task_weights or DEFAULT_TASK_WEIGHTS[config.stage]
        ),
    )
    return dataclasses.replace(config, train=resolved)


def run_training(
    config: StageConfig,
    device: str = "auto",
    out_dir: Path | None = None,
    resume: Path | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``config.stage``'s net as ``config.train`` says; the console scripts call this.

    ``out_dir`` overrides ``train.out_dir`` (when resuming, the default is the checkpoint's
    folder). ``resume`` continues from a ``last.pt``/``best.pt`` of an earlier run, exactly.
    Raises :class:`MtcnnError` subclasses for bad stores, checkpoints or a diverging loss.
    """
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
            raise MtcnnError(
                f"{resume}: was trained with {saved_optimizer}, this config uses {train.optim.name}; "
                "a resumed run keeps its optimizer (start a new run from these weights with "
                f"--set train.init_weights={resume})"
            )
    elif (run_dir / LAST_CHECKPOINT).exists():
        raise MtcnnError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir / LAST_CHECKPOINT} "
            "or choose another --out-dir"
        )

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
        log.info(
            "%s: %d training samples %s from %s%s",
            config.stage,
            len(train_data),
            train_store.counts(),
            train_path,
            f", {len(val_data)} validation samples from {val_path}" if val_data is not None else "",
        )

    torch.manual_seed(train.seed)
    net = build_net(config.stage, train.dropout, train.dropout_heads)
    if init_file is not None:
        net.load_state_dict(load_net(init_file, config.stage).state_dict())
    if distributed.is_main:
        write_config(config, run_dir / CONFIG_NAME)
    trainer = Trainer(
        config.stage, net, train, train_data, val_data, target, run_dir, to_dict(config), distributed, show_progress
    )
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint, resume)
        if distributed.is_main:
            log.info("resuming %s from %s after epoch %d", config.stage, resume, trainer.epoch)
    try:
        return trainer.fit()
    finally:
        if distributed.active:
            dist.destroy_process_group()
