"""sweep: equals one patch per intervention, stacks interventions per forward, resumes bit-identically."""

from __future__ import annotations

import numpy as np
import pytest

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.examples import Example, PatchPair, Swap
from spatial_interp.interventions.patch import PreparedChunk, patch
from spatial_interp.interventions.sweep import SweepMismatchError, sweep
from tests._models import tiny_model
from tests.interventions.conftest import PROMPT, noise


def _setup(chat, name="tiny-qwen2-vl", n=3):
    vlm = chat(tiny_model(name))
    size = vlm.adapter.native_size
    pairs = [PatchPair(Example(noise(size, 40 + i), PROMPT), Example(noise(size, 60 + i), PROMPT),
                       answers=("red", "blue", "green"), id=f"p{i}") for i in range(n)]
    grid = vlm.prepare([pairs[0].clean.image], [PROMPT]).layouts[0].grid
    w = grid.cols // 3
    regions = {
        "strip": Swap(Region.columns(grid, 0, w), Region.columns(grid, grid.cols - w, grid.cols)),
        "object": lambda pair, layout: Swap(Region.rect(layout.grid, (2, 4), (0, 2)),
                                            Region.rect(layout.grid, (2, 4), (grid.cols - 2, grid.cols))),
    }
    return vlm, pairs, regions


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-pixtral"])
def test_sweep_equals_individual_patches(chat, name):
    vlm, pairs, regions = _setup(chat, name)
    sites = [si.site.lm_resid(0), si.site.lm_resid(2), si.site.vision_out]
    result = sweep(vlm, pairs, sites, regions, pairing="swap", pairs_per_chunk=2, batch_size=4, progress=False)
    assert result.axes == ("metric", "site", "region", "pair")
    assert result.shape == (3, 3, 2, 3)
    for site in sites:
        for name_, spec in regions.items():
            single = patch(vlm, pairs, site, spec, "swap")
            got = result.sel(site=str(site), region=name_).transpose("pair", "metric").values
            np.testing.assert_allclose(got, single.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.extras["clean"].values.T, single.extras["clean"].values, atol=1e-6)


def test_lm_sweep_runs_vision_tower_once_per_chunk(chat):
    vlm, pairs, regions = _setup(chat)
    calls = []
    handle = vlm.module(si.site.vision_out).register_forward_hook(lambda *a: calls.append(1))
    try:
        sweep(vlm, pairs, [si.site.lm_resid(s) for s in range(vlm.n_lm_layers + 1)], regions, pairing="swap",
              pairs_per_chunk=2, batch_size=4, progress=False)
    finally:
        handle.remove()
    # Two chunks of pairs, each: one forward of its sources and one of its clean images. The 8 × 2
    # interventions never re-run the vision tower.
    assert len(calls) == 4


def test_prefix_reuse_is_exact(chat):
    vlm, pairs, regions = _setup(chat, "tiny-gemma3", n=1)
    sites = [si.site.lm_resid(s) for s in (1, 3)]
    fast = sweep(vlm, pairs, sites, regions, pairing="swap", batch_size=2, progress=False)
    slow = sweep(vlm, pairs, sites, regions, pairing="swap", batch_size=2, progress=False, reuse_prefix=False)
    np.testing.assert_allclose(fast.values, slow.values, atol=1e-6, rtol=0)


def test_sweep_resumes_bit_identically(chat, tmp_path, monkeypatch):
    vlm, pairs, regions = _setup(chat)
    sites = [si.site.lm_resid(s) for s in range(3)]
    kwargs = dict(pairing="swap", pairs_per_chunk=2, batch_size=4, progress=False)
    full = sweep(vlm, pairs, sites, regions, out=tmp_path / "a", **kwargs)

    original = PreparedChunk.run
    calls = {"n": 0}

    def flaky(self, chosen):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, chosen)

    monkeypatch.setattr(PreparedChunk, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep(vlm, pairs, sites, regions, out=tmp_path / "b", **kwargs)
    monkeypatch.setattr(PreparedChunk, "run", original)
    finished = len(list((tmp_path / "b" / "chunks").glob("*_f*.npz")))
    assert finished == 2
    resumed = sweep(vlm, pairs, sites, regions, out=tmp_path / "b", **kwargs)
    assert np.array_equal(resumed.values, full.values)
    reloaded = si.results.LabelledArray.load(tmp_path / "b" / "result")
    assert np.array_equal(reloaded.values, full.values)
    assert reloaded.extras["clean"].axes == ("metric", "pair")
    assert reloaded.provenance["config"]["sites"] == [str(s) for s in sites]
    with pytest.raises(SweepMismatchError, match="sites"):
        sweep(vlm, pairs, sites[:2], regions, out=tmp_path / "b", **kwargs)


def test_each_source_image_runs_once(chat):
    """Pairs sharing a source image: the source forward holds each distinct image once."""
    vlm, pairs, regions = _setup(chat, n=3)
    shared = [PatchPair(p.clean, pairs[0].source, answers=p.answers) for p in pairs]
    images = []
    handle = vlm.module(si.site.vision_out).register_forward_hook(
        lambda module, args, out: images.append(out.shape[0] // 144))
    try:
        sweep(vlm, shared, [si.site.lm_resid(1)], regions, pairing="swap", progress=False)
    finally:
        handle.remove()
    assert images == [1, 3]  # one distinct source image, then the three clean images


def test_prefetched_chunks_give_the_serial_sweep_bit_for_bit(chat, tmp_path):
    """The next chunk's pairs are rendered and processed in a worker thread; nothing else changes."""
    vlm, pairs, regions = _setup(chat, n=5)
    sites = [si.site.vision_out, si.site.lm_resid(1)]
    serial = sweep(vlm, pairs, sites, regions, pairing="swap", pairs_per_chunk=2, batch_size=4, progress=False,
                   prefetch=False)
    overlapped = sweep(vlm, pairs, sites, regions, pairing="swap", pairs_per_chunk=2, batch_size=4,
                       progress=False, out=tmp_path / "sweep")
    np.testing.assert_array_equal(serial.values, overlapped.values)
    np.testing.assert_array_equal(serial.extras["clean"].values, overlapped.extras["clean"].values)
    # Resumed from its chunks (nothing to prepare), the same again.
    resumed = sweep(vlm, pairs, sites, regions, pairing="swap", pairs_per_chunk=2, batch_size=4,
                    progress=False, out=tmp_path / "sweep")
    np.testing.assert_array_equal(serial.values, resumed.values)
