"""Qwen's multimodal rotary positions, computed once per distinct row layout of a batch.

Qwen2-VL and Qwen2.5-VL give each token a (time, height, width) position before every forward
(``get_rope_index``), in a Python loop over the batch's rows: 7 ms of a 32-row organism forward on one
CPU thread, and a cost that grows with the batch on any device. A row's positions depend only on its
token types, its attention mask and its image's grid, and a batch of the paper's prompts holds few such
layouts (2 in a 32-item batch of Objects items; a steered batch repeats its rows once per α), so
:func:`by_distinct_layout` runs the model's own method on one row of each layout and copies the answer to
the rest: the same numbers by construction (tested against the stock method). Batches it cannot split
by row (videos, rows with other than one image, no attention mask) go to the stock method whole.

Example:
    >>> import torch
    >>> from spatial_interp.models.rope_index import by_distinct_layout
    >>> def per_row(input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
    ...             attention_mask=None, **kwargs):  # a stand-in: each row's cumulative image tokens
    ...     return mm_token_type_ids.cumsum(-1).expand(3, -1, -1), mm_token_type_ids.sum(-1, keepdim=True)
    >>> fast = by_distinct_layout(per_row)
    >>> types = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]])
    >>> ids, mask, grid = torch.zeros_like(types), torch.ones_like(types), torch.ones(3, 3, dtype=torch.long)
    >>> [torch.equal(a, b) for a, b in zip(fast(ids, types, grid, attention_mask=mask),
    ...                                    per_row(ids, types, grid, attention_mask=mask))]
    [True, True]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

IMAGE_TYPE = 1  # mm_token_type_ids: 0 text, 1 image, 2 video


def _one_image_per_row(types: Int[Tensor, "batch seq"], grids: Tensor) -> bool:
    is_image = types == IMAGE_TYPE
    starts = is_image[:, :1].sum(-1) + (is_image[:, 1:] & ~is_image[:, :-1]).sum(-1)
    return grids.shape[0] == types.shape[0] and bool((starts == 1).all())


def by_distinct_layout(get_rope_index: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
    """``get_rope_index`` run on one row per distinct (token types, attention mask, image grid) layout."""

    @functools.wraps(get_rope_index)
    def rope_index(input_ids: Int[Tensor, "batch seq"], mm_token_type_ids: Int[Tensor, "batch seq"],
                   image_grid_thw: Tensor | None = None, video_grid_thw: Tensor | None = None, *,
                   attention_mask: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # Keywords past the grids: Qwen2.5-VL's fifth parameter is not Qwen2-VL's.
        stock = functools.partial(get_rope_index, input_ids, mm_token_type_ids=mm_token_type_ids,
                                  image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                                  attention_mask=attention_mask, **kwargs)
        if (video_grid_thw is not None or image_grid_thw is None or attention_mask is None or mm_token_type_ids is None
                or any(v is not None for v in kwargs.values()) or input_ids.shape[0] < 2
                or attention_mask.shape != mm_token_type_ids.shape
                or not _one_image_per_row(mm_token_type_ids, image_grid_thw)):
            return stock()
        layout = torch.cat([mm_token_type_ids.long(), attention_mask.long(), image_grid_thw.long()], dim=1)
        distinct, which = torch.unique(layout, dim=0, return_inverse=True)
        if distinct.shape[0] == layout.shape[0]:
            return stock()
        rows = torch.arange(layout.shape[0], device=layout.device)
        first = torch.full((distinct.shape[0],), layout.shape[0], dtype=torch.long, device=layout.device)
        first = first.scatter_reduce(0, which, rows, reduce="amin")  # one row of each layout
        positions, deltas = get_rope_index(input_ids[first], mm_token_type_ids=mm_token_type_ids[first],
                                           image_grid_thw=image_grid_thw[first], video_grid_thw=None,
                                           attention_mask=attention_mask[first], **kwargs)
        return positions[:, which.to(positions.device)], deltas[which.to(deltas.device)]

    return rope_index


def rope_index_by_layout(model: torch.nn.Module) -> bool:
    """Give ``model`` (a Qwen2/2.5-VL ``...Model``) the by-layout ``get_rope_index``; whether it had one."""
    method = getattr(model, "get_rope_index", None)
    if method is None or getattr(method, "__wrapped__", None) is not None:
        return False
    model.get_rope_index = by_distinct_layout(method)
    return True
