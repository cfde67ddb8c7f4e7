"""Typed experiment configuration.

Every key has a default; an unknown key is a :class:`ConfigError` naming it. YAML is read
and written only at the edge (:func:`load_config`, :func:`dump_config`); the rest of the
code receives these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from activedet.errors import ConfigError
from activedet.evaluation.annotation_time import AnnotatorTimes
from activedet.files import read_text
from activedet.models.families import names as detector_families
from activedet.settings import JSON_SCHEMA_DIALECT, dataclass_schema, strategy_schema

Number = Union[int, float]


@dataclass
class DatasetConfig:
    """Where the data comes from.

    ``train``/``test``/``reference`` accept a COCO json file, a VOC directory
    (``VOC:DIR[:split]`` or a directory holding ``Annotations/``), an image-folder
    directory (classification) or ``builtin:NAME``.
    """

    train: str = "builtin:shapes"
    test: str | None = None
    reference: str | None = None
    images: str | None = None  # image root for a COCO json split without its own root below
    # (default: next to the json); refused when it would serve two different json files
    train_images: str | None = None  # image root of the train split's COCO json
    test_images: str | None = None  # image root of the test split's COCO json
    reference_images: str | None = None  # image root of the reference split's COCO json
    unlabeled: str | None = None  # select/ingest only: the real pool (image folder, COCO json
    # without annotations, or a text file of paths); `train` is then the labeled set
    options: dict[str, Any] = field(default_factory=dict)  # builtin generator options
    bad_images: str = "error"  # error | skip: an undecodable pool image stops the run, or is quarantined
    workers: int = 0  # image-loading worker processes of training, scoring and evaluation (0: the main process)


def image_root(dataset: DatasetConfig, split: str) -> str | None:
    """The image root of ``split`` (train | test | reference): its own ``<split>_images``,
    else the shared ``images``. The shared root may serve one COCO json file only: test boxes
    paired with train pixels of the same file names would go unnoticed."""
    own = getattr(dataset, f"{split}_images")
    return own if own is not None else dataset.images


def _check_image_roots(dataset: DatasetConfig) -> None:
    specs = {s: getattr(dataset, s) for s in ("train", "test", "reference")}
    jsons = {s: v for s, v in specs.items() if isinstance(v, str) and v.lower().endswith(".json")}
    for split in specs:
        if getattr(dataset, f"{split}_images") is not None and split not in jsons:
            raise ConfigError(f"config key 'dataset.{split}_images' is set but 'dataset.{split}' = "
                              f"{specs[split]!r} is not a COCO json file")
    if dataset.images is None:
        return
    shared = [s for s in jsons if getattr(dataset, f"{s}_images") is None]
    if len({jsons[s] for s in shared}) > 1:
        raise ConfigError(f"config key 'dataset.images' = {dataset.images!r} would be the image root of "
                          f"{' and '.join('dataset.' + s for s in shared)}, different COCO files: give each "
                          f"split its own ({', '.join(f'dataset.{s}_images' for s in shared)})")


@dataclass
class ModelConfig:
    arch: str = "retinanet"  # retinanet | fcos | faster_rcnn | resnet18 | small_cnn
    backbone: str = "resnet50"  # resnet50 | resnet18 | mobilenet_v2 (detectors)
    pretrained: bool = True
    image_size: int | None = None  # shorter side fed to the model; None: the training images'
    # median shorter side, at most 800 (small images are not blown up to a GPU-sized input)
    anchor_scale: float | None = None  # smallest anchor in px (default 32 * image_size / 800, at least 16)
    score_thresh: float = 0.05
    detections_per_img: int = 100
    box_prior: float | None = 1.0  # FCOS: initial box-regression output, in strides (null: torchvision's 0)
    fg_normalizer: str = "batch"  # RetinaNet/FCOS losses over: batch (torchvision: each batch's foreground
    # count) | ema (a running mean of it, as detectron2 does)
    offline_fallback: bool = False  # pretrained weights of `backbone` unavailable: build mobilenet_v2
    # (packaged ImageNet weights) instead of stopping; the stored config then names mobilenet_v2


@dataclass
class TrainConfig:
    epochs: int = 26
    batch_size: int = 2
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    warmup_iters: int = 0
    lr_steps: list[float] = field(default_factory=lambda: [0.77])
    grad_clip: float | None = None
    hflip: bool = True
    eval_batch_size: int = 8
    warmup_fraction: float = 0.0  # warm-up over at least this fraction of a round's iterations
    on_collapse: str = "retry"  # retry | stop | warn: a round whose training collapsed
    max_retries: int = 2  # retry: re-initialisations with derived seeds before giving up
    on_nonfinite: str = "stop"  # stop | skip_batch: a NaN/inf training loss
    amp: bool = False  # mixed precision (float16 autocast + GradScaler) on CUDA; ignored, with a warning, on CPU
    #: the round's model is the uniform average of the weights after every step of this last
    #: fraction of training (SWA-style, torch.optim.swa_utils.AveragedModel); 0: the last weights
    average_last: float = 0.0


@dataclass
class LoopConfig:
    initial: Number = 0.05  # fraction (< 1) or count (>= 1) of the pool
    per_cycle: Number = 0.025  # fraction or count, in `unit`s
    cycles: int = 6
    unit: str = "images"  # images | boxes | seconds (annotator seconds with pre-annotations; simulate only)
    reinit: bool = True  # re-initialise the model every cycle (the papers' protocol)
    initial_strategy: str = "random"  # round 0 without labels: random | typical | kcenter


@dataclass
class StrategyConfig:
    name: str = "random"
    params: dict[str, Any] = field(default_factory=dict)  # strategy-specific keys


@dataclass
class ExperimentConfig:
    task: str = "detection"  # detection | classification
    device: str = "auto"  # auto | cpu | cuda
    #: intra-op CPU threads per process (0: torch's default for this host, so answers then
    #: depend on its cores and on how many processes share it). Float sums split over threads
    #: differ in their last bits, and a selection can follow them: 1 gives the same answers
    #: however the processes of a run are spread over hosts.
    threads: int = 1
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    #: what an annotator's actions cost, in seconds (:mod:`activedet.evaluation.annotation_time`)
    annotator: AnnotatorTimes = field(default_factory=AnnotatorTimes)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; strategy params are flattened under ``strategy``."""
        out = dataclasses.asdict(self)
        strat = out.pop("strategy")
        out["strategy"] = {"name": strat["name"], **strat["params"]}
        return out


#: the classifier architectures (models/classifier.py builds them)
CLASSIFIER_ARCHS = ("resnet18", "small_cnn")

_CHOICES = {
    ("task",): ("detection", "classification"),
    ("device",): ("auto", "cpu", "cuda"),
    ("loop", "unit"): ("images", "boxes", "seconds"),
    ("loop", "initial_strategy"): ("random", "typical", "kcenter"),
    ("dataset", "bad_images"): ("error", "skip"),
    ("model", "backbone"): ("resnet50", "resnet18", "mobilenet_v2"),
    ("model", "fg_normalizer"): ("batch", "ema"),
    ("train", "on_collapse"): ("retry", "stop", "warn"),
    ("train", "on_nonfinite"): ("stop", "skip_batch"),
}


def choices_now() -> dict[tuple[str, ...], tuple[str, ...]]:
    """Every key with a fixed set of values; ``model.arch``: the detector families found now
    (:mod:`activedet.models.families`: a family is one module there) and the classifiers."""
    return {**_CHOICES, ("model", "arch"): (*detector_families(), *CLASSIFIER_ARCHS)}


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and bad types."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{where}.{_shown(key)}' (known: {known})".replace("'.", "'"))
        kwargs[key] = value
    obj = cls(**kwargs)
    hints = typing.get_type_hints(cls)
    for name, f in fields.items():
        ref = f.default if f.default is not dataclasses.MISSING else _optional_sample(hints.get(name))
        setattr(obj, name, _number_from_string(getattr(obj, name), ref))
        _check_type(getattr(obj, name), f.default, f.default_factory, f"{where}.{name}".lstrip("."),
                    hints.get(name))
        value = getattr(obj, name)
        if name in _INT_KEYS and isinstance(value, float):  # 3.0 -> 3: range() and tensors need ints
            setattr(obj, name, int(value))
    return obj


def _shown(key: Any) -> str:
    """A key as written when printable on one line, else its repr (``'a\\nb'``)."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def _optional_sample(hint: Any) -> Any:
    """``str | None`` -> ``""``, ``float | None`` -> ``0.0``: a value of the key's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0]() if len(args) == 1 and args[0] in (str, int, float, bool) else None


def _check_type(value: Any, default: Any, factory: Any, where: str, hint: Any = None) -> None:
    ref = default if default is not dataclasses.MISSING else (
        factory() if factory is not dataclasses.MISSING else None
    )
    if value is None:
        if ref is not None and type(None) not in typing.get_args(hint):  # `float | None` may be null
            raise ConfigError(f"config key '{where}' must not be null (default: {ref!r})")
        return
    if ref is None:  # an optional key: its annotation says what it holds
        ref = _optional_sample(hint)
        if ref is None:
            return
    if isinstance(ref, bool):
        ok = isinstance(value, bool)
    elif isinstance(ref, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(ref, int) and where.split(".")[-1] in _INT_KEYS:
            ok = isinstance(value, int) or value.is_integer()
    elif isinstance(ref, str):
        ok = isinstance(value, str)
    elif isinstance(ref, list):
        ok = isinstance(value, list)
    elif isinstance(ref, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        if isinstance(ref, bool):
            expected = "true or false"
        elif isinstance(ref, int) and where.split(".")[-1] in _INT_KEYS:
            expected = "an integer"
        elif isinstance(ref, (int, float)):
            expected = "a number"
        else:
            expected = {str: "a string", list: "a list", dict: "a mapping"}.get(type(ref), type(ref).__name__)
        raise ConfigError(f"config key '{where}': {value!r} is not {expected}")


def _number_from_string(value: Any, ref: Any) -> Any:
    """``'1e-2'`` -> ``0.01`` for a numeric key: YAML 1.1 (PyYAML) reads a float without a
    dot (``1e-2``) as a string. Anything else is returned unchanged."""
    if not isinstance(value, str) or isinstance(ref, bool) or not isinstance(ref, (int, float)):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    return number if math.isfinite(number) else value


_INT_KEYS = {"seed", "epochs", "batch_size", "cycles", "warmup_iters", "image_size",
             "eval_batch_size", "detections_per_img", "max_retries", "workers"}


def config_from_dict(data: dict[str, Any] | None) -> ExperimentConfig:
    """Validate a nested dict (as read from YAML) into an :class:`ExperimentConfig`."""
    data = dict(data or {})
    top = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for key in data:
        if key not in top:
            raise ConfigError(f"unknown config key '{_shown(key)}' (known: {', '.join(sorted(top))})")
    strat_raw = data.pop("strategy", None) or {}
    if isinstance(strat_raw, str):
        strat_raw = {"name": strat_raw}
    if not isinstance(strat_raw, dict):
        raise ConfigError("config section 'strategy' must be a mapping")
    strat_raw = dict(strat_raw)
    name = strat_raw.pop("name", "random")
    if not isinstance(name, str):
        raise ConfigError(f"config key 'strategy.name' must be a string, got {name!r}")
    cfg = ExperimentConfig(
        task=data.get("task", "detection"),
        device=data.get("device", "auto"),
        threads=data.get("threads", 1),
        seed=data.get("seed", 0),
        dataset=_build(DatasetConfig, data.get("dataset"), "dataset"),
        model=_build(ModelConfig, data.get("model"), "model"),
        train=_build(TrainConfig, data.get("train"), "train"),
        loop=_build(LoopConfig, data.get("loop"), "loop"),
        strategy=StrategyConfig(name=name, params=strat_raw),
        annotator=_build(AnnotatorTimes, data.get("annotator"), "annotator"),
    )
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Check values (choices, ranges). Raises :class:`ConfigError` naming the key."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"config key 'seed' must be an integer, got {cfg.seed!r}")
    if not isinstance(cfg.threads, int) or isinstance(cfg.threads, bool) or cfg.threads < 0:
        raise ConfigError(f"config key 'threads' = {cfg.threads!r} must be an integer >= 0 (1: the same "
                          f"answers on any host; 0: torch's default for the host)")
    for path, choices in choices_now().items():
        obj: Any = cfg
        for p in path:
            obj = getattr(obj, p)
        if obj not in choices:
            raise ConfigError(
                f"config key '{'.'.join(path)}' = {obj!r} is not one of {', '.join(choices)}"
            )
    for key in ("initial", "per_cycle"):  # a float is a fraction of the pool, an int a count
        v = getattr(cfg.loop, key)
        if v <= 0 or (isinstance(v, float) and v > 1):
            raise ConfigError(f"config key 'loop.{key}' = {v!r}: use a fraction in (0, 1] (a number "
                              f"with a dot: 1.0 is the whole pool) or a count >= 1 (an integer: "
                              f"{int(v) if float(v).is_integer() and v > 0 else 5})")
    if cfg.loop.cycles < 0:
        raise ConfigError(f"config key 'loop.cycles' = {cfg.loop.cycles!r} must be >= 0")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"config key 'train.{key}' must be >= 1")
    size = cfg.model.image_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float))
                             or not float(size).is_integer() or size < 1):
        raise ConfigError(f"config key 'model.image_size' = {size!r}: use a positive integer or null (auto)")
    if not 0 <= cfg.train.average_last < 1:
        raise ConfigError(f"config key 'train.average_last' = {cfg.train.average_last!r} must be a fraction "
                          "in [0, 1) (0.25: average the weights over the last quarter of training; 0: off)")
    if not 0 <= cfg.train.warmup_fraction < 1:
        raise ConfigError(f"config key 'train.warmup_fraction' = {cfg.train.warmup_fraction!r} "
                          "must be a fraction in [0, 1)")
    if cfg.dataset.workers < 0:
        raise ConfigError(f"config key 'dataset.workers' = {cfg.dataset.workers!r} must be >= 0")
    if cfg.train.max_retries < 0:
        raise ConfigError(f"config key 'train.max_retries' = {cfg.train.max_retries!r} must be >= 0")
    if cfg.model.box_prior is not None and not cfg.model.box_prior > 0:
        raise ConfigError(f"config key 'model.box_prior' = {cfg.model.box_prior!r} must be > 0 or null")
    if cfg.train.lr <= 0:
        raise ConfigError(f"config key 'train.lr' = {cfg.train.lr!r} must be > 0")
    for s in cfg.train.lr_steps:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
            raise ConfigError(f"config key 'train.lr_steps' entry {s!r} must be a fraction in (0, 1]")
    _check_ranges(cfg)
    cfg.annotator.check()
    if cfg.loop.unit == "seconds" and cfg.task != "detection":
        raise ConfigError("config key 'loop.unit' = 'seconds' counts annotator time on boxes: use it for "
                          "detection (classification: images)")
    _check_image_roots(cfg.dataset)
    detector = cfg.model.arch in detector_families()
    if (cfg.task == "detection") != detector:
        raise ConfigError(f"config key 'model.arch' = {cfg.model.arch!r} does not fit task {cfg.task!r}")


#: (section, key, lowest, highest, lowest allowed itself): numeric ranges a run relies on
_RANGES = (
    ("train", "warmup_iters", 0, None, True), ("train", "momentum", 0, None, True),
    ("train", "weight_decay", 0, None, True), ("train", "grad_clip", 0, None, False),
    ("model", "anchor_scale", 0, None, False), ("model", "score_thresh", 0, 1, True),
    ("model", "detections_per_img", 1, None, True),
)


def _check_ranges(cfg: ExperimentConfig) -> None:
    """Every number finite (YAML's ``.nan``/``.inf`` pass ``<`` tests), seeds usable by
    numpy, and the ranges of :data:`_RANGES`."""
    if not 0 <= cfg.seed < 2 ** 32:
        raise ConfigError(f"config key 'seed' = {cfg.seed!r} must be in 0..2**32-1")
    for section in ("dataset", "model", "train", "loop", "annotator"):
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"config key '{section}.{f.name}' = {v!r} must be a finite number")
    for section, key, low, high, closed in _RANGES:
        v = getattr(getattr(cfg, section), key)
        if v is None:
            continue
        if v < low or (v == low and not closed) or (high is not None and v > high):
            span = f"{'[' if closed else '('}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
            raise ConfigError(f"config key '{section}.{key}' = {v!r} must be in {span}")


#: dataset keys holding a path; a relative one is read from the config file's folder
_PATH_KEYS = ("train", "test", "reference", "unlabeled", "images", "train_images", "test_images",
              "reference_images")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a YAML experiment config.

    Relative dataset paths are resolved from the config file's folder (the file can be
    used from any working directory). ``overrides``: ``KEY=VALUE`` strings applied on top
    (``train.epochs=1``; VALUE is read as YAML; ``strategy.name=X`` starts a fresh
    strategy section, so the file's settings of another strategy do not carry over).
    ``dataset.train`` is required: an empty file is refused, not the default experiment.
    """
    path = Path(path)
    text = read_text(path, ConfigError, "config ")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config {path} is not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    data = dict(data or {})
    try:
        if isinstance(data.get("dataset"), dict):
            data["dataset"] = {k: _from_folder(v, path.parent) if k in _PATH_KEYS else v
                               for k, v in data["dataset"].items()}
        apply_overrides(data, overrides)
        cfg = config_from_dict(data)  # unknown keys and bad values first: they name the key
        if not isinstance(data.get("dataset"), dict) or data["dataset"].get("train") is None:
            raise ConfigError(
                "config key 'dataset.train' is required (the labeled data: a COCO json, voc:DIR, an "
                "image folder, or builtin:NAME such as builtin:shapes)" + (
                    "; the file is empty" if not data else ""))
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _from_folder(spec: Any, folder: Path) -> Any:
    """A relative dataset path resolved from ``folder``; ``builtin:``, absolute and
    non-string values unchanged (``voc:`` keeps its prefix and split)."""
    if not isinstance(spec, str) or not spec or spec.startswith("builtin:"):
        return spec
    prefix, body = ("voc:", spec[4:]) if spec[:4].lower() == "voc:" else ("", spec)
    if not body or Path(body).is_absolute() or body.startswith("~"):
        return spec
    return prefix + os.path.normpath(folder / body)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> None:
    """Set ``KEY=VALUE`` overrides (dotted keys, YAML values) in a raw config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=1)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        if parts[0] == "strategy" and isinstance(data.get("strategy"), str):
            data["strategy"] = {"name": data["strategy"]}
        if parts == ["strategy", "name"] and isinstance(data.get("strategy"), dict) \
                and data["strategy"].get("name") != value:
            data["strategy"] = {}
        node = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: '{'.'.join(parts[:i + 1])}' is not a section")
            node = node[part]
        node[parts[-1]] = value


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def json_schema(strategies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """JSON Schema of the whole experiment config, for editors and checks.

    Read from the dataclasses above (a field added to one appears without editing this) and
    their choices; ``strategy`` allows, beside ``name``, that strategy's settings.
    ``strategies``: name -> object schema of its settings
    (:meth:`activedet.settings.Settings.json_schema` of each strategy's ``settings_type``).
    """
    schema = dataclass_schema(ExperimentConfig, choices_now())
    schema["properties"]["strategy"] = strategy_schema(strategies, StrategyConfig().name)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "activedet experiment config", **schema}


def with_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config dict (:meth:`ExperimentConfig.to_dict` form) read back through
    :func:`config_from_dict`, so a key added by a later release (``loop.initial_strategy``)
    takes its default, as the run had it. A config this release cannot read (a key since
    removed) is returned as recorded, for :func:`differences` to name."""
    try:
        return config_from_dict(json.loads(json.dumps(data))).to_dict()
    except ConfigError:
        return dict(data)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (:meth:`ExperimentConfig.to_dict`),
    each as ``key: old -> new`` (``(absent)`` for a key only one side has)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
