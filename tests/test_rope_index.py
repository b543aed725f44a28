"""Qwen's rotary positions once per distinct row layout: the stock method's numbers, row for row."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from spatial_interp.models.rope_index import by_distinct_layout, rope_index_by_layout
from tests._models import tiny_model

PROMPTS = ["The color is ", "Which color is left of the square ?", "The color is ", "Name it ",
           "Which color is left of the square ?", "The color is "]


def _stock(vlm):
    return vlm.model.model.get_rope_index.__wrapped__


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_positions_equal_the_stock_method_on_padded_repeated_and_differently_sized_rows(name):
    vlm = tiny_model(name)
    fast = vlm.model.model.get_rope_index
    assert fast.__wrapped__ is not None  # installed when the model was loaded
    sizes = [(336, 336), (336, 336), (252, 392), (336, 336), (336, 336), (392, 252)]  # grids differ too
    colors = ["red", "navy", "red", "green", "navy", "red"]
    images = [Image.new("RGB", size, c) for size, c in zip(sizes, colors, strict=True)]
    batch = vlm.prepare(images, PROMPTS)
    inputs = batch.inputs
    assert len(set(map(tuple, inputs["image_grid_thw"].tolist()))) == 3
    kwargs = dict(image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"],
                  mm_token_type_ids=inputs["mm_token_type_ids"])
    got, expected = fast(inputs["input_ids"], **kwargs), _stock(vlm)(inputs["input_ids"], **kwargs)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    rows = []

    def counting(input_ids, **kw):
        rows.append(input_ids.shape[0])
        return _stock(vlm)(input_ids, **kw)

    by_distinct_layout(counting)(inputs["input_ids"], **kwargs)
    assert rows == [5]  # rows 1 and 4 share prompt and size: one of them computed
    # The model's forward with and without it: the same logits, bit for bit (positions are integers).
    with torch.no_grad():
        fast_logits = vlm.model(**inputs).logits
        vlm.model.model.get_rope_index = _stock(vlm)
        try:
            stock_logits = vlm.model(**inputs).logits
        finally:
            vlm.model.model.get_rope_index = fast
    assert torch.equal(fast_logits, stock_logits)


def test_batches_it_cannot_split_by_row_go_to_the_stock_method_whole():
    calls = []

    def per_row(input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None,
                **kwargs):
        calls.append(input_ids.shape[0])
        types = mm_token_type_ids if mm_token_type_ids is not None else torch.zeros_like(input_ids)
        return types.cumsum(-1).expand(3, -1, -1), types.sum(-1, keepdim=True)

    fast = by_distinct_layout(per_row)
    ids, mask = torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long)
    one_image = torch.tensor([[0, 1, 1, 0, 0]] * 4)
    grids = torch.tensor([[1, 4, 4]] * 4)
    fast(ids, mm_token_type_ids=one_image, image_grid_thw=grids, attention_mask=mask)
    assert calls == [1]  # four identical rows: one row computed
    two_images = torch.tensor([[0, 1, 0, 1, 0]] * 4)
    for call in (dict(mm_token_type_ids=two_images, image_grid_thw=torch.cat([grids, grids])),  # 2 images a row
                 dict(mm_token_type_ids=one_image, image_grid_thw=grids, video_grid_thw=grids),  # videos
                 dict(mm_token_type_ids=one_image, image_grid_thw=grids, second_per_grid_ts=torch.ones(4)),
                 dict(mm_token_type_ids=one_image, image_grid_thw=None),  # no images
                 dict(mm_token_type_ids=None, image_grid_thw=grids)):  # no token types
        calls.clear()
        fast(ids, attention_mask=mask, **call)
        assert calls == [4]
    calls.clear()
    fast(ids, mm_token_type_ids=one_image, image_grid_thw=grids)  # no attention mask
    assert calls == [4]
    with pytest.raises(TypeError):  # Qwen2.5's fifth parameter is not Qwen2's: keywords only past the grids
        fast(ids, one_image, grids, None, mask)


def test_installed_once_and_only_where_there_is_a_method():
    model = torch.nn.Linear(2, 2)
    assert not rope_index_by_layout(model)
    vlm = tiny_model("tiny-qwen2-vl")
    assert not rope_index_by_layout(vlm.model.model)  # already by layout: not wrapped twice
