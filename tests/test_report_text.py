"""The report's words follow planted numbers: hand-made results with a known answer (a strip-carried order,
a position-only model, an ablation that costs nothing) must be described as such, and the opposite data
the opposite way."""

from __future__ import annotations

import numpy as np

from spatial_interp.data.published import reference_model
from spatial_interp.report.reproduction import (
    ablation_section,
    amplification_section,
    criss_cross_section,
    describe_level,
    last_token_section,
)
from spatial_interp.results import LabelledArray

SITES = [f"lm_resid.{s}" for s in range(5)]
REF = reference_model("qwen2_vl")


def _criss_cross(strip_flips: list[bool], object_flips: list[bool], n: int = 10) -> LabelledArray:
    values = np.zeros((3, len(SITES), 2, n))
    for r, flips in enumerate((object_flips, strip_flips)):
        for s, flip in enumerate(flips):
            values[2 if flip else 0, s, r] = 0.9  # cf answer (index 2) or clean answer (index 0)
            values[0 if flip else 2, s, r] = 0.05
    sweep = LabelledArray(values, ("metric", "site", "region", "pair"),
                          {"metric": ["clean answer", "middle", "cf answer"], "site": SITES,
                           "region": ["object", "strip"], "pair": list(range(n))})
    sweep.extras["clean"] = LabelledArray(np.tile([[0.9], [0.05], [0.05]], (1, n)), ("metric", "pair"),
                                          {"metric": ["clean answer", "middle", "cf answer"]})
    return sweep


def test_criss_cross_text_agrees_or_contradicts_as_the_data_say():
    paper_like = criss_cross_section({"n_pairs": 10}, {"sweep": _criss_cross([True, True, True, False, False],
                                                                           [False] * 5)}, REF)
    assert "agrees with the paper" in paper_like.text
    assert "strip swap: the cf answer wins at Embed–L1" in paper_like.text
    assert "P(cf answer) = 0.050" in paper_like.text  # the unpatched control
    opposite = criss_cross_section({"n_pairs": 10}, {"sweep": _criss_cross([False] * 5, [False] * 5)}, REF)
    assert "contradicts the paper" in opposite.text and "wins at none" in opposite.text
    content = criss_cross_section({"n_pairs": 10}, {"sweep": _criss_cross([True] * 5, [True, True, False, False,
                                                                                      False])}, REF)
    assert "object swap alone flips the answer at Embed–L0" in content.text


def test_last_token_text_reads_the_leaders():
    names = ["clean answer", "middle", "clean image at cf slot", "cf answer", "cf image at clean slot"]
    leaders = [0, 0, 2, 3, 3]  # the paper's shape: clean → ordinal → cf
    values = np.zeros((5, 5, 4))
    for s, k in enumerate(leaders):
        values[k, s] = 0.8
    sweep = LabelledArray(values, ("metric", "site", "pair"), {"metric": names, "site": SITES})
    section = last_token_section({"n_pairs": 4}, {"sweep": sweep}, REF)
    assert "clean answer at Embed–L0; clean image at cf slot at L1; cf answer at L2–L3" in section.text
    assert "As in the paper" in section.text and "appears too" in section.text
    values = np.zeros((5, 5, 4))
    values[3] = 0.8  # the cf answer everywhere
    section = last_token_section({"n_pairs": 4}, {"sweep": LabelledArray(values, ("metric", "site", "pair"),
                                                                         {"metric": names, "site": SITES})}, REF)
    assert "Unlike the paper" in section.text


def test_ablation_and_amplification_text():
    behaviour = {"squares": {"accuracy": 1.0}, "shapes": {"accuracy": 1.0}}
    costless = {"full": {t: {"accuracy": 0.99, "correct": 99, "n": 100} for t in behaviour}}
    assert "Unlike the paper, the ablation costs at most" in ablation_section(costless, behaviour, REF).text
    costly = {"full": {t: {"accuracy": 0.35, "correct": 35, "n": 100} for t in behaviour}}
    text = ablation_section(costly, behaviour, REF).text
    assert "As in the paper, the ablation costs accuracy on every task" in text and "at chance (0.333)" in text
    summary = {"n_total": 100, "n_failed": 20, "none_acc": 0.8, "probe_acc": 0.9, "probe_star_acc": 0.95,
               "random_acc": 0.8, "random_star_acc": 0.82, "best_probe_alpha": 4.0, "best_random_alpha": 1.0,
               **{f"{k}_pct_errors_fixed": v for k, v in (("probe", 50.0), ("probe_star", 75.0), ("random", 0.0),
                                                          ("random_star", 10.0))}}
    section = amplification_section({"summary": summary, "alphas": [0, 4], "n_items": 100,
                                     "accuracy_by_alpha": {"probe": [0.8, 0.9], "random": [0.8, 0.8]}}, REF)
    assert "beats the random control" in section.text
    assert section.table[2] == ["% errors fixed", "—", "50.0", "75.0", "0.0", "10.0"]
    summary |= {"probe_pct_errors_fixed": 2.0}
    section = amplification_section({"summary": summary, "alphas": [0, 4], "n_items": 100,
                                     "accuracy_by_alpha": {"probe": [0.8, 0.81], "random": [0.8, 0.8]}}, REF)
    assert "does no better than the random control" in section.text


def test_describe_level():
    assert describe_level(0.2, (0.15, 0.25), 1 / 3) == "below chance (0.333)"
    assert describe_level(0.34, (0.2, 0.5), 1 / 3) == "at chance (0.333)"
