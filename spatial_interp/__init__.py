"""spatial_interp: mechanistic interpretability of spatial variable binding in vision-language models.

    >>> import spatial_interp as si
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> vlm.arch, vlm.n_lm_layers
    ('qwen2_vl', 3)
"""

from importlib.metadata import PackageNotFoundError, version

from . import site
from .geometry import GeometryError, Grid, ImageLayout, Region
from .interventions import Probe, ablate, collect, patch, permute_image_rows, steer, sweep
from .models import VLM, Batch, load
from .site import Site

try:
    __version__ = version("spatial-interp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["VLM", "Batch", "GeometryError", "Grid", "ImageLayout", "Probe", "Region", "Site", "__version__", "ablate",
           "collect", "load", "patch", "permute_image_rows", "site", "steer", "sweep"]
