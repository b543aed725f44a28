"""Intervention primitives: collect, patch, sweep, probes, steer, ablate, attention flow and knockout.

Each primitive takes plain data (images and prompts, pairs, regions, sites), runs batched nnsight
traces through :mod:`.engine` (the only trace body, remote-safe), and returns labelled arrays
(:mod:`spatial_interp.results`). Nothing here branches on the architecture.

Patching strips on a tiny model (runs offline in seconds)::

    import spatial_interp as si
    from spatial_interp.data.pairs import criss_cross_pairs
    from spatial_interp.data.tasks import task_for
    from spatial_interp.geometry import Region
    from spatial_interp.interventions import Swap
    from spatial_interp.interventions.paper import criss_cross_regions

    vlm = si.load("tiny-qwen2-vl", seed=0)          # architecture-exact, random weights
    pairs = criss_cross_pairs(task_for("squares", vlm.canvas), vlm.canvas, directions=["left"], n_per_direction=4)

    # Swap the left and right strips (columns 0-3 <-> 8-11 of the 12x12 grid) at the LM input.
    grid = si.Grid(12, 12)
    strips = Swap(Region.columns(grid, 0, 4), Region.columns(grid, 8, 12))
    probs = si.patch(vlm, pairs, si.site.lm_resid(0), strips, pairing="swap")  # (pair, metric)
    print(probs.mean("pair").values, probs.extras["clean"].mean("pair").values)

    # Every residual slot x {object, strip}: batched, cached vision tower, resumable from runs/strips.
    result = si.sweep(vlm, pairs, [si.site.lm_resid(s) for s in range(vlm.n_lm_layers + 1)],
                      criss_cross_regions(vlm), pairing="swap", out="runs/strips")
    print(result.sel(region="strip", metric="cf answer").mean("pair").values)  # P(cf answer) by slot
"""

from .ablate import Ablation, Reference, ablate, ordering_ablation, ordering_references
from .attention import Knockout, attention_flow, knockout
from .attribution import attribute, validate_attribution
from .collect import ActivationStore, collect
from .examples import Example, PatchPair, Swap, as_example, as_pair
from .metrics import (
    answer_log_odds,
    answer_logit_diff,
    answer_prob,
    answer_probs,
    logit_diff,
    prob_diff,
    top1,
    top_token,
)
from .patch import Intervention, patch, patch_logits
from .permute import permute_image_rows
from .position_control import order_vs_position
from .probes import Probe
from .steer import amplification, amplification_summary, random_directions, steer
from .sweep import sweep

__all__ = [
    "Ablation", "ActivationStore", "Example", "Intervention", "Knockout", "PatchPair", "Probe", "Reference", "Swap",
    "ablate", "attention_flow", "knockout",
    "amplification", "amplification_summary", "answer_log_odds", "answer_logit_diff", "answer_prob", "answer_probs",
    "as_example", "as_pair", "attribute", "collect", "logit_diff",
    "order_vs_position", "ordering_ablation", "ordering_references", "patch", "patch_logits", "permute_image_rows",
    "prob_diff", "random_directions", "steer", "sweep", "top1", "top_token", "validate_attribution",
]
