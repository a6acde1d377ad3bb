"""The whole pipeline on a tiny slice of the kit: every step runs, a second run skips them all,
and a lost output is redone alone."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mtcnn.detect.cascade import MTCNN
from mtcnn.errors import ConfigError, DataError
from mtcnn.model.weights import load_net
from mtcnn.pipeline import Pipeline, load_pipeline_config, run_pipeline

REPO = Path(__file__).resolve().parents[1]


def tiny_stage(stage: str, kit: Path, reference_weights: Path) -> list[str]:
    """Overrides making one stage's prep and training take seconds: a few images, a few steps,
    starting from the original weights so that mining with the trained nets finds faces."""
    return [
        f"data.train.faces=[{{format: wider, images: {kit}/widerface/WIDER_train/images, "
        f"annotations: {kit}/widerface/wider_face_split/wider_face_train_bbx_gt.txt}}]",
        f"data.val.faces=[{{format: wider, images: {kit}/widerface/WIDER_val/images, "
        f"annotations: {kit}/widerface/wider_face_split/wider_face_val_bbx_gt.txt}}]",
        f"data.train.landmarks=[{{format: cnn_facepoint, list: {kit}/landmarks/trainImageList.txt}}]",
        f"data.val.landmarks=[{{format: cnn_facepoint, list: {kit}/landmarks/testImageList.txt}}]",
        "prep.limit_images=4",
        "prep.limit_landmark_faces=24",
        f"train.init_weights={reference_weights}/{stage}.pt",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "train.batch_size=32",
        "train.chunk_size=256",
        "train.schedule.warmup_steps=0",
        "train.val_image_count=0",
    ]


@pytest.fixture()
def pipeline_config(kit: Path, reference_weights: Path, tmp_path: Path) -> Path:
    landmark_list = tmp_path / "landmarks.txt"
    lines = (kit / "landmarks" / "testImageList.txt").read_text().splitlines()[:12]
    landmark_list.write_text("".join(f"{kit / 'landmarks' / line}\n" for line in lines))
    document = {
        "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "workers": 1,
        **{
            stage: {
                "config": str(REPO / "configs" / f"{stage}.yaml"),
                "overrides": tiny_stage(stage, kit, reference_weights),
            }
            for stage in ("pnet", "rnet", "onet")
        },
        "evaluate": {"wider_settings": [], "landmark_list": str(landmark_list), "recall_images": 4},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.slow
def test_pipeline_runs_every_step_then_resumes_without_redoing_work(pipeline_config, kit, caplog):
    caplog.set_level(logging.INFO, logger="mtcnn.pipeline")
    summary = run_pipeline(pipeline_config)
    run = Path(yaml.safe_load(pipeline_config.read_text())["run_dir"])
    steps = [step.name for step in Pipeline(load_pipeline_config(pipeline_config)).steps()]
    assert set(summary["seconds"]) == set(steps)

    for stage in ("pnet", "rnet", "onet"):
        assert load_net(run / "weights" / f"{stage}.pt", stage) is not None
        assert (run / "prep" / f"{stage}-train" / "manifest.json").is_file()
    detector = MTCNN(run / "weights", device="cpu")
    assert len(detector.detect(kit / "samples" / "2007_007763.jpg")) > 0
    assert np.isfinite(summary["landmarks"]["nme"]) and summary["landmarks"]["faces"] == 12
    assert set(summary["recall"]) == {"pnet", "rnet"}

    caplog.clear()
    run_pipeline(pipeline_config)
    assert sum("done, skipped" in message for message in caplog.messages) == len(steps)
    assert json.loads((run / "timings.json").read_text()) == summary["seconds"]

    # As if stopped after training R-Net, before its export; and as if the user deleted the
    # recall report to have it measured again. Training continues from last.pt, so its time adds
    # to the time recorded; the recall check starts from nothing, and so does its time.
    (run / "weights" / "rnet.pt").unlink()
    (run / "eval" / "recall-rnet.json").unlink()
    recorded = {**summary["seconds"], "train rnet": 1000.0, "recall after rnet": 1000.0}
    (run / "timings.json").write_text(json.dumps(recorded))
    caplog.clear()
    run_pipeline(pipeline_config)
    redone = [message for message in caplog.messages if message.startswith("== ") and "skipped" not in message]
    assert redone == ["== train rnet", "== recall after rnet"]
    assert (run / "weights" / "rnet.pt").is_file()
    timings = json.loads((run / "timings.json").read_text())
    assert timings["train rnet"] >= 1000.0
    assert timings["recall after rnet"] < 1000.0


@pytest.mark.slow
def test_wider_step_refuses_predictions_of_a_net_replaced_since(kit, reference_weights, tmp_path):
    """The WIDER step's saved predictions record the nets by content: after a net is retrained
    (another file under the same name) they are refused, not mixed with the new net's."""
    from test_wider_eval import write_ground_truth

    from mtcnn.eval.wider_files import DETECTOR_RECORD, load_ground_truth
    from mtcnn.model.weights import packaged_weights_dir

    ground_truth = load_ground_truth(kit / "widerface" / "eval_tools" / "ground_truth")
    document = {
        "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "evaluate": {
            "wider_images": str(kit / "widerface" / "WIDER_val" / "images"),
            "wider_ground_truth": str(write_ground_truth(tmp_path / "gt", ground_truth.images[:2])),
            "landmark_list": None,
            "wider_settings": [{"name": "quick", "min_face_size": 40}],
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    pipeline = Pipeline(load_pipeline_config(path))
    for stage in ("pnet", "rnet", "onet"):
        pipeline.weights(stage).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(packaged_weights_dir() / f"{stage}.pt", pipeline.weights(stage))
    (step,) = [step for step in pipeline.steps() if step.name == "WIDER AP (quick)"]
    step.run()
    saved = pipeline.root / "eval" / "wider-quick"
    record = json.loads((saved / DETECTOR_RECORD).read_text())
    assert record["weights"]["onet"]["sha256"] == hashlib.sha256(pipeline.weights("onet").read_bytes()).hexdigest()
    # O-Net retrained (here: replaced by the original release's) and its report removed to have
    # AP measured again: the predictions of the old O-Net must not be resumed.
    shutil.copy(reference_weights / "onet.pt", pipeline.weights("onet"))
    pipeline.report("wider-quick").unlink()
    with pytest.raises(DataError, match=r"holds predictions of other onet weights: .*onet.pt is not the file"):
        step.run()


def test_pipeline_config_is_strict(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("run_dir: x\nevaluate:\n  wider_setting: []\n")
    with pytest.raises(ConfigError, match=r"unknown key 'evaluate.wider_setting'; did you mean wider_settings"):
        load_pipeline_config(path)
    path.write_text("workers: 0\n")
    with pytest.raises(ConfigError, match="workers: must be >= 1"):
        load_pipeline_config(path)
