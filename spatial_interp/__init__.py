"""spatial_interp: mechanistic interpretability of spatial variable binding in vision-language models.

    >>> import spatial_interp as si
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> vlm.arch, vlm.n_lm_layers
    ('qwen2_vl', 3)

The public names below load on first use (PEP 562), so ``import spatial_interp`` and
``spatial-interp --help`` stay fast: torch and transformers are imported by the first call that
needs them, not by the import.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("spatial-interp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_PUBLIC = {
    # name: module it lives in (relative to this package)
    "site": ".site",
    "Site": ".site",
    "GeometryError": ".geometry",
    "Grid": ".geometry",
    "ImageLayout": ".geometry",
    "Region": ".geometry",
    "VLM": ".models",
    "Batch": ".models",
    "load": ".models",
    "Probe": ".interventions",
    "ablate": ".interventions",
    "attribute": ".interventions",
    "attention_flow": ".interventions",
    "Knockout": ".interventions",
    "knockout": ".interventions",
    "collect": ".interventions",
    "patch": ".interventions",
    "permute_image_rows": ".interventions",
    "steer": ".interventions",
    "sweep": ".interventions",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'spatial_interp' has no attribute {name!r}")
    loaded = importlib.import_module(module, __name__)
    value = loaded if name == "site" else getattr(loaded, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from . import site  # noqa: F401
    from .geometry import GeometryError, Grid, ImageLayout, Region  # noqa: F401
    from .interventions import Probe, ablate, attribute, collect, patch, permute_image_rows, steer, sweep  # noqa: F401
    from .interventions.attention import Knockout, attention_flow, knockout  # noqa: F401
    from .models import VLM, Batch, load  # noqa: F401
    from .site import Site  # noqa: F401
