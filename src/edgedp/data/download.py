"""Download IoT-23 Zeek logs into a local cache, resumably and verified.

Each scenario's `conn.log.labeled` is fetched with urllib from
`<base_url>/<SCENARIO>/bro/conn.log.labeled` and stored as
`<cache>/<SCENARIO>.conn.log.labeled`. While it is incomplete it lives under
that name plus `.part`, next to a `.part.meta` JSON file that contains the
server's validator (ETag or Last-Modified) and the expected size. Neither name
ends in a flow log suffix, so a folder search for logs skips them. The next
call resumes the file with an HTTP Range request. The file gets its final name
only after its size matches the server's Content-Length or Content-Range total
and, for the files in `PINNED_FILES`, the pinned size and sha256.

This module uses only the standard library.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edgedp import atomic, config

logger = logging.getLogger(__name__)

# NOTE: this layout of the Stratosphere Laboratory's IoT-23 site has not been
# checked from a machine that can reach the site. Only a local server has
# served it.
DEFAULT_BASE_URL = (
    "https://mcfp.felk.cvut.cz/publicDatasets/IoT-23-Dataset/IndividualScenarios"
)
REMOTE_LOG_PATH = "bro/conn.log.labeled"
LOG_SUFFIX = ".conn.log.labeled"
PART_SUFFIX = ".part"
META_SUFFIX = ".meta"

CACHE_ENVIRONMENT_VARIABLE = "EDGEDP_CACHE"
CACHE_SUBFOLDER = "iot23"

# Seconds that one connect or one read may block before it counts as failed.
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
CHUNK_BYTES = 1 << 16

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as `progress(scenario, bytes_done, bytes_total)` while a file
downloads; `bytes_total` is None when neither the server nor a pin gives it."""

_SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class PinnedFile:
    """Size in bytes and sha256 of an official `conn.log.labeled` file."""

    size: int
    sha256: str


# Values of the official files, matched by independent copies of them.
PINNED_FILES: dict[str, PinnedFile] = {
    "CTU-IoT-Malware-Capture-34-1": PinnedFile(
        3_019_311, "7d1d052835439d77dae246b588d7628813bbdef21fdf3b323f4b3eb2c61ef146"
    ),
    "CTU-Honeypot-Capture-4-1": PinnedFile(
        61_653, "aebe40ea0e03b120265a5c7bc140dd9b0d3fe2fce65559e84776b7dd5360e71e"
    ),
    "CTU-Honeypot-Capture-5-1": PinnedFile(
        182_147, "f36db06e7d6ba7364e932a5b003f75835e004b320d70019e8a2f0ba8685d9262"
    ),
}


class DownloadError(RuntimeError):
    """A scenario could not be downloaded or did not verify."""


class _TransferInterrupted(DownloadError):
    """The connection ended before the whole body arrived.

    The bytes received so far are kept in the `.part` file.
    """


def default_cache() -> Path:
    """Return the IoT-23 cache folder.

    The folder is `$EDGEDP_CACHE/iot23` when EDGEDP_CACHE is set, otherwise
    `$XDG_CACHE_HOME/edgedp/iot23`, and `~/.cache/edgedp/iot23` when neither
    variable is set.
    """
    root = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if root:
        return Path(root).expanduser() / CACHE_SUBFOLDER
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgedp" / CACHE_SUBFOLDER


def check_scenario_name(name: str) -> str:
    """Return `name` if it can name a remote folder and a cache file.

    Raises:
        ValueError: the name is empty or contains characters other than
            letters, digits, `.`, `_` and `-` (a `/` could leave the cache).
    """
    if not _SCENARIO_NAME.fullmatch(name):
        raise ValueError(
            f"invalid IoT-23 scenario name {name!r}; use a folder name of the "
            "dataset such as CTU-IoT-Malware-Capture-34-1 (letters, digits, "
            "'.', '_' and '-' only)"
        )
    return name


def scenario_url(name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """Return the URL of one scenario's `conn.log.labeled`."""
    return f"{base_url.rstrip('/')}/{check_scenario_name(name)}/{REMOTE_LOG_PATH}"


def cached_path(name: str, cache: str | Path | None = None) -> Path:
    """Return where the complete log of scenario `name` is stored."""
    folder = Path(cache) if cache is not None else default_cache()
    return folder / f"{check_scenario_name(name)}{LOG_SUFFIX}"


def download_scenarios(
    names: Iterable[str] | None = None,
    *,
    cache: str | Path | None = None,
    base_url: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> list[Path]:
    """Download IoT-23 scenario logs that are not in the cache yet.

    Args:
        names: scenario folder names, such as `CTU-IoT-Malware-Capture-34-1`.
            None means `config.IOT23_SCENARIOS`.
        cache: folder for the logs; None means `default_cache()`.
        base_url: folder URL that contains one subfolder per scenario; None means
            `DEFAULT_BASE_URL`. A mirror must use the same layout.
        progress: called after every received block, see `ProgressCallback`.
        timeout: seconds that connecting or one read may block.
        retries: how many times a transfer that broke after receiving bytes
            is resumed within this call. A failure that received nothing is
            not retried.

    Returns:
        The paths of the complete logs, in the order of `names`.

    Raises:
        ValueError: a scenario name is invalid, or `timeout` or `retries` is
            out of range.
        DownloadError: the server cannot be reached, answers with an HTTP
            error, or sends a file whose size or sha256 does not match. A
            transfer cut short keeps its `.part` file, and the next call
            resumes it.
        OutputError: the cache folder cannot be created or written. This is
            checked before each file's transfer starts.
    """
    scenarios = list(config.IOT23_SCENARIOS if names is None else names)
    for name in scenarios:
        check_scenario_name(name)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries!r}")
    folder = Path(cache) if cache is not None else default_cache()
    base = base_url or DEFAULT_BASE_URL

    paths = []
    for name in scenarios:
        paths.append(
            _download_one(
                name,
                url=scenario_url(name, base),
                target=cached_path(name, folder),
                progress=progress,
                timeout=timeout,
                retries=retries,
            )
        )
    return paths


def _download_one(
    name: str,
    *,
    url: str,
    target: Path,
    progress: ProgressCallback | None,
    timeout: float,
    retries: int,
) -> Path:
    pin = PINNED_FILES.get(name)
    if target.is_file() and _is_complete(target, pin):
        logger.info("%s is already complete at %s, skipped", name, target)
        return target

    atomic.check_writable(target)
    part = _part_path(target)
    attempt = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(name, url, part, pin, progress=progress, timeout=timeout)
            break
        except _TransferInterrupted as error:
            gained = part.stat().st_size - before if part.exists() else 0
            if attempt >= retries or gained <= 0:
                raise
            attempt += 1
            logger.warning(
                "%s: %s; resuming (retry %d of %d)", name, error, attempt, retries
            )
            time.sleep(min(attempt, 5))

    _verify_and_publish(name, part, target, pin)
    return target


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + PART_SUFFIX)


def _sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + META_SUFFIX)


def _is_complete(path: Path, pin: PinnedFile | None) -> bool:
    """Check a file under its final name, which only verified downloads get."""
    if pin is None:
        return True
    if path.stat().st_size != pin.size or _sha256(path) != pin.sha256:
        logger.warning(
            "%s does not match its pinned size and sha256; downloading it again",
            path,
        )
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_sidecar(part: Path) -> dict[str, object]:
    try:
        value = json.loads(_sidecar_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _discard_partial(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar_path(part).unlink(missing_ok=True)


def _transfer(
    name: str,
    url: str,
    part: Path,
    pin: PinnedFile | None,
    *,
    progress: ProgressCallback | None,
    timeout: float,
) -> None:
    """Bring `part` to the full size of the remote file, resuming when it can.

    Raises:
        _TransferInterrupted: the body ended early. `part` keeps what arrived.
        DownloadError: any other failure.
    """
    offset = part.stat().st_size if part.exists() else 0
    sidecar = _read_sidecar(part) if offset else {}
    known_total = pin.size if pin else sidecar.get("total")
    if isinstance(known_total, int) and offset == known_total:
        # Everything arrived in an earlier call; only verification is left.
        return
    if isinstance(known_total, int) and offset > known_total:
        logger.warning("%s: %s is larger than the file, restarting", name, part)
        _discard_partial(part)
        offset = 0

    # Identity encoding keeps Range offsets in bytes of the file itself.
    headers = {"Accept-Encoding": "identity", "User-Agent": "edgedp"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = sidecar.get("validator")
        if isinstance(validator, str) and validator:
            # If-Range makes the server send the whole file again when it
            # changed since the partial download started.
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)

    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            if _partial_is_whole_file(name, part, offset, error):
                atomic.write_json(
                    _sidecar_path(part), {**sidecar, "url": url, "total": offset}
                )
                return
            return _transfer(name, url, part, pin, progress=progress, timeout=timeout)
        raise DownloadError(
            f"{url} returned HTTP {error.code} {error.reason}; check the scenario "
            f"name {name!r} and the base URL (a mirror needs the layout "
            f"<base>/<SCENARIO>/{REMOTE_LOG_PATH})"
        ) from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise DownloadError(_unreachable_message(url, error)) from error

    with response:
        start, total = _response_extent(name, response, offset, part)
        if pin is not None and total is not None and total != pin.size:
            _discard_partial(part)
            raise DownloadError(
                f"{url} has {total:,} bytes, but the official {name} log has "
                f"{pin.size:,}; the server sends another file, so use the "
                "official site or a faithful mirror"
            )
        _write_sidecar(part, url, response, total)
        _receive_body(name, url, response, part, start, total or None, progress)


def _response_extent(
    name: str,
    response: http.client.HTTPResponse,
    offset: int,
    part: Path,
) -> tuple[int, int | None]:
    """Return the byte where the body starts and the file's total size."""
    if response.status == 206:
        match = re.fullmatch(
            r"bytes (\d+)-(\d+)/(\d+|\*)",
            (response.headers.get("Content-Range") or "").strip(),
        )
        if match is None or int(match.group(1)) != offset:
            raise DownloadError(
                f"{response.url} responded to a request for bytes {offset}- with "
                f"Content-Range {response.headers.get('Content-Range')!r}; "
                f"delete {part} and run again"
            )
        total = None if match.group(3) == "*" else int(match.group(3))
        logger.info("%s: resuming at byte %d", name, offset)
        return offset, total

    if offset:
        logger.info(
            "%s: the server sent the whole file (no Range support, or the file "
            "changed), restarting from byte 0",
            name,
        )
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _write_sidecar(
    part: Path, url: str, response: http.client.HTTPResponse, total: int | None
) -> None:
    validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
    # A weak ETag cannot be used in If-Range (RFC 9110, section 13.1.5).
    if validator and validator.startswith("W/"):
        validator = None
    atomic.write_json(
        _sidecar_path(part), {"url": url, "validator": validator, "total": total}
    )


def _receive_body(
    name: str,
    url: str,
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    total: int | None,
    progress: ProgressCallback | None,
) -> None:
    done = start
    with open(part, "r+b" if start and part.exists() else "wb") as handle:
        handle.seek(start)
        handle.truncate()
        try:
            while block := response.read(CHUNK_BYTES):
                handle.write(block)
                done += len(block)
                if progress is not None:
                    progress(name, done, total)
        except (http.client.HTTPException, TimeoutError, OSError) as error:
            handle.flush()
            raise _TransferInterrupted(
                f"transfer of {url} broke at byte {done:,}"
                + (f" of {total:,}" if total else "")
                + f" ({error.__class__.__name__}: {error}); run again to resume"
            ) from error
        handle.flush()
        os.fsync(handle.fileno())

    if total is not None and done < total:
        raise _TransferInterrupted(
            f"connection to {url} closed at byte {done:,} of {total:,}; "
            "run again to resume"
        )


def _partial_is_whole_file(
    name: str, part: Path, offset: int, error: urllib.error.HTTPError
) -> bool:
    """Interpret HTTP 416, the response to a Range that starts at or past the end.

    Returns True when `part` contains exactly the whole file. Otherwise `part` is
    deleted, so the caller can download the file again from byte 0.
    """
    match = re.fullmatch(
        r"bytes \*/(\d+)", (error.headers.get("Content-Range") or "").strip()
    )
    if match and int(match.group(1)) == offset:
        return True
    logger.warning(
        "%s: the server rejected a resume at byte %d, restarting", name, offset
    )
    _discard_partial(part)
    return False


def _verify_and_publish(
    name: str, part: Path, target: Path, pin: PinnedFile | None
) -> None:
    """Check the finished `.part` file and move it to its final name.

    A file that fails the check is deleted, so the next call downloads it anew
    instead of resuming from bad bytes.
    """
    size = part.stat().st_size
    expected = _read_sidecar(part).get("total")
    if isinstance(expected, int) and size != expected:
        _discard_partial(part)
        raise DownloadError(
            f"{name}: received {size:,} bytes but the server announced "
            f"{expected:,}; the partial file was deleted, so run again"
        )
    if pin is not None:
        digest = _sha256(part)
        if size != pin.size or digest != pin.sha256:
            _discard_partial(part)
            raise DownloadError(
                f"{name}: the downloaded file ({size:,} bytes, sha256 "
                f"{digest[:16]}…) does not match the official log ({pin.size:,} "
                f"bytes, sha256 {pin.sha256[:16]}…); it was deleted. Use the "
                "official site or a faithful mirror"
            )
    elif not isinstance(expected, int):
        logger.warning(
            "%s: the server sent no size and no size is pinned, so the %d bytes "
            "received could not be checked",
            name,
            size,
        )

    os.replace(part, target)
    _sidecar_path(part).unlink(missing_ok=True)
    logger.info("%s: downloaded %d bytes to %s", name, size, target)


def _unreachable_message(url: str, error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, TimeoutError):
        reason = "timed out"
    return (
        f"cannot reach {url} ({reason}). Check the network connection, point "
        "`edgedp download --base-url` or the experiment file's [data] base_url "
        "at a mirror of the IoT-23 scenario folders, or give `edgedp run "
        "--data PATH` logs that are already on disk"
    )
