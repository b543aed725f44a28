"""Architecture adapters: the only place that knows how each model family is built."""

from __future__ import annotations

from typing import Any

from .base import Adapter, TinySpec
from .gemma3 import Gemma3Adapter
from .llava import LlavaAdapter
from .pixtral import PixtralAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.arch: cls for cls in (Qwen2VLAdapter, Qwen2_5_VLAdapter, Gemma3Adapter, LlavaAdapter, PixtralAdapter)
}


class UnsupportedArchitectureError(ValueError):
    """A checkpoint whose architecture spatial_interp has no adapter for."""


def adapter_for_arch(arch: str) -> Adapter:
    """The adapter for an architecture name (``qwen2_vl``, ``qwen2_5_vl``, ``gemma3``, ``llava``, ``pixtral``)."""
    try:
        return ADAPTERS[arch]()
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {arch!r}; supported: {', '.join(ADAPTERS)}"
        ) from None


def adapter_for_config(config: Any) -> Adapter:
    """The adapter serving a transformers config (LLaVA and Pixtral share ``model_type == 'llava'``)."""
    model_type = getattr(config, "model_type", None)
    for cls in ADAPTERS.values():
        if model_type in cls.model_types and cls.matches(config):
            return cls()
    raise UnsupportedArchitectureError(
        f"unsupported architecture: config.model_type={model_type!r}; spatial_interp supports "
        f"{', '.join(ADAPTERS)} (Qwen2-VL, Qwen2.5-VL, Gemma-3, LLaVA-1.5, Pixtral)"
    )


__all__ = ["ADAPTERS", "Adapter", "TinySpec", "UnsupportedArchitectureError", "adapter_for_arch",
           "adapter_for_config"]
