"""collect: stored rows equal raw-hook captures; storage dtypes; lazy, chunked consumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.collect import ActivationStore, StoreError, collect
from spatial_interp.interventions.examples import Example
from tests._models import tiny_model
from tests.interventions import reference as ref
from tests.interventions.conftest import PROMPT, noise


def test_collect_matches_raw_hooks(tiny_vlm, chat, tmp_path):
    vlm = chat(tiny_vlm)
    size = vlm.adapter.native_size
    items = [Example(noise(size, 80 + i), PROMPT, id=f"item{i}") for i in range(3)]
    grid = vlm.prepare([items[0].image], [PROMPT]).layouts[0].grid
    region = Region.rect(grid, (1, 3), (0, 3))
    sites = [si.site.vision_block(0), si.site.vision_out, si.site.lm_resid(1), si.site.lm_resid(2).last_token]
    store = collect(vlm, items, sites, region, out=tmp_path / "acts", batch_size=2, progress=False)
    assert store.item_ids() == ["item0", "item1", "item2"]
    for site in sites:
        values, item, cell = store.rows(site)
        for k, example in enumerate(items):
            want = ref.capture(vlm, example.image, PROMPT, site, None if site.only_last_token else region)
            np.testing.assert_allclose(values[item == k], want.numpy(), atol=1e-5, rtol=0, err_msg=f"{site}")
        if not site.only_last_token:
            assert set(cell.tolist()) == set(region.flat.tolist())


def test_storage_dtypes_and_reload(chat, tmp_path):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    items = [(noise((336, 336), 90 + i), PROMPT) for i in range(2)]
    site = si.site.lm_resid(1)
    full = collect(vlm, items, [site], out=tmp_path / "f32", progress=False).dense(site)
    for dtype, tol in (("float16", 1e-2), ("bfloat16", 5e-2)):
        store = collect(vlm, items, [site], out=tmp_path / dtype, dtype=dtype, progress=False)
        reopened = ActivationStore.open(tmp_path / dtype)
        dense = reopened.dense(site)
        assert dense.values.dtype == np.float32 and dense.axes == ("item", "cell", "d")
        np.testing.assert_allclose(dense.values, full.values, atol=tol * np.abs(full.values).max(), rtol=0)
        assert store.provenance["config"]["dtype"] == dtype
    with pytest.raises(StoreError, match="already holds"):
        collect(vlm, items, [site], out=tmp_path / "f32", progress=False)
    with pytest.raises(StoreError, match="not collected"):
        full_store = ActivationStore(tmp_path / "f32")
        full_store.rows(si.site.lm_resid(2))
    with pytest.raises(ValueError, match="storage dtype"):
        collect(vlm, items, [site], out=tmp_path / "x", dtype="int8")


def test_collect_streams_items_lazily(chat, tmp_path, monkeypatch):
    """Items are pulled one batch at a time, at most one batch ahead of what is on disk (the next batch is
    prepared in a worker during this one's forward)."""
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    site = si.site.lm_resid(1).last_token
    folder = tmp_path / "lazy"
    pulled = []

    def items():
        for i in range(7):
            written = len(list((folder / str(site)).glob("chunk_*.npy"))) if folder.exists() else 0
            pulled.append((i, written))
            yield Example(noise((336, 336), i), PROMPT)

    store = collect(vlm, items(), [site], out=folder, batch_size=3, progress=False)
    # Item i (batch i // 3) is requested only after every batch but the one before its own was written.
    assert [i for i, _ in pulled] == list(range(7))
    assert all(i // 3 - 1 <= written <= i // 3 for i, written in pulled), pulled
    assert store.dense(site).shape == (7, 1, vlm.d_model)
    assert torch.is_tensor(torch.from_numpy(store.dense(site).values))
