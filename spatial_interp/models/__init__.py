"""Model loading, the VLM wrapper and the per-architecture adapters."""

from .adapters import ADAPTERS, Adapter, UnsupportedArchitectureError
from .load import UnknownModelError, load, organism_names, tiny_names
from .vlm import VLM, Batch, ModelInfo

__all__ = ["ADAPTERS", "VLM", "Adapter", "Batch", "ModelInfo", "UnknownModelError", "UnsupportedArchitectureError",
           "load", "organism_names", "tiny_names"]
