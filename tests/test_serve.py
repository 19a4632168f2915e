"""`edgedp serve` end to end: real bundles, real LiteRT, real processes.

A session fixture trains a small classifier and autoencoder on the IoT-23
samples and converts them, so every test here runs the models that
`edgedp train` and `edgedp optimize` produce.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgedp import zeek
from edgedp.bundle import INT8_MODEL, MANIFEST_NAME, write_manifest
from edgedp.edge.serve import Gateway, ServeSettings
from edgedp.edge.stats import MAX_UNKNOWN_CATEGORIES, OTHER_VALUES, ServeStats

ZEEK_LOGS = {
    "34-1": "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz",
    "42-1": "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled",
    "5-1": "zeek/CTU-Honeypot-Capture-5-1.conn.log.labeled",
}
EDGEDP = [str(Path(sys.executable).with_name("edgedp"))]
TRAINING_MESSAGE = "pip install 'edgedp[train]'"


@pytest.fixture(scope="session")
def gateway_bundles(iot23, tmp_path_factory) -> dict[str, Path]:
    """A trained and converted classifier and autoencoder, and their dataset."""
    from edgedp.data.prepare import prepare_dataset
    from edgedp.export import optimize_bundle
    from edgedp.train import train_bundle

    root = tmp_path_factory.mktemp("gateway")
    dataset = prepare_dataset(
        [iot23 / "zeek", iot23 / "csv", iot23 / "mixed"], root / "prepared"
    )
    bundles = {"dataset": dataset.root}
    for kind, model in (("classifier", "ff"), ("autoencoder", "ae")):
        bundle = train_bundle(dataset, root / kind, model=model, epochs=1)
        optimize_bundle(bundle, calibration_size=200)
        bundles[kind] = bundle.root
    return bundles


def _read_alerts(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _serve(bundle: Path, source, tmp_path: Path, **options) -> tuple[list, dict]:
    alerts = tmp_path / f"alerts-{time.monotonic_ns()}.jsonl"
    settings = ServeSettings(
        bundle=bundle, input=str(source), alerts=str(alerts), **options
    )
    totals = Gateway(settings).run()
    return _read_alerts(alerts), totals


def _expected_outputs(bundle: Path, dataset: Path, model_format: str) -> dict:
    """Map uid to `edgedp evaluate`'s output on every split, for unique uids."""
    from edgedp.bundle import load_bundle
    from edgedp.dataset import load_prepared
    from edgedp.evaluate import predict_bundle

    opened = load_bundle(bundle)
    prepared = load_prepared(dataset)
    outputs: dict[str, list] = {}
    for name in ("train", "validation", "test"):
        split = prepared.split(name)
        predicted = predict_bundle(opened, split, model_format)
        for uid, output in zip(split.uids, predicted, strict=True):
            outputs.setdefault(str(uid), []).append(output)
    return {uid: values[0] for uid, values in outputs.items() if len(values) == 1}


@pytest.mark.parametrize("model_format", ["int8", "fp32"])
@pytest.mark.parametrize("kind", ["classifier", "autoencoder"])
def test_verdicts_match_evaluate(gateway_bundles, iot23, tmp_path, kind, model_format):
    bundle = gateway_bundles[kind]
    expected = _expected_outputs(bundle, gateway_bundles["dataset"], model_format)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())

    alerts, totals = _serve(
        bundle, iot23 / "zeek", tmp_path, all_flows=True, model_format=model_format
    )
    counts = Counter(alert["uid"] for alert in alerts)
    compared = [a for a in alerts if counts[a["uid"]] == 1 and a["uid"] in expected]

    assert totals["flows"] == sum([23145, 4426, 452, 1374]), (
        "every row of the four Zeek logs"
    )
    assert sum(totals["bad_lines"].values()) == 0
    assert len(compared) > 29000
    for alert in compared:
        output = expected[alert["uid"]]
        if kind == "classifier":
            predicted = manifest["classes"][int(np.argmax(output))]
            assert alert["class"] == predicted, alert["uid"]
            assert alert["alert"] == (predicted != "Benign"), alert["uid"]
            assert alert["probability"] == pytest.approx(float(output.max()), abs=1e-5)
        else:
            threshold = manifest["thresholds"]["validation_fpr"]["value"]
            assert alert["alert"] == bool(output > threshold), alert["uid"]
            assert alert["score"] == pytest.approx(float(output), rel=1e-6)
            assert alert["threshold"] == pytest.approx(threshold)
        assert alert["bundle_id"] == manifest["bundle_id"]
        assert alert["model_format"] == model_format


def test_alerts_only_flagged_flows(gateway_bundles, iot23, tmp_path):
    bundle = gateway_bundles["classifier"]
    log = iot23 / ZEEK_LOGS["42-1"]

    flagged, totals = _serve(bundle, log, tmp_path)
    everything, _ = _serve(bundle, log, tmp_path, all_flows=True)

    assert [a["uid"] for a in flagged] == [a["uid"] for a in everything if a["alert"]]
    assert totals["alerts"] == len(flagged)
    assert totals["flows"] == 4426


def test_batches_hold_at_most_batch_flows(gateway_bundles, iot23, tmp_path):
    bundle = gateway_bundles["classifier"]
    log = iot23 / ZEEK_LOGS["42-1"]

    small, totals = _serve(
        bundle, log, tmp_path, all_flows=True, batch=100, max_delay=600.0
    )
    default, _ = _serve(bundle, log, tmp_path, all_flows=True)

    # Chunks of 64 KiB hold hundreds of flows, so whole batches of 100 and
    # one of the 26 flows left at the end show that chunks are split.
    assert totals["flows"] == 4426
    assert totals["batches"] == 45
    assert small == default


def test_bad_lines_do_not_stop_serve(gateway_bundles, iot23, tmp_path):
    text = (iot23 / ZEEK_LOGS["42-1"]).read_bytes().replace(b"\r\n", b"\n")
    lines = text.split(b"\n")
    data = [index for index, line in enumerate(lines) if line[:1] not in (b"#", b"")]
    broken = list(lines)
    broken[data[0]] += b"\textra"
    broken[data[1]] = broken[data[1]].replace(b"\ttcp\t", b"\ttcp\t\t", 1)
    fields = broken[data[2]].split(b"\t")
    fields[9] = b"many"
    broken[data[2]] = b"\t".join(fields)
    broken[data[3]] = b"\xc3\x28" + broken[data[3]]
    broken[data[4]] = b"x" * 100_000
    log = tmp_path / "conn.log"
    log.write_bytes(b"\n".join(broken))

    alerts, totals = _serve(
        gateway_bundles["classifier"], log, tmp_path, all_flows=True
    )

    assert totals["bad_lines"] == {
        "field_count": 2,
        "bad_number": 1,
        "invalid_utf8": 1,
        "overlong": 1,
    }
    assert totals["flows"] == 4426 - 5
    assert len(alerts) == 4426 - 5


def test_unknown_categories_bounded(gateway_bundles, iot23, tmp_path, caplog):
    header, rows = _split_header(_zeek_text(iot23, "42-1"))
    fields = zeek.parse_header(header.decode().splitlines()).fields
    positions = [fields.index(name) for name in ("proto", "service", "conn_state")]
    changed = []
    for number, row in enumerate(rows):
        values = row.rstrip(b"\n").split(b"\t")
        for position in positions:
            values[position] = b"new%d" % number
        changed.append(b"\t".join(values) + b"\n")
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"".join(changed))

    with caplog.at_level(logging.INFO, logger="edgedp.edge.serve"):
        _, totals = _serve(gateway_bundles["classifier"], log, tmp_path)

    unknown = totals["unknown_categories"]
    assert totals["flows"] == 4426
    assert sum(unknown.values()) == 3 * 4426
    assert len(unknown) == MAX_UNKNOWN_CATEGORIES + 3
    for field in ("proto", "service", "conn_state"):
        assert unknown[f"{field}={OTHER_VALUES}"] > 0
    messages = [record.getMessage() for record in caplog.records]
    limit = [
        message for message in messages if "distinct unknown categories" in message
    ]
    assert len(limit) == 1
    # The final line names the most frequent values, the three per-field
    # counts of the values past the limit, and counts the rest.
    (last,) = [message for message in messages if message.startswith("stopped")]
    assert f", unknown categories {3 * 4426} (" in last
    for field in ("proto", "service", "conn_state"):
        key = f"{field}={OTHER_VALUES}"
        assert f"{key} {unknown[key]}" in last
    assert f", {len(unknown) - 5} more values)" in last


def test_out_of_range_ports_logged_as_integers(
    gateway_bundles, iot23, tmp_path, caplog
):
    header, rows = _split_header(_zeek_text(iot23, "42-1"))
    fields = zeek.parse_header(header.decode().splitlines()).fields
    values = rows[0].rstrip(b"\n").split(b"\t")
    values[fields.index("id.orig_p")] = b"-5"
    values[fields.index("id.resp_p")] = b"70000"
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"\t".join(values) + b"\n")

    with caplog.at_level(logging.WARNING, logger="edgedp.edge.serve"):
        _, totals = _serve(gateway_bundles["classifier"], log, tmp_path)

    messages = [record.getMessage() for record in caplog.records]
    line = header.count(b"\n") + 1
    assert totals["absurd_values"] == {"id.orig_p": 1, "id.resp_p": 1}
    assert f"conn.log:{line}: id.orig_p=-5 is out of range; the encoder clips it" in (
        messages
    )
    assert (
        f"conn.log:{line}: id.resp_p=70000 is out of range; the encoder clips it"
        in messages
    )


def _json_lines(text: bytes, timestamps: list) -> bytes:
    """Return the first data lines of a TSV log as JSON lines with other `ts`."""
    header, rows = _split_header(text)
    fields = zeek.parse_header(header.decode().splitlines()).fields
    lines = []
    for row, ts in zip(rows, timestamps, strict=False):
        values = zeek.split_line(
            row.decode().rstrip("\n"), zeek.Header(label_quirk=True)
        )
        record = {
            name: value
            for name, value in zip(fields, values, strict=True)
            if value not in ("-", "(empty)")
        }
        record["ts"] = ts
        lines.append(json.dumps(record).encode() + b"\n")
    return b"".join(lines)


def test_json_unparsable_ts_classified(gateway_bundles, iot23, tmp_path):
    timestamps = [
        "yesterday",
        "2018-13-45T99:00:00Z",
        "NaN",
        None,
        "2018-12-21T14:50:16.962094Z",
        1545403816.5,
    ]
    log = tmp_path / "conn.json"
    log.write_bytes(_json_lines(_zeek_text(iot23, "5-1"), timestamps))

    alerts, totals = _serve(
        gateway_bundles["classifier"], log, tmp_path, all_flows=True
    )

    assert totals["bad_lines"] == {}
    assert totals["flows"] == len(timestamps)
    assert [alert["line"] for alert in alerts] == [1, 2, 3, 4, 5, 6]
    assert [alert["ts"] for alert in alerts[:4]] == [None, None, None, None]
    assert [alert["time"] for alert in alerts[:4]] == [None, None, None, None]
    assert alerts[4]["ts"] == pytest.approx(1545403816.962094, abs=1e-6)
    assert alerts[5]["time"] == "2018-12-21T14:50:16.500000Z"


def test_alert_time_is_iso_8601_or_null(gateway_bundles, iot23, tmp_path):
    timestamps = [
        -62135596800,
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        253402300799.5,
        253402300800,
        1e20,
        "1e20",
    ]
    log = tmp_path / "conn.json"
    log.write_bytes(_json_lines(_zeek_text(iot23, "5-1"), timestamps))

    alerts, totals = _serve(
        gateway_bundles["classifier"], log, tmp_path, all_flows=True
    )

    assert totals["bad_lines"] == {}
    assert [alert["ts"] for alert in alerts] == [
        -62135596800,
        -62135596800,
        pytest.approx(253402300799.999999, abs=1e-6),
        253402300799.5,
        253402300800,
        1e20,
        1e20,
    ]
    assert [alert["time"] for alert in alerts] == [
        "0001-01-01T00:00:00.000000Z",
        "0001-01-01T00:00:00.000000Z",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.500000Z",
        None,
        None,
        None,
    ]


def _zeek_text(iot23: Path, name: str) -> bytes:
    path = iot23 / ZEEK_LOGS[name]
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def _data_lines(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if line and line[:1] != b"#"]


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class _Writer(threading.Thread):
    """Write Zeek logs to `log` as Zeek does: in pieces, rotated, truncated.

    Writes cut lines at arbitrary byte offsets, so the runtime sees partial
    lines. It rotates once (rename, new file with a new header block) and
    truncates once, after the runtime has read everything written so far.
    """

    def __init__(self, log: Path, blocks: list[bytes], alerts: Path) -> None:
        super().__init__(daemon=True)
        self.log = log
        self.blocks = blocks
        self.alerts = alerts
        self.flows_written = 0
        self.error: BaseException | None = None

    def _append(self, data: bytes, rng: np.random.Generator) -> None:
        position = 0
        while position < len(data):
            size = int(rng.integers(1, 8000))
            with open(self.log, "ab") as handle:
                handle.write(data[position : position + size])
            position += size
            time.sleep(0.002)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # noqa: BLE001
            self.error = error

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        first, second, third = self.blocks

        # Half of the first log, then rotation in the middle of it.
        header, rows = _split_header(first)
        middle = len(rows) // 2
        self._append(header + b"".join(rows[:middle]), rng)
        self.flows_written += middle
        self.log.rename(self.log.with_name("conn.2024-05-01-10-00-00.log"))
        self._append(header + b"".join(rows[middle:]), rng)
        self.flows_written += len(rows) - middle

        # The second log in the same file, then one truncation once the
        # runtime has caught up, as `copytruncate` does.
        header, rows = _split_header(second)
        self._append(header + b"".join(rows), rng)
        self.flows_written += len(rows)
        _wait_for(
            lambda: _line_count(self.alerts) >= self.flows_written,
            60,
            "the runtime to catch up before truncation",
        )
        with open(self.log, "r+b") as handle:
            handle.truncate(0)
        time.sleep(0.2)

        header, rows = _split_header(third)
        self._append(header + b"".join(rows), rng)
        self.flows_written += len(rows)
        # An unfinished line: no verdict may come from it.
        self._append(rows[0][:40], rng)


def _split_header(text: bytes) -> tuple[bytes, list[bytes]]:
    lines = text.splitlines(keepends=True)
    if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    header = b"".join(line for line in lines if line.startswith(b"#"))
    rows = [line for line in lines if line[:1] not in (b"#", b"\n", b"\r")]
    return header, rows


def _start_serve(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    stderr = tmp_path / f"serve-{time.monotonic_ns()}.log"
    process = subprocess.Popen(
        [*EDGEDP, "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=open(stderr, "wb"),  # noqa: SIM115
    )
    return process, stderr


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_follow_survives_rotation_and_truncation(gateway_bundles, iot23, tmp_path):
    bundle = gateway_bundles["classifier"]
    mirai = _zeek_text(iot23, "34-1")
    blocks = [
        mirai[: mirai.index(b"\n", 700_000) + 1],
        _zeek_text(iot23, "42-1"),
        _zeek_text(iot23, "5-1"),
    ]
    uids_written = [
        line.split(b"\t")[1].decode() for block in blocks for line in _data_lines(block)
    ]
    assert len(set(uids_written)) == len(uids_written)

    log = tmp_path / "live" / "conn.log"
    log.parent.mkdir()
    alerts = tmp_path / "follow.jsonl"
    process, stderr = _start_serve(
        [
            str(bundle),
            "--input",
            str(log),
            "--follow",
            "--all",
            "--alerts",
            str(alerts),
            "--max-delay",
            "5",
            "--poll-interval",
            "5",
            "--stats-interval",
            "0.5",
        ],
        tmp_path,
    )
    _wait_for(lambda: "serving bundle" in stderr.read_text(), 60, "serve to start")
    writer = _Writer(log, blocks, alerts)
    writer.start()
    try:
        writer.join(timeout=120)
        assert writer.error is None, writer.error
        _wait_for(lambda: _line_count(alerts) >= len(uids_written), 60, "every verdict")
        time.sleep(0.3)
        maps = _mapped_libraries(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    log_text = stderr.read_text()

    assert code == 0, log_text
    followed = _read_alerts(alerts)
    assert Counter(a["uid"] for a in followed) == Counter(uids_written)
    # Every file instance is logged as conn.log and numbered from line 1, so
    # only uid distinguishes their flows.
    assert {a["log"] for a in followed} == {"conn.log"}
    assert len({a["line"] for a in followed}) < len(followed)
    assert "was rotated" in log_text
    assert "was truncated" in log_text
    assert "libtorch" not in maps
    assert "polars" not in maps

    # The same flows read once from files give the same verdicts.
    batch = tmp_path / "batch"
    batch.mkdir()
    for index, block in enumerate(blocks):
        (batch / f"conn.{index}.log").write_bytes(block)
    expected, _ = _serve(bundle, batch, tmp_path, all_flows=True)
    verdicts = {a["uid"]: (a["class"], a["probability"]) for a in expected}
    assert {a["uid"]: (a["class"], a["probability"]) for a in followed} == verdicts


def test_sigterm_classifies_pending_flows(gateway_bundles, iot23, tmp_path):
    log = tmp_path / "conn.log"
    text = _zeek_text(iot23, "42-1")
    log.write_bytes(text)
    alerts = tmp_path / "alerts.jsonl"
    process, stderr = _start_serve(
        [
            str(gateway_bundles["autoencoder"]),
            "--input",
            str(log),
            "--follow",
            "--all",
            "--alerts",
            str(alerts),
            "--batch",
            "100000",
            "--max-delay",
            "600000",
            "--stats-interval",
            "0.2",
        ],
        tmp_path,
    )
    try:
        _wait_for(lambda: "4426 flows pending" in stderr.read_text(), 60, "flows read")
        assert _line_count(alerts) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)

    assert code == 0, stderr.read_text()
    assert len(_read_alerts(alerts)) == 4426


def test_sigterm_counts_unfinished_line(gateway_bundles, iot23, tmp_path):
    header, rows = _split_header(_zeek_text(iot23, "42-1"))
    log = tmp_path / "conn.log"
    # The unfinished line is in the file before serve starts, so the read
    # that yields the ten flows also leaves it pending in the line splitter.
    log.write_bytes(header + b"".join(rows[:10]) + rows[10][:60])
    alerts = tmp_path / "alerts.jsonl"
    process, stderr = _start_serve(
        [str(gateway_bundles["classifier"]), "--input", str(log)]
        + ["--follow", "--all", "--alerts", str(alerts)],
        tmp_path,
    )
    try:
        _wait_for(lambda: _line_count(alerts) >= 10, 60, "ten verdicts")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    log_text = stderr.read_text()

    assert code == 0, log_text
    assert _line_count(alerts) == 10
    (last,) = [line for line in log_text.splitlines() if "stopped after" in line]
    assert "stopped after 10 flows" in last
    assert "1 bad lines" in last
    assert "events: partial_dropped 1" in last
    number = header.count(b"\n") + 11
    assert f"{log}:{number}: dropped an unfinished line of 60 bytes" in log_text


def test_closed_reader_no_false_bad_line(gateway_bundles, iot23):
    process = subprocess.Popen(
        [*EDGEDP, "serve", str(gateway_bundles["classifier"])]
        + ["--input", str(iot23 / ZEEK_LOGS["34-1"]), "--all", "--batch", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    log_text = stderr.decode()

    assert json.loads(first)["line"] == 9
    assert process.returncode == 1, log_text
    assert "the alert output was closed by its reader" in log_text
    assert "dropped an unfinished line" not in log_text
    assert "stopped at line" in log_text
    (last,) = [line for line in log_text.splitlines() if "stopped after" in line]
    assert " 0 bad lines" in last
    assert "partial_dropped" not in last


def test_stdin_input(gateway_bundles, iot23, tmp_path):
    text = _zeek_text(iot23, "5-1")

    result = subprocess.run(
        [
            *EDGEDP,
            "serve",
            str(gateway_bundles["classifier"]),
            "--input",
            "-",
            "--all",
            "--model",
            "fp32",
        ],
        input=text,
        capture_output=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 1374


def _serve_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EDGEDP, "serve", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("log", "options", "message"),
    [
        ("34-1", ["--follow"], "is gzip-compressed, and Zeek never appends to"),
        ("-", ["--follow", "--from-end"], "--from-end skips the flows already in"),
    ],
    ids=["follow-gzip", "from-end-stdin"],
)
def test_ignored_follow_options_rejected(gateway_bundles, iot23, log, options, message):
    source = "-" if log == "-" else str(iot23 / ZEEK_LOGS[log])

    result = subprocess.run(
        [*EDGEDP, "serve", str(gateway_bundles["classifier"]), "--input", source]
        + ["--alerts", "/dev/null", *options],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert message in result.stderr


def test_follow_on_stdin_noted(gateway_bundles, iot23):
    result = subprocess.run(
        [*EDGEDP, "serve", str(gateway_bundles["classifier"]), "--input", "-"]
        + ["--all", "--follow"],
        input=_zeek_text(iot23, "5-1"),
        capture_output=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 1374
    assert "stdin is read until it closes; --follow changes nothing" in (
        result.stderr.decode()
    )


def test_altered_bundle_rejected(gateway_bundles, iot23, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(gateway_bundles["classifier"], bundle)
    model = bundle / INT8_MODEL
    content = bytearray(model.read_bytes())
    content[len(content) // 2] ^= 0xFF
    model.write_bytes(bytes(content))

    result = _serve_cli([str(bundle), "--input", str(iot23 / ZEEK_LOGS["5-1"])])

    assert result.returncode == 2
    assert "altered or truncated" in result.stderr


def test_unknown_encoder_rejected(gateway_bundles, iot23, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(gateway_bundles["classifier"], bundle)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["encoder_version"] = "conn-0"
    write_manifest(bundle / MANIFEST_NAME, manifest)

    result = _serve_cli([str(bundle), "--input", str(iot23 / ZEEK_LOGS["5-1"])])

    assert result.returncode == 2
    assert "feature encoder conn-0" in result.stderr


def test_follow_folder_rejected(gateway_bundles, iot23):
    # `-v` before the command goes through Typer, which forwards to serve.
    result = subprocess.run(
        [*EDGEDP, "-v", "serve", str(gateway_bundles["classifier"])]
        + ["--input", str(iot23 / "zeek"), "-f"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert "is a folder" in result.stderr


# Runs the CLI with the training stack made unimportable, as in a base install.
BLOCKED_IMPORTS = """
import sys
from importlib.abc import MetaPathFinder

from edgedp.cli import TRAINING_MODULES, main


class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TRAINING_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocked())
sys.argv = ["edgedp", *sys.argv[1:]]
try:
    main()
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in TRAINING_MODULES)
    print("training modules loaded:", loaded, file=sys.stderr)
"""


def _without_training_stack(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_without_training_stack(gateway_bundles, iot23):
    result = _without_training_stack(
        [
            "serve",
            str(gateway_bundles["classifier"]),
            "--input",
            str(iot23 / ZEEK_LOGS["5-1"]),
            "--all",
        ]
    )

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1374
    assert "training modules loaded: []" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--data", "{dataset}", "--epsilon", "none", "--out", "{tmp}/b"],
        ["evaluate", "{bundle}", "--data", "{dataset}"],
        ["optimize", "{bundle}", "--force"],
        ["prepare", "{logs}", "--out", "{tmp}/prepared"],
        ["inspect", "{logs}"],
    ],
    ids=lambda command: command[0],
)
def test_training_commands_name_extra(gateway_bundles, iot23, tmp_path, command):
    values = {
        "dataset": str(gateway_bundles["dataset"]),
        "bundle": str(gateway_bundles["classifier"]),
        "logs": str(iot23 / ZEEK_LOGS["5-1"]),
        "tmp": str(tmp_path),
    }

    result = _without_training_stack([part.format(**values) for part in command])

    assert result.returncode == 2, result.stderr
    assert TRAINING_MESSAGE in " ".join(result.stdout.split() + result.stderr.split())


def test_idle_stats_line_without_nan(caplog):
    stats = ServeStats(interval=60.0)

    with caplog.at_level(logging.INFO, logger="edgedp.edge.serve"):
        stats.report()
        stats.add_batch(2, 0, np.array([0.001, 0.002]))
        stats.report()

    idle, busy = (record.getMessage() for record in caplog.records)
    assert "nan" not in idle
    assert "latency -," in idle
    assert "latency p50 " in busy


def test_truncated_gzip_served(gateway_bundles, iot23, tmp_path):
    data = (iot23 / ZEEK_LOGS["34-1"]).read_bytes()
    cut = data[: len(data) * 2 // 3]
    log = tmp_path / "conn.log.gz"
    log.write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    complete = _data_lines(readable.rpartition(b"\n")[0])
    alerts = tmp_path / "alerts.jsonl"

    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(log)]
        + ["--all", "--alerts", str(alerts)]
    )

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"ERROR {log}: the gzip data is truncated or corrupt after line" in (
        result.stderr
    )
    assert len(_read_alerts(alerts)) == len(complete)
    (last,) = [line for line in result.stderr.splitlines() if "stopped after" in line]
    assert "events: corrupt_file 1" in last


def test_csv_input_rejected(gateway_bundles, iot23):
    csv_log = iot23 / "csv/CTU-IoT-Malware-Capture-20-1.labeled.csv"

    result = _serve_cli([str(gateway_bundles["classifier"]), "--input", str(csv_log)])

    assert result.returncode == 2
    assert f"error: {csv_log} is not a Zeek conn log" in result.stderr
    assert "looks like a CSV export" in result.stderr
    assert "field_count" not in result.stderr


def test_alerts_folder_rejected(gateway_bundles, iot23, tmp_path):
    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(iot23 / ZEEK_LOGS["5-1"])]
        + ["--alerts", str(tmp_path)]
    )

    assert result.returncode == 2
    assert f"error: the alert output {tmp_path} is a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_alerts_rejected(gateway_bundles, iot23, tmp_path):
    # Root may write anywhere, but not below a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("")
    alerts = blocker / "alerts.jsonl"

    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(iot23 / ZEEK_LOGS["5-1"])]
        + ["--alerts", str(alerts)]
    )

    assert result.returncode == 2
    assert f"error: cannot write {alerts}" in result.stderr
    assert "Traceback" not in result.stderr


def test_full_alert_output_exits_3(gateway_bundles, iot23):
    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(iot23 / ZEEK_LOGS["5-1"])]
        + ["--all", "--alerts", "/dev/full"]
    )

    assert result.returncode == 3, result.stderr
    assert (
        "ERROR cannot write alerts to the alert file /dev/full: No space left "
        "on device; 0 of the batch's"
    ) in result.stderr
    # The log's flows start on line 9.
    assert "line 9 and every flow read after it have no verdict" in result.stderr
    assert "stopped after 0 flows, 0 alerts" in result.stderr
    assert "events: alert_write_failed 1" in result.stderr
    assert "Traceback" not in result.stderr


# Runs a command with writes past a file size limit failing with EFBIG. A
# write that crosses the limit writes up to it, as on a disk that fills up.
# Python ignores SIGXFSZ, so the next write fails instead of killing serve.
LIMIT_FILE_SIZE = """
import os, resource, sys

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_partial_alert_line_cut_at_next_start(gateway_bundles, iot23, tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    arguments = [*EDGEDP, "serve", str(gateway_bundles["classifier"])]
    arguments += ["--input", str(iot23 / ZEEK_LOGS["5-1"])]
    arguments += ["--all", "--alerts", str(alerts)]

    failed = subprocess.run(
        [sys.executable, "-c", LIMIT_FILE_SIZE, "10000", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    size = alerts.stat().st_size
    restarted = subprocess.run(arguments, capture_output=True, text=True, timeout=120)
    lines = alerts.read_text().splitlines()

    assert failed.returncode == 3, failed.stderr
    assert "File too large" in failed.stderr
    assert "the output ends in an unfinished line" in failed.stderr
    assert size == 10_000
    assert restarted.returncode == 0, restarted.stderr
    assert f"{alerts} ended in an unfinished alert line" in restarted.stderr
    # Every line is whole JSON: the lines of the first run that fit, then
    # all 1374 of the second. The log's flows start on line 9.
    records = [json.loads(line) for line in lines]
    before_restart = len(records) - 1374
    assert 0 < before_restart < 1374
    assert [record["line"] for record in records[:before_restart]] == list(
        range(9, 9 + before_restart)
    )
    assert [record["line"] for record in records[before_restart:]] == list(
        range(9, 9 + 1374)
    )
    # The first run's totals count the flows and alerts whose lines it wrote,
    # and its error names the first flow without a line.
    flagged = sum(record["alert"] for record in records[:before_restart])
    assert f"stopped after {before_restart} flows, {flagged} alerts" in failed.stderr
    first_lost = (
        f"line {9 + before_restart} and every flow read after it have no verdict"
    )
    assert first_lost in failed.stderr


@pytest.mark.parametrize(
    ("kind", "option", "value"),
    [
        ("autoencoder", "--threshold", "nan"),
        ("autoencoder", "--threshold", "inf"),
        ("classifier", "--max-delay", "nan"),
        ("classifier", "--stats-interval", "inf"),
        ("classifier", "--poll-interval", "nan"),
    ],
)
def test_non_finite_option_rejected(gateway_bundles, iot23, kind, option, value):
    result = _serve_cli(
        [str(gateway_bundles[kind]), "--input", str(iot23 / ZEEK_LOGS["5-1"])]
        + ["--alerts", "/dev/null", option, value]
    )

    assert result.returncode == 2
    assert f"must be a finite number, got {value}" in result.stderr


def test_threshold_on_classifier_warns(gateway_bundles, iot23):
    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(iot23 / ZEEK_LOGS["5-1"])]
        + ["--alerts", "/dev/null", "--threshold", "0.5"]
    )

    assert result.returncode == 0, result.stderr
    assert "WARNING threshold 0.5 ignored" in result.stderr
    assert "only to autoencoder bundles" in result.stderr


@pytest.mark.parametrize("follow", [False, True], ids=["once", "follow"])
def test_other_zeek_log_rejected(gateway_bundles, tmp_path, follow):
    log = tmp_path / "dns.log"
    log.write_text(
        "#separator \\x09\n#path\tdns\n#fields\tts\tuid\tquery\n"
        "1.0\tCabc\texample.com\n"
    )

    result = subprocess.run(
        [*EDGEDP, "serve", str(gateway_bundles["classifier"]), "--input", str(log)]
        + ["--alerts", "/dev/null"]
        + (["--follow"] if follow else []),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    message = f"error: {log} is a Zeek dns log; edgedp reads conn logs (#path conn)"
    assert message in result.stderr


DNS_JSON = {
    "ts": 1545403816.5,
    "uid": "Cdns1",
    "id.orig_h": "192.168.1.195",
    "id.orig_p": 5353,
    "id.resp_h": "192.168.1.1",
    "id.resp_p": 53,
    "proto": "udp",
    "query": "example.com",
}


@pytest.mark.parametrize(
    ("record", "follow", "message"),
    [
        (
            {"_path": "dns", **DNS_JSON},
            False,
            "is a Zeek dns log; edgedp reads conn logs (#path conn)",
        ),
        (
            {"_path": "dns", **DNS_JSON},
            True,
            "is a Zeek dns log; edgedp reads conn logs (#path conn)",
        ),
        (
            DNS_JSON,
            False,
            "is not a Zeek conn log: its first JSON object lacks conn_state",
        ),
    ],
    ids=["path-once", "path-follow", "fields-once"],
)
def test_other_json_log_rejected(gateway_bundles, tmp_path, record, follow, message):
    log = tmp_path / "dns.log"
    log.write_text(json.dumps(record) + "\n")

    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(log)]
        + ["--alerts", "/dev/null"]
        + (["--follow"] if follow else [])
    )

    assert result.returncode == 2
    assert f"error: {log} {message}" in result.stderr


def _as_unprivileged_user(args: list[str]) -> list[str]:
    """Prefix `args` to run them without root's file access override.

    Root reads any file through the DAC capabilities, so they are dropped
    from the bounding set. The user stays root, so the virtual environment,
    wherever it is, stays readable.
    """
    if os.geteuid() != 0:
        return args
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv to drop root's file access override")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *args]


@pytest.mark.parametrize("follow", [False, True], ids=["once", "follow"])
def test_unreadable_input_rejected(gateway_bundles, iot23, follow):
    # A folder that a non-root user could enter too, unlike pytest's tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="edgedp-unreadable-"))
    try:
        folder.chmod(0o755)
        bundle = shutil.copytree(gateway_bundles["classifier"], folder / "bundle")
        log = folder / "conn.log"
        shutil.copyfile(iot23 / ZEEK_LOGS["5-1"], log)
        log.chmod(0o000)

        result = subprocess.run(
            _as_unprivileged_user(
                [*EDGEDP, "serve", str(bundle), "--input", str(log)]
                + ["--alerts", "/dev/null"]
                + (["--follow"] if follow else [])
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(folder)

    assert result.returncode == 2, result.stderr
    assert f"error: {log} cannot be opened: Permission denied" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("link", [False, True], ids=["same-path", "symlink"])
def test_alerts_into_input_rejected(gateway_bundles, iot23, tmp_path, link):
    log = tmp_path / "conn.log"
    shutil.copyfile(iot23 / ZEEK_LOGS["5-1"], log)
    alerts = log
    if link:
        alerts = tmp_path / "alerts.jsonl"
        alerts.symlink_to(log)
    size = log.stat().st_size

    result = _serve_cli(
        [str(gateway_bundles["classifier"]), "--input", str(log)]
        + ["--alerts", str(alerts)]
    )

    assert result.returncode == 2
    assert f"error: --alerts {alerts} is the input file {log}" in result.stderr
    assert log.stat().st_size == size


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        (
            "classifier",
            ["--format", "json"],
            "gave no flows: all 1383 lines were bad (bad_json 1383); "
            "--format json is likely wrong",
        ),
        (
            "classifier",
            ["--max-line-bytes", "10"],
            "its first line is longer than --max-line-bytes 10",
        ),
        ("autoencoder", ["--threshold", "-1"], "threshold must be positive, got -1"),
        (
            "autoencoder",
            ["--threshold", "foo"],
            "has no anomaly threshold foo (it records study, validation_fpr)",
        ),
        ("autoencoder", ["--threshold", "0"], "threshold must be positive, got 0"),
    ],
    ids=[
        "wrong-format",
        "short-line-limit",
        "negative-threshold",
        "unknown-threshold",
        "zero-threshold",
    ],
)
def test_unusable_settings_exit_2(gateway_bundles, iot23, kind, options, message):
    result = _serve_cli(
        [str(gateway_bundles[kind]), "--input", str(iot23 / ZEEK_LOGS["5-1"])]
        + ["--alerts", "/dev/null", *options]
    )

    assert result.returncode == 2
    assert message in result.stderr
    assert "is not a Zeek conn log" not in result.stderr
    assert "Traceback" not in result.stderr
