"""Run a generator one item ahead in a background thread.

Polars releases the GIL while it parses, and numpy does for large arrays.
So a thread that parses the next block of a log runs alongside the caller's
work on the current block (encoding, writing) when the machine has cores to
spare.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

Item = TypeVar("Item")

_POLL_SECONDS = 0.1


class _End:
    """End-of-items marker, with the error that ended them, if any."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def prefetch(items: Iterator[Item], *, depth: int = 1) -> Iterator[Item]:
    """Yield the items of `items` in order, produced in a background thread.

    The thread runs up to `depth` + 1 items ahead of the caller: `depth`
    waiting in a queue and one being produced. An exception raised in the
    thread is raised again in the caller, after the items produced before
    it. Closing the returned generator early stops the thread after the
    item it is producing, and then closes `items`, so that item's side
    effects (such as skipped lines recorded) still happen.

    Raises:
        ValueError: `depth` is less than 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    buffer: queue.Queue[Item | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: Item | _End) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised by the consumer
            put(_End(error))
            return
        put(_End())

    worker = threading.Thread(target=produce, name="edgedp-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value = buffer.get()
            if isinstance(value, _End):
                if value.error is not None:
                    raise value.error
                return
            yield value
    finally:
        stop.set()
        worker.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()
