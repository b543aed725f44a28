"""Training the model organisms: small VLMs of the real architectures trained on the paper's spatial tasks.

``experiments/train_organism.py`` composes this package; the shipped results live in
``spatial_interp/models/organisms/<name>/`` and load with ``si.load("organism-<name>")``.
"""

from .loop import TrainResult, train
from .organisms import PLANTED, SPECS, OrganismSpec, TrainRecipe, spec_for

__all__ = ["PLANTED", "SPECS", "OrganismSpec", "TrainRecipe", "TrainResult", "finalize_organism", "spec_for", "train"]


def finalize_organism(*args, **kwargs):
    """Evaluate a trained organism, write its model card and optionally ship it (see :mod:`.report`)."""
    from .report import finalize_organism as _finalize

    return _finalize(*args, **kwargs)
