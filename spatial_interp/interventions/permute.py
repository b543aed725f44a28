"""Position-blindness diagnostic: shuffle an image's rows at a site and see whether the answer changes.

"Does the LM read *where* an image token sits?" If order is carried in the tokens' content, moving
the tokens to other sequence positions (so M-RoPE and causal order say nothing true about them) leaves
the answers intact; if the LM orders the image by position, the answers fall to chance.
:func:`permute_image_rows` runs each item twice in one batch, clean and with the rows of ``region``
permuted (a seeded permutation per item, within that item's image), and scores both.

Example:
    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.interventions.examples import Example
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> item = Example(Image.new("RGB", (336, 336), "red"), "The color is ", answer="red")
    >>> result = si.permute_image_rows(vlm, [item, item], seed=0)
    >>> result.axes, result.coords["condition"]
    (('item', 'condition', 'metric'), ['clean', 'permuted'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..geometry import ImageLayout, Region
from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..results import LabelledArray, provenance
from ..site import Site
from .ablate import LM_INPUT
from .engine import Edit, repeat_batch, run
from .examples import as_example
from .metrics import evaluate, top1

CONDITIONS = ("clean", "permuted")


def row_permutation(n: int, seed: int, item: int) -> Int[Tensor, " n"]:
    """The permutation applied to item ``item``'s ``n`` rows: a pure function of ``(seed, item)``, so an
    item is shuffled the same way whatever the batch size."""
    return torch.from_numpy(np.random.default_rng([seed, item]).permutation(n)).long()


def permutation_edit(site: Site, layout: ImageLayout, region: Region | None, order: Tensor) -> Edit:
    """Rows of ``region`` at ``site`` ← the same rows taken in ``order`` (one item's permutation)."""
    positions = layout.indices(region, site)
    if order.shape[0] != positions.shape[0]:
        raise ValueError(f"a permutation of {order.shape[0]} rows for a region of {positions.shape[0]}")
    rows = None if site.is_vision else torch.full_like(positions, layout.batch_index)
    return Edit.copy(site, rows, positions, rows, positions[order])


def permute_image_rows(
    vlm: VLM,
    items: Sequence[Any],
    *,
    site: Site = LM_INPUT,
    region: Region | None = None,
    seed: int = 0,
    metric: Any = None,
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
) -> LabelledArray:
    """Score ``items`` clean and with their image rows permuted at ``site``: an ``(item, condition, metric)`` array.

    Args:
        site: where to shuffle. The default ``lm_resid(0)`` (the decoder-layer-0 input) moves every
            spliced image embedding to another image position, which is what the LM's position
            encoding and causal mask see. A ``vision_block(k)`` site shuffles inside the vision tower.
        region: the cells whose rows are permuted among themselves (default: every image cell).
        seed: the permutation of item ``i`` is :func:`row_permutation` ``(n, seed, i)``.
        metric: default top-1 correctness against each item's answer.

    The mean over items of ``condition="permuted"`` minus ``"clean"`` is the accuracy change.
    """
    if isinstance(site, str) or not isinstance(site, Site):
        raise TypeError(f"site must be a Site such as si.site.lm_resid(0), got {site!r}")
    if site.only_last_token:
        raise ValueError("permuting image rows needs the image positions; use a site without .last_token")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = [as_example(i) for i in items]
    if not examples:
        raise ValueError("permute_image_rows() needs at least one item")
    metric = metric if metric is not None else top1(vlm.tokenizer)
    chunks, names = [], None
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk], system=system)
        stacked = repeat_batch(vlm, batch, 2)  # replica 0 clean, replica 1 permuted: one forward
        edits = []
        for offset, layout in enumerate(stacked.layouts[len(chunk):]):
            n = int(layout.indices(region, site).shape[0])
            edits.append(permutation_edit(site, layout, region, row_permutation(n, seed, start + offset)))
        logits = run(vlm, stacked, edits, remote=remote).logits
        values, names = evaluate(metric, logits, chunk + chunk)
        chunks.append(torch.stack([values[:len(chunk)], values[len(chunk):]], dim=1))
    config = {"primitive": "permute_image_rows", "site": str(site), "seed": seed,
              "region": None if region is None else region.flat.tolist()}
    return LabelledArray(torch.cat(chunks).numpy(), ("item", "condition", "metric"),
                         {"item": [e.name for e in examples], "condition": list(CONDITIONS), "metric": names},
                         attrs={"site": str(site), "seed": seed},
                         provenance=provenance(vlm, seed=seed, config=config))
