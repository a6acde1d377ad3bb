"""Typed, strict configuration loaded from YAML.

Nested frozen dataclasses are the single source of names, types and defaults. :func:`load_config`
reads YAML with a safe loader (``1e-3`` read as a number) and builds the dataclass tree, rejecting:

- an unknown key, named by its dotted path with the closest valid names;
- a value of the wrong type (``"0.1"`` where a float is wanted, a list where an int is);
- a value out of its range, declared on the field with :func:`setting`.

``--set key.path=value`` overrides (values parsed as YAML) apply before validation. The
resolved config goes back to plain data with :func:`to_dict`, for the run folder and every
checkpoint.

A stage config file has the sections of :class:`StageConfig`: ``data`` (where datasets are),
``prep`` (sample generation), ``mining`` (the earlier stages' detector settings for R-Net and
O-Net data) and ``train``. Each concern owns its section's dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mtcnn.atomic import write_text_atomic
from mtcnn.errors import ConfigError
from mtcnn.spec import OPTIMIZER_NAMES, SCHEDULE_NAMES, STAGES, TRAIN_METRICS

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a number: YAML 1.1 wants ``1.0e-3`` and
    would hand a learning rate written the usual way over as the string ``'1e-3'``."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence[Any] | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a range (``low`` <= value <= ``high``; ``low_open`` makes it ``>``),
    a set of ``choices`` and a one-line ``doc``, all checked by :func:`load_config`."""
    metadata = {"low": low, "high": high, "low_open": low_open, "choices": choices, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(annotation)))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against a type annotation and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        return tuple(_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {value!r}")
        return Path(value)
    raise TypeError(f"config field {path} has an unsupported type {annotation!r}")


def _check_range(value: Any, field: dataclasses.Field, path: str) -> None:
    meta = field.metadata
    if value is None or not meta:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{path}: expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (item <= low if meta.get("low_open") else item < low):
            bound = f"> {low}" if meta.get("low_open") else f">= {low}"
            raise ConfigError(f"{path}: must be {bound}, got {item}")
        if high is not None and item > high:
            raise ConfigError(f"{path}: must be <= {high}, got {item}")


def _build(cls: type[T], data: Any, path: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            dotted = f"{path}.{key}" if path else str(key)
            if key in getattr(cls, "LEGACY_KEYS", ()):
                raise ConfigError(f"{dotted}: {cls.LEGACY_HINT}")
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {dotted!r}{hint}")
    values = {}
    for name, field in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in data:
            value = _convert(data[name], hints[name], dotted)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        elif dataclasses.is_dataclass(hints[name]):
            value = _build(hints[name], {}, dotted)
        else:
            raise ConfigError(f"missing required key {dotted!r}")
        _check_range(value, field, dotted)
        values[name] = value
    try:
        return cls(**values)
    except (ValueError, ConfigError) as exc:  # __post_init__ cross-field checks
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.optim.lr=0.01"`` -> ``(["train", "optim", "lr"], 0.01)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``key.path=value`` in a nested dict (copied), creating sections as needed."""
    data = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: i + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, with one-line errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(cls: type[T], data: Mapping[str, Any], overrides: Sequence[str] = ()) -> T:
    """Build and validate ``cls`` from plain data plus ``key=value`` overrides."""
    return _build(cls, apply_overrides(dict(data), overrides), "")


def to_dict(config: Any) -> Any:
    """A config dataclass as plain YAML-able data (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(item) for item in config]
    if isinstance(config, Path):
        return str(config)
    return config


def write_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))


# ------------------------------------------------------------------------------ the stage config


#: Face annotation formats a data source may have.
FACE_FORMATS = ("wider", "yolo", "coco")
#: 5-point landmark formats a data source may have.
LANDMARK_FORMATS = ("cnn_facepoint", "celeba")
#: What each format needs besides ``images`` (``cnn_facepoint`` needs only ``list``).
_REQUIRED_KEYS = {
    "wider": ("annotations",),
    "yolo": (),
    "coco": ("annotations",),
    "cnn_facepoint": ("list",),
    "celeba": ("images", "boxes", "landmarks"),
}
#: What each format may take.
_ALLOWED_KEYS = {
    "wider": ("images", "annotations"),
    "yolo": ("images", "labels", "face_class"),
    "coco": ("images", "annotations", "face_class"),
    "cnn_facepoint": ("list", "images"),
    "celeba": ("images", "boxes", "landmarks"),
}


def _check_source_keys(source: Any) -> None:
    """A source's keys for its format: the required ones set, no key another format uses."""
    for key in _REQUIRED_KEYS[source.format]:
        if getattr(source, key) is None:
            raise ValueError(f"format {source.format} needs {key!r}")
    for item in dataclasses.fields(source):
        value = getattr(source, item.name)
        if item.name != "format" and value is not None and item.name not in _ALLOWED_KEYS[source.format]:
            takes = ", ".join(_ALLOWED_KEYS[source.format])
            raise ValueError(f"format {source.format} does not take {item.name!r} (it takes {takes})")


@dataclasses.dataclass(frozen=True)
class FaceSource:
    """One set of images with face boxes. ``wider``: WIDER FACE's ``*_bbx_gt.txt``
    (``annotations``) with image names under ``images``; ``yolo``: images under ``images``, one
    ``class cx cy w h`` label file per image under ``labels`` (default: the folder ``images``
    names with its ``images`` part replaced by ``labels``, as ultralytics reads it); ``coco``: a
    COCO JSON (``annotations``) whose ``file_name`` entries are under ``images``. ``face_class``
    picks the face class where a set has several: a YOLO class name or id (default: the one class,
    or the one named ``face``), a COCO category name (default ``face``)."""

    format: str = setting(choices=FACE_FORMATS, doc="wider, yolo or coco")
    images: Path = setting(doc="the images folder")
    annotations: Path | None = setting(None, doc="wider: the *_bbx_gt.txt file; coco: the JSON file")
    labels: Path | None = setting(None, doc="yolo: the labels folder (default: images/ -> labels/)")
    face_class: str | int | None = setting(None, doc="yolo: class name or id; coco: category name")

    def __post_init__(self) -> None:
        _check_source_keys(self)


@dataclasses.dataclass(frozen=True)
class LandmarkSource:
    """One set of faces with five landmarks. ``cnn_facepoint``: a list of ``path left right top
    bottom x1 y1 ... x5 y5`` lines (``list``), paths relative to ``images`` (default: the list's
    folder); ``celeba``: CelebA's ``list_bbox_celeba.txt`` (``boxes``) and
    ``list_landmarks_celeba.txt`` (``landmarks``) for the in-the-wild images under ``images``."""

    format: str = setting(choices=LANDMARK_FORMATS, doc="cnn_facepoint or celeba")
    list: Path | None = setting(None, doc="cnn_facepoint: the list file")
    images: Path | None = setting(None, doc="the images folder (cnn_facepoint: default the list's folder)")
    boxes: Path | None = setting(None, doc="celeba: list_bbox_celeba.txt")
    landmarks: Path | None = setting(None, doc="celeba: list_landmarks_celeba.txt")

    def __post_init__(self) -> None:
        _check_source_keys(self)


#: The data kit's sets, as scripts/link_kit.sh links them into data/.
KIT_WIDER_VAL_IMAGES = Path("data/widerface/WIDER_val/images")
KIT_LANDMARK_VAL_LIST = Path("data/landmarks/testImageList.txt")
_KIT_TRAIN_FACES = (
    FaceSource(
        "wider",
        Path("data/widerface/WIDER_train/images"),
        Path("data/widerface/wider_face_split/wider_face_train_bbx_gt.txt"),
    ),
)
_KIT_VAL_FACES = (
    FaceSource("wider", KIT_WIDER_VAL_IMAGES, Path("data/widerface/wider_face_split/wider_face_val_bbx_gt.txt")),
)

_KIT_TRAIN_LANDMARKS = (LandmarkSource("cnn_facepoint", Path("data/landmarks/trainImageList.txt")),)
_KIT_VAL_LANDMARKS = (LandmarkSource("cnn_facepoint", KIT_LANDMARK_VAL_LIST),)


@dataclasses.dataclass(frozen=True)
class SplitData:
    """The sources of one split: face sets (boxes) and landmark sets (five points), any mix."""

    faces: tuple[FaceSource, ...] = setting(default_factory=tuple, doc="face sets: wider, yolo or coco")
    landmarks: tuple[LandmarkSource, ...] = setting(default_factory=tuple, doc="landmark sets: cnn_facepoint or celeba")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the datasets are, per split. Relative paths are relative to the working directory."""

    #: Keys of the single-source layout before sources were listed per split.
    LEGACY_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "wider_train_images",
        "wider_train_annotations",
        "wider_val_images",
        "wider_val_annotations",
        "landmark_train_list",
        "landmark_val_list",
    )
    LEGACY_HINT: typing.ClassVar[str] = (
        "the data section lists sources per split now: data: {train: {faces: [{format: wider, images: DIR, "
        "annotations: FILE}], landmarks: [{format: cnn_facepoint, list: FILE}]}, val: {...}} (see configs/pnet.yaml)"
    )

    train: SplitData = setting(
        default_factory=lambda: SplitData(
            _KIT_TRAIN_FACES, (LandmarkSource("cnn_facepoint", Path("data/landmarks/trainImageList.txt")),)
        ),
        doc="the training sources",
    )
    val: SplitData = setting(
        default_factory=lambda: SplitData(_KIT_VAL_FACES, _KIT_VAL_LANDMARKS),
        doc="the validation sources",
    )


# ------------------------------------------------------------------------------ optimizers and schedules

#: Optimizer-specific settings each optimizer takes, with their defaults (None: torch's own);
#: ``mtcnn.train.optim`` pairs them with the torch classes.
OPTIMIZER_SETTINGS: dict[str, dict[str, Any]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "adagrad": {"eps": None},
    "rmsprop": {"alpha": None, "eps": None, "momentum": None},
    "adam": {"betas": None, "eps": None},
    "adamw": {"betas": None, "eps": None},
}
#: Settings an optimizer needs > 0 when they are set: momentum is what these two names mean.
POSITIVE_SETTINGS = {"momentum": ("momentum",), "nesterov": ("momentum",)}
#: Settings every optimizer takes.
COMMON_SETTINGS = ("lr", "weight_decay")
#: Settings each schedule takes, with their defaults (None: required).
SCHEDULE_SETTINGS: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"step_epochs": None, "gamma": 0.1},
    "multistep": {"milestones": None, "gamma": 0.1},
    "exponential": {"gamma": 0.9},
    "cosine": {"min_lr_factor": 0.0},
    "plateau": {"gamma": 0.1, "patience": 2, "threshold": 1e-4},
}
#: Settings every schedule takes.
WARMUP_SETTINGS = ("warmup_steps", "warmup_start_factor")


def check_optimizer_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the setting if ``name`` does not take one of ``settings``
    (those that are not ``None``) or if a setting it needs positive is not."""
    if name not in OPTIMIZER_SETTINGS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")
    takes_settings = OPTIMIZER_SETTINGS[name]
    for key, value in settings.items():
        if value is None or key in COMMON_SETTINGS:
            continue
        if key not in takes_settings:
            takes = ", ".join((*COMMON_SETTINGS, *takes_settings))
            raise ValueError(
                f"optimizer {name!r} does not take {key!r} (it takes {takes}); remove it or set it to null"
            )
    for key in POSITIVE_SETTINGS.get(name, ()):
        value = settings.get(key)
        if value is not None and not value > 0:
            raise ValueError(f"optimizer {name!r} needs {key} > 0, got {value}")


def check_schedule_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The full settings of schedule ``name`` (defaults filled in); ``ValueError`` for a setting
    it does not take or a required one missing."""
    if name not in SCHEDULE_SETTINGS:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    takes_settings = SCHEDULE_SETTINGS[name]
    for key, value in settings.items():
        if value is not None and key not in takes_settings and key not in WARMUP_SETTINGS:
            takes = ", ".join((*takes_settings, *WARMUP_SETTINGS))
            raise ValueError(f"schedule {name!r} does not take {key!r} (it takes {takes}); remove it or set it to null")
    resolved = {}
    for key, default in takes_settings.items():
        value = settings.get(key)
        if value is None and default is None:
            raise ValueError(f"schedule {name!r} needs {key!r}")
        resolved[key] = default if value is None else value
    if name == "multistep" and list(resolved["milestones"]) != sorted(resolved["milestones"]):
        raise ValueError(f"schedule 'multistep' needs increasing milestones, got {list(resolved['milestones'])}")
    return resolved


# ------------------------------------------------------------------------------ the train section

#: Task weights (classification, box, landmark) of the paper per stage.
DEFAULT_TASK_WEIGHTS = {"pnet": (1.0, 0.5, 0.5), "rnet": (1.0, 0.5, 0.5), "onet": (1.0, 0.5, 1.0)}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer: a name of the gradient-descent family and the settings it takes.

    Unset (null) optimizer-specific settings mean the optimizer's default; setting one the
    optimizer does not take (``momentum`` with ``adam``) is an error.
    """

    name: str = setting(
        "momentum", choices=OPTIMIZER_NAMES, doc="optimizer: sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw"
    )
    lr: float = setting(0.01, low=0.0, low_open=True, doc="base learning rate")
    weight_decay: float = setting(0.0005, low=0.0, doc="L2 penalty (decoupled for adamw); not on 1-D params")
    momentum: float | None = setting(
        None, low=0.0, high=1.0, doc="momentum, nesterov (> 0, default 0.9), rmsprop (default 0)"
    )
    betas: tuple[float, float] | None = setting(
        None, low=0.0, high=1.0, doc="adam, adamw: moment decay rates (default 0.9, 0.999)"
    )
    eps: float | None = setting(None, low=0.0, low_open=True, doc="adagrad, rmsprop, adam, adamw: denominator term")
    alpha: float | None = setting(None, low=0.0, high=1.0, doc="rmsprop: squared-gradient decay (default 0.99)")

    def __post_init__(self) -> None:
        check_optimizer_settings(self.name, self.specific_settings())

    def specific_settings(self) -> dict[str, Any]:
        """The optimizer-specific settings that are set."""
        values = {"momentum": self.momentum, "betas": self.betas, "eps": self.eps, "alpha": self.alpha}
        return {key: value for key, value in values.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule by name, with optional linear warm-up.

    Unset (null) settings take the schedule's default; a setting the schedule does not take is
    an error.
    """

    name: str = setting(
        "cosine", choices=SCHEDULE_NAMES, doc="constant, step, multistep, exponential, cosine or plateau"
    )
    warmup_steps: int = setting(0, low=0, doc="optimizer steps of linear warm-up (0: none)")
    warmup_start_factor: float = setting(
        0.1, low=0.0, high=1.0, low_open=True, doc="warm-up starts at this fraction of the rate"
    )
    gamma: float | None = setting(
        None,
        low=0.0,
        high=1.0,
        low_open=True,
        doc="step, multistep, plateau: factor per decay (0.1); exponential: per epoch (0.9)",
    )
    step_epochs: int | None = setting(None, low=1, doc="step: epochs between decays")
    milestones: tuple[int, ...] | None = setting(None, low=1, doc="multistep: epochs at which the rate decays")
    min_lr_factor: float | None = setting(None, low=0.0, high=1.0, doc="cosine: final rate as a fraction (0)")
    patience: int | None = setting(None, low=0, doc="plateau: epochs without improvement before a decay (2)")
    threshold: float | None = setting(None, low=0.0, doc="plateau: relative improvement that counts (1e-4)")

    def __post_init__(self) -> None:
        check_schedule_settings(self.name, self.specific_settings())

    def specific_settings(self) -> dict[str, Any]:
        """The schedule-specific settings that are set."""
        names = ("gamma", "step_epochs", "milestones", "min_lr_factor", "patience", "threshold")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The three-part loss: classification with hard example mining, box and landmark regression."""

    task_weights: tuple[float, float, float] | None = setting(
        None, low=0.0, doc="weights of classification, box, landmark; null: the paper's (P, R 1/0.5/0.5; O 1/0.5/1)"
    )
    ohem_keep: float = setting(
        0.7, low=0.0, high=1.0, low_open=True, doc="fraction of the hardest classification losses kept per batch"
    )


@dataclasses.dataclass(frozen=True)
class RatioConfig:
    """How many of each sample type a batch holds, relative to each other (integers)."""

    negative: int = setting(3, low=0)
    positive: int = setting(1, low=0)
    part: int = setting(1, low=0)
    landmark: int = setting(2, low=0)

    def __post_init__(self) -> None:
        if self.negative + self.positive + self.part + self.landmark == 0:
            raise ValueError("ratio: at least one sample type needs a share > 0")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation done on the whole batch on the device."""

    flip: bool = setting(True, doc="mirror half the crops left-right, with their targets")
    brightness: float = setting(0.2, low=0.0, high=1.0, doc="brightness factor drawn from 1 +- this")
    contrast: float = setting(0.2, low=0.0, high=1.0, doc="contrast factor drawn from 1 +- this")
    saturation: float = setting(0.2, low=0.0, high=1.0, doc="saturation factor drawn from 1 +- this")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How ``train-pnet``/``train-rnet``/``train-onet`` train their net."""

    train_store: Path | None = setting(None, doc="prepared training store; null: runs/prep/<stage>-train")
    val_store: Path | None = setting(None, doc="prepared validation store; null: runs/prep/<stage>-val")
    validate: bool = setting(True, doc="validate every epoch on val_store")
    out_dir: Path | None = setting(None, doc="run folder (checkpoints, TensorBoard); null: runs/train/<stage>")
    init_weights: Path | None = setting(
        None, doc="start from these weights: a checkpoint, an original file, or 'shipped' (the package's own)"
    )
    epochs: int = setting(20, low=1, doc="passes over the training data")
    batch_size: int | Literal["full"] = setting(
        384, low=1, doc="1: stochastic GD, N: mini-batch, full: full-batch GD over the whole store"
    )
    steps_per_epoch: int | None = setting(None, low=1, doc="mini-batch steps per epoch; null: store size / batch")
    chunk_size: int = setting(8192, low=1, doc="samples per forward pass in full-batch mode and validation")
    optim: OptimConfig = setting(default_factory=OptimConfig)
    schedule: ScheduleConfig = setting(default_factory=ScheduleConfig)
    loss: LossConfig = setting(default_factory=LossConfig)
    ratio: RatioConfig = setting(default_factory=RatioConfig)
    augment: AugmentConfig = setting(default_factory=AugmentConfig)
    grad_clip_norm: float | None = setting(None, low=0.0, low_open=True, doc="clip the gradient norm (null: no)")
    dropout: float = setting(
        0.0, low=0.0, high=0.9, doc="R-Net, O-Net: dropout on the features the heads share (P-Net: 0)"
    )
    dropout_heads: str = setting(
        "all", choices=("all", "classification"), doc="heads fed the dropped features: all, or classification only"
    )
    # Off: these nets are too small for autocast's casts to pay; on an H200, bfloat16 steps of
    # batch 384 ran 6-38% slower than float32 (docs/benchmarks.md, GPU).
    amp: bool = setting(False, doc="mixed precision on CUDA (ignored on the CPU)")
    amp_dtype: str = setting("bfloat16", choices=("bfloat16", "float16"), doc="autocast type on CUDA")
    store_on_device: bool = setting(True, doc="copy the stores onto the GPU (else gather batches in RAM)")
    best_metric: str = setting("val_loss", choices=TRAIN_METRICS, doc="metric choosing the best checkpoint")
    best_from_epoch: int = setting(
        1,
        low=1,
        doc="first epoch that may become best.pt (a noisy metric at a "
        "high rate can pick an undertrained net); the last always may",
    )
    early_stop_patience: int | None = setting(
        None, low=1, doc="stop after this many epochs without a better best_metric"
    )
    seed: int = setting(0, low=0, doc="seeds the initial weights, batch order and augmentation")
    log_every_steps: int = setting(50, low=1, doc="steps between TensorBoard scalars")
    val_image_count: int = setting(16, low=0, doc="validation crops drawn into TensorBoard each epoch")

    def __post_init__(self) -> None:
        if not self.validate and self.best_metric != "train_loss":
            raise ValueError(
                f"best_metric {self.best_metric!r} needs validate: true; with validate: false "
                "use best_metric: train_loss"
            )


@dataclasses.dataclass(frozen=True)
class RandomCropConfig:
    """P-Net samples cut at random around each face and across each image (paper, section 2.4,
    and its released generation code)."""

    negatives_per_image: int = setting(50, low=0, doc="random negative squares sought anywhere in each image")
    negatives_near_face: int = setting(5, low=0, doc="tries per face for a negative square overlapping it a little")
    crops_per_face: int = setting(20, low=0, doc="jittered squares tried per face, labelled positive or part by IoU")
    centre_jitter: float = setting(
        0.2, low=0.0, high=1.0, doc="largest shift of a jittered square's centre, in face widths/heights"
    )
    size_range: tuple[float, float] = setting(
        (0.8, 1.25), low=0.0, low_open=True, doc="jittered side from low x shorter face side to high x longer side"
    )
    negative_max_fraction: float = setting(
        0.5, low=0.0, high=1.0, low_open=True, doc="largest negative side, as a fraction of the image's shorter side"
    )
    negative_rounds: int = setting(4, low=1, doc="rounds of drawing random negatives in crowded images")
    negative_sizes: str = setting(
        "uniform",
        choices=("uniform", "log"),
        doc="how random negative sides are drawn between the crop size and the largest: "
        "uniform, or log-uniform (more small squares, as in a detection pyramid)",
    )

    def __post_init__(self) -> None:
        if self.size_range[0] > self.size_range[1]:
            raise ValueError(f"size_range: low {self.size_range[0]} is above high {self.size_range[1]}")


@dataclasses.dataclass(frozen=True)
class LandmarkCropConfig:
    """Landmark samples: jittered crops of each face of the landmark list, some mirrored and
    rotated. The paper gives no numbers for this augmentation; these are its released code's."""

    crops_per_face: int = setting(10, low=0, doc="jittered squares tried per landmark face")
    min_iou: float = setting(0.65, low=0.0, high=1.0, doc="a crop is kept when its IoU with the face is above this")
    centre_jitter: float = setting(
        0.2, low=0.0, high=1.0, doc="largest shift of a crop's centre, as a fraction of face width/height"
    )
    size_range: tuple[float, float] = setting(
        (0.8, 1.25), low=0.0, low_open=True, doc="crop side from low x shorter face side to high x longer side"
    )
    inside_image: bool = setting(
        True,
        doc="keep only crops inside the image; false: crops crossing the border "
        "are zero-padded, as the detector pads boxes at the border",
    )
    mirror_probability: float = setting(
        0.5, low=0.0, high=1.0, doc="chance a crop is mirrored (points mirrored, left/right swapped)"
    )
    rotate_probability: float = setting(0.5, low=0.0, high=1.0, doc="chance a crop is rotated")
    max_rotation: float = setting(10.0, low=0.0, high=45.0, doc="largest rotation in degrees, either way")

    def __post_init__(self) -> None:
        if self.size_range[0] > self.size_range[1]:
            raise ValueError(f"size_range: low {self.size_range[0]} is above high {self.size_range[1]}")


@dataclasses.dataclass(frozen=True)
class PrepConfig:
    """Training-sample generation (``mtcnn prep``): labelling thresholds, sampling and sharding."""

    seed: int = setting(0, low=0, doc="random seed; each image's generator is derived from it and the image's index")
    negative_iou: float = setting(0.3, low=0.0, high=1.0, doc="negative: IoU with every face below this")
    part_iou: float = setting(0.4, low=0.0, high=1.0, doc="part face: best IoU at least this (and below positive_iou)")
    positive_iou: float = setting(0.65, low=0.0, high=1.0, doc="positive: best IoU at least this")
    min_face_size: float = setting(
        20.0,
        low=0.0,
        doc="faces whose longer side is below this (px) give no positives or parts, "
        "but still count as faces for negatives",
    )
    random: RandomCropConfig = setting(default_factory=RandomCropConfig)
    landmarks: LandmarkCropConfig = setting(default_factory=LandmarkCropConfig)
    images_per_shard: int = setting(32, low=1, doc="WIDER images per shard (the unit of resuming and of work)")
    faces_per_shard: int = setting(512, low=1, doc="landmark faces per shard")
    limit_images: int | None = setting(None, low=0, doc="use only the first N WIDER images (quick runs); null: all")
    limit_landmark_faces: int | None = setting(None, low=0, doc="use only the first N landmark faces; null: all")

    def __post_init__(self) -> None:
        if not self.negative_iou <= self.part_iou <= self.positive_iou:
            raise ValueError(
                f"need negative_iou <= part_iou <= positive_iou, got {self.negative_iou}, "
                f"{self.part_iou}, {self.positive_iou}"
            )


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """How R-Net and O-Net samples are mined: the earlier stages run as a detector over the
    training images, and their boxes are labelled by IoU with the faces."""

    min_face_size: float = setting(20.0, low=0.0, low_open=True, doc="smallest face side the detector seeks (px)")
    scale_factor: float = setting(0.709, low=0.0, high=1.0, low_open=True, doc="ratio between pyramid levels")
    thresholds: tuple[float, float] = setting(
        (0.6, 0.7), low=0.0, high=1.0, doc="face-probability thresholds of P-Net and R-Net"
    )
    nms_thresholds: tuple[float, float, float] = setting(
        (0.5, 0.7, 0.7), low=0.0, high=1.0, doc="NMS IoU: P-Net within a pyramid level, P-Net across levels, R-Net"
    )
    max_negatives_per_image: int = setting(
        60, low=0, doc="keep at most this many negative boxes per image (a random subset)"
    )
    batch_size: int = setting(16, low=1, doc="images per detector batch")
    face_crops_per_face: int = setting(
        0,
        low=0,
        doc="jittered squares per usable face added to the mined boxes "
        "(kept when positive or part, as for P-Net); 0: mined only",
    )


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage's config file (``configs/pnet.yaml`` ...): the sections each command reads."""

    stage: str = setting(choices=STAGES, doc="which net this file configures")
    data: DataConfig = setting(default_factory=DataConfig)
    train: TrainConfig = setting(default_factory=TrainConfig)
    prep: PrepConfig = setting(default_factory=PrepConfig)
    mining: MiningConfig = setting(default_factory=MiningConfig)

    def __post_init__(self) -> None:
        if self.stage == "pnet" and self.train.dropout:
            raise ValueError("train.dropout must be 0 for pnet: P-Net is fully convolutional, with no dropout layer")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StageConfig:
    """Read a stage config file, apply ``key=value`` overrides and validate everything.

    Errors name the file and the dotted key, e.g. ``configs/pnet.yaml: unknown key 'train.lrr'``.
    """
    data = read_yaml(path)
    try:
        return build_config(StageConfig, data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
