"""The experiment file: every setting of one study run, checked before it starts.

An `Experiment` is a frozen tree of dataclasses with one section per stage
(`data`, `prepare`, `train`, `optimize`, `bench`, `membership`) and a `quick`
profile that `edgedp run --quick` applies on top. Each section checks its
values in `__post_init__`, so an impossible setting fails before any work
starts, with a message that names the key and the values it accepts.

`load_experiment` reads a TOML file. Every key that the file leaves out keeps
its default from `edgedp.config`, and an unknown key is an error. The package
ships `study.toml`, a commented copy of all defaults for users to edit.

`Experiment.fingerprint` hashes the settings that a stage's outputs depend on,
so a resumed run can tell whether a finished stage was made with the same
settings. It covers settings only, not the content of input files or the
versions of the code.

This module uses only the standard library.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from edgedp import config
from edgedp.data.download import check_scenario_name

STUDY_FILE = "study.toml"

STAGES: tuple[str, ...] = (
    "data",
    "prepare",
    "train",
    "optimize",
    "bench",
    "membership",
)
# The names of `edgedp.models.CLASSIFIER` and `AUTOENCODER`. That module
# imports torch, which this one must not.
MODELS: tuple[str, ...] = ("classifier", "autoencoder")
FEATURE_SETS: tuple[str, ...] = ("paper", "extended")
SPLIT_METHODS: tuple[str, ...] = ("random", "independent", "capture")
CALIBRATION_SOURCES: tuple[str, ...] = ("auto", "validation", "train", "synthetic")

# Spelling of the non-private baseline in the `epsilons` list of an experiment
# file, because TOML has no null value.
NO_PRIVACY = "none"

MAX_SEED = config.MAX_SEED

Override = tuple[tuple[str, ...], Any]
"""One setting of the quick profile: key path (section, ..., key) and value."""


class ExperimentError(ValueError):
    """An experiment setting or file is invalid."""


# Checks shared by the sections. Each raises ExperimentError naming the key.


def _show(value: Any) -> str:
    """Format a value the way the experiment file writes it."""
    if value is None:
        return f'"{NO_PRIVACY}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_whole(
    key: str, value: Any, *, minimum: int, maximum: int | None = None
) -> None:
    in_range = _is_whole(value) and value >= minimum
    if maximum is not None:
        in_range = in_range and value <= maximum
    if not in_range:
        bound = (
            f"from {minimum} to {maximum}"
            if maximum is not None
            else f"of at least {minimum}"
        )
        raise ExperimentError(
            f"{key} must be a whole number {bound}, got {_show(value)}"
        )


def _check_positive(key: str, value: Any) -> None:
    if not (_is_finite_number(value) and value > 0):
        raise ExperimentError(f"{key} must be a positive number, got {_show(value)}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExperimentError(
            f"{key} must be one of {', '.join(choices)}, got {_show(value)}"
        )


def _check_list(
    key: str, value: Any, item_ok: Callable[[Any], bool], items: str
) -> None:
    """Check that `value` is a non-empty tuple of distinct valid items."""
    valid = (
        isinstance(value, tuple)
        and len(value) > 0
        and all(item_ok(item) for item in value)
        and len(set(value)) == len(value)
    )
    if not valid:
        raise ExperimentError(
            f"{key} must be a non-empty list of distinct {items}, got {_show(value)}"
        )


def _set(instance: Any, key: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass inside its `__post_init__`."""
    object.__setattr__(instance, key, value)


@dataclass(frozen=True)
class DataSettings:
    """Sources of the flow logs.

    With `paths` empty, the run downloads `scenarios` from `base_url` into
    `cache`. `cache` and `base_url` take their defaults from
    `edgedp.data.download` when None.
    """

    paths: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = config.IOT23_SCENARIOS
    cache: str | None = None
    base_url: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.paths, tuple) or not all(
            isinstance(path, str) and path for path in self.paths
        ):
            raise ExperimentError(
                f"paths must be a list of files or folders, got {_show(self.paths)}"
            )
        _check_list(
            "scenarios", self.scenarios, _is_scenario, "IoT-23 scenario folder names"
        )
        if self.cache is not None and not (isinstance(self.cache, str) and self.cache):
            raise ExperimentError(f"cache must be a folder, got {_show(self.cache)}")
        if self.base_url is not None and not (
            isinstance(self.base_url, str)
            and self.base_url.startswith(("http://", "https://"))
        ):
            raise ExperimentError(
                "base_url must be an http:// or https:// URL, "
                f"got {_show(self.base_url)}"
            )


def _is_scenario(value: Any) -> bool:
    try:
        check_scenario_name(value)
    except (ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class PrepareSettings:
    """Settings that turn logs into the encoded train, validation and test splits.

    `class_mapping` contains (pattern, class) pairs in file order. A pattern is
    a detailed-label or a shell-style pattern such as `C&C-*`.
    `max_rows_per_file` None reads every row, and `max_rows_per_class`
    None keeps every flow of each class.
    """

    feature_set: str = config.FEATURE_SET
    classes: tuple[str, ...] = config.STUDY_CLASSES
    class_mapping: tuple[tuple[str, str], ...] = ()
    split: str = config.SPLIT_METHOD
    split_seed: int = config.DEFAULT_SEED
    max_rows_per_file: int | None = None
    max_rows_per_class: int | None = None

    def __post_init__(self) -> None:
        _check_choice("feature_set", self.feature_set, FEATURE_SETS)
        _check_list(
            "classes",
            self.classes,
            lambda name: isinstance(name, str) and bool(name),
            "class names",
        )
        if len(self.classes) < 2:
            raise ExperimentError(
                f"classes must name at least two classes, got {_show(self.classes)}"
            )
        if not isinstance(self.class_mapping, tuple) or not all(
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(part, str) and part for part in pair)
            for pair in self.class_mapping
        ):
            raise ExperimentError(
                'class_mapping must be a table of "pattern" = "class" pairs, '
                f"got {_show(self.class_mapping)}"
            )
        for pattern, target in self.class_mapping:
            if target not in self.classes:
                raise ExperimentError(
                    f"class_mapping maps {_show(pattern)} to {_show(target)}, "
                    f"which is not in classes {_show(self.classes)}; add it to "
                    "classes or map to one of them"
                )
        _check_choice("split", self.split, SPLIT_METHODS)
        _check_whole("split_seed", self.split_seed, minimum=0, maximum=MAX_SEED)
        for name in ("max_rows_per_file", "max_rows_per_class"):
            if getattr(self, name) is not None:
                _check_whole(name, getattr(self, name), minimum=1)


@dataclass(frozen=True)
class ModelSettings:
    """Training length and batch size of one model."""

    epochs: int
    batch_size: int = config.BATCH_SIZE
    """Expected rows per step: Poisson sampling draws each row with
    probability batch_size / training rows."""

    def __post_init__(self) -> None:
        _check_whole("epochs", self.epochs, minimum=1)
        _check_whole("batch_size", self.batch_size, minimum=1)


def _is_epsilon(value: Any) -> bool:
    return value is None or (
        _is_finite_number(value) and 0 < value <= config.MAX_EPSILON
    )


def _is_seed(value: Any) -> bool:
    return _is_whole(value) and 0 <= value <= MAX_SEED


@dataclass(frozen=True)
class TrainSettings:
    """The training grid (models x epsilons x seeds) and the DP-SGD settings.

    An epsilon of None is the non-private baseline. `delta` must also be
    below 1 / training rows, which only training can check.
    """

    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = config.STUDY_SEEDS
    epsilons: tuple[float | None, ...] = config.STUDY_EPSILONS
    delta: float = config.DEFAULT_DELTA
    max_grad_norm: float = config.DEFAULT_MAX_GRAD_NORM
    classifier: ModelSettings = ModelSettings(config.CLASSIFIER_EPOCHS)
    autoencoder: ModelSettings = ModelSettings(config.AUTOENCODER_EPOCHS)

    def __post_init__(self) -> None:
        _check_list(
            "models", self.models, lambda m: m in MODELS, f"names from {_show(MODELS)}"
        )
        _check_list(
            "seeds", self.seeds, _is_seed, f"whole numbers from 0 to {MAX_SEED}"
        )
        _check_list(
            "epsilons",
            self.epsilons,
            _is_epsilon,
            f"positive numbers up to {config.MAX_EPSILON:g} (the largest "
            f'target that training accepts) or "{NO_PRIVACY}" for no privacy',
        )
        _set(self, "epsilons", tuple(_as_float(e) for e in self.epsilons))

        if not (_is_finite_number(self.delta) and config.MIN_DELTA <= self.delta < 1):
            raise ExperimentError(
                f"delta must be at least {config.MIN_DELTA:g} and below 1 "
                f"(typically below 1 / training rows, such as 1e-5), "
                f"got {_show(self.delta)}"
            )
        _set(self, "delta", float(self.delta))
        _check_positive("max_grad_norm", self.max_grad_norm)
        _set(self, "max_grad_norm", float(self.max_grad_norm))

        for name in MODELS:
            if not isinstance(getattr(self, name), ModelSettings):
                raise ExperimentError(
                    f"{name} must be a table with epochs and batch_size, "
                    f"got {_show(getattr(self, name))}"
                )

    def model(self, name: str) -> ModelSettings:
        """Return the settings of model `name` (`classifier` or `autoencoder`)."""
        _check_choice("model", name, MODELS)
        settings: ModelSettings = getattr(self, name)
        return settings


def _as_float(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class OptimizeSettings:
    """Int8 calibration of the LiteRT conversion: source and number of flows.

    `train` calibrates on private training rows, so the DP guarantee no
    longer covers the int8 model; `validation` and `synthetic` keep it.
    """

    calibration: str = config.CALIBRATION_SOURCE
    calibration_size: int = config.CALIBRATION_SIZE

    def __post_init__(self) -> None:
        _check_choice("calibration", self.calibration, CALIBRATION_SOURCES)
        _check_whole("calibration_size", self.calibration_size, minimum=1)


@dataclass(frozen=True)
class BenchSettings:
    """Inference timing: test flows per measurement and repeats per format."""

    samples: int = config.STUDY_BENCH_FLOWS
    repeats: int = config.BENCH_REPEATS

    def __post_init__(self) -> None:
        _check_whole("samples", self.samples, minimum=1)
        _check_whole("repeats", self.repeats, minimum=1)


@dataclass(frozen=True)
class MembershipSettings:
    """Membership inference on each grid cell's torch model (`edgedp audit`).

    `samples` training rows are drawn as members and as many test rows as
    non-members, fewer when the rows run out. Each cell's sample is seeded
    with the cell's training seed.
    """

    samples: int = config.MEMBERSHIP_SAMPLES

    def __post_init__(self) -> None:
        _check_whole("samples", self.samples, minimum=config.MIN_MEMBERSHIP_SAMPLES)


@dataclass(frozen=True)
class TrainingRun:
    """One cell of the training grid: a model, a privacy level and a seed."""

    model: str
    epsilon: float | None
    seed: int

    @property
    def name(self) -> str:
        """Folder-safe name such as `classifier-eps0.5-seed2` or `-plain-`."""
        privacy = "plain" if self.epsilon is None else f"eps{self.epsilon:g}"
        return f"{self.model}-{privacy}-seed{self.seed}"


def _flatten(table: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[Override]:
    """Turn nested tables into (key path, value) pairs.

    `class_mapping` is a value, not a level, although TOML writes it as a table.
    """
    pairs: list[Override] = []
    for key, value in table.items():
        if isinstance(value, Mapping) and key != "class_mapping":
            pairs.extend(_flatten(value, (*prefix, key)))
        else:
            pairs.append(((*prefix, key), value))
    return pairs


def _canonical_overrides(overrides: Any) -> tuple[Override, ...]:
    """Convert override values as the loader does, drop repeats, sort by path."""
    by_path: dict[tuple[str, ...], Any] = {}
    for entry in overrides:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], tuple)
            and entry[0]
            and all(isinstance(key, str) for key in entry[0])
        ):
            raise ExperimentError(
                f"quick must contain (key path, value) pairs, got {_show(entry)}"
            )
        path, value = entry
        if path[0] == "quick":
            raise ExperimentError("quick cannot contain another [quick] table")
        by_path[path] = _value_from_toml(path[-1], value)
    return tuple(sorted(by_path.items(), key=lambda item: item[0]))


def _nest(overrides: tuple[Override, ...]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for path, value in overrides:
        level = table
        for depth, key in enumerate(path[:-1], start=1):
            level = level.setdefault(key, {})
            if not isinstance(level, dict):
                raise ExperimentError(
                    f"[quick] {'.'.join(path[:depth])} must be a table, "
                    f"got {_show(level)}"
                )
        if isinstance(level.get(path[-1]), dict):
            raise ExperimentError(
                f"[quick] {'.'.join(path)} must be a table, got {_show(value)}"
            )
        level[path[-1]] = value
    return table


def _freeze(value: Any) -> Any:
    """Turn lists into tuples, recursively, so settings compare and hash."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


@dataclass(frozen=True)
class Experiment:
    """Every setting of one study run. `study.toml` explains each one."""

    data: DataSettings = field(default_factory=DataSettings)
    prepare: PrepareSettings = field(default_factory=PrepareSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    optimize: OptimizeSettings = field(default_factory=OptimizeSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    membership: MembershipSettings = field(default_factory=MembershipSettings)
    quick: tuple[Override, ...] = tuple(_flatten(config.QUICK_PROFILE))
    """Settings that `quick_profile()` replaces, as (key path, value) pairs.
    They are kept sorted by key path, so equal profiles compare equal."""

    def __post_init__(self) -> None:
        _set(self, "quick", _canonical_overrides(self.quick))
        for stage in STAGES:
            section = getattr(self, stage)
            expected = _SECTION_TYPES[stage]
            if not isinstance(section, expected):
                raise ExperimentError(
                    f"{stage} must be a {expected.__name__}, got {_show(section)}"
                )
        if (
            "autoencoder" in self.train.models
            and config.BENIGN_CLASS not in self.prepare.classes
        ):
            raise ExperimentError(
                f"the autoencoder trains on {config.BENIGN_CLASS} flows, but "
                f"prepare.classes {_show(self.prepare.classes)} leaves them out; "
                f"add {config.BENIGN_CLASS} or drop autoencoder from train.models"
            )
        if self.quick:
            # Fails here, not at `--quick` time, when the profile is invalid.
            self.quick_profile()

    def quick_profile(self) -> Experiment:
        """Return this experiment with the quick profile's settings applied."""
        plain = replace(self, quick=())
        return _merge(plain, _nest(self.quick), "quick")

    def runs(self) -> list[TrainingRun]:
        """Return the training grid, model by model, epsilon by epsilon."""
        return [
            TrainingRun(model, epsilon, seed)
            for model in self.train.models
            for epsilon in self.train.epsilons
            for seed in self.train.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        """Return every setting as JSON-able values (None stays None)."""
        value = {stage: _jsonable(getattr(self, stage)) for stage in STAGES}
        value["prepare"]["class_mapping"] = dict(self.prepare.class_mapping)
        value["quick"] = _jsonable(_nest(self.quick))
        return value

    def stage_settings(
        self, stage: str, run: TrainingRun | None = None
    ) -> dict[str, Any]:
        """Return the settings that `stage`'s outputs depend on.

        Each stage includes the settings of the stages before it in the
        order data, prepare, train, optimize, bench. The membership stage
        includes data, prepare and train and its own section, but not
        optimize or bench, because the attack runs on the torch weights. With
        `run`, the train, optimize, bench and membership settings are those
        of that one grid cell, so adding a seed or changing the other model's
        epochs leaves the cell's settings unchanged. Settings that do not
        change results (`cache`, `base_url` and the quick profile) are left
        out.
        """
        _check_choice("stage", stage, STAGES)
        if self.data.paths:
            settings: dict[str, Any] = {"data": {"paths": list(self.data.paths)}}
        else:
            settings = {"data": {"scenarios": list(self.data.scenarios)}}
        if stage == "data":
            return settings

        settings["prepare"] = self.to_dict()["prepare"]
        if stage == "prepare":
            return settings

        train = self.to_dict()["train"]
        if run is not None:
            train = {
                "model": run.model,
                "epsilon": run.epsilon,
                "seed": run.seed,
                "delta": self.train.delta,
                "max_grad_norm": self.train.max_grad_norm,
                **_jsonable(self.train.model(run.model)),
            }
        settings["train"] = train
        if stage == "train":
            return settings
        if stage == "membership":
            settings["membership"] = _jsonable(self.membership)
            return settings

        settings["optimize"] = _jsonable(self.optimize)
        if stage == "optimize":
            return settings

        settings["bench"] = _jsonable(self.bench)
        return settings

    def fingerprint(self, stage: str, run: TrainingRun | None = None) -> str:
        """Return a 16-hex-digit hash of `stage_settings(stage, run)`.

        The hash is the sha256 of the settings as JSON with sorted keys, so it
        is the same in every process and on every machine.
        """
        text = json.dumps(
            self.stage_settings(stage, run),
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_SECTION_TYPES: dict[str, type] = {
    "data": DataSettings,
    "prepare": PrepareSettings,
    "train": TrainSettings,
    "optimize": OptimizeSettings,
    "bench": BenchSettings,
    "membership": MembershipSettings,
}


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


def _merge(instance: Any, table: Mapping[str, Any], where: str) -> Any:
    """Return a copy of dataclass `instance` with the keys of `table` replaced.

    Raises:
        ExperimentError: a key is unknown, or a value fails the section's
            checks. The message names the table, such as `[train]`.
    """
    valid = [f.name for f in fields(instance)]
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in valid:
            raise ExperimentError(_unknown_key_message(key, where, valid))
        current = getattr(instance, key)
        if is_dataclass(current):
            inner = f"{where}.{key}" if where else key
            if not isinstance(value, Mapping):
                raise ExperimentError(
                    f"{key} must be a table ([{inner}]), got {_show(value)}"
                )
            changes[key] = _merge(current, value, inner)
        else:
            changes[key] = _value_from_toml(key, value)

    try:
        return replace(instance, **changes)
    except ExperimentError as error:
        if not where or str(error).startswith("["):
            raise
        raise ExperimentError(f"[{where}] {error}") from None


def _unknown_key_message(key: str, where: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    table = "the top level" if not where else f"[{where}]"
    return (
        f"unknown key {key!r} in {table}{hint}; valid keys there are {', '.join(valid)}"
    )


def _value_from_toml(key: str, value: Any) -> Any:
    """Convert a TOML value to the form the dataclasses store."""
    if key == "class_mapping" and isinstance(value, Mapping):
        return tuple(value.items())
    if key == "epsilons" and isinstance(value, list | tuple):
        return tuple(None if item == NO_PRIVACY else item for item in value)
    return _freeze(value)


def parse_experiment(
    text: str, *, source: str = "<string>", base_folder: str | Path | None = None
) -> Experiment:
    """Build an Experiment from TOML text; missing keys keep their defaults.

    Args:
        text: the experiment file's content.
        source: name of the file, used in error messages.
        base_folder: folder that relative `data.paths` and `data.cache` are
            resolved against; None leaves them as written.

    Raises:
        ExperimentError: the text is not TOML, or a key or value is invalid.
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{source} is not valid TOML: {error}") from error

    quick = table.pop("quick", {})
    if not isinstance(quick, Mapping):
        raise ExperimentError(f"{source}: quick must be a table ([quick])")
    try:
        merged = _merge(Experiment(quick=()), table, "")
        # The file's quick keys replace the default profile's key by key.
        profile = (*Experiment().quick, *_flatten(quick))
        experiment = replace(merged, quick=profile)
    except ExperimentError as error:
        raise ExperimentError(f"{source}: {error}") from None

    if base_folder is not None:
        experiment = _resolve_paths(experiment, Path(base_folder))
    return experiment


def _resolve_paths(experiment: Experiment, base_folder: Path) -> Experiment:
    def resolve(path: str) -> str:
        return str((base_folder / Path(path).expanduser()).resolve())

    data = experiment.data
    data = replace(
        data,
        paths=tuple(resolve(path) for path in data.paths),
        cache=resolve(data.cache) if data.cache is not None else None,
    )
    return replace(experiment, data=data)


def load_experiment(path: str | Path | None = None) -> Experiment:
    """Read an experiment file, or return the defaults when `path` is None.

    Relative `data.paths` and `data.cache` in the file are taken relative to
    the file's own folder.

    Raises:
        ExperimentError: the file is missing, is not TOML, or has an unknown
            key or an invalid value.
    """
    if path is None:
        return Experiment()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExperimentError(
            f"experiment file {path} not found; `edgedp config --show > "
            f"{path.name}` writes the default one to edit"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExperimentError(f"cannot read experiment file {path}: {error}") from None
    return parse_experiment(text, source=str(path), base_folder=path.parent)


def default_experiment_text() -> str:
    """Return the text of the shipped, commented `study.toml`."""
    return resources.files("edgedp").joinpath(STUDY_FILE).read_text(encoding="utf-8")
