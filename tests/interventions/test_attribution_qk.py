"""Attribution with the first LM attention layer treated exactly (``method="atp-attn"`` / ``"atp-qk"``).

Independent references:

* a direct softmax recomputation (full attention matrices with the patched rows substituted, and
  ``torch.autograd`` for the linearised part) of :func:`attention_change`, against its closed-form
  per-column renormalisation, with grouped keys and regions that share rows;
* a model where that attention layer is the only nonlinearity between the patched site and the metric
  (final norm removed, the last layer's MLP zeroed, logit difference, site ``lm_resid(L-1)``): there
  ``atp-attn`` must equal exact patching on every architecture, while plain AtP does not;
* the engine's forward counter for the cost claim (3 forwards per chunk whatever the sites/regions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Grid, Region
from spatial_interp.interventions import Example, PatchPair, attribute
from spatial_interp.interventions.attention import AttentionError, LMAttention, check_lm_attention
from spatial_interp.interventions.attribution import attention_change
from spatial_interp.interventions.engine import count_forwards
from spatial_interp.interventions.metrics import answer_logit_diff
from tests._models import TINY_NAMES, tiny_model

from .conftest import PROMPT, noise


def make_pairs(vlm, n=2, seed=0):
    size = vlm.adapter.native_size
    return [PatchPair(Example(noise(size, seed + i), PROMPT), Example(noise(size, seed + 50 + i), PROMPT),
                      answers=("red", "blue"), answer_names=("clean answer", "cf answer"), id=f"p{i}")
            for i in range(n)]


# --- attention_change against a direct recomputation ------------------------------------------------
def _direct(att, positions, new_q, new_k, new_v, rows):
    """Exact ``Σ (o' − o) · ∂m/∂o`` and the softmax-only parts, by substituting rows into full matrices."""
    q, k, v = (x.double() for x in att.heads(0))
    heads = q.shape[0]
    rep = heads // new_k.shape[1]
    nq = new_q.double().transpose(0, 1)
    nk = new_k.double().repeat_interleave(rep, 1).transpose(0, 1)
    nv = new_v.double().repeat_interleave(rep, 1).transpose(0, 1)
    mask = att.mask[0].double()
    go = att.output_grad[0].double().transpose(0, 1)
    g_a = go @ v.transpose(-1, -2)
    at = positions[rows]
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, at], k2[:, at], v2[:, at] = nq[:, rows], nk[:, rows], nv[:, rows]

    def probs(qq, kk):
        return (qq @ kk.transpose(-1, -2) * att.scaling + mask).softmax(-1)

    a, a2 = probs(q, k), probs(q2, k2)
    softmax = float(((a2 - a) * g_a).sum())
    total = float(((a2 @ v2 - a @ v) * go).sum())
    # Linear part: the gradient of F(logits) = Σ softmax(logits) · G at the clean logits, times the
    # first-order logit change scaling · (Δq kᵀ + q Δkᵀ).
    logits = (q @ k.transpose(-1, -2) * att.scaling).requires_grad_(True)
    f = ((logits + mask).softmax(-1) * g_a).sum()
    (grad,) = torch.autograd.grad(f, logits)
    d_logits = ((q2 - q) @ k.transpose(-1, -2) + q @ (k2 - k).transpose(-1, -2)) * att.scaling
    linear = float((grad * d_logits).sum())
    return {"softmax": softmax, "linear": linear, "value": total - softmax}


def test_attention_change_matches_a_direct_softmax_recomputation():
    g = torch.Generator().manual_seed(3)
    heads, kv_heads, seq, d = 4, 2, 9, 5
    q = torch.randn(1, heads, seq, d, generator=g) * 2
    k, v = (torch.randn(1, kv_heads, seq, d, generator=g) * 2 for _ in range(2))
    causal = torch.zeros(seq, seq).masked_fill(~torch.ones(seq, seq, dtype=torch.bool).tril(), float("-inf"))
    att = LMAttention(q, k, v, causal[None, None], 0.7, torch.randn(1, seq, heads, d, generator=g), 0.0)
    positions = torch.tensor([2, 3, 5, 6])
    new_q = torch.randn(4, heads, d, generator=g) * 3  # big changes: the softmax saturates
    new_k, new_v = (torch.randn(4, kv_heads, d, generator=g) * 3 for _ in range(2))
    regions = [torch.tensor([0]), torch.tensor([2]), torch.tensor([0, 1, 3]), torch.tensor([1, 2])]
    got = attention_change(att, 0, positions, new_q, new_k, new_v, regions)
    for r, rows in enumerate(regions):
        want = _direct(att, positions, new_q, new_k, new_v, rows)
        for name in ("softmax", "linear", "value"):
            assert float(got[name][r]) == pytest.approx(want[name], rel=1e-4, abs=1e-6), (r, name)
    # The changes are far from linear, so the exact and linearised softmax parts really differ.
    assert float((got["softmax"] - got["linear"]).abs().max()) > 0.1


# --- exact where the first attention is the only nonlinearity ---------------------------------------
class _Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def _only_attention_nonlinear(name):
    """A private copy of ``name`` whose logits are linear in the last decoder layer's attention output."""
    vlm = si.load(name, seed=0)
    last = vlm.model.get_submodule(f"{vlm.adapter.lm_layers}.{vlm.n_lm_layers - 1}")
    last.mlp = _Zero()
    parent, _, attr = vlm.adapter.final_norm.rpartition(".")
    setattr(vlm.model.get_submodule(parent), attr, torch.nn.Identity())
    text = vlm.adapter.text_config(vlm.config)
    assert getattr(text, "final_logit_softcapping", None) is None
    return vlm


@pytest.mark.parametrize("name", TINY_NAMES)
def test_equals_exact_patching_when_only_the_first_attention_is_nonlinear(name):
    vlm = _only_attention_nonlinear(name)
    pairs = make_pairs(vlm)
    site = si.site.lm_resid(vlm.n_lm_layers - 1)  # read first (and last) by the final layer's attention
    metric = answer_logit_diff(vlm.tokenizer)
    result = attribute(vlm, pairs, [site], "cells", metric, method="atp-attn", check=24, progress=False)
    exact = result.extras["exact"].values
    checked = ~np.isnan(exact)
    scale = np.abs(exact[checked]).max()
    assert checked.sum() == 24 * len(pairs) and scale > 1e-5  # patching moves the metric: not vacuous
    error = np.abs(result.values[checked] - exact[checked]).max()
    assert error <= 1e-3 * scale + 5e-6, (error, scale)  # float32 noise of two logit differences
    # Plain AtP, linear in the softmax and in the layer's input norm, is off by far more.
    atp_error = np.abs(result.extras["atp"].values[checked] - exact[checked]).max()
    assert atp_error > 10 * error and atp_error > 1e-2 * scale, (atp_error, error, scale)
    assert result.attrs["method"] == "atp-attn" and result.attrs["qk_fix"] == {"sites": [str(site)],
                                                                             "layers": [vlm.n_lm_layers - 1]}


def test_qk_fix_only_changes_the_query_and_key_paths():
    """``atp-qk`` = AtP + (exact − linear) softmax part; sites no LM attention reads stay plain AtP."""
    vlm = tiny_model("tiny-qwen2-vl")
    pairs = make_pairs(vlm)
    sites = [si.site.vision_block(1), si.site.vision_out, si.site.lm_resid(1), si.site.lm_resid(vlm.n_lm_layers)]
    grid = Grid(12, 12)
    regions = {"box": Region.rect(grid, (3, 6), (2, 5)), "left": Region.columns(grid, 0, 4)}
    qk = attribute(vlm, pairs, sites, regions, method="atp-qk", progress=False)
    attn = attribute(vlm, pairs, sites, regions, method="atp-attn", progress=False)
    plain = attribute(vlm, pairs, sites, regions, progress=False)
    np.testing.assert_array_equal(qk.extras["atp"].values, plain.values)
    for result in (qk, attn):
        assert result.attrs["qk_fix"]["sites"] == ["vision_out", "lm_resid.1"]
        for unfixed in ("vision_block.1", f"lm_resid.{vlm.n_lm_layers}"):
            np.testing.assert_array_equal(result.sel(site=unfixed).values, plain.sel(site=unfixed).values)
        assert np.isfinite(result.values).all()
        assert not np.allclose(result.sel(site="lm_resid.1").values, plain.sel(site="lm_resid.1").values,
                               rtol=0, atol=1e-7)


def test_three_forwards_per_chunk_whatever_the_sites_and_regions():
    vlm = tiny_model("tiny-qwen2-vl")
    pairs = make_pairs(vlm, 3)
    for sites in ([si.site.lm_resid(0)], [si.site.vision_out, si.site.lm_resid(0), si.site.lm_resid(2)]):
        with count_forwards() as seen:
            result = attribute(vlm, pairs, sites, "cells", method="atp-attn", batch_size=2, progress=False)
        assert seen.forwards == 3 * 2 and result.attrs["cost"]["forwards"] == 6
        # vision_out and lm_resid(0) are both read by layer 0, so they need two copies of the batch.
        copies = 2 if si.site.vision_out in sites else 1
        assert result.attrs["cost"]["rows"] == 2 * len(pairs) + copies * len(pairs)
        assert seen.stopped == 2  # the edited forward stops after the last attention layer it reads


def test_bad_inputs_fail_with_clear_messages(monkeypatch):
    vlm = tiny_model("tiny-qwen2-vl")
    pairs = make_pairs(vlm, 1)
    with pytest.raises(ValueError, match="steps=2 is for method='ig'"):
        attribute(vlm, pairs, [si.site.lm_resid(0)], "cells", method="atp-attn", steps=2, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        attribute(vlm, pairs, [si.site.lm_resid(0)], "cells", method="atp*", progress=False)
    with pytest.raises(AttentionError, match="out of range"):
        check_lm_attention(vlm, [vlm.n_lm_layers])
    text = vlm.adapter.text_config(vlm.config)
    monkeypatch.setattr(text, "attn_logit_softcapping", 50.0, raising=False)
    with pytest.raises(AttentionError, match="soft-caps"):
        attribute(vlm, pairs, [si.site.lm_resid(0)], "cells", method="atp-attn", progress=False)
    monkeypatch.setattr(text, "attn_logit_softcapping", None, raising=False)
    monkeypatch.setattr(vlm.adapter, "lm_attention_call", "attention_interface_9")
    with pytest.raises(AttentionError, match="has no operation 'attention_interface_9'"):
        attribute(vlm, pairs, [si.site.lm_resid(0)], "cells", method="atp-attn", progress=False)
