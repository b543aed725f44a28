"""Pre-flight check for ``remote=True``: would NDIF accept this request at all?

Without it a remote trace of a tiny model or a local folder, or one without an API key, fails after
the request is built (or with a server error that does not say what to change). The check is local
only: it makes no network call, so it cannot tell whether NDIF currently hosts the checkpoint.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.models.remote import RemoteError, check_remote
    >>> try:
    ...     check_remote(si.load("tiny-qwen2-vl"))
    ... except RemoteError as error:
    ...     "hub checkpoint" in str(error)
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

API_KEY_ENV = "NDIF_API_KEY"


class RemoteError(ValueError):
    """A ``remote=True`` request NDIF cannot serve (not a hub checkpoint, or no API key configured)."""


def configured_api_key() -> str | None:
    """The NDIF API key: ``$NDIF_API_KEY``, else nnsight's config (``nnsight.CONFIG.API.APIKEY``, which
    ``CONFIG.set_default_api_key`` persists); ``None`` when neither is set."""
    key = os.environ.get(API_KEY_ENV)
    if key:
        return key
    try:
        import nnsight

        key = nnsight.CONFIG.API.APIKEY
    except (ImportError, AttributeError):
        return None
    return key or None


def remote_problems(vlm: Any) -> list[str]:
    """Why ``vlm`` cannot run on NDIF, each with its fix (empty when it can)."""
    problems = []
    info = vlm.info
    if info.source != "hub":
        article = "an" if info.source[:1] in ("a", "e", "i", "o", "u") else "a"
        problems.append(f"{info.name!r} is {article} {info.source} model, not a hub checkpoint; NDIF serves only "
                        "Hugging Face hub checkpoints: load one by its hub id, e.g. "
                        "si.load('Qwen/Qwen2-VL-7B-Instruct', device='meta') (no weights needed locally)")
    elif Path(info.name).expanduser().exists():
        problems.append(f"{info.name!r} is a local checkpoint folder; NDIF serves only Hugging Face hub "
                        "checkpoints: load the model by its hub id instead")
    if configured_api_key() is None:
        problems.append(f"no NDIF API key is configured: set the {API_KEY_ENV} environment variable, or run "
                        "nnsight.CONFIG.set_default_api_key('<key>') once (keys: https://login.ndif.us)")
    return problems


def check_remote(vlm: Any) -> None:
    """Raise :class:`RemoteError` naming every fix needed before ``remote=True`` can work for ``vlm``.

    Use ``remote="local"`` to test the remote code path (nnsight's serialisation round trip) offline.
    """
    problems = remote_problems(vlm)
    if problems:
        raise RemoteError("cannot run remotely (remote=True): " + "; and ".join(problems)
                          + ". To exercise the remote path offline, pass remote='local'")


TIMEOUT_ENV = "SPATIAL_INTERP_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a remote trace may take, queue included, before :func:`within_time` gives up (30 minutes)."""


class RemoteTimeoutError(TimeoutError):
    """A remote trace that did not finish within the deadline."""


def remote_timeout() -> float:
    """The remote deadline in seconds: ``$SPATIAL_INTERP_REMOTE_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set e.g. {TIMEOUT_ENV}=600") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} must be a finite number of seconds > 0")
    return value


def within_time(fn: Any, args: tuple, seconds: float) -> Any:
    """``fn(*args)`` in a worker thread, its result or its exception; :class:`RemoteTimeoutError` after
    ``seconds``. The worker is a daemon: a request NDIF never answers cannot keep the process alive.

    Example:
        >>> within_time(sum, ([1, 2],), 5.0)
        3
    """
    import threading

    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=work, name="spatial-interp-remote", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RemoteTimeoutError(f"the remote trace did not finish within {seconds:g} s (queue included); check "
                                 f"NDIF's status page, or allow longer with {TIMEOUT_ENV}=<seconds>")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
