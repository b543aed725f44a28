"""Remote path: patch and steer round-trip through nnsight's request serialisation (remote="local").

``remote="local"`` serialises the trace exactly as an NDIF request, deserialises it with every
non-installed module (spatial_interp included) hidden, and runs it: it fails if the trace body
needs anything the server would not have.
"""

from __future__ import annotations

import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.ablate import Ablation, Reference
from spatial_interp.interventions.examples import Example, PatchPair, Swap
from spatial_interp.interventions.metrics import raw_logits
from spatial_interp.interventions.patch import patch_logits
from spatial_interp.interventions.steer import random_directions, steer_logits
from tests._models import tiny_model
from tests.interventions.conftest import PROMPT, noise


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_patch_and_steer_round_trip(chat, name):
    vlm = chat(tiny_model(name))
    size = vlm.adapter.native_size
    pairs = [PatchPair(Example(noise(size, 600 + i), PROMPT), Example(noise(size, 610 + i), PROMPT)) for i in range(2)]
    grid = vlm.prepare([pairs[0].clean.image], [PROMPT]).layouts[0].grid
    swap = Swap(Region.columns(grid, 0, 3), Region.columns(grid, grid.cols - 3, grid.cols))
    for site, region, pairing in ((si.site.lm_resid(1), swap, "swap"), (si.site.vision_out, None, "same")):
        local = patch_logits(vlm, pairs, site, region, pairing)
        remote = patch_logits(vlm, pairs, site, region, pairing, remote="local")
        torch.testing.assert_close(remote, local, atol=1e-6, rtol=0)

    w = random_directions(vlm.d_model, 2, seed=0)
    items = [p.clean for p in pairs]
    local, _, _ = steer_logits(vlm, items, w, [0.0, 3.0], metric=raw_logits())
    remote, _, _ = steer_logits(vlm, items, w, [0.0, 3.0], metric=raw_logits(), remote="local")
    torch.testing.assert_close(remote, local, atol=1e-6, rtol=0)


def test_ablated_patch_round_trip(chat):
    vlm = chat(tiny_model("tiny-pixtral"))
    size = vlm.adapter.native_size
    empty = noise(size, 620)
    ablation = Ablation(lambda ex, layout: [Reference(Region.rows(layout.grid, 0, 4), Example(empty, ex.prompt))])
    pair = PatchPair(Example(noise(size, 621), PROMPT), Example(noise(size, 622), PROMPT))
    local = patch_logits(vlm, [pair], si.site.lm_resid(2), None, ablation=ablation)
    remote = patch_logits(vlm, [pair], si.site.lm_resid(2), None, ablation=ablation, remote="local")
    torch.testing.assert_close(remote, local, atol=1e-6, rtol=0)


def test_collect_round_trip(chat, tmp_path):
    from spatial_interp.interventions.collect import collect

    vlm = chat(tiny_model("tiny-pixtral"))
    items = [Example(noise(vlm.adapter.native_size, 630 + i), PROMPT) for i in range(2)]
    sites = [si.site.vision_out, si.site.lm_resid(1)]
    local = collect(vlm, items, sites, out=tmp_path / "local", progress=False)
    remote = collect(vlm, items, sites, out=tmp_path / "remote", progress=False, remote="local")
    for site in sites:
        torch.testing.assert_close(torch.from_numpy(remote.dense(site).values),
                                   torch.from_numpy(local.dense(site).values), atol=1e-6, rtol=0)
