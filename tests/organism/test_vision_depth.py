"""The vision-depth experiment on the planted organisms: order forms inside the vision organism's tower
(and spreads to its background, which the LM does not read); the position organism's depth-0 tower has none.

Margins are set against what was measured with this configuration (vision organism: entity probe
0.35 / 0.89 / 1.00 / 1.00 at blocks 0-2 and vision_out, shuffled ≤ 0.35; background probe 0.42 / 0.66 /
0.86 / 0.82; object and strip swaps flip 4/4 pairs from block 1, none at block 0; background-only swaps
flip none; background ↛ objects leaves accuracy at 1.00 and the background probe at 0.33, objects ↛
background drops accuracy to 0.50. Position organism: entity probe 0.28 and background probe 0.33 at
vision_out, no swap flips).
"""

from __future__ import annotations

import functools

import pytest

from spatial_interp.vision_depth import VisionDepthConfig, vision_depth
from tests.organism.conftest import load_organism

CONFIG = VisionDepthConfig(probe_items=24, blank_items=4, pairs_per_direction=2, flow_items=1, knockout_items=8)


@functools.cache
def measured(name: str) -> dict:
    return vision_depth(load_organism(name), CONFIG)


def test_vision_organism_orders_inside_its_tower():
    r = measured("organism-qwen2-vl-vision")
    p, s = r["probes"], r["swaps"]
    assert r["sites"] == ["vision_block.0", "vision_block.1", "vision_block.2", "vision_out"]
    # Order is not in the patch embedding (block 0) and is there from block 1 on, on entities and background.
    assert r["first"]["object_probe"] == "vision_block.1" and r["first"]["background_probe"] == "vision_block.1"
    assert p["objects"]["accuracy"][0] < 0.5 and min(p["objects"]["accuracy"][1:]) > 0.75
    assert max(p["objects"]["shuffled_labels"]) < 0.5
    assert p["background"]["accuracy"][2] > 0.7 > max(p["background"]["shuffled_labels"]) + 0.2
    assert max(p["position_only"]) < 0.45  # blank canvases: no absolute position to read
    # Swapping at block 0 is undone by the blocks above; from block 1 the swap carries the order to the answer.
    assert r["first"]["object_swap"] == "vision_block.1" and r["first"]["strip_swap"] == "vision_block.1"
    assert s["object"]["cf answer"][0] <= 0.25 and min(s["object"]["cf answer"][1:]) >= 0.75
    # The background carries decodable order, but swapping it alone never moves the answer.
    assert r["first"]["background_swap"] is None and max(s["background"]["cf answer"]) <= 0.25
    f = r["flow"]
    assert f["max_deviation"] < 1e-5
    o = f["groups"].index("objects")
    # Attention on the objects grows with depth (block 0 near their row share, block 2 far above it).
    assert f["mass"][0][o][o] < 0.2 and f["mass"][2][f["groups"].index("rest")][o] > 0.4 > 4 * f["row_share"]["objects"]
    k = r["knockouts"]
    assert k["background ↛ objects"]["accuracy"] >= 0.9 and k["background ↛ objects"]["probes"]["background"] < 0.45
    assert k["background ↛ objects"]["probes"]["objects"] > 0.85
    assert k["objects ↛ background"]["accuracy"] <= 0.75 and k["objects ↛ background"]["clean_accuracy"] >= 0.9


def test_position_organism_has_no_order_in_its_tower():
    r = measured("organism-qwen2-vl-position")
    assert r["n_vision_blocks"] == 0 and r["sites"] == ["vision_out"]
    assert r["flow"] is None and r["knockouts"] is None
    assert all(v is None for v in r["first"].values())
    p = r["probes"]
    assert p["objects"]["accuracy"][0] < 0.45 and p["background"]["accuracy"][0] < 0.45
    for region in ("object", "strip", "background"):
        assert max(r["swaps"][region]["cf answer"]) <= 0.25
    assert r["swaps"]["clean"]["clean answer"] >= 0.9  # it answers by position, not by what the tower says


def test_depth_zero_tower_refuses_attention():
    from spatial_interp.interventions.attention import AttentionError, attention_flow

    vlm = load_organism("organism-qwen2-vl-position")
    with pytest.raises(AttentionError, match="no vision blocks"):
        attention_flow(vlm, [], {"x": None})
