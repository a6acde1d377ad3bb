"""The whole cascade from data to a measured detector, one resumable step after another.

``mtcnn pipeline --config configs/pipeline.yaml`` runs: prepare P-Net data, train P-Net, check
its recall, prepare R-Net data by mining with it, train R-Net, check recall, prepare O-Net data
with both, train O-Net, then evaluate (WIDER FACE AP at each configured setting, landmark
error). Every step writes under ``run_dir`` and is skipped when its output is complete, so a run
started again after an interruption carries on (preparation keeps finished shards, training
resumes from ``last.pt``). Data paths and each net's recipe come from the stage configs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtcnn.atomic import write_json_atomic
from mtcnn.config import build_config, load_config, read_yaml, setting, to_dict
from mtcnn.errors import ConfigError, MtcnnError
from mtcnn.model.checkpoint import atomic_save, load_checkpoint
from mtcnn.spec import STAGES

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageRun:
    """One net's part of the pipeline."""

    config: Path = setting(doc="the stage's config file (data paths, prep, mining and train sections)")
    overrides: tuple[str, ...] = setting((), doc="key=value overrides applied to that file")


@dataclasses.dataclass(frozen=True)
class EvalSetting:
    """One detector setting to measure WIDER FACE AP at."""

    name: str = setting(doc="a short name: file names and report rows use it")
    min_face_size: float = setting(20.0, low=1.0)
    scale_factor: float = setting(0.709, low=0.0, low_open=True, high=0.99)
    thresholds: tuple[float, float, float] = setting((0.6, 0.7, 0.7), low=0.0, high=1.0)
    mirror_onet: bool = setting(True, doc="average O-Net over each crop and its mirror image")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What the last step measures."""

    wider_images: Path = setting(Path("data/widerface/WIDER_val/images"))
    wider_ground_truth: Path = setting(Path("data/widerface/eval_tools/ground_truth"))
    landmark_list: Path | None = setting(
        Path("data/landmarks/testImageList.txt"), doc="CNN_FacePoint list for landmark error; null to skip"
    )
    wider_settings: tuple[EvalSetting, ...] = setting(
        default_factory=lambda: (EvalSetting("min-face-20"), EvalSetting("paper", 10.0, 0.79, (0.5, 0.5, 0.3)))
    )
    recall_min_size: float = setting(20.0, low=0.0, doc="faces counted by the recall checks (px)")
    recall_images: int | None = setting(None, low=1, doc="validation images for the recall checks; null: all")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """``configs/pipeline.yaml``."""

    run_dir: Path = setting(Path("runs/pipeline"), doc="every step writes below this folder")
    device: str = setting("auto", doc="auto, cpu or cuda")
    workers: int | None = setting(None, low=1, doc="preparation processes; null: one per core")
    threads: int | None = setting(None, low=1, doc="torch CPU threads while training; null: torch's choice")
    pnet: StageRun = setting(default_factory=lambda: StageRun(Path("configs/pnet.yaml")))
    rnet: StageRun = setting(default_factory=lambda: StageRun(Path("configs/rnet.yaml")))
    onet: StageRun = setting(default_factory=lambda: StageRun(Path("configs/onet.yaml")))
    evaluate: EvaluationConfig = setting(default_factory=EvaluationConfig)


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read ``configs/pipeline.yaml`` strictly (unknown keys named with their dotted path)."""
    try:
        return build_config(PipelineConfig, read_yaml(path), overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a run: done when ``is_done()``; ``continues_earlier_work()`` before it runs says
    whether an interrupted attempt left work on disk that this run carries on from."""

    name: str
    is_done: Callable[[], bool]
    run: Callable[[], None]
    continues_earlier_work: Callable[[], bool]


def _runs_in_one_go() -> bool:
    """``continues_earlier_work`` of steps that keep nothing from an interrupted attempt."""
    return False


class Pipeline:
    """The steps of one run folder; :meth:`run` does those not done yet."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.root = Path(config.run_dir)

    # ---------------------------------------------------------------------------- layout

    def store(self, stage: str, split: str) -> Path:
        return self.root / "prep" / f"{stage}-{split}"

    def train_dir(self, stage: str) -> Path:
        return self.root / "train" / stage

    def weights(self, stage: str) -> Path:
        """The trained net, weights only: what ships and what later steps load."""
        return self.root / "weights" / f"{stage}.pt"

    def report(self, name: str) -> Path:
        return self.root / "eval" / f"{name}.json"

    # ---------------------------------------------------------------------------- steps

    def steps(self) -> list[Step]:
        """Every step in order."""
        steps = []
        for index, stage in enumerate(STAGES):
            for split in ("train", "val"):
                steps.append(
                    Step(
                        f"prep {stage} {split}",
                        self._store_done(stage, split),
                        self._prep_step(stage, split, STAGES[:index]),
                        self.store(stage, split).exists,
                    )
                )  # finished shards are kept
            steps.append(
                Step(
                    f"train {stage}",
                    self.weights(stage).is_file,
                    self._train_step(stage),
                    (self.train_dir(stage) / "last.pt").is_file,
                )
            )
            if stage != "onet":
                steps.append(
                    Step(
                        f"recall after {stage}",
                        self.report(f"recall-{stage}").is_file,
                        self._recall_step(STAGES[: index + 1]),
                        _runs_in_one_go,
                    )
                )
        for setting_ in self.config.evaluate.wider_settings:
            steps.append(
                Step(
                    f"WIDER AP ({setting_.name})",
                    self.report(f"wider-{setting_.name}").is_file,
                    self._wider_step(setting_),
                    self._predictions_dir(setting_).exists,
                )
            )
        if self.config.evaluate.landmark_list is not None:
            steps.append(Step("landmark error", self.report("landmarks").is_file, self._landmark_step, _runs_in_one_go))
        return steps

    def run(self) -> dict[str, Any]:
        """Run every step not done yet; returns the summary also written to ``summary.json``."""
        self.root.mkdir(parents=True, exist_ok=True)
        timings = self._read_timings()
        for step in self.steps():
            if step.is_done():
                log.info("== %s: done, skipped", step.name)
                continue
            log.info("== %s", step.name)
            # A step that continues its own earlier work adds to the time recorded for it; one
            # whose outputs were removed starts again from nothing, and so does its time.
            earlier = timings.get(step.name, 0.0) if step.continues_earlier_work() else 0.0
            start = time.perf_counter()
            step.run()
            timings[step.name] = round(time.perf_counter() - start + earlier, 1)
            write_json_atomic(self.root / "timings.json", timings)
        summary = self.summary(timings)
        write_json_atomic(self.root / "summary.json", summary)
        return summary

    def _stage_config(self, stage: str, extra: Sequence[str] = ()):
        run: StageRun = getattr(self.config, stage)
        return load_config(run.config, [*run.overrides, *extra])

    def _store_done(self, stage: str, split: str) -> Callable[[], bool]:
        return lambda: (self.store(stage, split) / "manifest.json").is_file()

    def _prep_step(self, stage: str, split: str, earlier: Sequence[str]) -> Callable[[], None]:
        def run() -> None:
            from mtcnn.data.prepare import default_workers, format_summary, prepare
            from mtcnn.model.device import resolve_device

            summary = prepare(
                stage,
                self._stage_config(stage),
                self.store(stage, split),
                split=split,
                workers=self.config.workers or default_workers(),
                weights={net: self.weights(net) for net in earlier},
                device=str(resolve_device(self.config.device)) if earlier else "cpu",
            )
            log.info("%s", format_summary(summary))

        return run

    def _train_step(self, stage: str) -> Callable[[], None]:
        def run() -> None:
            from mtcnn.train.run import run_training

            out = self.train_dir(stage)
            last = out / "last.pt"
            config = self._stage_config(
                stage,
                [
                    f"train.train_store={self.store(stage, 'train')}",
                    f"train.val_store={self.store(stage, 'val')}",
                    f"train.out_dir={out}",
                ],
            )
            if not last.is_file() and out.exists():
                shutil.rmtree(out)  # a run that stopped before its first checkpoint: nothing to keep
            resume = last if last.is_file() else None
            run_training(config, device=self.config.device, out_dir=out, resume=resume, threads=self.config.threads)
            export_weights(out / "best.pt", self.weights(stage))

        return run

    def _detector(self, stages: Sequence[str], **settings: Any):
        from mtcnn.detect.cascade import MTCNN

        return MTCNN(weights={stage: self.weights(stage) for stage in stages}, device=self.config.device, **settings)

    def _recall_step(self, stages: Sequence[str]) -> Callable[[], None]:
        def run() -> None:
            from mtcnn.data.readers import read_face_source
            from mtcnn.eval.recall import evaluate_stages, format_stage_table

            evaluation = self.config.evaluate
            mining = self._stage_config(STAGES[len(stages)]).mining  # the settings the next stage mines with
            sources = self._stage_config(stages[-1]).data.val.faces
            images = [image for source in sources for image in read_face_source(source)][: evaluation.recall_images]
            detector = self._detector(
                stages,
                min_face_size=mining.min_face_size,
                scale_factor=mining.scale_factor,
                thresholds=(*mining.thresholds, 0.7),
                nms_thresholds=(*mining.nms_thresholds, 0.7),
            )
            results = evaluate_stages(detector, images, last_stage=stages[-1], min_size=evaluation.recall_min_size)
            log.info("%s", format_stage_table(results))
            write_json_atomic(
                self.report(f"recall-{stages[-1]}"), {stage: result.to_dict() for stage, result in results.items()}
            )

        return run

    def _wider_step(self, eval_setting: EvalSetting) -> Callable[[], None]:
        def run() -> None:
            from mtcnn.eval.plots import plot_pr_curves
            from mtcnn.eval.wider import evaluate_wider
            from mtcnn.eval.wider_files import detect_wider, load_ground_truth
            from mtcnn.model.weights import weights_fingerprint

            evaluation = self.config.evaluate
            ground_truth = load_ground_truth(evaluation.wider_ground_truth)
            settings = {
                "min_face_size": eval_setting.min_face_size,
                "scale_factor": eval_setting.scale_factor,
                "thresholds": tuple(eval_setting.thresholds),
                "mirror_onet": eval_setting.mirror_onet,
            }
            detector = self._detector(STAGES, **settings)
            predictions_dir = self._predictions_dir(eval_setting)
            record = {
                # By content: predictions left by nets since retrained are refused, never mixed in.
                "weights": weights_fingerprint({stage: self.weights(stage) for stage in STAGES}),
                **{key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()},
            }
            predictions = detect_wider(detector, ground_truth, evaluation.wider_images, predictions_dir, record)
            result = evaluate_wider(ground_truth, predictions)
            plot_pr_curves(
                result,
                self.root / "eval" / f"wider-{eval_setting.name}.png",
                title=f"WIDER FACE val ({eval_setting.name})",
            )
            log.info(
                "WIDER AP (%s): %s", eval_setting.name, "  ".join(f"{name} {ap:.4f}" for name, ap in result.ap.items())
            )
            write_json_atomic(self.report(f"wider-{eval_setting.name}"), {"detector": record, **result.to_dict()})

        return run

    def _predictions_dir(self, eval_setting: EvalSetting) -> Path:
        return self.root / "eval" / f"wider-{eval_setting.name}"

    def _landmark_step(self) -> None:
        from mtcnn.data.readers import read_landmark_list
        from mtcnn.eval.landmarks import evaluate_landmarks

        faces = read_landmark_list(self.config.evaluate.landmark_list)
        detector = self._detector(STAGES)
        result = evaluate_landmarks(faces, detector)
        log.info("%s", result.format())
        write_json_atomic(
            self.report("landmarks"),
            {
                "list": str(self.config.evaluate.landmark_list),
                "mirror_onet": detector.mirror_onet,
                "landmark_scales": list(detector.landmark_scales),
                **result.to_dict(),
            },
        )

    # ---------------------------------------------------------------------------- summary

    def summary(self, timings: dict[str, float]) -> dict[str, Any]:
        """Every figure the run produced, with the config and the time each step took."""
        reports = {path.stem: json.loads(path.read_text()) for path in sorted((self.root / "eval").glob("*.json"))}
        return {
            "config": to_dict(self.config),
            "seconds": timings,
            "wider_ap": {
                name[len("wider-") :]: report.get("ap") for name, report in reports.items() if name.startswith("wider-")
            },
            "landmarks": reports.get("landmarks"),
            "recall": {
                name[len("recall-") :]: report for name, report in reports.items() if name.startswith("recall-")
            },
        }

    def _read_timings(self) -> dict[str, float]:
        path = self.root / "timings.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's net without its training state (optimizer, RNG ...): the small,
    self-describing file that a detector loads and the package ships."""
    source = load_checkpoint(checkpoint)
    keep = {key: source[key] for key in ("format", "format_version", "stage", "model", "config", "versions")}
    training = source.get("training", {})
    keep["trained"] = {key: training[key] for key in ("epoch", "step", "best") if key in training}
    out = Path(out)
    atomic_save(keep, out)
    return out


def run_pipeline(config_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``mtcnn pipeline``: load the config and run what is not done."""
    config = load_pipeline_config(config_path, overrides)
    for stage in STAGES:
        if not getattr(config, stage).config.is_file():
            raise MtcnnError(f"{config_path}: {stage}.config {getattr(config, stage).config} does not exist")
    return Pipeline(config).run()
