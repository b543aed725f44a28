"""patch / patch_logits against the raw-hook reference on every architecture, plus invariants."""

from __future__ import annotations

import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import GeometryError, Region
from spatial_interp.interventions import engine
from spatial_interp.interventions.examples import Example, PatchPair, Swap
from spatial_interp.interventions.patch import patch, patch_indices, patch_logits
from tests.interventions import reference as ref
from tests.interventions.conftest import PROMPT, noise

ATOL = 1e-5


def _pairs(vlm, n=None, seed=0):
    # Gemma-3's 896 px vision tower dominates test time; the other four architectures cover
    # several pairs per forward.
    n = n if n is not None else (1 if vlm.arch == "gemma3" else 2)
    size = vlm.adapter.native_size
    return [PatchPair(Example(noise(size, seed + 2 * i), PROMPT), Example(noise(size, seed + 2 * i + 1), PROMPT),
                      answers=("red", "blue")) for i in range(n)]


def _grid(vlm, pair):
    return ref.single(vlm, pair.clean.image, pair.clean.prompt).layouts[0].grid


def test_patch_matches_raw_hooks(tiny_vlm, chat):
    vlm = chat(tiny_vlm)
    pairs = _pairs(vlm)
    grid = _grid(vlm, pairs[0])
    left = Region.columns(grid, 0, grid.cols // 3)
    right = Region.columns(grid, grid.cols - grid.cols // 3, grid.cols)
    cases = [
        (si.site.lm_resid(1), left, "same"),
        (si.site.lm_resid(0), Swap(left, right), "swap"),
        (si.site.vision_out, left, "same"),
        (si.site.vision_block(0), Region.rect(grid, (1, 3), (2, 5)), "same"),
        (si.site.lm_resid(vlm.n_lm_layers - 1).last_token, None, "same"),
    ]
    requests = []
    for site, region, pairing in cases:
        requests += [(site, region.b), (site, region.a)] if pairing == "swap" else [(site, region)]
    sources = [ref.capture_many(vlm, pair.source.image, PROMPT, requests) for pair in pairs]
    for site, region, pairing in cases:
        got = patch_logits(vlm, pairs, site, region, pairing)
        for j, pair in enumerate(pairs):
            if pairing == "swap":
                src = torch.cat([sources[j][requests.index((site, region.b))],
                                 sources[j][requests.index((site, region.a))]])

                def target(layout, site=site, region=region):
                    return torch.cat([layout.indices(region.a, site), layout.indices(region.b, site)])
            else:
                src = sources[j][requests.index((site, region))]
                target = region
            want = ref.run_with_writes(vlm, pair.clean.image, PROMPT, [(site, target, src)])
            torch.testing.assert_close(got[j], want, atol=ATOL, rtol=0, msg=f"{vlm.arch} {site} {pairing}")


def test_clean_to_clean_patch_changes_nothing(tiny_vlm, chat):
    vlm = chat(tiny_vlm)
    pairs = [PatchPair(p.clean, p.clean, answers=p.answers) for p in _pairs(vlm)]
    for site in (si.site.vision_out, si.site.lm_resid(1)):
        got = patch_logits(vlm, pairs, site)
        for j, pair in enumerate(pairs):
            torch.testing.assert_close(got[j], ref.plain(vlm, pair.clean.image, PROMPT), atol=ATOL, rtol=0)


def test_full_vision_out_patch_equals_counterfactual_image(tiny_vlm, chat):
    vlm = chat(tiny_vlm)
    size = vlm.adapter.native_size
    # The source has its own prompt: only its image may leak through a vision_out patch.
    pairs = [PatchPair(Example(noise(size, 10), PROMPT), Example(noise(size, 11), "The color is "))]
    got = patch_logits(vlm, pairs, si.site.vision_out, "all")
    want = ref.plain(vlm, pairs[0].source.image, PROMPT)
    torch.testing.assert_close(got[0], want, atol=ATOL, rtol=0)


def test_swap_twice_restores(tiny_vlm, chat):
    vlm = chat(tiny_vlm)
    pair = _pairs(vlm, 1)[0]
    batch = vlm.prepare([pair.clean.image], [PROMPT])
    layout = batch.layouts[0]
    grid = layout.grid
    swap = Swap(Region.columns(grid, 0, 2), Region.columns(grid, grid.cols - 2, grid.cols))
    site = si.site.lm_resid(1)
    t, s = patch_indices(site, swap, "swap", layout, layout)
    rows = torch.zeros_like(t)
    clean = engine.run(vlm, batch, reads=[engine.Read(site, rows, t)])
    # Swap the clean run with itself twice at one site: the second swap undoes the first.
    values = clean.reads[0]
    order = {int(p): i for i, p in enumerate(t)}
    once = values[[order[int(p)] for p in s]]
    twice = once[[order[int(p)] for p in s]]
    torch.testing.assert_close(twice, values)
    out = engine.run(vlm, batch, [engine.Edit.set(site, rows, t, once, phase=1),
                                  engine.Edit.set(site, rows, t, twice, phase=2)])
    torch.testing.assert_close(out.logits, clean.logits, atol=ATOL, rtol=0)
    swapped = engine.run(vlm, batch, [engine.Edit.set(site, rows, t, once)])
    assert (swapped.logits - clean.logits).abs().max() > 1e-4


def test_patch_metrics_and_errors(chat):
    from tests._models import tiny_model

    vlm = chat(tiny_model("tiny-qwen2-vl"))
    pairs = _pairs(vlm, 3)
    grid = _grid(vlm, pairs[0])
    result = patch(vlm, pairs, si.site.lm_resid(1), Region.columns(grid, 0, 4), batch_size=2)
    assert result.axes == ("pair", "metric") and result.shape == (3, 2)
    assert set(result.extras) == {"clean", "source"}
    assert result.provenance["model"]["name"] == "tiny-qwen2-vl"
    with pytest.raises(GeometryError, match="differ in size"):
        Swap(Region.columns(grid, 0, 4), Region.columns(grid, 8, 11))
    with pytest.raises(ValueError, match="pairing"):
        patch(vlm, pairs, si.site.lm_resid(1), pairing="cross")
    with pytest.raises(ValueError, match="Swap"):
        patch(vlm, pairs, si.site.lm_resid(1), Region.columns(grid, 0, 4), pairing="swap")
    with pytest.raises(si.site.SiteError):
        patch(vlm, pairs, si.site.lm_resid(99))


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-pixtral"])
def test_patch_with_padding_and_different_prompts(chat, name):
    """Left padding shifts positions; each item's own layout must still address its cells."""
    from tests._models import tiny_model

    vlm = chat(tiny_model(name))
    size = vlm.adapter.native_size
    prompts = [PROMPT, "The color is ", "The color of the square above the red square is "]
    pairs = [PatchPair(Example(noise(size, 900 + i), prompts[i]), Example(noise(size, 910 + i), prompts[(i + 1) % 3]))
             for i in range(3)]
    grid = _grid(vlm, pairs[0])
    region = Region.columns(grid, 0, 3)
    for site in (si.site.lm_resid(1), si.site.lm_resid(2).last_token):
        got = patch_logits(vlm, pairs, site, region)
        cells = None if site.only_last_token else region
        for j, pair in enumerate(pairs):
            src = ref.capture(vlm, pair.source.image, pair.source.prompt, site, cells)
            want = ref.run_with_writes(vlm, pair.clean.image, pair.clean.prompt, [(site, cells, src)])
            torch.testing.assert_close(got[j], want, atol=1e-5, rtol=0, msg=f"{name} {site} pair {j}")
