"""Planted routes in training: the splice equals the toolkit's own primitives on the same items.

The training loop applies the permuted and ablated routes with a gather of vision rows
(:mod:`spatial_interp.training.routes`); the toolkit measures them with ``permute_image_rows`` and
``ablate`` (nnsight edits at ``lm_resid(0)``). These two implementations share no code, so equal
logits prove the organisms are trained under exactly the interventions the verdict later applies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.data import tasks as data_tasks
from spatial_interp.interventions.ablate import ablated_logits
from spatial_interp.interventions.paper import paper_ablation
from spatial_interp.interventions.permute import permute_image_rows, row_permutation
from spatial_interp.training.loop import Batcher, batch_routes, batch_scenes, last_logits
from spatial_interp.training.organisms import PLANTED, SPECS
from spatial_interp.training.routes import IGNORE, draw_routes, order_labels, slot_cells, splice_index
from spatial_interp.training.stimuli import CANVASES, paper_scene

CANVAS = CANVASES["qwen2_vl"]


@pytest.fixture(scope="module")
def vlm():
    return si.load("organism-qwen2-vl")


def _data_item(vlm, triple, direction):
    task = data_tasks.task_for("squares", vlm.canvas)
    return data_tasks.three_slot_item(task, [task.option(n) for n in triple], direction,
                                      data_tasks.canvas_for(vlm.canvas), item_id="route-test")


class _Logits:
    def __call__(self, logits, owners):
        return logits


@pytest.mark.parametrize("direction", ["left", "below"])
def test_ablated_route_equals_the_toolkit_ablation(vlm, direction):
    triple = ("red", "green", "blue")
    scene = paper_scene("squares", triple, direction, CANVAS)
    item = _data_item(vlm, triple, direction)
    batcher = Batcher(SPECS["qwen2_vl"], vlm.processor)
    assert np.array_equal(batcher.renderer.render(scene), np.asarray(item.image)), "renderers disagree"
    enc = batcher.encode([scene], ["ablated"], np.random.default_rng(0))
    with torch.no_grad():
        training = last_logits(vlm.model, enc.inputs, enc.splice)[0]
        clean = last_logits(vlm.model, batcher.encode([scene]).inputs)[0]
    toolkit = ablated_logits(vlm, [item], paper_ablation(vlm.canvas))[0]
    torch.testing.assert_close(training, toolkit, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(training, clean, atol=1e-3), "the ablation changed nothing on this item"


def test_permuted_route_equals_permute_image_rows(vlm):
    triple = ("black", "gray", "brown")
    scene = paper_scene("squares", triple, "right", CANVAS)
    item = _data_item(vlm, triple, "right")
    batcher = Batcher(SPECS["qwen2_vl"], vlm.processor)
    seed = 11
    plan = splice_index([scene], ["permuted"], CANVAS, np.random.default_rng([seed, 0]))
    assert torch.equal(plan.index, row_permutation(144, seed, 0))
    enc = batcher.encode([scene], ["permuted"], np.random.default_rng([seed, 0]))
    with torch.no_grad():
        training = last_logits(vlm.model, enc.inputs, enc.splice)[0]
    toolkit = permute_image_rows(vlm, [item], seed=seed, metric=_Logits())
    torch.testing.assert_close(training, torch.from_numpy(toolkit.values[0, 1]), atol=1e-4, rtol=1e-4)


def test_splice_of_clean_items_is_the_identity():
    scenes = [paper_scene("squares", ("red", "green", "blue"), "left", CANVAS)] * 3
    plan = splice_index(scenes, ["clean"] * 3, CANVAS, np.random.default_rng(0))
    assert torch.equal(plan.index, torch.arange(3 * 144)) and plan.references == []


def test_ablated_splice_reads_the_right_reference_rows():
    scene = paper_scene("squares", ("red", "green", "blue"), "above", CANVAS)
    plan = splice_index([scene, scene], ["permuted", "ablated"], CANVAS, np.random.default_rng(0))
    names = [None if r.entity is None else r.entity.name for r in plan.references]
    assert names == [None, "red", "green", "blue"]  # empty first, then each entity once
    rows = plan.index[144:]
    middle = slot_cells(CANVAS, 1, "h")
    for slot, name in enumerate(("red", "green", "blue")):
        ref = 2 + names.index(name)  # two items' images come before the references
        got = rows[slot_cells(CANVAS, slot, "v")]
        assert got.tolist() == [ref * 144 + c for c in middle]
    background = sorted(set(range(144)) - {c for k in range(3) for c in slot_cells(CANVAS, k, "v")})
    assert rows[background].tolist() == [2 * 144 + c for c in background]  # the empty canvas, same cell


def test_order_labels_by_hand():
    scene = paper_scene("squares", ("red", "green", "blue"), "left", CANVAS)
    labels = order_labels([scene], CANVAS).view(12, 12)
    # Qwen horizontal slots at cells (row 5-6) x (cols 1-2, 5-6, 9-10) (spec §2.2).
    for slot, col in enumerate((1, 5, 9)):
        assert (labels[5:7, col:col + 2] == slot).all()
    assert int((labels != IGNORE).sum()) == 12
    vertical = order_labels([paper_scene("squares", ("red", "green", "blue"), "below", CANVAS)], CANVAS).view(12, 12)
    assert (vertical[1:3, 5:7] == 3).all() and (vertical[9:11, 5:7] == 5).all()


def test_routes_are_a_pure_function_of_seed_and_step():
    spec = PLANTED["dual"]
    a, b = batch_routes(spec, 0, 7, 64), batch_routes(spec, 0, 7, 64)
    assert a == b and set(a) == {"clean", "permuted", "ablated"}
    assert batch_routes(spec, 0, 8, 64) != a
    ablated = [s for s, r in zip(batch_scenes(spec, 0, 7, 64), a, strict=True) if r == "ablated"]
    assert all(e.box == CANVAS.slot_box(k, s.orientation) for s in ablated for k, e in enumerate(s.entities))
    assert batch_routes(SPECS["qwen2_vl"], 0, 7, 8) == ["clean"] * 8
    with pytest.raises(ValueError, match="sum to"):
        draw_routes(np.random.default_rng(0), 4, 0.7, 0.5)
