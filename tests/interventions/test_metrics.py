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
    assert names == ["p.answer 0", "p.answer 1", "top1.top1", "ld.logit_diff", "tok.top_token"]
    assert values[:, 4].tolist() == [int(red[0]), int(blue[1])]  # the token itself: "Blue", where top1 only sees "blue"
    # The tiny tokenizer maps " red" to the same id as "red": that token's mass counts once, not twice.
    assert values[0, 0] == pytest.approx(1.0, abs=1e-4) and values[1, 1] == pytest.approx(1.0, abs=1e-4)
    assert values[:, 2].tolist() == [1.0, 0.0]
    assert values[0, 3] == pytest.approx(40.0) and values[1, 3] == pytest.approx(0.0)
    assert isinstance(combine({"a": top1(tok)}).names(owners), list)
    with pytest.raises(MetricError, match="no answer"):
        top1(tok)(logits, [Example(noise((8, 8), 0), "x")] * 2)


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-gemma3", "organism-qwen2-vl-dual"])
def test_answer_probs_is_the_mass_of_distinct_variant_tokens(name):
    tok = tiny_model(name).tokenizer if name.startswith("tiny") else si.load(name).tokenizer
    words = ("red", "blue", "green")
    logits = torch.randn(5, len(tok), generator=torch.Generator().manual_seed(3)) * 4
    owners = [PatchPair(None, None, answers=words, answer_names=("clean answer", "middle", "cf answer"))] * 5  # type: ignore[arg-type]
    values, names = evaluate(answer_probs(tok), logits, owners)
    assert names == ["clean answer", "middle", "cf answer"]
    softmax = logits.softmax(-1)
    for k, word in enumerate(words):
        # Independent reference: encode each spelling, take the set of ids, add their probabilities.
        distinct = {tok.encode(v, add_special_tokens=False)[0] for v in (word, word.capitalize(), " " + word,
                                                                           " " + word.capitalize())}
        assert torch.allclose(values[:, k], softmax[:, sorted(distinct)].sum(-1), atol=1e-6)
    assert float(values.sum(1).max()) <= 1.0 + 1e-6  # disjoint answers: their masses add up to at most 1
    concentrated = torch.full((1, len(tok)), -50.0)
    concentrated[0, answer_probs(tok).token_ids(["red"])[0]] = 50.0  # every spelling of "red" at once
    assert float(evaluate(answer_probs(tok), concentrated, owners[:1])[0][0, 0]) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="answer_names"):
        PatchPair(None, None, answers=words, answer_names=("clean answer",))  # type: ignore[arg-type]


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
