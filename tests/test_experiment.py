"""The experiment file: defaults, the shipped study.toml, errors, fingerprints."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from edgedp import config
from edgedp import experiment as experiments
from edgedp.experiment import Experiment, ExperimentError, TrainingRun

SHIPPED = Path(experiments.__file__).with_name(experiments.STUDY_FILE)


def _parse(text: str) -> Experiment:
    return experiments.parse_experiment(text, source="my.toml")


def _keys(value: object, prefix: str = "") -> set[str]:
    """Dotted names of every setting in a dataclass tree."""
    names = set()
    for item in dataclasses.fields(value):
        inner = getattr(value, item.name)
        if dataclasses.is_dataclass(inner):
            names |= _keys(inner, f"{prefix}{item.name}.")
        else:
            names.add(f"{prefix}{item.name}")
    return names


def test_shipped_file_equals_defaults():
    loaded = experiments.parse_experiment(experiments.default_experiment_text())

    assert loaded == Experiment()
    assert experiments.load_experiment(SHIPPED) == Experiment()
    assert experiments.load_experiment(None) == Experiment()


def test_shipped_file_documents_every_key():
    text = experiments.default_experiment_text()
    settings = tomllib.loads(text)
    expected = _keys(Experiment()) - {"quick"}

    written = set()
    for section, table in settings.items():
        for key, value in table.items():
            if isinstance(value, dict) and key != "class_mapping":
                written |= {f"{section}.{key}.{inner}" for inner in value}
            else:
                written.add(f"{section}.{key}")
    # Keys whose default is "unset" can only appear commented out.
    unset = {
        "data.cache",
        "data.base_url",
        "prepare.max_rows_per_file",
        "prepare.max_rows_per_class",
    }

    assert expected - written == unset
    for key in unset:
        assert f"# {key.split('.')[-1]} = " in text, key


def test_defaults_are_the_study_settings():
    defaults = Experiment()

    assert defaults.train.seeds == (0, 1, 2)
    assert defaults.train.epsilons == (None, 2.0, 1.0, 0.5)
    assert defaults.train.classifier.epochs == 15
    assert defaults.train.autoencoder.epochs == 25
    assert defaults.prepare.classes == config.STUDY_CLASSES
    assert defaults.bench.samples == 7000
    assert defaults.data.scenarios == config.IOT23_SCENARIOS
    assert len(defaults.runs()) == 2 * 4 * 3


def test_defaults_match_stage_defaults():
    train = pytest.importorskip("edgedp.train")
    export = pytest.importorskip("edgedp.export")
    bench = pytest.importorskip("edgedp.bench")
    prepare = inspect.signature(
        pytest.importorskip("edgedp.data.prepare").prepare_dataset
    ).parameters

    assert set(train.DEFAULT_BATCH_SIZE.values()) == {config.BATCH_SIZE}
    assert export.DEFAULT_CALIBRATION == config.CALIBRATION_SOURCE
    assert export.DEFAULT_CALIBRATION_SIZE == config.CALIBRATION_SIZE
    assert bench.DEFAULT_REPEAT == config.BENCH_REPEATS
    assert set(train.MODEL_CHOICES.values()) == set(experiments.MODELS)
    assert prepare["feature_set"].default == config.FEATURE_SET
    assert prepare["split"].default == config.SPLIT_METHOD


def test_missing_keys_keep_defaults():
    loaded = _parse("[train]\nseeds = [7]\n\n[train.autoencoder]\nepochs = 4\n")

    assert loaded.train.seeds == (7,)
    assert loaded.train.autoencoder.epochs == 4
    assert loaded.train.autoencoder.batch_size == config.BATCH_SIZE
    assert loaded.train.classifier == Experiment().train.classifier
    assert replace(loaded, train=Experiment().train) == Experiment()


def test_epsilon_none_and_whole_numbers():
    loaded = _parse('[train]\nepsilons = ["none", 2, 0.5]\n')

    assert loaded.train.epsilons == (None, 2.0, 0.5)
    assert all(isinstance(e, float) for e in loaded.train.epsilons[1:])


def test_epsilon_maximum_accepted():
    loaded = _parse(f"[train]\nepsilons = [{config.MAX_EPSILON}]\n")

    assert loaded.train.epsilons == (config.MAX_EPSILON,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[trian]\nseeds = [1]\n", "unknown key 'trian' in the top level (did you"),
        ("[train]\nepoch = 3\n", "unknown key 'epoch' in [train]"),
        ("[train.classifier]\nlr = 0.1\n", "unknown key 'lr' in [train.classifier]"),
        ("[quick.bench]\nsample = 10\n", "unknown key 'sample' in [quick.bench]"),
    ],
)
def test_unknown_key_names_valid_ones(text, message):
    with pytest.raises(ExperimentError) as caught:
        _parse(text)

    assert message in str(caught.value)
    assert "valid keys there are" in str(caught.value)
    assert str(caught.value).startswith("my.toml: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nseeds = [0, 0]\n", "[train] seeds must be a non-empty list"),
        ("[train]\nseeds = []\n", "[train] seeds must be a non-empty list"),
        ('[train]\nepsilons = ["none", -1]\n', "[train] epsilons must"),
        ("[train]\nepsilons = [inf]\n", "[train] epsilons must"),
        ("[train]\nepsilons = [1000.0]\n", "positive numbers up to 20"),
        ("[quick.train]\nepsilons = [1e6]\n", "[quick.train] epsilons must"),
        ("[train]\ndelta = 1.5\n", "[train] delta must be at least 1e-10"),
        ("[train]\ndelta = 1e-17\n", "[train] delta must be at least 1e-10"),
        ("[train]\nmax_grad_norm = 0\n", "[train] max_grad_norm must be a positive"),
        ('[train]\nmodels = ["gbm"]\n', "[train] models must"),
        ("[train.autoencoder]\nepochs = 0\n", "[train.autoencoder] epochs must"),
        ("[train.classifier]\nbatch_size = 2.5\n", "batch_size must be a whole"),
        ("[train]\nclassifier = 3\n", "classifier must be a table"),
        ('[prepare]\nfeature_set = "all"\n', "feature_set must be one of paper"),
        (
            '[prepare]\nsplit = "time"\n',
            "split must be one of random, independent, capture",
        ),
        ('[prepare]\nclasses = ["Benign"]\n', "at least two classes"),
        ("[prepare]\nmax_rows_per_file = 0\n", "max_rows_per_file must be"),
        ("[prepare]\nmax_rows_per_class = -5\n", "max_rows_per_class must be"),
        ('[prepare.class_mapping]\n"C&C-*" = "CC"\n', 'maps "C&C-*" to "CC"'),
        ('[optimize]\ncalibration = "test"\n', "calibration must be one of"),
        ("[bench]\nsamples = true\n", "[bench] samples must be a whole number"),
        ("[bench]\nrepeats = 0\n", "[bench] repeats must be a whole number"),
        (
            "[membership]\nsamples = 99\n",
            "samples must be a whole number of at least 100",
        ),
        ('[data]\nscenarios = ["../up"]\n', "[data] scenarios must"),
        ('[data]\nbase_url = "ftp://x"\n', "base_url must be an http://"),
        ('[prepare]\nclasses = ["DDoS", "C&C"]\n', "add Benign or drop autoencoder"),
        ("[quick.train]\nseeds = [-1]\n", "[quick.train] seeds must"),
        ("[quick]\ntrain = 3\n", "[quick] train must be a table"),
        ("train = 3\n", "train must be a table"),
        ("[train\n", "is not valid TOML"),
    ],
)
def test_bad_file_fails_clearly(text, message):
    with pytest.raises(ExperimentError) as caught:
        _parse(text)

    assert message in str(caught.value)
    assert "my.toml" in str(caught.value)


def test_missing_file_points_to_show(tmp_path):
    with pytest.raises(ExperimentError, match="edgedp config --show"):
        experiments.load_experiment(tmp_path / "absent.toml")


def test_relative_paths_follow_file_folder(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "exp.toml").write_text(
        f'[data]\npaths = ["logs", "{tmp_path / "abs"}"]\ncache = "cache"\n'
    )
    monkeypatch.chdir(tmp_path)

    loaded = experiments.load_experiment("study/exp.toml")

    assert loaded.data.paths == (str(folder / "logs"), str(tmp_path / "abs"))
    assert loaded.data.cache == str(folder / "cache")


def test_quick_profile_applies_overrides():
    quick = Experiment().quick_profile()

    assert quick.train.seeds == (0,)
    assert quick.train.epsilons == (None, 1.0)
    assert quick.train.classifier.epochs == 3
    assert quick.train.classifier.batch_size == 256
    assert quick.train.autoencoder.batch_size == 256
    assert quick.prepare.max_rows_per_class == 2000
    assert quick.prepare.max_rows_per_file is None
    assert quick.bench.samples == 1000
    assert quick.data == Experiment().data
    assert len(quick.runs()) == 4


def test_file_quick_keys_merge_with_defaults():
    loaded = _parse("[quick.train]\nseeds = [4]\n\n[quick.bench]\nsamples = 50\n")
    quick = loaded.quick_profile()

    assert quick.train.seeds == (4,)
    assert quick.bench.samples == 50
    assert quick.train.epsilons == (None, 1.0)
    assert quick.bench.repeats == 2


def test_quick_profile_follows_file_settings():
    loaded = _parse("[train]\ndelta = 1e-6\n")

    assert loaded.quick_profile().train.delta == 1e-6


def test_fingerprint_same_for_equal_settings():
    from_file = experiments.load_experiment(SHIPPED)
    run = TrainingRun("classifier", 1.0, 0)

    for stage in experiments.STAGES:
        assert from_file.fingerprint(stage) == Experiment().fingerprint(stage)
    assert len(Experiment().fingerprint("train", run)) == 16
    whole = _parse('[train]\nepsilons = ["none", 2, 1, 0.5]\n')
    assert whole.fingerprint("train", run) == Experiment().fingerprint("train", run)


def test_fingerprint_tracks_relevant_settings():
    base = Experiment()
    run = TrainingRun("classifier", 1.0, 0)
    changed_split = _parse("[prepare]\nsplit_seed = 1\n")
    changed_epochs = _parse("[train.classifier]\nepochs = 2\n")
    changed_calibration = _parse('[optimize]\ncalibration = "synthetic"\n')

    assert changed_split.fingerprint("prepare") != base.fingerprint("prepare")
    assert changed_split.fingerprint("train", run) != base.fingerprint("train", run)
    assert changed_epochs.fingerprint("train", run) != base.fingerprint("train", run)
    assert changed_epochs.fingerprint("prepare") == base.fingerprint("prepare")
    assert changed_calibration.fingerprint("train", run) == base.fingerprint(
        "train", run
    )
    assert changed_calibration.fingerprint("optimize", run) != base.fingerprint(
        "optimize", run
    )


def test_fingerprint_of_run_ignores_rest_of_grid():
    base = Experiment()
    run = TrainingRun("classifier", 1.0, 0)
    more_seeds = _parse("[train]\nseeds = [0, 1, 2, 3]\n")
    other_model = _parse("[train.autoencoder]\nepochs = 99\n")
    other_cache = _parse('[data]\ncache = "/elsewhere"\n')

    assert more_seeds.fingerprint("train", run) == base.fingerprint("train", run)
    assert other_model.fingerprint("train", run) == base.fingerprint("train", run)
    assert other_cache.fingerprint("bench") == base.fingerprint("bench")
    assert more_seeds.fingerprint("train") != base.fingerprint("train")
    assert base.fingerprint("train", run) != base.fingerprint(
        "train", TrainingRun("classifier", 1.0, 1)
    )


def test_fingerprint_stable_across_processes():
    code = (
        "from edgedp.experiment import Experiment, TrainingRun;"
        "print(Experiment().fingerprint('bench', TrainingRun('autoencoder', None, 2)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }

    assert outputs == {
        Experiment().fingerprint("bench", TrainingRun("autoencoder", None, 2))
    }


def test_run_names():
    runs = Experiment().runs()

    assert runs[0].name == "classifier-plain-seed0"
    assert TrainingRun("autoencoder", 0.5, 2).name == "autoencoder-eps0.5-seed2"
    assert len({run.name for run in runs}) == len(runs)


def _edgedp(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from edgedp.cli import main; main()", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_config_show_prints_shipped_file():
    result = _edgedp("config", "--show")

    assert result.returncode == 0, result.stderr
    assert result.stdout == SHIPPED.read_text(encoding="utf-8")


def test_config_check_rejects_bad_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nseeds = [0, 0]\n")

    result = _edgedp("config", "--check", str(path))

    assert result.returncode == 1
    assert "[train] seeds must be" in result.stderr
