"""Overlap host preprocessing with the model's forward: the next chunk is rendered and run through the
processor in a worker thread while the current one is in the model.

One worker and a queue one chunk deep, so the order is exactly the input order (deterministic: the
worker only calls ``next`` on the same iterator the loop would) and at most two chunks are alive at
once (memory stays flat). Rendering (PIL), the processor (numpy) and the forward (torch) all release
the GIL for their heavy parts, so on a GPU machine — where the forward is short — preprocessing that
used to sit on the critical path hides behind it.

Example:
    >>> [x * 10 for x in prefetched(iter(range(4)))]
    [0, 10, 20, 30]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def _next(iterator: Iterator[T]) -> object:
    return next(iterator, _DONE)


def prefetched(items: Iterable[T], enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` in order, producing item ``k + 1`` in a worker thread while the caller uses item ``k``.

    An exception raised while producing an item is raised here, at that item. ``enabled=False`` yields
    them in the caller's thread (for profiling, or producers that are not thread-safe).
    """
    iterator = iter(items)
    if not enabled:
        yield from iterator
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spatial_interp-prefetch") as worker:
        pending = worker.submit(_next, iterator)
        while True:
            value = pending.result()
            if value is _DONE:
                return
            pending = worker.submit(_next, iterator)
            yield value  # type: ignore[misc]
