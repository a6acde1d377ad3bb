"""A training run from a stage config: the config as the commands load it (``--set`` overrides,
or the one saved in a checkpoint), the stores opened and checked, the run folder guarded (a new
run never writes over an old one, a resume never over later work), and
:class:`~mtcnn.train.trainer.Trainer` started or resumed with the torch thread count it ran with."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from mtcnn.atomic import remove_stale_temporaries
from mtcnn.config import DEFAULT_TASK_WEIGHTS, StageConfig, build_config, load_config, to_dict, write_config
from mtcnn.data.store import SampleStore
from mtcnn.errors import ConfigError, DataError, MtcnnError, WeightsError
from mtcnn.model.checkpoint import load_checkpoint, training_state
from mtcnn.model.device import resolve_device
from mtcnn.model.nets import build_net
from mtcnn.model.weights import load_net, stage_weights_file
from mtcnn.spec import INPUT_SIZES
from mtcnn.train.batches import SampleTensors
from mtcnn.train.distributed import DistributedContext, init_distributed
from mtcnn.train.trainer import LAST_CHECKPOINT, Trainer, TrainResult

log = logging.getLogger(__name__)

#: The resolved config a run folder keeps beside its checkpoints.
CONFIG_NAME = "config.yaml"
#: GPU memory a run keeps free beyond the stores it copies there: the CUDA context, the net,
#: its optimizer state and a batch's activations (O-Net keeps about 1 MB a sample for the
#: backward pass in float32, so a 512-sample batch about 0.5 GB; full-batch chunks more).
DEVICE_RESERVE_BYTES = 2 << 30


class RunFolderError(MtcnnError):
    """The run folder holds work that this run would overwrite."""


def check_stores_fit(stores: list[SampleStore], device: torch.device) -> None:
    """Refuse, with a :class:`ConfigError` naming ``train.store_on_device``, to copy ``stores``
    onto a CUDA ``device`` whose free memory cannot hold them and :data:`DEVICE_RESERVE_BYTES`:
    one line before the copy instead of an out-of-memory traceback in it (or in the first step).
    Under torchrun every rank copies the stores onto its own GPU and checks that one."""
    if device.type != "cuda":
        return
    needed = sum(store.nbytes for store in stores)
    free, _ = torch.cuda.mem_get_info(device)
    if needed + DEVICE_RESERVE_BYTES > free:
        gib = 1 << 30
        raise ConfigError(
            f"train.store_on_device: the stores take {needed / gib:.2f} GiB but {device} has "
            f"{free / gib:.2f} GiB free, and training keeps {DEVICE_RESERVE_BYTES / gib:.0f} GiB of it for the "
            "net and its activations; set train.store_on_device=false to gather batches from RAM"
        )


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


def check_no_later_work(resume: Path, checkpoint: dict, run_dir: Path) -> None:
    """Refuse to resume from ``resume`` into ``run_dir`` when the folder's ``last.pt`` is another
    checkpoint, of a later epoch (or unreadable): the resumed run would overwrite it and the
    history of the epochs after ``resume`` (``--resume best.pt`` into its own folder)."""
    last = run_dir / LAST_CHECKPOINT
    if not last.exists() or last.samefile(resume):
        return
    epoch = int(checkpoint["training"]["epoch"])
    try:
        later = load_checkpoint(last).get("training", {}).get("epoch")
    except WeightsError:
        later = None
    if isinstance(later, int) and later <= epoch:
        return
    state = f"is at epoch {later}" if isinstance(later, int) else "is another checkpoint, not readable"
    raise RunFolderError(
        f"{resume} is from epoch {epoch}, but {last} {state}: resuming into {run_dir} would overwrite it "
        f"and the history after epoch {epoch}; resume from {last}, or pass --out-dir to branch off into another folder"
    )


def use_threads(threads: int | None, checkpoint: dict | None, resume: Path | None, announce: bool = True) -> None:
    """Set torch's CPU thread count: ``threads``, or when resuming without it the count the
    checkpoint was trained with (CPU results depend on it to the last bit), saying so when
    ``announce``. Checkpoints written before the count was recorded leave torch's choice."""
    saved = checkpoint["training"].get("threads") if checkpoint is not None else None
    if threads is not None:
        if threads < 1:
            raise MtcnnError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
        if saved is not None and saved != threads and announce:
            log.warning(
                "%s was trained with %d torch threads, this run uses %d: it may differ from an unbroken run "
                "in the last bits",
                resume,
                saved,
                threads,
            )
    elif saved is not None:
        torch.set_num_threads(int(saved))
        if announce:
            log.info(
                "resuming with %d torch thread%s, the count %s was trained with (--threads sets another)",
                saved,
                "" if saved == 1 else "s",
                resume,
            )


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


def seed_ranks(seed: int, distributed: DistributedContext) -> None:
    """Under ``torchrun``, give each rank its own stream of the global generators (dropout): with
    one seed every rank would drop the same units of its share of the batch. The nets were made
    from ``seed`` on every rank before this (and DDP starts them from rank 0's weights anyway). A
    single process keeps its stream as it is, so single-process runs are reproduced bit for bit."""
    if distributed.active:
        torch.manual_seed(seed + distributed.rank * 1_000_003)


def run_training(
    config: StageConfig,
    device: str = "auto",
    out_dir: Path | None = None,
    resume: Path | None = None,
    show_progress: bool = True,
    threads: int | None = None,
) -> TrainResult:
    """Train ``config.stage``'s net as ``config.train`` says; the console scripts call this.

    ``out_dir`` overrides ``train.out_dir`` (when resuming, the default is the checkpoint's
    folder). ``resume`` continues from a ``last.pt``/``best.pt`` of an earlier run, exactly: with
    the checkpoint's random state and, unless ``threads`` is given, its torch thread count. A
    resume into a folder whose ``last.pt`` is later than ``resume`` is refused.
    ``threads`` sets torch's CPU thread count (None: torch's choice, or the checkpoint's).
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
        check_no_later_work(Path(resume), checkpoint, run_dir)
    elif (run_dir / LAST_CHECKPOINT).exists():
        raise RunFolderError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir / LAST_CHECKPOINT} "
            "or choose another --out-dir"
        )

    use_threads(threads, checkpoint, resume, announce=distributed.is_main)

    init_state = None
    if train.init_weights is not None and checkpoint is None:
        # read and checked (file, format, stage) before the stores load, which can take minutes
        init_file = stage_weights_file(train.init_weights, config.stage)
        if not init_file.is_file():
            raise MtcnnError(f"train.init_weights: {init_file}: no such file")
        try:
            init_state = load_net(init_file, config.stage).state_dict()
        except WeightsError as exc:
            raise WeightsError(f"train.init_weights: {exc}") from None

    train_path, val_path = Path(train.train_store), Path(train.val_store)
    train_store = open_stage_store(train_path, config.stage, "training")
    val_store = open_stage_store(val_path, config.stage, "validation") if train.validate else None
    store_device = target if train.store_on_device else torch.device("cpu")
    check_stores_fit([store for store in (train_store, val_store) if store is not None], store_device)

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
    if init_state is not None:
        net.load_state_dict(init_state)
    seed_ranks(train.seed, distributed)
    if distributed.is_main:
        remove_stale_temporaries(run_dir)  # checkpoints a kill left half-written
        write_config(config, run_dir / CONFIG_NAME)
    trainer = Trainer(
        config.stage, net, train, train_data, val_data, target, run_dir, to_dict(config), distributed, show_progress
    )
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint, resume)
        if distributed.is_main:
            log.info("resuming %s from %s after epoch %d", config.stage, resume, trainer.epoch)
    finished = False
    try:
        result = trainer.fit()
        finished = True
        return result
    finally:
        if distributed.active:
            if finished:
                # No rank tears the group down while another may still use it: once, in the
                # torchrun test, rank 1 aborted at exit after its last epoch ("terminate called
                # without an active exception") while rank 0 was still finishing.
                dist.barrier()
            dist.destroy_process_group()
