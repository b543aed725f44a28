"""steer: equals the raw-hook formula on every architecture; α = 0 is the identity; §8 summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.examples import Example
from spatial_interp.interventions.metrics import raw_logits
from spatial_interp.interventions.steer import amplification_summary, random_directions, steer, steer_logits
from spatial_interp.results import LabelledArray
from tests.interventions import reference as ref
from tests.interventions.conftest import PROMPT, noise


def test_steer_matches_raw_hooks(tiny_vlm, chat):
    vlm = chat(tiny_vlm)
    size = vlm.adapter.native_size
    items = [Example(noise(size, 100 + i), PROMPT) for i in range(2)]
    w = random_directions(vlm.d_model, 2, seed=3) * torch.tensor([[2.0], [0.5]])
    alphas = [0.0, 1.5, 4.0]
    got, base, _ = steer_logits(vlm, items, w, alphas, metric=raw_logits(), batch_size=4)
    for j, item in enumerate(items):
        plain = ref.plain(vlm, item.image, PROMPT)
        torch.testing.assert_close(base[j], plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[0, j], plain, atol=1e-5, rtol=0)  # α = 0 is the identity
        for a, alpha in enumerate(alphas[1:], start=1):
            want = ref.steered(vlm, item.image, PROMPT, si.site.lm_resid(0), None, w, alpha)
            torch.testing.assert_close(got[a, j], want, atol=1e-5, rtol=0)
    assert (got[2] - got[0]).abs().max() > 1e-4


def test_steer_other_site_and_region(chat):
    from tests._models import tiny_model

    vlm = chat(tiny_model("tiny-llava"))
    item = Example(noise((336, 336), 7), PROMPT)
    grid = vlm.prepare([item.image], [PROMPT]).layouts[0].grid
    region = Region.columns(grid, 0, 5)
    w = random_directions(vlm.d_model, 3, seed=1)
    got, _, _ = steer_logits(vlm, [item], w, [2.0], site=si.site.lm_resid(2), region=region, metric=raw_logits())
    want = ref.steered(vlm, item.image, PROMPT, si.site.lm_resid(2), region, w, 2.0)
    torch.testing.assert_close(got[0, 0], want, atol=1e-5, rtol=0)
    result = steer(vlm, [Example(item.image, PROMPT, answer="red")], w, alphas=range(3), progress=False)
    assert result.coords["metric"] == ["top1"] and result.shape == (3, 1, 1)
    with pytest.raises(ValueError, match="d_model"):
        steer(vlm, [item], torch.zeros(vlm.d_model + 1, 2), alphas=[1.0], progress=False)


def test_random_directions_are_seeded_unit_vectors():
    a, b = random_directions(32, 2, seed=5), random_directions(32, 2, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, random_directions(32, 2, seed=6))
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))


def _fake(correct, baseline, alphas):
    correct = np.asarray(correct, dtype=np.float32)[..., None]
    out = LabelledArray(correct, ("alpha", "item", "metric"),
                        {"alpha": alphas, "item": [f"i{k}" for k in range(correct.shape[1])], "metric": ["top1"]})
    out.extras["baseline"] = LabelledArray(np.asarray(baseline, dtype=np.float32)[:, None], ("item", "metric"),
                                           {"item": out.coords["item"], "metric": ["top1"]})
    return out


def test_amplification_summary_counts():
    # Three questions, two listings each: q0 golden, q1 fails on one listing, q2 fails on both.
    groups = ["q0", "q0", "q1", "q1", "q2", "q2"]
    baseline = [1, 1, 1, 0, 0, 0]
    alphas = [0.0, 1.0, 2.0]
    probe = _fake([[1, 1, 1, 0, 0, 0],    # α=0 replays the baseline
                   [1, 1, 0, 1, 0, 1],    # α=1 fixes q1 (its failed listing), q2 only half
                   [1, 1, 0, 1, 1, 1]],   # α=2 fixes q1 and q2
                  baseline, alphas)
    random = _fake([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], baseline, alphas)
    row = amplification_summary(probe, random, groups)
    assert row["none_acc"] == pytest.approx(1 / 3)
    assert row["probe_acc"] == pytest.approx(1.0) and row["best_probe_alpha"] == 2.0
    assert row["probe_star_acc"] == pytest.approx(1.0)
    assert row["random_acc"] == pytest.approx(2 / 3) and row["best_random_alpha"] == 2.0
    assert row["probe_pct_errors_fixed"] == pytest.approx(100.0)
    assert row["probe_fixed_at_alpha0"] == 0
    # Ties go to the smallest α.
    tie = _fake([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]], baseline, alphas)
    assert amplification_summary(tie, random, groups)["best_probe_alpha"] == 1.0
