"""Metric callbacks on hand-made logits; the §8 experiment wrapper; ablate's DESIGN signature."""

from __future__ import annotations

import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.ablate import Reference
from spatial_interp.interventions.examples import Example, PatchPair
from spatial_interp.interventions.metrics import (
    MetricError,
    answer_probs,
    combine,
    evaluate,
    logit_diff,
    top1,
    top_token,
)
from spatial_interp.interventions.steer import amplification
from tests._models import tiny_model
from tests.interventions.conftest import PROMPT, noise


def test_metrics_on_known_logits():
    tok = tiny_model("tiny-qwen2-vl").tokenizer
    probs = answer_probs(tok)
    red, blue = probs.token_ids(["red", "blue"])
    logits = torch.full((2, len(tok)), -30.0)
    logits[0, red[0]] = 10.0  # row 0: all mass on "red"
    logits[1, blue[1]] = 10.0  # row 1: all mass on "Blue"
    owners = [PatchPair(None, None, answers=("red", "blue")) for _ in range(2)]  # type: ignore[arg-type]
    values, names = evaluate({"p": probs, "top1": top1(tok), "ld": logit_diff(tok), "tok": top_token()}, logits,
                             owners)
    assert names == ["p.c0", "p.c1", "top1.top1", "ld.logit_diff", "tok.top_token"]
    assert values[:, 4].tolist() == [int(red[0]), int(blue[1])]  # the token itself: "Blue", where top1 only sees "blue"
    # Each of the 4 spelling variants counts; the tiny tokenizer maps " red" to the same id as "red".
    assert values[0, 0] == pytest.approx(2.0, abs=1e-4) and values[1, 1] == pytest.approx(2.0, abs=1e-4)
    assert values[:, 2].tolist() == [1.0, 0.0]
    assert values[0, 3] == pytest.approx(40.0) and values[1, 3] == pytest.approx(0.0)
    assert isinstance(combine({"a": top1(tok)}).names(owners), list)
    with pytest.raises(MetricError, match="no answer"):
        top1(tok)(logits, [Example(noise((8, 8), 0), "x")] * 2)


def test_amplification_and_ablate_signature(chat):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    items = [Example(noise((336, 336), 800 + i), PROMPT, answer="red", id=f"q{i // 2}/{i % 2}") for i in range(4)]
    w = torch.randn(2, vlm.d_model, generator=torch.Generator().manual_seed(0))
    summary, probe_run, random_run = amplification(vlm, items, w, alphas=[0, 2], groups=["q0", "q0", "q1", "q1"],
                                                   progress=False)
    assert summary["n_total"] == 2 and probe_run.shape == random_run.shape == (2, 4, 1)
    assert summary["probe_fixed_at_alpha0"] == 0 and summary["random_fixed_at_alpha0"] == 0
    empty = noise((336, 336), 801)
    result = si.ablate(vlm, items[:1], references=lambda ex, layout: [Reference(Region.all(layout.grid),
                                                                                Example(empty, ex.prompt))],
                       site=si.site.lm_resid(0))
    assert result.shape == (1, 1)
    with pytest.raises(ValueError, match="exactly one"):
        si.ablate(vlm, items[:1])
