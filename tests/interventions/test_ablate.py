"""ablate: equals raw-hook substitution (full grid and capped); ablation then patch in one forward."""

from __future__ import annotations

import functools

import numpy as np
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.ablate import Ablation, ablate, ablated_logits, ordering_references
from spatial_interp.interventions.examples import Example, PatchPair, Swap
from spatial_interp.interventions.patch import patch, patch_logits
from tests._models import tiny_model
from tests.interventions import reference as ref
from tests.interventions.conftest import PROMPT, noise

SITE = si.site.lm_resid(0)


_image = functools.cache(noise)  # the same reference image objects across calls (memoised captures)


def _ordering(vlm, cap=None):
    size = vlm.adapter.native_size
    empty = _image(size, 500)
    isolated = {k: _image(size, 510 + k) for k in range(3)}

    def references(example, layout):
        g = layout.grid
        slots = [Region.rect(g, (2, 4), (c, c + 2)) for c in (0, g.cols // 2 - 1, g.cols - 2)]
        middle = slots[1]
        return ordering_references(slots, [isolated[k] for k in range(3)], empty, middle, example.prompt, cap=cap)

    return Ablation(references), references


def _reference_writes(vlm, references, example, memo=None):
    memo = {} if memo is None else memo
    layout = ref.single(vlm, example.image, example.prompt).layouts[0]
    writes = []
    for r in references(example, layout):
        source = r.source if r.source is not None else r.target
        key = (id(r.example.image), r.example.prompt)
        if key not in memo:  # every cell of the reference run, captured once
            memo[key] = ref.capture(vlm, r.example.image, r.example.prompt, SITE, None)
        writes.append((SITE, r.target, memo[key][source.flat]))
    return writes


def test_ablate_matches_raw_hooks(tiny_vlm, chat):
    vlm = chat(tiny_vlm)
    n = 1 if vlm.arch == "gemma3" else 2  # Gemma-3's vision tower dominates test time
    items = [Example(noise(vlm.adapter.native_size, 520 + i), PROMPT) for i in range(n)]
    memo = {}
    for cap in (None, 10):
        ablation, references = _ordering(vlm, cap)
        got = ablated_logits(vlm, items, ablation)
        for j, item in enumerate(items):
            want = ref.run_with_writes(vlm, item.image, PROMPT, _reference_writes(vlm, references, item, memo))
            torch.testing.assert_close(got[j], want, atol=1e-5, rtol=0, msg=f"{vlm.arch} cap={cap}")


def test_capped_background_only_touches_low_flat_ids():
    grid = si.Grid(16, 16)
    empty = noise((64, 64), 0)
    slots = [Region.rect(grid, (6, 9), (c, c + 3)) for c in (0, 6, 12)]
    refs = ordering_references(slots, [empty] * 3, empty, slots[1], "p", cap=144)
    background = refs[-1].target
    assert max(background.flat.tolist()) < 144
    full = ordering_references(slots, [empty] * 3, empty, slots[1], "p")[-1].target
    assert len(full) == 256 - 27 and len(background) < len(full)


def test_ablation_then_patch_in_one_forward(chat):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    size = vlm.adapter.native_size
    pair = PatchPair(Example(noise(size, 530), PROMPT), Example(noise(size, 531), PROMPT))
    ablation, references = _ordering(vlm)
    grid = vlm.prepare([pair.clean.image], [PROMPT]).layouts[0].grid
    swap = Swap(Region.rect(grid, (2, 4), (0, 2)), Region.rect(grid, (2, 4), (grid.cols - 2, grid.cols)))
    for site in (si.site.lm_resid(0), si.site.lm_resid(2)):
        got = patch_logits(vlm, [pair], site, swap, "swap", ablation=ablation)
        cf_writes = _reference_writes(vlm, references, pair.source)
        src = torch.cat([ref.capture_with_writes(vlm, pair.source.image, PROMPT, cf_writes, site, swap.b),
                         ref.capture_with_writes(vlm, pair.source.image, PROMPT, cf_writes, site, swap.a)])

        def target(layout, site=site):
            return torch.cat([layout.indices(swap.a, site), layout.indices(swap.b, site)])

        writes = _reference_writes(vlm, references, pair.clean) + [(site, target, src)]
        want = ref.run_with_writes(vlm, pair.clean.image, PROMPT, writes)
        torch.testing.assert_close(got[0], want, atol=1e-5, rtol=0, msg=str(site))


def test_ablate_result_labels(chat):
    vlm = chat(tiny_model("tiny-pixtral"))
    ablation, _ = _ordering(vlm)
    items = [Example(noise(vlm.adapter.native_size, 540), PROMPT, id="a", answer="red")]
    result = ablate(vlm, items, ablation)
    assert result.axes == ("item", "metric") and result.coords == {"item": ["a"], "metric": ["top1"]}


def test_sweep_under_ablation_equals_patches(chat):
    from spatial_interp.interventions.sweep import sweep

    vlm = chat(tiny_model("tiny-qwen2-vl"))
    size = vlm.adapter.native_size
    pairs = [PatchPair(Example(noise(size, 550 + i), PROMPT), Example(noise(size, 560 + i), PROMPT),
                       answers=("red", "blue")) for i in range(2)]
    ablation, _ = _ordering(vlm)
    grid = vlm.prepare([pairs[0].clean.image], [PROMPT]).layouts[0].grid
    swap = Swap(Region.rect(grid, (2, 4), (0, 2)), Region.rect(grid, (2, 4), (grid.cols - 2, grid.cols)))
    sites = [si.site.lm_resid(0), si.site.lm_resid(2)]
    result = sweep(vlm, pairs, sites, {"object": swap}, pairing="swap", ablation=ablation, batch_size=4,
                   progress=False)
    for site in sites:
        single = patch(vlm, pairs, site, swap, "swap", ablation=ablation)
        got = result.sel(site=str(site), region="object").transpose("pair", "metric").values
        np.testing.assert_allclose(got, single.values, atol=1e-6, rtol=0)


def test_an_ablation_hashes_each_reference_image_once_under_the_keys_of_fresh_examples(monkeypatch):
    import hashlib
    import types

    from spatial_interp.data.references import EMPTY, reference_key
    from spatial_interp.data.tasks import sample_triples, squares_items
    from spatial_interp.interventions import examples as examples_module
    from spatial_interp.interventions.ablate import ReferenceCache
    from spatial_interp.interventions.paper import paper_ablation

    vlm = tiny_model("tiny-qwen2-vl")
    items = sample_triples(squares_items(vlm.canvas), 8, 0)
    inputs = [Example(it.image, it.prompt, source=it) for it in items]
    layouts = vlm.prepare([e.image for e in inputs], [e.prompt for e in inputs]).layouts
    ablation = paper_ablation(vlm.canvas)
    hashed = []
    monkeypatch.setattr(examples_module, "hashlib", types.SimpleNamespace(
        sha1=lambda: hashed.append(1) or hashlib.sha1()))
    cache = ReferenceCache()
    ablation.compute(vlm, inputs, layouts, cache=cache)
    monkeypatch.undo()
    refs = [r for e, layout in zip(inputs, layouts, strict=True) for r in ablation.references(e, layout)]
    distinct = {reference_key(entity) for it in items for entity in it.entities} | {EMPTY}
    assert len(refs) > len(distinct) and len(hashed) == len(distinct) == len(cache)
    assert all(ReferenceCache.key(ablation.site, Example(r.example.image, r.example.prompt), None) in cache
               for r in refs)
