"""Attribution patching (``si.attribute``) against independent references.

* gradients and activations from plain PyTorch hooks + ``torch.autograd.grad`` (no nnsight, no library
  trace code), combined into the AtP estimate by hand;
* a model whose metric is linear in the patched activation (final norm removed, last slot's final
  position, logit difference): the estimate must equal exact patching;
* scipy's Pearson / Spearman for the agreement numbers;
* the engine's forward counter for the cost claim (2 forwards per chunk whatever the sites/regions).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.stats
import torch

import spatial_interp as si
from spatial_interp.geometry import Grid, Region
from spatial_interp.interventions import Example, PatchPair, Swap, attribute, patch, validate_attribution
from spatial_interp.interventions.attribution import agreement, correlations
from spatial_interp.interventions.engine import count_forwards
from spatial_interp.interventions.metrics import (
    MetricError,
    answer_log_odds,
    answer_logit_diff,
    answer_probs,
    prob_diff,
)
from spatial_interp.interventions.sweep import SweepMismatchError
from spatial_interp.results import LabelledArray
from tests._models import tiny_model

from .conftest import PROMPT, noise

GRID = Grid(12, 12)
LEFT, RIGHT = Region.columns(GRID, 0, 4), Region.columns(GRID, 8, 12)
BOX = Region.rect(GRID, (3, 6), (2, 5))


def make_pairs(n=2, seed=0, size=(336, 336)):
    return [PatchPair(Example(noise(size, seed + i), PROMPT), Example(noise(size, seed + 50 + i), PROMPT),
                      answers=("red", "blue"), answer_names=("clean answer", "cf answer"), id=f"p{i}")
            for i in range(n)]


@pytest.fixture(scope="module")
def vlm():
    return tiny_model("tiny-qwen2-vl")


# --- the independent reference: hooks and autograd -------------------------------------------------
def _grab(vlm, sites, store):
    """Hooks that make each site's activation (flattened vision rows / LM (batch, pos, d)) require a
    gradient and keep it in ``store[site]``."""
    stack = contextlib.ExitStack()
    for site in sites:
        module = vlm.module(site)
        if vlm.reads_input(site):
            def pre(mod, args, kwargs, site=site):
                hidden = args[0] if args else kwargs["hidden_states"]
                if not hidden.requires_grad:
                    hidden.requires_grad_(True)
                store[site] = hidden
            stack.enter_context(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(mod, args, output, site=site):
                hidden = vlm.adapter.vision_out_tensor(output) if site.kind == "vision_out" else output
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                if not hidden.requires_grad:
                    hidden.requires_grad_(True)
                store[site] = hidden
            stack.enter_context(module.register_forward_hook(post))
    return stack


def reference(vlm, pair, sites, region, pairing, score):
    """AtP estimate of one pair at each site, computed from one-item hook runs and autograd."""
    src_batch = vlm.prepare([pair.source.image], [pair.source.prompt])
    clean_batch = vlm.prepare([pair.clean.image], [pair.clean.prompt])
    src, clean = {}, {}
    with torch.no_grad(), _grab(vlm, sites, src):
        vlm.model(**src_batch.inputs)
    with torch.enable_grad(), _grab(vlm, sites, clean):
        logits = vlm.model(**clean_batch.inputs).logits[:, -1]
        value = score(logits)[0]
        grads = torch.autograd.grad(value, [clean[s] for s in sites])
    out = []
    lt, ls = clean_batch.layouts[0], src_batch.layouts[0]
    for site, grad in zip(sites, grads, strict=True):
        if pairing == "same":
            t, s = lt.indices(region, site), ls.indices(region, site)
        else:
            t = torch.cat([lt.indices(region.a, site), lt.indices(region.b, site)])
            s = torch.cat([ls.indices(region.b, site), ls.indices(region.a, site)])

        def rows(x, idx, site=site):
            return x.reshape(-1, x.shape[-1])[idx] if site.is_vision else x[0, idx]

        delta = rows(src[site].detach(), s) - rows(clean[site].detach(), t)
        out.append(float((delta * rows(grad, t)).sum()))
    return np.array(out), float(value.detach())


def logit_diff_by_hand(vlm, plus="blue", minus="red"):
    ids = [vlm.tokenizer.encode(w, add_special_tokens=False)[0] for w in (plus, minus)]
    return lambda logits: logits[:, ids[0]].float() - logits[:, ids[1]].float()


SITES = [si.site.vision_block(1), si.site.vision_out, si.site.lm_resid(0), si.site.lm_resid(2)]


@pytest.mark.parametrize(("region", "pairing"), [(BOX, "same"), (Swap(LEFT, RIGHT), "swap")])
def test_matches_hook_and_autograd_reference(vlm, region, pairing):
    pairs = make_pairs(2)
    metric = answer_logit_diff(vlm.tokenizer)
    result = attribute(vlm, pairs, SITES, {"r": region}, metric, pairing=pairing, progress=False)
    assert result.axes == ("metric", "site", "region", "pair")
    assert result.coords["metric"] == ["logit(cf answer)-logit(clean answer)"]
    for j, pair in enumerate(pairs):
        ref, clean_value = reference(vlm, pair, SITES, region, pairing, logit_diff_by_hand(vlm))
        got = result.values[0, :, 0, j]
        assert np.abs(ref).min() > 1e-7  # a real gradient reaches every site
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-7)
        assert result.extras["clean"].values[0, j] == pytest.approx(clean_value, abs=1e-5)


def test_probability_readout_matches_reference(vlm):
    pairs = make_pairs(1)
    metric = prob_diff(vlm.tokenizer)
    result = attribute(vlm, pairs, SITES, BOX, metric, progress=False)
    ref, _ = reference(vlm, pairs[0], SITES, BOX, "same", lambda logits: metric(logits, pairs)[:, 0])
    np.testing.assert_allclose(result.values[0, :, 0, 0], ref, rtol=2e-4, atol=1e-9)


def test_log_odds_readout_is_the_log_ratio_of_answer_probabilities(vlm):
    pair = make_pairs(1)[0]
    logits = torch.randn(1, vlm.model.config.text_config.vocab_size if hasattr(vlm.model.config, "text_config")
                         else vlm.model.config.vocab_size) * 3
    probs = answer_probs(vlm.tokenizer)(logits, [pair])[0]
    expected = float(torch.log(probs[1]) - torch.log(probs[0]))
    assert float(answer_log_odds(vlm.tokenizer)(logits, [pair])) == pytest.approx(expected, rel=1e-5)


# --- exactness where the metric is linear -----------------------------------------------------------
def test_equals_exact_patching_when_the_metric_is_linear_in_the_activation():
    vlm = si.load("tiny-qwen2-vl", seed=0)  # a private copy: its final norm is removed below
    vlm.model.model.language_model.norm = torch.nn.Identity()
    pairs = make_pairs(3, seed=7)
    site = si.site.lm_resid(vlm.n_lm_layers).last_token  # logits = unembed(h): linear, and so is the metric
    result = attribute(vlm, pairs, [site], None, answer_logit_diff(vlm.tokenizer), check="all", progress=False)
    exact = result.extras["exact"].values
    assert np.abs(exact).max() > 1e-4  # patching moves the metric, so equality is not vacuous
    np.testing.assert_allclose(result.values, exact, atol=1e-5, rtol=0)
    # ...and agrees with si.patch itself.
    patched = patch(vlm, pairs, site, None, metric=answer_logit_diff(vlm.tokenizer))
    np.testing.assert_allclose(result.values[0, 0, 0], patched.values[:, 0] - patched.extras["clean"].values[:, 0],
                               atol=1e-5)


# --- batching, remote round trip, cost, resume --------------------------------------------------------
def test_batched_equals_one_pair_at_a_time_and_cells_sum_to_the_region(vlm):
    pairs = make_pairs(3)
    sites = [si.site.vision_out, si.site.lm_resid(1)]
    metric = prob_diff(vlm.tokenizer)
    cells = attribute(vlm, pairs, sites, "cells", metric, batch_size=3, progress=False)
    single = attribute(vlm, pairs, sites, "cells", metric, batch_size=1, progress=False)
    np.testing.assert_allclose(cells.values, single.values, rtol=1e-4, atol=1e-9)
    assert cells.coords["region"][:3] == ["r0c0", "r0c1", "r0c2"] and cells.attrs["grid"] == [12, 12]
    # AtP is additive over rows: a region's estimate is the sum of its cells' estimates.
    whole = attribute(vlm, pairs, sites, {"box": BOX}, metric, progress=False)
    names = [f"r{r}c{c}" for r, c in BOX]
    summed = cells.sel(region=names).values.sum(2)
    np.testing.assert_allclose(whole.values[:, :, 0], summed, rtol=1e-4, atol=1e-9)


def test_remote_local_round_trip_matches_local(vlm):
    pairs = make_pairs(2)
    args = (vlm, pairs, [si.site.vision_out, si.site.lm_resid(2)], {"box": BOX, "swap": Swap(LEFT, RIGHT)},
            prob_diff(vlm.tokenizer))
    kwargs = {"pairing": {"box": "same", "swap": "swap"}, "progress": False}
    local = attribute(*args, **kwargs)
    remote = attribute(*args, remote="local", **kwargs)
    np.testing.assert_allclose(remote.values, local.values, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(remote.extras["clean"].values, local.extras["clean"].values, atol=1e-6)


def test_two_forwards_per_chunk_whatever_the_sites_and_regions(vlm):
    pairs = make_pairs(4)
    metric = prob_diff(vlm.tokenizer)
    with count_forwards() as few:
        attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, metric, batch_size=2, progress=False)
    all_sites = [si.site.vision_block(0), si.site.vision_out, *[si.site.lm_resid(s) for s in range(4)]]
    with count_forwards() as many:
        attribute(vlm, pairs, all_sites, "cells", metric, batch_size=2, progress=False)
    assert few.forwards == many.forwards == 4  # per chunk: the sources, and the clean run with its backward
    assert many.rows == 8


def test_resumes_from_out_and_refuses_other_contents(vlm, tmp_path, monkeypatch):
    import spatial_interp.interventions.attribution as attribution

    pairs = make_pairs(3)
    metric = prob_diff(vlm.tokenizer)
    first = attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, metric, batch_size=2, check=1, out=tmp_path,
                      progress=False)
    assert (tmp_path / "attribution.json").is_file() and (tmp_path / "result.json").is_file()

    def no_compute(*args, **kwargs):
        raise AssertionError("a finished chunk was recomputed")

    monkeypatch.setattr(attribution, "_attribute_chunk", no_compute)
    monkeypatch.setattr(attribution, "run_chunk", no_compute)
    again = attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, metric, batch_size=2, check=1, out=tmp_path,
                      progress=False)
    np.testing.assert_array_equal(again.values, first.values)
    np.testing.assert_array_equal(again.extras["exact"].values, first.extras["exact"].values)
    with pytest.raises(SweepMismatchError, match="metric"):
        attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, answer_logit_diff(vlm.tokenizer), batch_size=2,
                  out=tmp_path, progress=False)


# --- validation --------------------------------------------------------------------------------------
def test_check_reports_agreement_computed_like_scipy(vlm):
    pairs = make_pairs(2)
    sites = [si.site.vision_out, si.site.lm_resid(0), si.site.lm_resid(2)]
    result = attribute(vlm, pairs, sites, "cells", prob_diff(vlm.tokenizer), check=6, check_seed=3,
                       progress=False)
    exact = result.extras["exact"].values[0]
    checked = ~np.isnan(exact).any(-1)
    assert checked.sum() == 6 and result.attrs["check"] == {"points": 6, "of": 3 * 144, "seed": 3}
    est, ex = result.values[0][checked].ravel(), exact[checked].ravel()
    stats = result.attrs["agreement"]
    assert stats["pearson"] == pytest.approx(scipy.stats.pearsonr(est, ex)[0], abs=1e-6)
    assert stats["spearman"] == pytest.approx(scipy.stats.spearmanr(est, ex)[0], abs=1e-6)
    assert stats["n_entries"] == 12 and stats["n_points"] == 6
    # The exact values are those of si.patch at a checked point.
    s, r = np.argwhere(checked)[0]
    site, name = sites[s], result.coords["region"][r]
    row, col = int(name[1:name.index("c")]), int(name[name.index("c") + 1:])
    patched = patch(vlm, pairs, site, Region.cells(GRID, [(row, col)]), metric=prob_diff(vlm.tokenizer))
    np.testing.assert_allclose(exact[s, r], patched.values[:, 0] - patched.extras["clean"].values[:, 0], atol=1e-6)
    # validate_attribution on the same arguments gives the same numbers.
    again = validate_attribution(vlm, pairs, result, sites, "cells", prob_diff(vlm.tokenizer), k=6, seed=3)
    assert again["spearman"] == pytest.approx(stats["spearman"])


def test_agreement_numbers_on_known_vectors():
    exact = np.array([3.0, 1.0, 2.0, 2.0, 0.0, -5.0])
    estimate = np.array([2.5, 0.5, 2.0, 1.0, 1.5, -4.0])
    got = correlations(estimate, exact)
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(estimate, exact)[0])  # with a tie
    assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(estimate, exact)[0])
    axes = ("metric", "site", "region", "pair")
    coords = {"site": ["a", "b", "c"], "region": ["x", "y"]}
    e = LabelledArray(estimate.reshape(1, 3, 2, 1), axes, coords)
    x = LabelledArray(exact.reshape(1, 3, 2, 1), axes, coords)
    stats = agreement(e, x, top_k=2)
    # top-2 by |exact|: -5 (c, y) and 3 (a, x); by |estimate|: -4 and 2.5: both found.
    assert stats["top_k_recall"] == 1.0
    # top-4 by |exact| adds (b, y) = 2.0; by |estimate| (c, x) = 1.5 (exact 0): 3 of 4 found.
    assert agreement(e, x, top_k=4)["top_k_recall"] == pytest.approx(3 / 4)
    assert np.isnan(correlations(np.ones(4), np.arange(4.0))["spearman"])


def test_agreement_over_active_sites_leaves_out_sites_whose_exact_effects_are_all_near_zero():
    axes = ("metric", "site", "region", "pair")
    coords = {"site": ["vision_out", "lm_resid.1", "lm_resid.3"], "region": ["x", "y", "z"]}
    exact = np.array([[8.0, -2.0, 0.5], [1.0, 3.0, -0.3], [0.0, 0.05, -0.0]]).reshape(1, 3, 3, 1)
    estimate = np.array([[6.0, -1.0, 0.9], [1.5, 2.0, 0.2], [0.01, -0.02, 0.03]]).reshape(1, 3, 3, 1)
    stats = agreement(LabelledArray(estimate, axes, coords), LabelledArray(exact, axes, coords))
    active = stats["active"]
    # lm_resid.3's largest |exact| is 0.05 < 1% of 8: inactive; the other two sites are ranked together.
    assert active["floor"] == pytest.approx(0.08)
    assert active["sites"] == ["vision_out", "lm_resid.1"] and active["inactive_sites"] == ["lm_resid.3"]
    live_est, live_exact = estimate[0, :2].ravel(), exact[0, :2].ravel()
    assert active["spearman"] == pytest.approx(scipy.stats.spearmanr(live_est, live_exact)[0])
    assert active["n_entries"] == 6
    by_site = {s: scipy.stats.spearmanr(estimate[0, i].ravel(), exact[0, i].ravel())[0] for i, s in
               enumerate(coords["site"][:2])}
    weakest = min(by_site, key=by_site.get)
    assert active["weakest_site"] == weakest and active["weakest_spearman"] == pytest.approx(by_site[weakest])


# --- bad input ----------------------------------------------------------------------------------------
def test_bad_inputs_fail_with_clear_messages(vlm):
    pairs = make_pairs(1)
    site = [si.site.lm_resid(1)]
    with pytest.raises(TypeError, match="TokenReadout"):
        attribute(vlm, pairs, site, BOX, answer_probs(vlm.tokenizer), progress=False)
    with pytest.raises(ValueError, match="pairing='same'"):
        attribute(vlm, pairs, site, "cells", pairing="swap", progress=False)
    with pytest.raises(ValueError, match="final position only"):
        attribute(vlm, pairs, [si.site.lm_resid(1).last_token], "cells", progress=False)
    with pytest.raises(ValueError, match="unknown regions"):
        attribute(vlm, pairs, site, "cell", progress=False)
    with pytest.raises(ValueError, match="check must be"):
        attribute(vlm, pairs, site, BOX, check=-1, progress=False)
    with pytest.raises(ValueError, match="check must be"):
        attribute(vlm, pairs, site, BOX, check="some", progress=False)
    with pytest.raises(ValueError, match="at least one pair"):
        attribute(vlm, [], site, BOX, progress=False)
    with pytest.raises(ValueError, match="at least one site"):
        attribute(vlm, pairs, [], BOX, progress=False)
    with pytest.raises(TypeError, match="batch_size"):
        attribute(vlm, pairs, site, BOX, batch_size=2.0, progress=False)
    with pytest.raises(ValueError, match="pairing='swap' needs a Swap"):
        attribute(vlm, pairs, site, BOX, pairing="swap", progress=False)
    no_answers = [PatchPair(p.clean, p.source) for p in pairs]
    with pytest.raises(MetricError, match="no answer strings"):
        attribute(vlm, no_answers, site, BOX, progress=False)
    one_answer = [PatchPair(p.clean, p.source, answers=("red",)) for p in pairs]
    with pytest.raises(MetricError, match="needs two"):
        attribute(vlm, one_answer, site, BOX, progress=False)
    with pytest.raises(si.site.SiteError):
        attribute(vlm, pairs, [si.site.lm_resid(99)], BOX, progress=False)


# --- report section and experiment composition ---------------------------------------------------------
def test_report_section_states_the_measured_agreement(vlm):
    from spatial_interp.report.attribution import attribution_section

    pairs = make_pairs(2)
    result = attribute(vlm, pairs, [si.site.vision_out, si.site.lm_resid(1)], "cells", prob_diff(vlm.tokenizer),
                       check=8, progress=False)
    section = attribution_section(result)
    stats = result.attrs["agreement"]
    assert f"Spearman r {stats['spearman']:.2f}" in section.text
    assert "144 cells × 2 sites on 2 pairs" in section.text
    assert section.table[1][:3] == ["cells", "8", "2"]
    heat, scatter = section.figures
    assert heat.data[0].z.shape == (144, 2) and np.isnan(heat.data[1].z).sum() == 144 * 2 - 8
    assert len(scatter.data[0].x) == 8 * 2
    no_check = attribution_section(attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, progress=False))
    assert "No point was checked" in no_check.text and len(no_check.figures) == 1


# --- integrated gradients (method="ig") ------------------------------------------------------------------
def ig_reference(vlm, pair, site, region, pairing, score, steps):
    """IG estimate of one pair and one (site, region) from hook runs and autograd: at each midpoint α the
    clean run's patched rows are overwritten with clean + α (source − clean), made to require a gradient,
    and the gradients are averaged."""
    src_batch = vlm.prepare([pair.source.image], [pair.source.prompt])
    clean_batch = vlm.prepare([pair.clean.image], [pair.clean.prompt])
    lt, ls = clean_batch.layouts[0], src_batch.layouts[0]
    if pairing == "same":
        t, s = lt.indices(region, site), ls.indices(region, site)
    else:
        t = torch.cat([lt.indices(region.a, site), lt.indices(region.b, site)])
        s = torch.cat([ls.indices(region.b, site), ls.indices(region.a, site)])

    def rows(x):
        return x.reshape(-1, x.shape[-1]) if site.is_vision else x[0]

    src, clean = {}, {}
    with torch.no_grad(), _grab(vlm, [site], src):
        vlm.model(**src_batch.inputs)
    with torch.no_grad(), _grab(vlm, [site], clean):
        vlm.model(**clean_batch.inputs)
    a, a_src = rows(clean[site])[t].clone(), rows(src[site])[s].clone()
    mean = torch.zeros_like(a)
    for r in range(steps):
        alpha = (r + 0.5) / steps
        box = {}

        def overwrite(hidden, alpha=alpha, box=box):
            with torch.no_grad():
                rows(hidden)[t] = a + alpha * (a_src - a)
            hidden.requires_grad_(True)
            box["h"] = hidden

        module = vlm.module(site)
        if vlm.reads_input(site):
            def pre(mod, args, kwargs, overwrite=overwrite, box=box):
                overwrite((args[0] if args else kwargs["hidden_states"]).detach())
                if args:
                    return (box["h"], *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": box["h"]}
            handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        else:
            def post(mod, args, output, overwrite=overwrite):
                hidden = vlm.adapter.vision_out_tensor(output) if site.kind == "vision_out" else output
                overwrite(hidden[0] if isinstance(hidden, tuple) else hidden)
            handle = module.register_forward_hook(post)
        try:
            with torch.enable_grad():
                value = score(vlm.model(**clean_batch.inputs).logits[:, -1])[0]
                (grad,) = torch.autograd.grad(value, [box["h"]])
        finally:
            handle.remove()
        mean += rows(grad)[t] / steps
    return float(((a_src - a) * mean).sum().detach())


@pytest.mark.parametrize(("region", "pairing", "steps"), [(BOX, "same", 1), (Swap(LEFT, RIGHT), "swap", 3)])
def test_ig_matches_hook_and_autograd_reference(vlm, region, pairing, steps):
    pairs = make_pairs(2)
    sites = [si.site.vision_out, si.site.lm_resid(2)]
    result = attribute(vlm, pairs, sites, {"r": region}, answer_logit_diff(vlm.tokenizer), pairing=pairing,
                       method="ig", steps=steps, progress=False)
    assert result.attrs["method"] == "ig" and result.attrs["steps"] == steps and result.attrs["path"] == "point"
    for k, site in enumerate(sites):
        for j, pair in enumerate(pairs):
            ref = ig_reference(vlm, pair, site, region, pairing, logit_diff_by_hand(vlm), steps)
            assert abs(ref) > 1e-7
            assert result.values[0, k, 0, j] == pytest.approx(ref, rel=2e-4, abs=1e-7)


class _Quadratic(torch.nn.Module):
    """``h + c·h²`` in place of the final norm: logits, hence a logit difference, are quadratic in ``h``."""

    def forward(self, hidden):
        return hidden + 0.5 * hidden * hidden


def test_ig_is_exact_when_the_metric_is_quadratic_in_the_activation():
    vlm = si.load("tiny-qwen2-vl", seed=0)  # a private copy: its final norm is replaced below
    vlm.model.model.language_model.norm = _Quadratic()
    pairs = make_pairs(3, seed=7)
    site = si.site.lm_resid(vlm.n_lm_layers).last_token
    metric = answer_logit_diff(vlm.tokenizer)
    atp = attribute(vlm, pairs, [site], None, metric, check="all", progress=False)
    exact = atp.extras["exact"].values
    ig = attribute(vlm, pairs, [site], None, metric, method="ig", steps=1, progress=False)
    # The midpoint rule integrates the (linear) gradient along the path exactly.
    np.testing.assert_allclose(ig.values, exact, rtol=1e-3, atol=1e-5)
    assert np.abs(atp.values - exact).max() > 100 * np.abs(ig.values - exact).max()  # AtP is not exact here


def test_ig_converges_to_exact_patching_as_steps_grow(vlm):
    pairs = make_pairs(2)
    sites = [si.site.vision_out, si.site.lm_resid(1)]
    regions = {"box": BOX, "swap": Swap(LEFT, RIGHT)}
    kwargs = {"pairing": {"box": "same", "swap": "swap"}, "progress": False}
    metric = answer_log_odds(vlm.tokenizer)
    exact = attribute(vlm, pairs, sites, regions, metric, check="all", **kwargs).extras["exact"].values
    error = {k: np.abs(attribute(vlm, pairs, sites, regions, metric, method="ig", steps=k, **kwargs).values
                       - exact).max() for k in (1, 4, 16)}
    assert np.abs(exact).max() > 1e-2
    assert error[16] < error[4] < error[1] and error[16] < 0.05 * error[1], error


def test_ig_paths_and_cost(vlm):
    pairs = make_pairs(2)
    sites = [si.site.vision_out, si.site.lm_resid(1)]
    metric = prob_diff(vlm.tokenizer)
    regions = {"left": LEFT, "right": RIGHT, "box": BOX}  # left/right disjoint; box overlaps left
    point = attribute(vlm, pairs, sites, regions, metric, method="ig", steps=2, progress=False)
    site = attribute(vlm, pairs, sites, regions, metric, method="ig", steps=2, path="site", progress=False)
    joint = attribute(vlm, pairs, sites, regions, metric, method="ig", steps=2, path="joint", progress=False)
    # Per chunk: a source and a clean forward, then one forward-backward over steps copies per group.
    assert point.attrs["cost"] == {"forwards": 2 + 6, "backwards": 6, "rows": 2 * (2 + 6 * 2)}
    assert site.attrs["cost"]["backwards"] == 4 and joint.attrs["cost"]["backwards"] == 2
    # A group of one region is that region's point path.
    np.testing.assert_allclose(site.sel(region="box").values, point.sel(region="box").values, rtol=1e-4, atol=1e-9)
    atp = attribute(vlm, pairs, sites, regions, metric, progress=False)
    assert atp.attrs["method"] == "atp" and "steps" not in atp.attrs
    assert atp.attrs["cost"] == {"forwards": 2, "backwards": 1, "rows": 4}


def test_ig_remote_local_round_trip_matches_local(vlm):
    pairs = make_pairs(2)
    args = (vlm, pairs, [si.site.vision_out, si.site.lm_resid(2)], {"box": BOX, "swap": Swap(LEFT, RIGHT)},
            prob_diff(vlm.tokenizer))
    kwargs = {"pairing": {"box": "same", "swap": "swap"}, "method": "ig", "steps": 2, "path": "site",
              "progress": False}
    local = attribute(*args, **kwargs)
    remote = attribute(*args, remote="local", **kwargs)
    np.testing.assert_allclose(remote.values, local.values, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(remote.extras["clean"].values, local.extras["clean"].values, atol=1e-6)


def test_ig_settings_are_part_of_the_resume_key(vlm, tmp_path):
    pairs = make_pairs(2)
    metric = prob_diff(vlm.tokenizer)
    attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, metric, method="ig", steps=2, out=tmp_path, progress=False)
    for other in ({"method": "ig", "steps": 3}, {"method": "ig", "steps": 2, "path": "site"}, {}):
        with pytest.raises(SweepMismatchError):
            attribute(vlm, pairs, [si.site.lm_resid(1)], BOX, metric, out=tmp_path, progress=False, **other)


def test_ig_bad_inputs_fail_with_clear_messages(vlm):
    pairs = make_pairs(1)
    site = [si.site.lm_resid(1)]
    with pytest.raises(ValueError, match="method must be one of"):
        attribute(vlm, pairs, site, BOX, method="IG", progress=False)
    for steps in (0, -2, 2.0, True, "4"):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            attribute(vlm, pairs, site, BOX, method="ig", steps=steps, progress=False)
    with pytest.raises(ValueError, match="steps=4 is for method='ig'"):
        attribute(vlm, pairs, site, BOX, steps=4, progress=False)
    with pytest.raises(ValueError, match="path must be one of"):
        attribute(vlm, pairs, site, BOX, method="ig", path="all", progress=False)
