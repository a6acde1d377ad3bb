"""GPU code paths caught on the CPU: what a one-GPU machine accepts as a device, a float16 run
resumed from a checkpoint written without loss scaling, validation under mixed precision, and the
ranks of a torchrun job drawing one dropout stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine import _config, _tensors

from mtcnn.model.checkpoint import load_checkpoint
from mtcnn.model.device import resolve_device
from mtcnn.model.nets import build_net
from mtcnn.train.distributed import DistributedContext
from mtcnn.train.run import run_training, seed_ranks
from mtcnn.train.trainer import LAST_CHECKPOINT, Trainer


def test_a_cuda_index_past_the_machines_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:3' was asked for, but PyTorch sees 1 CUDA GPU\(s\): cuda:0 to cuda:0"):
        resolve_device("cuda:3")


def test_float16_loss_scaling_resumes_a_run_written_without_it(kit_store, tmp_path: Path, caplog):
    config = _config(kit_store, tmp_path, "epochs=1", "val_image_count=0")
    run_training(config, "cpu", show_progress=False)  # on the CPU: no loss scaling, an empty scaler state
    checkpoint = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    assert checkpoint["training"]["scaler"] == {}
    train = _tensors(kit_store("pnet", "train"))
    trainer = Trainer("pnet", build_net("pnet"), config.train, train, None, "cpu", show_progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as a float16 run on a GPU has it
    caplog.set_level("INFO", logger="mtcnn.train.trainer")
    trainer.load_state_dict(checkpoint, tmp_path / LAST_CHECKPOINT)  # raised "the source state dict is empty"
    assert trainer.epoch == 1 and trainer.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()
    assert "no float16 loss scaling" in caplog.text


def test_validation_runs_in_float32_even_with_mixed_precision_training(kit_store, tmp_path: Path):
    config = _config(kit_store, tmp_path, "epochs=1")
    data = _tensors(kit_store("pnet", "val"))
    trainer = Trainer("pnet", build_net("pnet"), config.train, data, data, "cpu", show_progress=False)
    plain = trainer.validate()
    trainer.amp_dtype = torch.bfloat16  # as a CUDA run with amp has it (bfloat16 autocast runs on the CPU too)
    assert trainer.validate() == plain


def test_each_rank_of_a_torchrun_job_draws_its_own_dropout():
    def draws(rank: int, world: int) -> torch.Tensor:
        torch.manual_seed(0)
        torch.rand(3)  # what building the net drew
        seed_ranks(0, DistributedContext(rank, world))
        return torch.rand(5)

    torch.manual_seed(0)
    torch.rand(3)
    single = torch.rand(5)
    assert torch.equal(draws(0, 1), single)  # one process: the stream runs on untouched
    ranks = [draws(rank, 2) for rank in range(2)]
    assert not torch.equal(ranks[0], ranks[1])
    assert torch.equal(ranks[1], draws(1, 2))  # and each rank's stream is reproducible


def _broadcast_worker(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # the figures of two ranks differing in the last bit, as reduced-precision kernels can make them
        results[rank] = DistributedContext(rank, 2).from_main({"val_loss": 0.25 + rank * 1e-12})
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_decide_on_rank_zeros_figures(tmp_path: Path):
    manager = torch.multiprocessing.get_context("spawn").Manager()
    results = manager.dict()
    torch.multiprocessing.spawn(_broadcast_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    assert dict(results) == {0: {"val_loss": 0.25}, 1: {"val_loss": 0.25}}
    assert DistributedContext().from_main({"val_loss": 1.0}) == {"val_loss": 1.0}


def test_mining_on_a_gpu_runs_one_process_with_every_thread(kit, monkeypatch, tmp_path: Path, caplog):
    from test_prep import kit_config

    from mtcnn.data import prepare as runner
    from mtcnn.model.weights import packaged_weights_dir

    threads_seen = {}
    monkeypatch.setattr(
        runner, "run_shard", lambda job, task: threads_seen.setdefault(job.device, torch.get_num_threads())
    )
    task = runner.ShardTask(0, runner.SOURCE_FACES, 0, ())
    config = kit_config(kit, "rnet")
    threads = torch.get_num_threads()
    for device in ("cpu", "cuda"):
        runner._run_shard_in_process(runner.PrepJob("rnet", tmp_path, config, "x", device=device), task)
    assert threads_seen == {"cpu": 1, "cuda": threads}  # the CPU side of GPU mining is not starved

    ran = {}
    monkeypatch.setattr(runner, "_run_tasks", lambda job, tasks, workers, total, done: ran.update(workers=workers))
    monkeypatch.setattr(runner, "finish_store", lambda *args, **kwargs: {"count": 0})
    monkeypatch.setattr(runner, "read_shard_meta", lambda out, index: {})
    monkeypatch.setattr(runner, "source_counts", lambda out, indices, sources: {"faces": [], "landmarks": []})
    caplog.set_level("INFO", logger="mtcnn.data.prepare")
    small = kit_config(kit, "rnet", overrides=["prep.limit_images=2", "prep.limit_landmark_faces=2"])
    runner.prepare(
        "rnet", small, tmp_path / "s", workers=2, weights={"pnet": packaged_weights_dir() / "pnet.pt"}, device="cuda"
    )
    assert ran["workers"] == 1 and "mining on cuda: one process" in caplog.text


def test_the_cascade_runs_its_nets_without_tf32_and_gives_back_the_callers_setting(kit, monkeypatch):
    from mtcnn.detect.cascade import MTCNN

    detector = MTCNN(device="cpu")
    seen = {}
    for stage, net in detector.nets.items():
        name = "forward_detect" if stage == "pnet" else "forward"
        run = getattr(net, name)

        def recording(*args, stage=stage, run=run):
            seen[stage] = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
            return run(*args)

        monkeypatch.setattr(net, name, recording)
    # TF32 everywhere, as a caller may have asked for it (PyTorch's default lets cuDNN convolutions use it).
    saved = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        assert len(detector.detect(kit / "samples/2007_007763.jpg")) > 0
        detector.landmarks_in_boxes(kit / "samples/2007_007763.jpg", [[10.0, 10.0, 60.0, 60.0]])
        after = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    assert seen == {stage: ("ieee", "ieee") for stage in ("pnet", "rnet", "onet")}
    assert after == ("tf32", "tf32")


def _full_batch_step(rank: int, world: int, train_store: str, out_dir: str) -> dict[str, torch.Tensor]:
    """The weights after one float16-scaled full-batch step over the whole store in one chunk."""
    from test_engine import TINY

    from mtcnn.train.run import load_train_config

    overrides = [f"train_store={train_store}", f"out_dir={out_dir}", "batch_size=full", "chunk_size=100000"]
    overrides += ["augment.flip=false", "optim.name=sgd", "optim.lr=0.1", "optim.weight_decay=0"]
    config = load_train_config("pnet", TINY, overrides).train
    torch.manual_seed(0)
    train = _tensors(Path(train_store))
    trainer = Trainer(
        "pnet",
        build_net("pnet"),
        config,
        train,
        None,
        "cpu",
        distributed=DistributedContext(rank, world),
        show_progress=False,
    )
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as a float16 run on a GPU has it
    trainer.full_batch_step(trainer.planner.epoch_plan(0)[0])
    return {key: value.clone() for key, value in trainer.net.state_dict().items()}


def _full_batch_worker(rank: int, init_file: str, train_store: str, out_dir: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results[rank] = _full_batch_step(rank, 2, train_store, out_dir)
    finally:
        torch.distributed.destroy_process_group()


def test_a_rank_without_samples_takes_its_part_in_a_float16_full_batch_step(kit_store, tmp_path: Path):
    # One chunk for two ranks: rank 1 has no samples; with loss scaling its scaler had never
    # scaled a loss and its step raised.
    store = str(kit_store("pnet", "train"))
    alone = _full_batch_step(0, 1, store, str(tmp_path))
    manager = torch.multiprocessing.get_context("spawn").Manager()
    results = manager.dict()
    torch.multiprocessing.spawn(
        _full_batch_worker, args=(str(tmp_path / "init"), store, str(tmp_path), results), nprocs=2
    )
    for rank in range(2):
        assert all(torch.equal(results[rank][key], alone[key]) for key in alone)


def test_stores_too_big_for_the_gpus_free_memory_are_refused_before_the_copy(kit_store, tmp_path: Path, monkeypatch):
    from mtcnn.data.store import SampleStore
    from mtcnn.errors import ConfigError
    from mtcnn.train.run import DEVICE_RESERVE_BYTES, check_stores_fit

    stores = [SampleStore.open(kit_store("pnet", split)) for split in ("train", "val")]
    needed = sum(store.nbytes for store in stores)
    assert needed == sum(len(store) * (12 * 12 * 3 + 1 + 4 * 4 + 10 * 4) for store in stores)
    free = {"bytes": needed + DEVICE_RESERVE_BYTES - 1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    # The whole run stops before it copies anything (there is no GPU here to copy to).
    config = _config(kit_store, tmp_path, "epochs=1", "val_image_count=0")
    message = r"^train\.store_on_device: the stores take 0\.00 GiB but cuda has 2\.00 GiB free, .*=false"
    with pytest.raises(ConfigError, match=message):
        run_training(config, "cuda", show_progress=False)
    free["bytes"] += 1
    check_stores_fit(stores, torch.device("cuda"))  # just enough
    free["bytes"] = 0
    check_stores_fit(stores, torch.device("cpu"))  # batches gathered in RAM: no GPU memory asked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_store_check_reads_the_gpus_free_memory():
    from types import SimpleNamespace

    from mtcnn.errors import ConfigError
    from mtcnn.train.run import check_stores_fit

    total = torch.cuda.mem_get_info(torch.device("cuda"))[1]
    check_stores_fit([SimpleNamespace(nbytes=1 << 20)], torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"^train\.store_on_device: .* GiB free"):
        check_stores_fit([SimpleNamespace(nbytes=total)], torch.device("cuda", 0))


def test_a_batch_too_large_for_the_gpus_free_memory_is_refused_in_one_line(monkeypatch):
    from mtcnn.detect import cascade
    from mtcnn.errors import MemoryLimitError

    # Four 12-megapixel photos against 1 GiB free on the GPU: refused before anything is copied.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * 2**30))
    photos = [torch.zeros(3, 3000, 4000) for _ in range(4)]
    names = [f"photo{i}.jpg" for i in range(4)]
    with pytest.raises(MemoryLimitError, match=r"^photo0.jpg and 3 more: detecting in 48.0 megapixels at once"):
        cascade._check_memory_for(photos, names, torch.device("cuda"))
    cascade._check_memory_for(photos[:1], names[:1], torch.device("cuda"))  # one fits: 0.5 GiB
