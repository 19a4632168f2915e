"""End-to-end tests of `edgedp run --quick`, run as real subprocesses.

One module-scoped fixture starts a quick run on a slice of the IoT-23
sample logs, interrupts it with SIGINT once the first cell is trained,
and runs the same command again to completion. The tests then check the
resume, the report's structure and that every reported number equals the
bundles' own `bundle.json` values.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EDGEDP = [sys.executable, "-c", "from edgedp.cli import main; main()"]

# Smaller batches than the default 2048 give DP training a sampling rate of
# about 1/16 on this slice, so noise calibration stays quick.
QUICK_CONFIG = """
[quick.train.classifier]
batch_size = 256

[quick.train.autoencoder]
batch_size = 256

[quick.bench]
samples = 300
repeats = 1
"""
SLICE = (
    "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz",
    "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled",
    "csv/CTU-IoT-Malware-Capture-44-1.labeled.csv",
    "mixed/S12_benign-vs-Okiru.csv.gz",
)
RUN_TIMEOUT = 600


def _command(config: Path, out: Path, iot23: Path) -> list[str]:
    command = [*EDGEDP, "run", "--quick", "--config", str(config), "--out", str(out)]
    for name in SLICE:
        command += ["--data", str(iot23 / name)]
    return command


def _state(out: Path) -> dict:
    path = out / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _trained(state: dict) -> list[str]:
    return [stage for stage in state.get("stages", {}) if stage.startswith("train/")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, iot23):
    """A quick run interrupted after its first trained cell, then resumed."""
    folder = tmp_path_factory.mktemp("study")
    config = folder / "quick.toml"
    config.write_text(QUICK_CONFIG)
    out = folder / "run"
    command = _command(config, out, iot23)

    # A new session, so SIGINT reaches the workers too, as Ctrl-C would.
    with open(folder / "first.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while not _trained(_state(out)) and process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("no cell was trained in time")
            time.sleep(0.2)
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted:\n{log.name}")
        os.killpg(process.pid, signal.SIGINT)
        interrupted_code = process.wait(timeout=120)
    interrupted = _state(out)

    resumed = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {
        "out": out,
        "config": config,
        "command": command,
        "interrupted_code": interrupted_code,
        "interrupted_state": interrupted,
        "first_log": (folder / "first.log").read_text(errors="replace"),
        "resumed": resumed,
    }


def _bundles(out: Path) -> dict[str, dict]:
    return {
        path.name: json.loads((path / "bundle.json").read_text())
        for path in sorted((out / "bundles").iterdir())
        if not path.name.startswith(".")
    }


def test_interrupt_exits_130_and_records(quick_run):
    assert quick_run["interrupted_code"] == 130, quick_run["first_log"]
    invocations = quick_run["interrupted_state"]["invocations"]
    assert invocations[0]["status"] == "interrupted"


def test_interrupt_leaves_complete_outputs(quick_run):
    state = quick_run["interrupted_state"]
    out = quick_run["out"]
    for stage in _trained(state):
        cell = stage.split("/", 1)[1]
        assert (out / "bundles" / cell / "model.pt").is_file()
    assert "prepare" in state["stages"]


def test_resume_keeps_finished_stages(quick_run):
    before = quick_run["interrupted_state"]["stages"]
    after = _state(quick_run["out"])["stages"]
    assert before, "the interrupted run recorded no stage"
    for stage, record in before.items():
        assert after[stage] == record, stage


def test_resume_finishes_every_cell(quick_run):
    state = _state(quick_run["out"])
    cells = ["classifier", "autoencoder"]
    expected = {
        f"{stage}/{model}-{level}-seed0"
        for stage in ("train", "optimize", "evaluate", "membership")
        for model in cells
        for level in ("plain", "eps1")
    }
    assert expected <= set(state["stages"])
    assert "bench" in state["stages"]
    assert state["invocations"][-1]["status"] == "finished"


def test_report_structure(quick_run):
    out = quick_run["out"]
    markdown = (out / "report.md").read_text()
    for heading in (
        "## 1. Data",
        "## 2. Classifier",
        "## 3. Autoencoder",
        "## 4. Efficiency",
        "## 5. Privacy ledger",
        "## 6. Membership inference",
        "## 7. Figures",
    ):
        assert heading in markdown
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {
        "run",
        "data",
        "classifier",
        "autoencoder",
        "efficiency",
        "privacy",
        "membership",
        "published",
        "figures",
    }
    assert len(report["figures"]) == 3
    for name in report["figures"]:
        content = (out / name).read_bytes()
        assert content.startswith(b"\x89PNG"), name
        assert f"]({name})" in markdown


def test_report_classifier_matches_bundles(quick_run):
    out = quick_run["out"]
    report = json.loads((out / "report.json").read_text())
    bundles = _bundles(out)
    rows = report["classifier"]
    assert {(row["privacy"], row["format"]) for row in rows} == {
        (level, model_format)
        for level in ("no DP", "eps 1")
        for model_format in ("torch", "fp32", "int8")
    }
    for row in rows:
        for metric, summary in row["metrics"].items():
            expected = [
                bundles[name]["metrics"]["test"][row["format"]][metric]
                for name in row["bundles"]
            ]
            assert summary["values"] == expected, (row["privacy"], metric)
            assert summary["mean"] == pytest.approx(sum(expected) / len(expected))
            assert summary["std"] is None


def test_report_autoencoder_matches_bundles(quick_run):
    out = quick_run["out"]
    report = json.loads((out / "report.json").read_text())
    bundles = _bundles(out)
    rows = report["autoencoder"]
    assert len(rows) == 6
    for row in rows:
        (name,) = row["bundles"]
        scores = bundles[name]["metrics"]["test"][row["format"]]
        metrics = row["metrics"]
        assert metrics["roc_auc"]["values"] == [scores["roc_auc"]]
        assert metrics["pr_auc"]["values"] == [scores["pr_auc"]]
        thresholds = scores["thresholds"]
        assert metrics["f1_study_threshold"]["values"] == [thresholds["study"]["f1"]]
        assert thresholds["study"]["threshold"] == 0.16
        assert metrics["f1_validation_threshold"]["values"] == [
            thresholds["validation_fpr"]["f1"]
        ]


def test_report_markdown_quotes_json(quick_run):
    out = quick_run["out"]
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    for row in report["classifier"]:
        assert f"{row['metrics']['accuracy']['mean']:.4f}" in markdown
    for row in report["autoencoder"]:
        assert f"{row['metrics']['roc_auc']['mean']:.4f}" in markdown


def test_report_privacy_and_data_match(quick_run):
    out = quick_run["out"]
    report = json.loads((out / "report.json").read_text())
    bundles = _bundles(out)
    ledger = {row["bundle"]: row for row in report["privacy"]}
    assert set(ledger) == set(bundles)
    for name, manifest in bundles.items():
        privacy = manifest["privacy"]
        assert ledger[name]["epsilon"] == privacy["epsilon"]
        assert ledger[name]["noise_multiplier"] == privacy["noise_multiplier"]
        assert ledger[name]["steps"] == privacy["steps"]
        assert ledger[name]["int8_calibration"] == privacy["calibration"]["source"]
        if "eps1" in name:
            assert privacy["epsilon"] <= 1.0 + 1e-6
        else:
            assert math.isinf(ledger[name]["epsilon"])

    dataset = json.loads((out / "dataset" / "dataset.json").read_text())
    assert report["data"]["splits"] == dataset["splits"]
    rows_read = {
        entry["file"]: entry["rows_read"] for entry in report["data"]["inputs"]
    }
    # The quick profile reads every row and keeps at most 2000 flows per class.
    assert rows_read == {
        "CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz": 23145,
        "CTU-IoT-Malware-Capture-42-1.conn.log.labeled": 4426,
        "CTU-IoT-Malware-Capture-44-1.labeled.csv": 237,
        "S12_benign-vs-Okiru.csv.gz": 21000,
    }
    totals = {
        name: sum(split["classes"][name] for split in dataset["splits"].values())
        for name in dataset["classes"]
    }
    assert totals == {
        "Benign": 2000,
        "PartOfAHorizontalPortScan": 122,
        "Okiru": 1000,
        "DDoS": 2000,
        "C&C": 2000,
    }


def test_report_membership_matches_bundles(quick_run):
    from edgedp.membership import privacy_bounds

    out = quick_run["out"]
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    bundles = _bundles(out)
    rows = report["membership"]
    assert {(row["model"], row["privacy"]) for row in rows} == {
        (model, level)
        for model in ("classifier", "autoencoder")
        for level in ("no DP", "eps 1")
    }
    for row in rows:
        (name,) = row["bundles"]
        result = bundles[name]["membership"]
        metrics = row["metrics"]
        assert metrics["roc_auc"]["values"] == [result["roc_auc"]]
        assert metrics["advantage"]["values"] == [result["advantage"]]
        assert metrics["members"]["values"] == [result["members"]]
        assert result["members"] == result["non_members"] > 0
        bound = privacy_bounds(bundles[name]["privacy"])["advantage"]
        (line,) = [
            line
            for line in markdown.splitlines()
            if line.startswith(f"| {row['model']} | {row['privacy']} |")
        ]
        assert f"| {result['roc_auc']:.4f} |" in line
        if row["privacy"] == "no DP":
            assert bound is None
            assert "bound_advantage" not in metrics
            assert "| no bound | no bound |" in line
        else:
            assert metrics["bound_advantage"]["values"] == [pytest.approx(bound)]
            assert f"| {bound:.4f} |" in line
            # No attack beats the bound of a DP model, short of a bug or a
            # sample far too small to measure the advantage.
            assert result["advantage"] <= bound


def test_report_efficiency_matches_bench(quick_run):
    out = quick_run["out"]
    report = json.loads((out / "report.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    rows = report["efficiency"]["rows"]
    assert {row["model"] for row in rows} == {"classifier", "autoencoder"}
    for measured in bench["bundles"]:
        for variant, values in measured["variants"].items():
            (row,) = [
                r
                for r in rows
                if r["model"] == measured["kind"] and r["format"] == variant
            ]
            assert row["file_bytes"] == values["file_bytes"]
            assert row["peak_rss_bytes"] == values["peak_rss_bytes"]["median"]
    assert report["efficiency"]["machine"]["cores"] >= 1


def test_rerun_skips_everything(quick_run):
    out = quick_run["out"]
    before = _state(out)["stages"]
    result = subprocess.run(
        quick_run["command"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "0 stages ran" in result.stderr
    assert _state(out)["stages"] == before


def test_report_command_rebuilds_report(quick_run):
    out = quick_run["out"]
    before = json.loads((out / "report.json").read_text())
    (out / "report.md").unlink()
    result = subprocess.run(
        [*EDGEDP, "report", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").is_file()
    assert json.loads((out / "report.json").read_text()) == before


def _cli_output(arguments: list[str]) -> tuple[int, str]:
    """Run edgedp; return its exit code and its output on one line."""
    result = subprocess.run(
        [*EDGEDP, *arguments],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        # Wide enough that Rich does not wrap a message inside a path.
        env={**os.environ, "COLUMNS": "400"},
    )
    return result.returncode, " ".join(result.stderr.split() + result.stdout.split())


def test_report_command_rejects_damaged_bundle(quick_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(quick_run["out"], out)
    model = out / "bundles" / "classifier-eps1-seed0" / "model_int8.tflite"
    content = model.read_bytes()
    model.write_bytes(content[: len(content) // 2])
    before = (out / "report.md").read_text()

    code, message = _cli_output(["report", str(out)])

    assert code == 1
    assert f"{model} has sha256" in message
    assert "Rerun the `edgedp run` command" in message
    assert (out / "report.md").read_text() == before


def test_report_command_rejects_unwritable_figures(tmp_path):
    (tmp_path / "figures").write_text("not a folder")

    code, message = _cli_output(["report", str(tmp_path)])

    assert code == 2
    assert "is a file, not a folder" in message
    assert "Traceback" not in message


def _copy_run(quick_run, out: Path) -> Path:
    """Copy the quick run's folder to `out`, without its lock file."""
    import shutil

    shutil.copytree(quick_run["out"], out, ignore=shutil.ignore_patterns("*.lock"))
    return out


def _rerun_in(quick_run, out: Path) -> subprocess.CompletedProcess:
    """Run the quick run's command again with `out` as its run folder."""
    command = [
        str(out) if part == str(quick_run["out"]) else part
        for part in quick_run["command"]
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def test_manual_audit_redoes_membership(quick_run, tmp_path, iot23):
    from dataclasses import replace

    from edgedp.experiment import load_experiment
    from edgedp.membership import audit_bundle
    from edgedp.study.runner import _Runner, _SilentProgress

    out = _copy_run(quick_run, tmp_path / "copy")
    # The settings of the quick run's command. Earlier tests may have changed
    # its sample count, so that is read from the recorded result.
    settings = load_experiment(quick_run["config"])
    paths = tuple(str((iot23 / name).resolve()) for name in SLICE)
    settings = replace(settings, data=replace(settings.data, paths=paths))
    settings = settings.quick_profile()
    cell = settings.runs()[0]
    bundle = out / "bundles" / cell.name
    recorded = json.loads((bundle / "bundle.json").read_text())["membership"]
    experiment = replace(
        settings,
        membership=replace(settings.membership, samples=recorded["samples"]),
    )
    runner = _Runner(experiment, out, False, 1, _SilentProgress())
    assert runner._cell_done("membership", cell, "")

    audit_bundle(bundle, samples=2, seed=cell.seed + 7)
    assert not runner._cell_done("membership", cell, "")

    audit_bundle(bundle, samples=recorded["samples"], seed=cell.seed + 7)
    assert not runner._cell_done("membership", cell, "")

    audit_bundle(bundle, samples=recorded["samples"], seed=cell.seed)
    assert runner._cell_done("membership", cell, "")


def test_manual_optimize_redoes_evaluate(quick_run, tmp_path):

    from edgedp.export import optimize_bundle

    out = _copy_run(quick_run, tmp_path / "copy")
    # Not the first cell of its model, which the bench stage times.
    cell = "autoencoder-eps1-seed0"
    bundle = out / "bundles" / cell
    before = _state(out)["stages"]
    optimize_bundle(
        bundle,
        data=out / "dataset",
        calibration="synthetic",
        calibration_size=50,
        force=True,
    )

    code, message = _cli_output(["report", str(out)])
    assert code == 1
    assert f"{bundle} (fp32, int8): there are no scores" in message

    result = _rerun_in(quick_run, out)
    assert result.returncode == 0, result.stderr
    after = _state(out)["stages"]
    assert after[f"evaluate/{cell}"]["key"] != before[f"evaluate/{cell}"]["key"]
    for stage in ("train", "optimize"):
        assert after[f"{stage}/{cell}"] == before[f"{stage}/{cell}"], stage
    manifest = json.loads((bundle / "bundle.json").read_text())
    int8 = manifest["metrics"]["test"]["int8"]
    assert int8["model_sha256"] == manifest["files"]["model_int8.tflite"]["sha256"]
    report = json.loads((out / "report.json").read_text())
    (row,) = [
        row
        for row in report["autoencoder"]
        if row["format"] == "int8" and row["epsilon"] is not None
    ]
    assert row["metrics"]["roc_auc"]["values"] == [int8["roc_auc"]]


def test_rerun_retrains_bundle_replaced_by_hand(quick_run, tmp_path):

    from edgedp.dataset import load_prepared
    from edgedp.train import train_bundle

    out = _copy_run(quick_run, tmp_path / "copy")
    # Not the first cell of its model, which the bench stage times.
    cell = "classifier-eps1-seed0"
    bundle = out / "bundles" / cell
    trained = _state(out)["stages"][f"train/{cell}"]["bundle_id"]
    train_bundle(
        load_prepared(out / "dataset"), bundle, epochs=1, seed=5, overwrite=True
    )

    result = _rerun_in(quick_run, out)

    assert result.returncode == 0, result.stderr
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["bundle_id"] == trained
    assert manifest["training"]["seed"] == 0
    assert "membership" in manifest


def _rerun_with_config(quick_run, name: str, text: str) -> subprocess.CompletedProcess:
    """Run the quick run's command again with another experiment file."""
    config = quick_run["config"]
    changed = config.with_name(name)
    changed.write_text(text)
    command = [
        changed if part == str(config) else part for part in quick_run["command"]
    ]
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_changed_bench_setting_redoes_bench_only(quick_run):
    out = quick_run["out"]
    before = _state(out)["stages"]
    text = quick_run["config"].read_text()
    result = _rerun_with_config(
        quick_run, "changed.toml", text.replace("samples = 300", "samples = 200")
    )
    assert result.returncode == 0, result.stderr
    after = _state(out)["stages"]
    assert after["bench"] != before["bench"]
    for stage, record in before.items():
        if stage != "bench":
            assert after[stage] == record, stage
    bench = json.loads((out / "bench.json").read_text())
    assert bench["settings"]["flows"] == 200


def test_changed_membership_setting_redoes_membership_only(quick_run):
    out = quick_run["out"]
    before = _state(out)["stages"]
    # The bench samples stay as the previous test left them, so that the
    # bench need not run again.
    text = quick_run["config"].read_text().replace("samples = 300", "samples = 200")

    result = _rerun_with_config(
        quick_run, "membership.toml", text + "\n[membership]\nsamples = 400\n"
    )

    assert result.returncode == 0, result.stderr
    after = _state(out)["stages"]
    for stage, record in before.items():
        if stage.startswith("membership/"):
            assert after[stage]["key"] != record["key"], stage
        elif stage != "bench":
            assert after[stage] == record, stage
    for name, manifest in _bundles(out).items():
        assert manifest["membership"]["samples"] == 400, name
        assert manifest["membership"]["members"] <= 400, name


# In-process checks of the run folder's lock, the stale-record cleanup, the
# training-extra check and the prepare summary. They stop each run early, so
# none trains a model.


def _experiment(*paths: Path):
    from dataclasses import replace

    from edgedp.experiment import load_experiment

    settings = load_experiment(None).quick_profile()
    data = tuple(str(path) for path in paths)
    return replace(settings, data=replace(settings.data, paths=data))


def test_run_fails_while_folder_locked(tmp_path):
    from edgedp.study import RunFolderLockedError, run_study

    out = tmp_path / "run"
    out.mkdir()
    holder_code = (
        "import fcntl, os, sys\n"
        "lock = open(sys.argv[1], 'a+')\n"
        "fcntl.flock(lock, fcntl.LOCK_EX)\n"
        "lock.write(str(os.getpid())); lock.flush()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(out / "run.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(RunFolderLockedError) as raised:
            run_study(_experiment(tmp_path / "missing"), out, jobs=1)
        assert time.monotonic() - started < 10
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    message = str(raised.value)
    assert str(out) in message
    assert f"PID {holder.pid}" in message
    assert not (out / "state.json").exists()
    assert not (out / "run.log").exists()


def test_run_rejects_unwritable_out(tmp_path, iot23):
    # Root may write anywhere, but not below a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "run"

    code, message = _cli_output(
        ["run", "--quick", "--data", str(iot23 / SLICE[1]), "--out", str(out)]
    )

    assert code == 1
    assert f"cannot write {out / 'state.json'}" in message
    assert "Errno" not in message
    assert "grid cells" not in message, "the error comes before any progress"


def test_run_study_rejects_unwritable_out(tmp_path):
    from edgedp.atomic import OutputError
    from edgedp.study import run_study

    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(OutputError, match="cannot write"):
        run_study(_experiment(tmp_path), blocker / "run", jobs=1)


def test_run_holds_lock_until_end(tmp_path, monkeypatch):
    import fcntl

    from edgedp.study import StudyError, run_study, runner

    out = tmp_path / "run"
    seen = {}

    def run_stages(self):
        lock_path = out / "run.lock"
        seen["pid"] = lock_path.read_text().strip()
        with open(lock_path, "a+") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["locked"] = False
            except BlockingIOError:
                seen["locked"] = True
        raise StudyError("stopped by the test")

    monkeypatch.setattr(runner._Runner, "run_stages", run_stages)
    with pytest.raises(StudyError, match="stopped by the test"):
        run_study(_experiment(tmp_path), out, jobs=1)
    assert seen["pid"] == str(os.getpid())
    assert seen["locked"] is True
    with open(out / "run.lock", "a+") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert (out / "run.lock").read_text() == ""


def test_stale_running_record_marked_interrupted(tmp_path):
    from edgedp.study import StudyError, run_study

    out = tmp_path / "run"
    out.mkdir()
    stale = {"started": "2026-01-01T00:00:00+0000", "status": "running", "pid": 1}
    (out / "state.json").write_text(
        json.dumps(
            {"format": 1, "experiment": None, "stages": {}, "invocations": [stale]}
        )
    )
    with pytest.raises(StudyError, match="input not found"):
        run_study(_experiment(tmp_path / "missing"), out, jobs=1)
    first, second = _state(out)["invocations"]
    assert first["status"] == "interrupted"
    assert first["started"] == stale["started"]
    assert second["status"] == "failed"
    assert second["pid"] == os.getpid()
    assert "marked interrupted" in (out / "run.log").read_text()


def test_run_without_training_extra(tmp_path, monkeypatch, capsys):
    from edgedp.cli import main

    out = tmp_path / "run"
    # None in sys.modules makes the import system report the module missing.
    monkeypatch.setitem(sys.modules, "opacus", None)
    monkeypatch.setattr(
        sys, "argv", ["edgedp", "run", "--data", str(tmp_path), "--out", str(out)]
    )
    with pytest.raises(SystemExit) as raised:
        main()
    assert raised.value.code == 2
    assert "pip install 'edgedp[train]'" in capsys.readouterr().err
    assert not out.exists()


class _RecordedProgress:
    def __init__(self) -> None:
        self.finished: dict[str, str] = {}

    def start(self, task, total, description):
        pass

    def advance(self, task, description):
        pass

    def finish(self, task, description):
        self.finished[task] = description


def test_prepare_counts_set_aside_files(tmp_path, monkeypatch, iot23):
    import shutil

    from edgedp.study import StudyError, run_study, runner

    logs = tmp_path / "logs"
    logs.mkdir()
    for name in SLICE[:2]:
        shutil.copy(iot23 / name, logs)
    (logs / "broken.conn.log").write_text("this is not a flow log\n")

    def stop(self, dataset_id):
        raise StudyError("stopped by the test")

    monkeypatch.setattr(runner._Runner, "_grid", stop)
    progress = _RecordedProgress()
    out = tmp_path / "run"
    with pytest.raises(StudyError, match="stopped by the test"):
        run_study(_experiment(logs), out, jobs=1, progress=progress)
    assert progress.finished["prepare"] == (
        "prepared 2 files, set aside 1 unreadable (listed in dataset/dataset.json)"
    )
    dataset = json.loads((out / "dataset" / "dataset.json").read_text())
    (rejected,) = dataset["rejected"]
    assert rejected["path"].endswith("broken.conn.log")


def _children(pid: int) -> list[int]:
    """Return the PIDs of the live processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Tell whether `pid` runs. A zombie waiting to be reaped has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_run_leaves_no_workers(tmp_path, iot23):
    out = tmp_path / "run"
    command = [*EDGEDP, "run", "--quick", "--out", str(out), "--jobs", "2"]
    for name in SLICE[:2]:
        command += ["--data", str(iot23 / name)]
    with open(tmp_path / "run.out", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        spawned: list[int] = []
        while process.poll() is None and time.monotonic() < deadline:
            workers = _children(process.pid)
            spawned = [
                pid
                for pid in workers
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            if len(spawned) == 2:
                break
            time.sleep(0.1)
        assert process.poll() is None, (tmp_path / "run.out").read_text()
        assert len(spawned) == 2, "the grid workers did not start in time"
        # Past their start-up, while they import torch or train.
        time.sleep(2)
    finally:
        process.kill()
        process.wait(timeout=30)

    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "processes of the killed run still alive after 10 s"


def test_train_cell_delta_names_file_setting(prepared_iot23, tmp_path):
    from edgedp.privacy import DeltaError
    from edgedp.study.tasks import train_cell

    with pytest.raises(DeltaError) as raised:
        train_cell(
            dataset=str(prepared_iot23.root),
            bundle=str(tmp_path / "bundle"),
            model="classifier",
            epsilon=1.0,
            seed=0,
            delta=1e-3,
            max_grad_norm=1.0,
            epochs=1,
            batch_size=256,
        )

    assert "[train] delta" in str(raised.value)
    assert "--delta" not in str(raised.value)
    assert not (tmp_path / "bundle").exists()


def test_run_rejects_large_delta_before_training(tmp_path, iot23):
    config = tmp_path / "delta.toml"
    config.write_text(QUICK_CONFIG + "\n[train]\ndelta = 0.001\n")
    out = tmp_path / "run"

    result = subprocess.run(
        _command(config, out, iot23),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )

    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "[train] delta" in output
    assert "--delta" not in output
    assert _trained(_state(out)) == []
