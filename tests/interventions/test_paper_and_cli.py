"""Paper regions and ablation from data items; the ``spatial-interp sweep`` command."""

from __future__ import annotations

import json

import numpy as np
import torch

from spatial_interp.cli import main
from spatial_interp.data.pairs import criss_cross_pairs
from spatial_interp.data.tasks import squares_items, task_for
from spatial_interp.interventions.ablate import ablated_logits
from spatial_interp.interventions.examples import as_example, as_pair
from spatial_interp.interventions.paper import criss_cross_regions, paper_ablation
from spatial_interp.results import LabelledArray
from tests._models import tiny_model


def test_criss_cross_regions_follow_the_spec():
    vlm = tiny_model("tiny-qwen2-vl")
    pair_set = criss_cross_pairs(task_for("squares", "qwen2_vl"), "qwen2_vl", n_per_direction=1,
                                 directions=["left", "above"])
    regions = criss_cross_regions(vlm)
    left, above = (as_pair(pair_set[d][0]) for d in ("left", "above"))
    layout = vlm.prepare([left.clean.image], [left.clean.prompt]).layouts[0]
    obj = regions["object"](left, layout)
    assert (obj.a.flat.tolist(), obj.b.flat.tolist()) == ([61, 62, 73, 74], [69, 70, 81, 82])  # §2.2
    strip = regions["strip"](above, layout)
    assert strip.a.bounds == (0, 0, 4, 12) and strip.b.bounds == (8, 0, 12, 12)  # top ↔ bottom rows
    assert left.answers == tuple(pair_set["left"][0].prob_strs)


def test_paper_ablation_matches_data_plan():
    vlm = tiny_model("tiny-qwen2-vl")
    item = squares_items("qwen2_vl")[0]
    example = as_example(item)
    layout = vlm.prepare([item.image], [item.prompt]).layouts[0]
    refs = paper_ablation("qwen2_vl").references(example, layout)
    assert [len(r.target) for r in refs] == [4, 4, 4, 132]
    assert all(r.source.flat.tolist() == [65, 66, 77, 78] for r in refs[:3])  # the middle slot
    capped = paper_ablation("gemma3", background_cap=144)
    gemma = tiny_model("tiny-gemma3")
    item = squares_items("gemma3")[0]
    g_layout = gemma.prepare([item.image], [item.prompt]).layouts[0]
    background = capped.references(as_example(item), g_layout)[-1].target
    assert max(background.flat.tolist()) < 144
    logits = ablated_logits(vlm, [example], paper_ablation("qwen2_vl"))
    assert torch.isfinite(logits).all()


def test_sweep_command_writes_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sweep", "tiny-qwen2-vl", "--pairs-per-direction", "2", "--directions", "left",
            "--sites", "lm_resid.0", "lm_resid.2", "--out", str(out), "--no-progress", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_pairs"] == 2 and payload["regions"] == ["object", "strip"]
    first = LabelledArray.load(out / "result")
    assert first.axes == ("metric", "site", "region", "pair") and first.shape == (3, 2, 2, 2)
    assert first.provenance["model"]["name"] == "tiny-qwen2-vl"
    assert main(argv) == 0  # resumes: everything is on disk already
    capsys.readouterr()
    assert np.array_equal(LabelledArray.load(out / "result").values, first.values)
    ablated = ["sweep", "tiny-qwen2-vl", "--pairs-per-direction", "1", "--directions", "above", "--regions", "object",
               "--sites", "lm_resid.1", "--ablate", "capped", "--metric", "top1", "--out", str(tmp_path / "abl"),
               "--no-progress"]
    assert main(ablated) == 0
    assert "lm_resid.1" in capsys.readouterr().out
    assert LabelledArray.load(tmp_path / "abl" / "result").provenance["config"]["ablation"] is True
