"""Progress bars that say which experiment they belong to.

A primitive's bar is named by what it does (``sweep``, ``collect``); a composition such as
``reproduce`` wraps each experiment in :func:`experiment`, and every bar opened inside reads
``§6 criss-cross: sweep`` instead. The label lives in a :class:`~contextvars.ContextVar`, so it is
per thread and per task, and nothing global is changed.

Example:
    >>> with experiment("§6 criss-cross"):
    ...     bar_name("sweep")
    '§6 criss-cross: sweep'
    >>> bar_name("sweep")
    'sweep'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

_EXPERIMENT: ContextVar[str] = ContextVar("spatial_interp_experiment", default="")


@contextmanager
def experiment(label: str) -> Iterator[None]:
    """Name every progress bar opened in the block after ``label``."""
    token = _EXPERIMENT.set(label)
    try:
        yield
    finally:
        _EXPERIMENT.reset(token)


def bar_name(desc: str) -> str:
    """``desc`` prefixed by the enclosing :func:`experiment` label, if any."""
    label = _EXPERIMENT.get()
    return f"{label}: {desc}" if label else desc


def progress_bar(iterable: Any = None, *, desc: str, **kwargs: Any) -> tqdm:
    """``tqdm`` named by :func:`bar_name`."""
    return tqdm(iterable, desc=bar_name(desc), dynamic_ncols=True, **kwargs)
