"""The vision-depth experiment on tiny models: its regions and labels by hand, its swaps against ``si.patch``,
its summary rule recomputed from its numbers, the report section and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.cli import main
from spatial_interp.data import pairs as data_pairs
from spatial_interp.data import tasks as data_tasks
from spatial_interp.data.canvas import canvas_for
from spatial_interp.interventions import metrics
from spatial_interp.interventions.examples import as_pair
from spatial_interp.report.vision_depth import vision_depth_section
from spatial_interp.vision_depth import (
    VisionDepthConfig,
    _swap_metric,
    _swap_under,
    background_labels,
    objects,
    strips,
    swap_regions,
    vision_depth,
)
from tests._models import tiny_model

SMALL = VisionDepthConfig(probe_items=12, blank_items=4, pairs_per_direction=1, flow_items=1, knockout_items=4,
                          attention_batch=2)


def _item(vlm):
    return data_tasks.probing_items(data_tasks.task_for("squares", vlm.canvas), vlm.canvas, "horizontal")[0]


def test_regions_and_background_labels_by_hand():
    vlm = tiny_model("tiny-qwen2-vl")
    item = _item(vlm)
    layout = vlm.prepare([item.image], [item.prompt]).layouts[0]
    geometry = canvas_for(vlm.canvas)
    cells = {(f // 12, f % 12) for e in item.entities for f in e.flat_ids(geometry)}
    assert set(objects(item, layout)) == cells
    columns = {c for _, c in cells}
    assert set(strips(item, layout)) == {(r, c) for r in range(12) for c in columns} - cells
    labels = background_labels([item], vlm.canvas)[str(item.id)]
    flat = {r * 12 + c for r, c in cells}
    assert set(labels) == set(range(144)) - flat
    assert all(band == (f % 12) // 4 for f, band in labels.items())  # Qwen's 4/4/4 tiling


def test_swap_without_knockout_equals_patch():
    vlm = tiny_model("tiny-pixtral")
    pairs = list(data_pairs.criss_cross_pairs(data_tasks.task_for("squares", vlm.canvas), vlm.canvas,
                                              directions=["left"], n_per_direction=2, seed=0))
    region = swap_regions(vlm)["strip"]
    ours = _swap_under(vlm, SMALL, [], pairs, region)
    metric = metrics.combine({"clean answer": metrics.top1(vlm.tokenizer, 0),
                              "cf answer": metrics.top1(vlm.tokenizer, 2)})
    ref = si.patch(vlm, pairs, si.site.vision_out, region, pairing="swap", metric=metric)
    assert ours == pytest.approx(float(ref.sel(metric="cf answer.top1").values.mean()))
    # The composed forward also reproduces the logits of the engine's patch (not only the 0/1 metric).
    from spatial_interp.interventions.attention import run_attention
    from spatial_interp.interventions.engine import Edit, Read
    from spatial_interp.interventions.examples import resolve_region
    from spatial_interp.interventions.patch import patch_indices, patch_logits

    p = as_pair(pairs[0])
    bs, bc = vlm.prepare([p.source.image], [p.source.prompt]), vlm.prepare([p.clean.image], [p.clean.prompt])
    t, s = patch_indices(si.site.vision_out, resolve_region(region, p, bc.layouts[0]), "swap", bc.layouts[0],
                         bs.layouts[0])
    rows = run_attention(vlm, bs, [p.source], reads=[Read(si.site.vision_out, None, s)]).reads[0]
    logits = run_attention(vlm, bc, [p.clean], edits=[Edit.set(si.site.vision_out, None, t, rows)]).logits
    torch.testing.assert_close(logits, patch_logits(vlm, [p], si.site.vision_out, region, "swap"), atol=1e-5, rtol=0)
    assert _swap_metric(vlm).names([p]) == ["clean answer.top1", "cf answer.top1"]


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl"])
def test_experiment_on_tiny_models(name):
    vlm = tiny_model(name)
    result = vision_depth(vlm, SMALL)
    n = vlm.n_vision_blocks
    assert result["sites"] == [f"vision_block.{k}" for k in range(n)] + ["vision_out"]
    p = result["probes"]
    for table in (p["objects"], p["background"]):
        assert len(table["accuracy"]) == len(table["shuffled_labels"]) == n + 1
        assert all(0 <= a <= 1 for a in table["accuracy"])
    assert np.asarray(p["objects"]["maps"]).shape[:2] == (n + 1, 3)
    # The summary follows its documented rule, recomputed here from the returned numbers.
    for key, name_ in (("object_probe", "objects"), ("background_probe", "background")):
        t = p[name_]
        bar = [max(t["chance"], c, b) + SMALL.margin for c, b in zip(t["shuffled_labels"], p["position_only"],
                                                                       strict=True)]
        hits = [s for s, a, b in zip(result["sites"], t["accuracy"], bar, strict=True) if a >= b]
        assert result["first"][key] == (hits[0] if hits else None)
    for region in ("object", "strip", "background"):
        cf = result["swaps"][region]["cf answer"]
        hits = [s for s, v in zip(result["sites"], cf, strict=True) if v >= SMALL.flip]
        assert result["first"][f"{region}_swap"] == (hits[0] if hits else None)
    f = result["flow"]
    mass = np.asarray(f["mass"])
    assert mass.shape[0] == n and np.allclose(mass.sum(-1), 1, atol=1e-4)
    assert f["max_deviation"] < 1e-5
    assert set(result["knockouts"]) >= {"background ↛ objects", "objects ↛ background"}
    json.dumps(result)  # JSON-ready
    section = vision_depth_section(result)
    assert len(section.table) == n + 3 and len(section.figures) == 4
    for number in (f"{p['objects']['accuracy'][-1]:.2f}", f"{f['max_deviation']:.1e}"):
        assert number in section.text or any(number in cell for row in section.table for cell in row)


def test_config_refuses_bad_sizes():
    with pytest.raises(ValueError, match="probe_items"):
        VisionDepthConfig(probe_items=4)
    with pytest.raises(ValueError, match="orientation"):
        VisionDepthConfig(orientation="diagonal")
    with pytest.raises(ValueError, match="flow_items"):
        VisionDepthConfig(flow_items=0)


def test_cli_writes_json_and_report(tmp_path, capsys):
    out = tmp_path / "vd"
    code = main(["vision-depth", "tiny-qwen2-vl", "--probe-items", "12", "--blank-items", "4",
                 "--pairs-per-direction", "1", "--flow-items", "1", "--knockout-items", "4", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "vision_depth.json").read_text())
    assert result["sites"] == ["vision_block.0", "vision_block.1", "vision_out"]
    assert (out / "vision_depth.html").read_text().count("plotly") > 0
    text = capsys.readouterr().out
    assert "vision_block.1" in text and f"{result['probes']['objects']['accuracy'][0]:.2f}" in text


def test_cli_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["vision-depth", "tiny-qwen2-vl", "--probe-items", "-1", "--out", str(tmp_path / "x")])
    assert main(["vision-depth", "tiny-qwen2-vl", "--remote"]) == 2
    assert "no --remote" in capsys.readouterr().err
