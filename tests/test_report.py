"""Report helpers: summaries over seeds, grouping and Markdown formatting."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from edgedp import config
from edgedp.bundle import (
    INT8_MODEL,
    TORCH_WEIGHTS,
    add_files,
    create_bundle,
    load_bundle,
    sha256_file,
    write_manifest,
)
from edgedp.privacy import non_private_ledger
from edgedp.report import ReportError, write_report
from edgedp.report.collect import (
    CLASSIFIER_METRICS,
    _classifier_value,
    _metric_rows,
    collect_data,
    collect_efficiency,
    collect_epochs,
    collect_privacy,
    grid_cells,
    privacy_label,
    read_bundles,
    read_run,
    summarize,
)
from edgedp.report.figures import seeds_text
from edgedp.report.markdown import (
    _classifier_section,
    _data_section,
    _efficiency_section,
    _privacy_section,
    mean_std,
    table,
)


def test_summarize_two_seeds():
    summary = summarize([0.5, 0.7])
    assert summary["mean"] == pytest.approx(0.6)
    assert summary["std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert summary["n"] == 2
    assert summary["values"] == [0.5, 0.7]


def test_summarize_one_seed_has_no_std():
    summary = summarize([0.25])
    assert summary["mean"] == 0.25
    assert summary["std"] is None


def test_mean_std_format():
    assert mean_std(summarize([0.5, 0.7])) == "0.6000 ± 0.1414"
    assert mean_std(summarize([0.5])) == "0.5000"
    assert mean_std(None) == "–"


def test_privacy_label():
    assert privacy_label(None) == "no DP"
    assert privacy_label(0.5) == "eps 0.5"
    assert privacy_label(2.0) == "eps 2"


def test_grid_cells_follow_experiment_order():
    experiment = {
        "train": {
            "models": ["classifier"],
            "epsilons": [None, 0.5],
            "seeds": [0, 1],
        }
    }
    assert grid_cells(experiment) == [
        "classifier-plain-seed0",
        "classifier-plain-seed1",
        "classifier-eps0.5-seed0",
        "classifier-eps0.5-seed1",
    ]
    assert grid_cells(None) is None


def _manifest(name: str, epsilon: float | None, seed: int, accuracy: float) -> dict:
    scores = {metric: accuracy for metric in CLASSIFIER_METRICS}
    return {
        "name": name,
        "model": {"kind": "classifier"},
        "training": {"epsilon": epsilon, "seed": seed},
        "metrics": {"test": {"torch": scores}},
    }


def test_metric_rows_group_seeds_by_privacy():
    manifests = [
        _manifest("c-eps1-seed0", 1.0, 0, 0.80),
        _manifest("c-plain-seed0", None, 0, 0.90),
        _manifest("c-eps1-seed1", 1.0, 1, 0.84),
        _manifest("c-plain-seed1", None, 1, 0.94),
    ]
    rows = _metric_rows(manifests, "classifier", ("accuracy",), _classifier_value)
    assert [row["privacy"] for row in rows] == ["no DP", "eps 1"]
    assert rows[0]["bundles"] == ["c-plain-seed0", "c-plain-seed1"]
    assert rows[0]["metrics"]["accuracy"]["mean"] == pytest.approx(0.92)
    assert rows[1]["metrics"]["accuracy"]["values"] == [0.80, 0.84]
    assert rows[1]["seeds"] == [0, 1]


def test_metric_rows_skip_unscored_format():
    rows = _metric_rows(
        [_manifest("c-plain-seed0", None, 0, 0.9)],
        "classifier",
        ("accuracy",),
        _classifier_value,
    )
    assert [row["format"] for row in rows] == ["torch"]


def test_table_aligns_numbers():
    text = table(["name", "rows"], [["a|b", 1200], ["c", None]])
    lines = text.splitlines()
    assert lines[1] == "| --- | ---: |"
    assert lines[2] == "| a\\|b | 1,200 |"
    assert lines[3] == "| c | – |"


def test_write_report_needs_dataset(tmp_path):
    with pytest.raises(ReportError, match="dataset.json not found"):
        write_report(tmp_path)


def test_write_report_rejects_broken_state(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "dataset.json").write_text(json.dumps({}))
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ReportError, match="state.json is not valid JSON"):
        write_report(tmp_path)


def _dataset_with_rejected_file() -> dict:
    return {
        "feature_set": "paper",
        "feature_names": ["duration"],
        "classes": ["Benign"],
        "inputs": [{"path": "/logs/good.conn.log", "format": "zeek", "rows_read": 5}],
        "rejected": [
            {"path": "/logs/bad.conn.log", "reason": "no header row\nfound"},
        ],
        "splits": {"train": {"rows": 5, "classes": {"Benign": 5}}},
    }


def test_data_section_lists_rejected_files():
    data = collect_data(_dataset_with_rejected_file())
    assert data["rejected"] == [
        {"path": "/logs/bad.conn.log", "reason": "no header row\nfound"}
    ]
    text = "\n".join(_data_section(data))
    assert "- `/logs/bad.conn.log`: no header row found" in text
    assert "Files read: 1." in text


def test_data_section_lists_skipped_folders():
    dataset = _dataset_with_rejected_file()
    dataset["skipped_folders"] = [
        {"path": "/logs/runs/a", "marker": "state.json", "kind": "run folder"}
    ]

    data = collect_data(dataset)
    text = "\n".join(_data_section(data))

    assert data["skipped_folders"] == dataset["skipped_folders"]
    assert "contain edgedp output: 1." in text
    assert "- `/logs/runs/a`: run folder (`state.json`)" in text


def _plain_manifest() -> dict:
    ledger = non_private_ledger(population="train split", rows=100, steps=20)
    ledger["calibration"] = {
        "source": "validation",
        "flows": 1000,
        "training_rows_covered": None,
        "exposed_flows": "validation",
    }
    return {
        "name": "classifier-plain-seed0",
        "model": {"kind": "classifier"},
        "training": {"epsilon": None, "seed": 0},
        "privacy": ledger,
    }


def test_privacy_ledger_plain_bundle():
    (row,) = collect_privacy([_plain_manifest()])
    assert row["private"] is False
    assert row["int8_training_rows_covered"] is None
    lines = "\n".join(_privacy_section([row])).splitlines()
    (line,) = [line for line in lines if line.startswith("| classifier-plain")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[-1] == "no DP"
    assert cells[-2] == "no DP"
    assert cells[1] == "∞"
    assert cells[2:4] == ["n/a", "n/a"]
    assert cells[4] == "n/a", "sigma of a bundle without DP"
    assert cells[6] == "20"
    assert cells[7:10] == ["n/a", "n/a", "n/a"]
    assert cells[-3] == "validation (1,000)"


def _private_manifest(calibration: dict) -> dict:
    manifest = _plain_manifest()
    manifest["training"]["epsilon"] = 1.0
    manifest["privacy"].update({"private": True, "epsilon": 0.99, "delta": 1e-5})
    manifest["privacy"]["calibration"] = calibration
    return manifest


def _ledger_cells(row: dict) -> list[str]:
    lines = "\n".join(_privacy_section([row])).splitlines()
    (line,) = [line for line in lines if line.startswith("| classifier-plain")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_privacy_ledger_private_bundle_keeps_coverage():
    manifest = _private_manifest(
        {
            "source": "validation",
            "flows": 1000,
            "training_rows_covered": True,
            "exposed_flows": "validation",
            "fallback_from": "synthetic",
        }
    )

    (row,) = collect_privacy([manifest])

    assert row["int8_training_rows_covered"] is True
    assert row["int8_exposed_flows"] == "validation"
    assert _ledger_cells(row)[-3:] == [
        "validation (1,000), fell back from synthetic",
        "yes",
        "validation flows",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("synthetic", ["yes", "none"]),
        ("validation", ["yes", "validation flows"]),
        ("train", ["no", "training flows"]),
    ],
)
def test_privacy_ledger_reads_older_calibration(source, expected):
    # Ledgers from before the two coverage fields recorded `covered_by_dp`.
    calibration = {
        "source": source,
        "flows": 50,
        "covered_by_dp": source == "synthetic",
    }

    (row,) = collect_privacy([_private_manifest(calibration)])

    assert _ledger_cells(row)[-2:] == expected
    assert _ledger_cells(row)[-3] == f"{source} (50)"


def test_privacy_section_states_composition():
    (row,) = collect_privacy([_plain_manifest()])

    text = " ".join("\n".join(_privacy_section([row])).split())

    assert "Each epsilon covers its own bundle only." in text
    assert "costs up to epsilon 2 together" in text


def test_classifier_section_flags_other_setup():
    capped = {"classes": ["Benign", "DDoS", "C&C"], "max_rows_per_class": 2000}
    study = {"classes": list(config.STUDY_CLASSES)}

    epochs = collect_epochs(
        [
            {"training": {"kind": "classifier", "epochs": 3}},
            {"training": {"kind": "autoencoder", "epochs": 25}},
        ]
    )

    flagged = " ".join("\n".join(_classifier_section([], capped, epochs)).split())
    plain = "\n".join(_classifier_section([], study, {"classifier": [15]}))

    assert "This run differs from the study's setup" in flagged
    assert "3 classes (Benign, DDoS, C&C) instead of the study's 6" in flagged
    assert "at most 2,000 flows per class" in flagged
    assert "the classifier trained for 3 epochs instead of the study's 15" in flagged
    assert "autoencoder trained" not in flagged
    assert "differs from the study's setup" not in plain


def test_seeds_text_singular():
    assert seeds_text(1) == "1 seed"
    assert seeds_text(3) == "3 seeds"


def _bench(flows: int) -> dict:
    spread = {"median": 0.5}
    return {
        "machine": {"cpu": "test CPU", "cores": 2},
        "settings": {"flows": flows, "repeat": 1, "threads": 1, "cells": ["c"]},
        "bundles": [
            {
                "kind": "classifier",
                "bundle": "runs/x/bundles/classifier-plain-seed0",
                "cell": "classifier-plain-seed0",
                "variants": {
                    "fp32": {"file_bytes": 100_000, "single_seconds": spread},
                },
            }
        ],
    }


def test_efficiency_shows_fewer_flows():
    efficiency = collect_efficiency(_bench(1000), [])
    assert efficiency["rows"][0]["flows"] == 1000
    text = "\n".join(_efficiency_section(efficiency))
    assert "This run timed 1,000 flows, not the study's 7,000" in text
    assert "study s (7,000 flows, this run 1,000)" in text
    (line,) = [line for line in text.splitlines() if line.startswith("| classifier")]
    assert "| fp32 | 1,000 |" in line


def test_efficiency_in_mebibytes():
    bench = _bench(7000)
    variant = bench["bundles"][0]["variants"]["fp32"]
    variant["file_bytes"] = 3 * 2**20 // 4
    variant["single_peak_rss_bytes"] = {"median": 50 * 2**20}
    variant["peak_rss_bytes"] = {"median": 60 * 2**20}

    text = "\n".join(_efficiency_section(collect_efficiency(bench, [])))

    assert "| file MiB |" in text
    assert "| peak MiB (one at a time) | peak MiB (with batch) |" in text
    (line,) = [line for line in text.splitlines() if line.startswith("| classifier")]
    assert "| 0.7500 |" in line
    assert "| 50 | 60 |" in line


def test_efficiency_same_flows_as_study():
    text = "\n".join(_efficiency_section(collect_efficiency(_bench(7000), [])))
    assert "not the study's" not in text
    assert "study s (7,000 flows) |" in text


def test_data_section_explains_row_limit():
    dataset = _dataset_with_rejected_file()
    dataset["max_rows_per_file"] = 2000
    dataset["dropped_classes"] = {"Okiru": {"train": 0}}

    text = "\n".join(_data_section(collect_data(dataset)))

    assert "Classes dropped because a split had none of their flows: Okiru." in text
    assert "Only the first 2,000 rows of each file were read" in text


def test_data_section_states_class_cap():
    dataset = _dataset_with_rejected_file()
    dataset["max_rows_per_class"] = 2000
    dataset["rows"] = {"over_class_cap": 58907}

    text = "\n".join(_data_section(collect_data(dataset)))

    assert "at most 2,000 flows kept per class" in text
    assert "max_rows_per_class` 2,000, a seeded random choice): 58,907." in text


def test_data_section_without_row_limit():
    dataset = _dataset_with_rejected_file()
    dataset["dropped_classes"] = {"Okiru": {"train": 0}}

    text = "\n".join(_data_section(collect_data(dataset)))

    assert "rows of each file were read" not in text


def _run_with_bundle(run_dir: Path) -> Path:
    """Write a run folder with a dataset manifest and one small bundle."""
    (run_dir / "dataset").mkdir(parents=True)
    (run_dir / "dataset" / "dataset.json").write_text(
        json.dumps(_dataset_with_rejected_file())
    )
    folder = run_dir / "bundles" / "classifier-plain-seed0"
    create_bundle(
        folder,
        _plain_manifest(),
        {
            TORCH_WEIGHTS: lambda path: path.write_bytes(b"weights" * 100),
            INT8_MODEL: lambda path: path.write_bytes(b"int8 model" * 100),
        },
    )
    return folder


def test_read_bundles_accepts_intact_bundle(tmp_path):
    _run_with_bundle(tmp_path)

    (manifest,) = read_bundles(tmp_path, None)

    assert manifest["name"] == "classifier-plain-seed0"


def test_report_rejects_truncated_bundle_file(tmp_path):
    folder = _run_with_bundle(tmp_path)
    model = folder / INT8_MODEL
    model.write_bytes(model.read_bytes()[:100])

    with pytest.raises(ReportError) as raised:
        write_report(tmp_path)

    message = str(raised.value)
    assert f"{model} has sha256" in message
    assert "Rerun the `edgedp run` command" in message
    assert not (tmp_path / "report.md").exists()


def _record_scores(folder: Path, scores: dict) -> None:
    """Write test scores into a bundle's manifest, as `edgedp evaluate` does."""
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["metrics"] = {"test": scores}
    write_manifest(folder / "bundle.json", manifest)


def test_report_rejects_scores_of_replaced_file(tmp_path):
    folder = _run_with_bundle(tmp_path)
    old_sha256 = sha256_file(folder / INT8_MODEL)
    _record_scores(folder, {"int8": {"accuracy": 0.5, "model_sha256": old_sha256}})
    bundle = load_bundle(folder)
    add_files(bundle, {INT8_MODEL: lambda path: path.write_bytes(b"new")}, {})
    _record_scores(folder, {"int8": {"accuracy": 0.5, "model_sha256": old_sha256}})

    with pytest.raises(ReportError) as raised:
        write_report(tmp_path)

    message = str(raised.value)
    assert f"{folder} (int8): the scored file had sha256 {old_sha256[:12]}…" in message
    assert "Rerun the `edgedp run` command" in message
    assert "edgedp evaluate BUNDLE --format FORMAT" in message
    assert not (tmp_path / "report.md").exists()


def test_report_rejects_scores_without_file_hash(tmp_path):
    folder = _run_with_bundle(tmp_path)
    _record_scores(folder, {"torch": {"accuracy": 0.5}})

    with pytest.raises(ReportError, match=r"\(torch\): the scores record no sha256"):
        read_bundles(tmp_path, None)


def test_report_rejects_evaluated_bundle_without_scores(tmp_path):
    folder = _run_with_bundle(tmp_path)
    scores = {
        "torch": {"accuracy": 0.5, "model_sha256": sha256_file(folder / TORCH_WEIGHTS)}
    }
    _record_scores(folder, scores)
    stages = ["train/classifier-plain-seed0", "evaluate/classifier-plain-seed0"]

    (manifest,) = read_bundles(tmp_path, None, stages[:1])
    with pytest.raises(ReportError) as raised:
        read_bundles(tmp_path, None, stages)

    assert manifest["metrics"]["test"] == scores
    assert f"{folder} (fp32, int8): there are no scores" in str(raised.value)


def _write_state(run_dir: Path, stages: list[str]) -> None:
    """Write a `state.json` of a grid of two classifier cells."""
    experiment = {
        "train": {"models": ["classifier"], "epsilons": [None, 1.0], "seeds": [0]}
    }
    state = {
        "format": 1,
        "experiment": experiment,
        "stages": {stage: {"key": "0" * 16, "seconds": 1.0} for stage in stages},
        "invocations": [],
    }
    (run_dir / "state.json").write_text(json.dumps(state))


def test_report_rejects_missing_finished_bundle(tmp_path):
    _run_with_bundle(tmp_path)
    _write_state(
        tmp_path,
        ["train/classifier-plain-seed0", "train/classifier-eps1-seed0"],
    )

    with pytest.raises(ReportError) as raised:
        write_report(tmp_path)

    message = str(raised.value)
    missing = tmp_path / "bundles" / "classifier-eps1-seed0"
    assert f"are missing: {missing} (stages recorded as done: train)" in message
    assert "classifier-plain-seed0" not in message
    assert "Rerun the `edgedp run` command" in message
    assert not (tmp_path / "report.md").exists()


def test_report_leaves_out_unstarted_bundle(tmp_path):
    _run_with_bundle(tmp_path)
    _write_state(tmp_path, ["train/classifier-plain-seed0"])

    files = read_run(tmp_path)

    assert [manifest["name"] for manifest in files.manifests] == [
        "classifier-plain-seed0"
    ]


def test_report_command_while_run_holds_folder(tmp_path):
    import subprocess
    import sys

    from typer.testing import CliRunner

    import edgedp.cli.study  # noqa: F401  (registers report)
    from edgedp.cli import app

    _run_with_bundle(tmp_path)
    _write_state(tmp_path, ["train/classifier-plain-seed0"])
    state = json.loads((tmp_path / "state.json").read_text())
    state["invocations"] = [{"started": "2026-01-01T00:00:00", "status": "running"}]
    (tmp_path / "state.json").write_text(json.dumps(state))
    holder_code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgedp.study import lock_run_folder\n"
        "with lock_run_folder(Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rejected = CliRunner().invoke(app, ["report", str(tmp_path)])
        report_absent = not (tmp_path / "report.md").exists()
        forced = CliRunner().invoke(app, ["report", str(tmp_path), "--while-running"])
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    after = CliRunner().invoke(app, ["report", str(tmp_path)])

    rejected_text = " ".join(rejected.output.split())
    assert rejected.exit_code == 1
    assert f"is in use by a running `edgedp run` (PID {holder.pid})" in rejected_text
    assert "pass --while-running" in rejected_text
    assert report_absent, "report.md was written while the run held the folder"
    assert forced.exit_code == 0, forced.output
    assert "warning:" in forced.output
    report = " ".join((tmp_path / "report.md").read_text().split())
    assert "An invocation is recorded as `running`." in report
    assert after.exit_code == 0, after.output
    assert "warning:" not in after.output


def _grid(epochs: int) -> dict:
    """Return the `experiment` of `state.json` for one classifier cell, seed 0."""
    return {
        "train": {
            "models": ["classifier"],
            "epsilons": [None],
            "seeds": [0],
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "classifier": {"epochs": epochs, "batch_size": 256},
        }
    }


@pytest.fixture(scope="module")
def retrained_run(prepared_iot23, tmp_path_factory):
    """Return a run folder whose grid cell contains a bundle trained with seed 5."""
    from edgedp.train import train_bundle

    run_dir = tmp_path_factory.mktemp("retrained")
    train_bundle(
        prepared_iot23,
        run_dir / "bundles" / "classifier-plain-seed0",
        epochs=1,
        batch_size=256,
        seed=5,
    )
    return run_dir


CELL_STAGES = ["train/classifier-plain-seed0", "membership/classifier-plain-seed0"]


def test_read_bundles_rejects_other_cell_settings(retrained_run):
    folder = retrained_run / "bundles" / "classifier-plain-seed0"

    with pytest.raises(ReportError) as raised:
        read_bundles(retrained_run, grid_cells(_grid(2)), CELL_STAGES[:1], _grid(2))

    message = str(raised.value)
    assert f"{folder} was trained with seed 5, the cell's 0" in message
    assert "epochs 1, the cell's 2" in message
    assert "batch_size" not in message
    assert "has no membership result" not in message
    assert "trains, scores and audits again a bundle that it did not train" in message


def test_read_bundles_rejects_missing_membership(
    retrained_run, prepared_iot23, tmp_path
):
    from edgedp.membership import audit_bundle

    seed5 = _grid(1)
    seed5["train"]["seeds"] = [5]
    cells = grid_cells(seed5)
    run_dir = tmp_path / "seed5"
    shutil.copytree(
        retrained_run / "bundles" / "classifier-plain-seed0",
        run_dir / "bundles" / cells[0],
    )
    stages = [stage.replace("seed0", "seed5") for stage in CELL_STAGES]

    (manifest,) = read_bundles(run_dir, cells, stages[:1], seed5)
    with pytest.raises(ReportError) as raised:
        read_bundles(run_dir, cells, stages, seed5)
    audit_bundle(run_dir / "bundles" / cells[0], prepared_iot23, samples=100)
    (audited,) = read_bundles(run_dir, cells, stages, seed5)

    assert manifest["name"] == cells[0]
    assert "has no membership result" in str(raised.value)
    assert "was trained with" not in str(raised.value)
    assert audited["membership"]["members"] == 100
