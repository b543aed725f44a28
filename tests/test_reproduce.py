"""The paper pipeline end to end on a tiny model: every experiment runs and lands in the report."""

import dataclasses
import json

from spatial_interp.mechanism import MechanismConfig
from spatial_interp.reproduce import PaperConfig, reproduce
from tests._models import tiny_model


def test_reproduce_runs_every_experiment(tmp_path):
    vlm = tiny_model("tiny-pixtral")
    cfg = PaperConfig(tasks=("squares",), pairs_per_direction=1, filter_pairs=False, eval_limit=8, alphas=(0, 2),
                      amplify_items=4, position_items=12, progress=False,
                      verdict=MechanismConfig(items=8, pairs_per_direction=1, filter_pairs=False, probe_items=12,
                                              position_items=12))
    summary = reproduce(vlm, tmp_path, cfg)
    exp = summary["experiments"]
    assert set(exp) == {"behaviour", "probing", "last_token", "criss_cross", "ablation", "criss_cross_ablated",
                        "amplification", "verdicts", "probing_control"}
    assert [v["numbers"]["model"] for v in exp["verdicts"]] == ["tiny-pixtral"]
    assert exp["behaviour"]["squares"]["n"] == 8
    assert set(exp["behaviour"]["squares"]["per_direction"]) == {"left", "right", "above", "below"}
    assert exp["last_token"]["n_pairs"] == 4 and exp["criss_cross"]["regions"] == ["object", "strip"]
    # metric × slot (× region): 5 answer strings for last-token pairs, 3 for criss-cross
    assert len(exp["last_token"]["mean"]) == 5 and len(exp["last_token"]["mean"][0]) == vlm.n_lm_layers + 1
    assert set(exp["ablation"]) == {"full", "capped"}
    assert exp["amplification"]["probe_fixed_at_alpha0"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["experiments"]["behaviour"]["squares"]["n"] == 8
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    for title in ("Table 1", "§4", "§5", "§6", "Table 5", "§7.2", "§8", "Which route carries order"):
        assert title in html


def test_reproduce_reruns_into_the_same_folder(tmp_path):
    """A second run resumes (same numbers); a run with other settings into the same folder recomputes."""
    vlm = tiny_model("tiny-qwen2-vl")
    cfg = PaperConfig(tasks=("squares",), pairs_per_direction=1, filter_pairs=False, eval_limit=4, alphas=(0,),
                      amplify_items=4, position_items=12, progress=False, verdict=None)
    first = reproduce(vlm, tmp_path, cfg)["experiments"]
    again = reproduce(vlm, tmp_path, cfg)["experiments"]
    assert again["criss_cross"]["mean"] == first["criss_cross"]["mean"]
    other = reproduce(vlm, tmp_path, dataclasses.replace(cfg, seed=1))["experiments"]
    assert other["last_token"]["n_pairs"] == 4
