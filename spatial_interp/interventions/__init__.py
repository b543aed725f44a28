"""Intervention primitives: collect, patch, sweep, probes, steer, ablate.

Each primitive takes plain data (images and prompts, pairs, regions, sites), runs batched nnsight
traces through :mod:`.engine` (the only trace body, remote-safe), and returns labelled arrays
(:mod:`spatial_interp.results`). Nothing here branches on the architecture.
"""

from .ablate import Ablation, Reference, ablate, ordering_ablation, ordering_references
from .examples import Example, PatchPair, Swap, as_example, as_pair
from .metrics import answer_probs, logit_diff, top1
from .patch import Intervention, patch, patch_logits
from .sweep import sweep

__all__ = [
    "Ablation", "Example", "Intervention", "PatchPair", "Reference", "Swap", "ablate", "answer_probs",
    "as_example", "as_pair", "logit_diff", "ordering_ablation", "ordering_references", "patch", "patch_logits",
    "sweep", "top1",
]
