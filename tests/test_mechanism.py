"""The route verdict: hand-computed thresholds, sentences built from the numbers, the CLI side by side."""

from __future__ import annotations

import copy
import json

import pytest

from spatial_interp.cli import main
from spatial_interp.mechanism import MechanismConfig, verdict
from spatial_interp.report.verdicts import matches_planted, verdict_rows, verdict_section

NUMBERS = {
    "model": "hand-made", "order_blind": 0.5, "paper_chance": 1 / 3, "config": {},
    "knockouts": {"n_items": 8,
                  "clean": {"accuracy": 1.0, "by_axis": {"horizontal": 1.0, "vertical": 1.0}},
                  "permuted": {"accuracy": 0.76, "by_axis": {"horizontal": 0.75, "vertical": 0.77}},
                  "ablated": {"accuracy": 0.74, "by_axis": {"horizontal": 0.7, "vertical": 0.78}}},
    "swaps": {"n_pairs": 10, "sites": ["vision_out", "lm_resid.0"],
              "object": {"clean answer": [0.3, 0.3], "cf answer": [0.7, 0.7]},
              "strip": {"clean answer": [1.0, 1.0], "cf answer": [0.0, 0.0]}},
    "probes": {"sites": ["vision_out", "lm_resid.0", "lm_resid.1"], "accuracy": [0.9, 0.9, 0.95],
               "shuffled_labels": [0.3, 0.31, 0.35], "n_items": 12, "chance": 1 / 3},
}


def test_retained_margin_threshold_by_hand():
    # permuted 0.76 keeps (0.76 - 0.5) / (1 - 0.5) = 52 % >= 50 %: present; ablated 0.74 keeps 48 %: absent.
    v = verdict(NUMBERS, MechanismConfig())
    assert v["vision_route"]["present"] is True and v["vision_route"]["retained"] == pytest.approx(0.52)
    assert v["lm_position_route"]["present"] is False and v["lm_position_route"]["retained"] == pytest.approx(0.48)
    assert verdict(NUMBERS, MechanismConfig(retain=0.4))["lm_position_route"]["present"] is True
    assert "0.76" in v["vision_route"]["evidence"] and "52%" in v["vision_route"]["evidence"]
    assert "70% of answers follow the vision tokens' content" in v["on_conflict"]
    assert "content dominates" in v["on_conflict"]


def test_undetermined_when_clean_is_order_blind():
    numbers = copy.deepcopy(NUMBERS)
    numbers["knockouts"]["clean"]["accuracy"] = 0.5
    v = verdict(numbers)
    assert v["vision_route"]["present"] is None and "undetermined" in v["lm_position_route"]["evidence"]


def test_table_and_section_read_the_numbers():
    result = {"numbers": NUMBERS, "verdict": verdict(NUMBERS), "planted": {"vision_route": True,
                                                                          "lm_position_route": False}}
    rows = verdict_rows([result])
    table = {r[0]: r[1] for r in rows[1:]}
    assert table["… image rows permuted at lm_resid(0)"] == "0.760"
    assert table["object swap at vision_out: cf answer"] == "0.700 (10 pairs)"
    assert table["slot probe, best LM slot ≥ 1 (shuffled labels)"] == "0.950 (0.350)"
    assert table["vision route: measured"] == "present" and table["LM positional route: planted"] == "absent"
    assert matches_planted(result) is True
    assert "1 of which the verdict recovers" in verdict_section([result]).text
    result["planted"] = {"vision_route": False, "lm_position_route": False}
    assert matches_planted(result) is False and "does NOT match" in verdict_section([result]).text


def test_cli_side_by_side(capsys, tmp_path):
    args = ["mechanism", "tiny-qwen2-vl", "tiny-llava", "--items", "4", "--pairs-per-direction", "1",
            "--probe-items", "12", "--position-items", "12", "--no-filter", "--out", str(tmp_path)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[1:] == ["tiny-qwen2-vl", "tiny-llava"]
    assert "vision route: measured" in text
    saved = json.loads((tmp_path / "tiny-llava" / "mechanism.json").read_text())
    assert saved["numbers"]["knockouts"]["n_items"] == 4 and "provenance" in saved
    assert main([*args[:3], "--json", "--items", "4", "--pairs-per-direction", "1", "--probe-items", "12",
                 "--position-items", "12", "--no-filter", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["numbers"]["model"] == "tiny-qwen2-vl"


def test_cli_rejects_bad_sizes(tmp_path):
    with pytest.raises(SystemExit, match="--items must be positive"):
        main(["mechanism", "tiny-qwen2-vl", "--items", "0"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        main(["mechanism", "tiny-qwen2-vl", "--out", str(tmp_path / "file")])
