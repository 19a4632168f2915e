"""The IoT-23 downloader against a real HTTP server on 127.0.0.1.

The server is `http.server` in a thread, serving IoT-23 logs from the shared
sample data under the official folder layout. It supports Range and If-Range
and can cut a response short or ignore Range, to exercise resuming.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgedp import config
from edgedp.atomic import OutputError
from edgedp.data import download as downloads

BIG = "CTU-IoT-Malware-Capture-34-1"
SMALL_PINNED = "CTU-Honeypot-Capture-4-1"
UNPINNED = "CTU-IoT-Malware-Capture-42-1"
# The shared copy of 34-1 lacks these last 28 bytes of the official file.
CLOSE_LINE_34_1 = b"\n#close\t2019-03-15-14-50-54\n"


@pytest.fixture(scope="module")
def logs(iot23: Path) -> dict[str, bytes]:
    """The bytes served for each default scenario."""
    zeek = iot23 / "zeek"
    big = gzip.decompress((zeek / f"{BIG}.conn.log.labeled.gz").read_bytes())
    return {
        BIG: big + CLOSE_LINE_34_1,
        "CTU-IoT-Malware-Capture-20-1": (
            iot23 / "csv" / "CTU-IoT-Malware-Capture-20-1.labeled.csv"
        ).read_bytes(),
        UNPINNED: (zeek / f"{UNPINNED}.conn.log.labeled").read_bytes(),
        "CTU-IoT-Malware-Capture-44-1": (
            iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
        ).read_bytes(),
        SMALL_PINNED: (zeek / f"{SMALL_PINNED}.conn.log.labeled").read_bytes(),
        "CTU-Honeypot-Capture-5-1": (
            zeek / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
        ).read_bytes(),
    }


@dataclass
class Served:
    """What the test server sends, and a log of the requests it received."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    range_support: bool = True
    cut_at: list[int] = field(default_factory=list)
    """Byte counts at which the next responses end early, one per response."""
    requests: list[dict[str, object]] = field(default_factory=list)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        record: dict[str, object] = {
            "path": self.path,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
        }
        self.served.requests.append(record)
        data = self.served.files.get(self.path)
        if data is None:
            record["status"] = 404
            self.send_error(404)
            return

        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if (
            requested
            and self.served.range_support
            and (if_range is None or if_range == _etag(data))
        ):
            start = int(requested.group(1))
            if start >= len(data):
                record["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
            )
        else:
            self.send_response(200)
        record["status"] = 206 if start else 200
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", _etag(data))
        self.end_headers()

        if self.served.cut_at:
            # Announce the full length, send part of it, and hang up.
            body = body[: self.served.cut_at.pop(0)]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that rejects a file hangs up while the body is still being
        # sent; the resulting broken pipe is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def served() -> Served:
    """Start a threaded HTTP server on 127.0.0.1 and stop it after the test."""
    state = Served()
    handler = type("Handler", (_Handler,), {"served": state})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/IoT-23"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve_under_prefix(served: Served, scenario: str, data: bytes) -> None:
    served.files[f"/IoT-23/{scenario}/{downloads.REMOTE_LOG_PATH}"] = data


def _download(served: Served, cache: Path, names: list[str] | None, **options):
    return downloads.download_scenarios(
        names, cache=cache, base_url=served.base_url, timeout=5, **options
    )


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if ".part" in p.name)


def test_pinned_values_match_official_files(logs):
    for name, pin in downloads.PINNED_FILES.items():
        assert len(logs[name]) == pin.size, name
        assert hashlib.sha256(logs[name]).hexdigest() == pin.sha256, name


def test_fresh_download_of_default_set(served, logs, tmp_path):
    for name, data in logs.items():
        _serve_under_prefix(served, name, data)
    reported: dict[str, tuple[int, int | None]] = {}

    paths = _download(
        served,
        tmp_path,
        None,
        progress=lambda name, done, total: reported.__setitem__(name, (done, total)),
    )

    assert [p.name for p in paths] == [
        f"{name}{downloads.LOG_SUFFIX}" for name in config.IOT23_SCENARIOS
    ]
    for name, path in zip(config.IOT23_SCENARIOS, paths, strict=True):
        assert path.read_bytes() == logs[name], name
        assert reported[name] == (len(logs[name]), len(logs[name])), name
    assert _leftovers(tmp_path) == []
    assert all(r["range"] is None for r in served.requests)


def test_cut_transfer_resumes_next_call(served, logs, tmp_path):
    _serve_under_prefix(served, BIG, logs[BIG])
    served.cut_at = [1_000_000]

    with pytest.raises(downloads.DownloadError, match="run again to resume"):
        _download(served, tmp_path, [BIG], retries=0)

    final = downloads.cached_path(BIG, tmp_path)
    part = final.with_name(final.name + downloads.PART_SUFFIX)
    assert not final.exists()
    assert part.read_bytes() == logs[BIG][:1_000_000]

    paths = _download(served, tmp_path, [BIG], retries=0)

    assert paths == [final]
    assert final.read_bytes() == logs[BIG]
    assert served.requests[1]["range"] == "bytes=1000000-"
    assert served.requests[1]["if_range"] == _etag(logs[BIG])
    assert served.requests[1]["status"] == 206
    assert _leftovers(tmp_path) == []


def test_cut_transfer_retried_within_call(served, logs, tmp_path):
    _serve_under_prefix(served, UNPINNED, logs[UNPINNED])
    served.cut_at = [100_000]

    paths = _download(served, tmp_path, [UNPINNED], retries=1)

    assert paths[0].read_bytes() == logs[UNPINNED]
    assert [r["range"] for r in served.requests] == [None, "bytes=100000-"]


def test_changed_file_restarts_despite_partial(served, logs, tmp_path):
    _serve_under_prefix(served, UNPINNED, logs[UNPINNED])
    served.cut_at = [100_000]
    with pytest.raises(downloads.DownloadError):
        _download(served, tmp_path, [UNPINNED], retries=0)

    # A new version of the file: If-Range no longer matches its ETag.
    _serve_under_prefix(served, UNPINNED, logs[SMALL_PINNED])
    paths = _download(served, tmp_path, [UNPINNED], retries=0)

    assert paths[0].read_bytes() == logs[SMALL_PINNED]
    assert served.requests[1]["range"] == "bytes=100000-"
    assert served.requests[1]["status"] == 200


def test_size_mismatch_rejected(served, iot23, tmp_path):
    # The shared copy of 34-1 is 28 bytes shorter than the official file.
    truncated = gzip.decompress(
        (iot23 / "zeek" / f"{BIG}.conn.log.labeled.gz").read_bytes()
    )
    _serve_under_prefix(served, BIG, truncated)

    with pytest.raises(downloads.DownloadError, match="3,019,283 bytes, but"):
        _download(served, tmp_path, [BIG])

    assert not downloads.cached_path(BIG, tmp_path).exists()
    assert _leftovers(tmp_path) == []


def test_sha256_mismatch_rejected(served, logs, tmp_path):
    altered = bytearray(logs[SMALL_PINNED])
    altered[-10] ^= 0x01
    _serve_under_prefix(served, SMALL_PINNED, bytes(altered))

    with pytest.raises(downloads.DownloadError, match="does not match the official"):
        _download(served, tmp_path, [SMALL_PINNED])

    assert not downloads.cached_path(SMALL_PINNED, tmp_path).exists()
    assert _leftovers(tmp_path) == []


def test_server_without_range_restarts(served, logs, tmp_path):
    _serve_under_prefix(served, SMALL_PINNED, logs[SMALL_PINNED])
    served.range_support = False
    final = downloads.cached_path(SMALL_PINNED, tmp_path)
    # Wrong bytes in the partial file: only a restart from 0 can verify.
    final.with_name(final.name + downloads.PART_SUFFIX).write_bytes(b"x" * 20_000)

    paths = _download(served, tmp_path, [SMALL_PINNED])

    assert paths[0].read_bytes() == logs[SMALL_PINNED]
    assert served.requests[0]["range"] == "bytes=20000-"
    assert served.requests[0]["status"] == 200
    assert _leftovers(tmp_path) == []


def test_complete_partial_verified_after_416(served, logs, tmp_path):
    _serve_under_prefix(served, UNPINNED, logs[UNPINNED])
    final = downloads.cached_path(UNPINNED, tmp_path)
    final.with_name(final.name + downloads.PART_SUFFIX).write_bytes(logs[UNPINNED])

    paths = _download(served, tmp_path, [UNPINNED])

    assert paths[0].read_bytes() == logs[UNPINNED]
    assert served.requests[0]["status"] == 416


def test_complete_files_skipped_without_request(served, logs, tmp_path):
    for name in (SMALL_PINNED, UNPINNED):
        _serve_under_prefix(served, name, logs[name])
    first = _download(served, tmp_path, [SMALL_PINNED, UNPINNED])
    served.requests.clear()

    second = _download(served, tmp_path, [SMALL_PINNED, UNPINNED])

    assert second == first
    assert served.requests == []


def test_altered_pinned_file_downloaded_again(served, logs, tmp_path):
    _serve_under_prefix(served, SMALL_PINNED, logs[SMALL_PINNED])
    final = downloads.cached_path(SMALL_PINNED, tmp_path)
    final.write_bytes(logs[SMALL_PINNED][:-1] + b"?")

    _download(served, tmp_path, [SMALL_PINNED])

    assert final.read_bytes() == logs[SMALL_PINNED]
    assert len(served.requests) == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_clear_error(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/IoT-23"

    with pytest.raises(downloads.DownloadError) as caught:
        downloads.download_scenarios([BIG], cache=tmp_path, base_url=url, timeout=5)

    message = str(caught.value)
    assert "cannot reach" in message
    assert "check the network" in message.lower()
    assert "edgedp download --base-url" in message
    assert "[data] base_url" in message
    assert "--data" in message
    assert _leftovers(tmp_path) == []


def test_silent_server_times_out(tmp_path):
    with socket.socket() as listener:
        # Connections complete in the backlog but never get a response.
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/IoT-23"

        with pytest.raises(downloads.DownloadError, match="timed out"):
            downloads.download_scenarios(
                [BIG], cache=tmp_path, base_url=url, timeout=0.3
            )


def test_missing_scenario_names_http_error(served, tmp_path):
    with pytest.raises(downloads.DownloadError, match="HTTP 404"):
        _download(served, tmp_path, ["CTU-IoT-Malware-Capture-999-1"])


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "-x"])
def test_invalid_scenario_name_rejected(name, tmp_path):
    with pytest.raises(ValueError, match="invalid IoT-23 scenario name"):
        downloads.download_scenarios([name], cache=tmp_path)


def test_default_cache_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEDP_CACHE", str(tmp_path / "root"))
    assert downloads.default_cache() == tmp_path / "root" / "iot23"

    monkeypatch.delenv("EDGEDP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert downloads.default_cache() == tmp_path / "xdg" / "edgedp" / "iot23"


def _edgedp(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from edgedp.cli import main; main()"]
    return subprocess.run(
        [*command, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_command_downloads_into_environment_cache(served, logs, tmp_path):
    _serve_under_prefix(served, SMALL_PINNED, logs[SMALL_PINNED])

    result = _edgedp(
        "download",
        "--scenario",
        SMALL_PINNED,
        "--base-url",
        served.base_url,
        env={"EDGEDP_CACHE": str(tmp_path)},
    )

    assert result.returncode == 0, result.stderr
    path = tmp_path / "iot23" / f"{SMALL_PINNED}{downloads.LOG_SUFFIX}"
    assert path.read_bytes() == logs[SMALL_PINNED]
    assert SMALL_PINNED in result.stderr


def test_command_unreachable_exits_with_advice(tmp_path):
    result = _edgedp(
        "download",
        "--scenario",
        SMALL_PINNED,
        "--base-url",
        f"http://127.0.0.1:{_closed_port()}/IoT-23",
        env={"EDGEDP_CACHE": str(tmp_path)},
    )

    assert result.returncode == 1
    assert "cannot reach" in result.stderr
    assert "--base-url" in result.stderr


def test_unwritable_cache_fails_before_request(served, logs, tmp_path):
    _serve_under_prefix(served, SMALL_PINNED, logs[SMALL_PINNED])
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a regular file where the cache folder would be\n")

    with pytest.raises(OutputError, match="is a file, not a folder") as caught:
        _download(served, not_a_folder / "iot23", [SMALL_PINNED])

    assert str(not_a_folder / "iot23") in str(caught.value)
    assert served.requests == []


def test_command_unwritable_cache_exits_2(served, logs, tmp_path):
    _serve_under_prefix(served, SMALL_PINNED, logs[SMALL_PINNED])
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a regular file where the cache folder would be\n")

    result = _edgedp(
        "download",
        "--scenario",
        SMALL_PINNED,
        "--cache",
        str(not_a_folder / "iot23"),
        "--base-url",
        served.base_url,
        env={},
    )

    assert result.returncode == 2
    assert "cannot write" in result.stderr
    assert "is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert served.requests == []
