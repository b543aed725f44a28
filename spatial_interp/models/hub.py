"""Is the Hugging Face hub reachable? One short connection attempt instead of the hub client's retries.

Without a network, ``from_pretrained`` on a hub id retries each file request for tens of seconds and
prints several tracebacks before it fails. Checking once up front lets :func:`~.load.load` load a
cached checkpoint with ``local_files_only=True`` straight away, or fail in seconds with one line.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0


def hub_offline_by_setting() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for cache-only loading."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint (``HF_ENDPOINT``, default huggingface.co) opens within
    ``timeout`` seconds."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cache_only(name: str) -> bool:
    """Load ``name`` from the local cache only: it is a hub id (not a folder) and the hub is off or unreachable."""
    if os.path.isdir(name):
        return False
    return hub_offline_by_setting() or not hub_reachable()
