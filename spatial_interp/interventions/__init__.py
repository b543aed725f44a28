"""Intervention primitives: collect, patch, sweep, probes, steer, ablate.

Each primitive takes plain data (images and prompts, pairs, regions, sites), runs batched nnsight
traces through :mod:`.engine` (the only trace body, remote-safe), and returns labelled arrays
(:mod:`spatial_interp.results`). Nothing here branches on the architecture.
"""

from .ablate import Ablation, Reference, ablate, ordering_ablation, ordering_references
from .collect import ActivationStore, collect
from .examples import Example, PatchPair, Swap, as_example, as_pair
from .metrics import answer_probs, logit_diff, top1
from .patch import Intervention, patch, patch_logits
from .probes import Probe
from .steer import amplification_summary, random_directions, steer
from .sweep import sweep

__all__ = [
    "Ablation", "ActivationStore", "Example", "Intervention", "PatchPair", "Probe", "Reference", "Swap", "ablate",
    "amplification_summary", "answer_probs", "as_example", "as_pair", "collect", "logit_diff", "ordering_ablation",
    "ordering_references", "patch", "patch_logits", "random_directions", "steer", "sweep", "top1",
]
