"""Blocking database work with a deadline, so that a database that hangs makes the health and
metrics reads report it instead of hanging too."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """Runs blocking database work on a small pool and waits at most `timeout_s` for it.

    Work that overruns keeps its thread until the database answers or its own timeouts fire; the
    pool is bounded, so a hung database cannot pile up threads. The pool is made on first use
    and again after a shutdown: an app whose lifespan ends and starts again keeps working.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sidecar-db")
            return self._pool

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._executor().submit(fn)

    def call(self, fn: Callable[[], T]) -> T:
        future = self._executor().submit(fn)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {self.timeout_s:g} s") from None

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
