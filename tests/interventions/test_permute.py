"""permute_image_rows: equals a raw-hook permutation on every architecture; seeded; remote round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.examples import Example
from spatial_interp.interventions.metrics import answer_probs
from spatial_interp.interventions.permute import permute_image_rows, row_permutation
from tests._models import tiny_model
from tests.interventions import reference as ref
from tests.interventions.conftest import PROMPT, noise


class _Logits:
    """A metric returning the raw final-position logits, so results compare to hooks exactly."""

    def __call__(self, logits, owners):
        return logits


def _hooked_permuted_logits(vlm, example, site, region, order):
    layout = ref.single(vlm, example.image, example.prompt).layouts[0]
    positions = layout.indices(region, site)

    def shuffle(t):
        if site.is_vision:
            t[positions] = t[positions[order]].clone()
        else:
            t[0, positions] = t[0, positions[order]].clone()

    with torch.no_grad(), ref.hooked(vlm, site, shuffle):
        return vlm.model(**ref.single(vlm, example.image, example.prompt).inputs).logits[0, -1]


@pytest.mark.parametrize("site_name", ["lm_resid0", "vision_out"])
def test_permutation_matches_raw_hooks(tiny_vlm, chat, site_name):
    vlm = chat(tiny_vlm)
    site = si.site.lm_resid(0) if site_name == "lm_resid0" else si.site.vision_out
    items = [Example(noise(vlm.adapter.native_size, 700 + i), PROMPT, answer="red") for i in range(3)]
    result = permute_image_rows(vlm, items, site=site, seed=5, metric=_Logits(), batch_size=2)
    assert result.axes == ("item", "condition", "metric")
    for i, item in enumerate(items):
        clean = ref.plain(vlm, item.image, item.prompt)
        n = len(ref.single(vlm, item.image, item.prompt).layouts[0].indices(None, site))
        shuffled = _hooked_permuted_logits(vlm, item, site, None, row_permutation(n, 5, i))
        torch.testing.assert_close(torch.from_numpy(result.values[i, 0]), clean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(result.values[i, 1]), shuffled, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(shuffled, clean, atol=1e-4), "the permutation changed nothing: a blind test"


def test_region_permutation_touches_only_the_region(chat):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    item = Example(noise(vlm.adapter.native_size, 710), PROMPT, answer="red")
    layout = ref.single(vlm, item.image, item.prompt).layouts[0]
    strip = Region.columns(layout.grid, 0, 4)
    n = len(layout.indices(strip, si.site.lm_resid(0)))
    got = permute_image_rows(vlm, [item], region=strip, seed=1, metric=_Logits())
    want = _hooked_permuted_logits(vlm, item, si.site.lm_resid(0), strip, row_permutation(n, 1, 0))
    torch.testing.assert_close(torch.from_numpy(got.values[0, 1]), want, atol=1e-5, rtol=1e-5)


def test_seed_and_batch_size_invariance(chat):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    items = [Example(noise(vlm.adapter.native_size, 720 + i), PROMPT, answer="red") for i in range(3)]
    metric = answer_probs(vlm.tokenizer)
    a = permute_image_rows(vlm, items, seed=3, metric=metric, batch_size=1)
    b = permute_image_rows(vlm, items, seed=3, metric=metric, batch_size=3)
    c = permute_image_rows(vlm, items, seed=4, metric=metric, batch_size=3)
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    assert not np.allclose(b.values[:, 1], c.values[:, 1], atol=1e-6)
    np.testing.assert_allclose(b.values[:, 0], c.values[:, 0], atol=1e-6)  # clean does not depend on the seed


def test_remote_local_round_trip(chat):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    items = [Example(noise(vlm.adapter.native_size, 730 + i), PROMPT, answer="red") for i in range(2)]
    local = permute_image_rows(vlm, items, seed=2, metric=_Logits())
    remote = permute_image_rows(vlm, items, seed=2, metric=_Logits(), remote="local")
    np.testing.assert_allclose(local.values, remote.values, atol=1e-5)


def test_bad_inputs_say_what_to_do():
    vlm = tiny_model("tiny-qwen2-vl")
    item = Example(noise(vlm.adapter.native_size, 740), PROMPT, answer="red")
    with pytest.raises(TypeError, match="Site"):
        permute_image_rows(vlm, [item], site="lm_resid(0)")
    with pytest.raises(ValueError, match="last_token"):
        permute_image_rows(vlm, [item], site=si.site.lm_resid(1).last_token)
    with pytest.raises(ValueError, match="batch_size"):
        permute_image_rows(vlm, [item], batch_size=0)
    with pytest.raises(ValueError, match="at least one item"):
        permute_image_rows(vlm, [])
