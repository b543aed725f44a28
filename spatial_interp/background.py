"""Independent work in a second process while this one computes: a second core, used.

``reproduce`` measures the route verdict of every shipped organism beside the model under study. That
panel needs nothing from the run but its settings, so it goes to a spawned process at the start and is
collected when the report needs it; on a 2-core machine it costs no wall time beyond the run's own.

The worker process gives torch one thread, and while it is alive the caller's torch gives up one of
its threads (restored when the block exits), so the two processes do not oversubscribe the cores.
The worker is terminated when the ``with`` block exits, so an error or Ctrl-C in the caller leaves no
process behind. ``enabled=False`` runs each task in the caller, lazily, when its result is
asked for: the same calls in the same order, for tests, debugging or machines without ``spawn``.

Example:
    >>> import operator
    >>> with Background(enabled=False) as background:
    ...     task = background.submit(operator.add, 2, 3)
    ...     task.result()
    5
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


class Task(Generic[T]):
    """A submitted call; ``result()`` waits for it (or, run in the caller, computes it once)."""

    def __init__(self, handle: Any = None, call: Callable[[], T] | None = None) -> None:
        self._handle, self._call = handle, call
        self._done, self._value = False, None

    def result(self) -> T:
        if not self._done:
            self._value = self._handle.get() if self._handle is not None else self._call()
            self._done = True
        return self._value  # type: ignore[return-value]


class Background:
    """One spawned worker process for calls whose arguments and results pickle (module-level functions)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._pool: Any = None
        self._threads: int | None = None

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Task[T]:
        if not self.enabled:
            return Task(call=lambda: fn(*args))
        if self._pool is None:
            import torch

            log.debug("starting a background worker process")
            self._pool = multiprocessing.get_context("spawn").Pool(1, initializer=_one_thread)
            self._threads = torch.get_num_threads()
            if self._threads > 1:
                torch.set_num_threads(self._threads - 1)
        return Task(handle=self._pool.apply_async(fn, args))
