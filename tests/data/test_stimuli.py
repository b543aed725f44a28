import random

import numpy as np
import pytest

from spatial_interp.data.canvas import canvas_for
from spatial_interp.data.items import Entity, Item
from spatial_interp.data.references import ablation_plan, isolated_middle, reference_images
from spatial_interp.data.stimuli import Renderer, blank_canvas, grid_boxes, random_layout, three_slot_boxes
from spatial_interp.data.tasks import grid_items, shapes_items, squares_items


def test_squares_fill_exact_boxes():
    g = canvas_for("qwen2_vl")
    item = squares_items(g)[0]
    arr = np.array(item.image)
    assert item.image.size == (336, 336) and item.image.mode == "RGB"
    red = (arr == [255, 0, 0]).all(axis=2)
    assert red.sum() == 56 * 56 and red[140:196, 28:84].all()
    white = (arr == 255).all(axis=2)
    assert white.sum() == 336 * 336 - 3 * 56 * 56
    assert [e.box for e in item.entities] == three_slot_boxes(g, "horizontal")
    assert [e.slot for e in item.entities] == [0, 1, 2]
    assert item.entities[0].flat_ids(g) == [61, 62, 73, 74]


def test_shapes_pasted_in_boxes():
    g = canvas_for("gemma3")
    item = shapes_items(g)[2]  # (square red, circle green, triangle blue), above
    assert item.orientation == "vertical"
    arr = np.array(item.image)
    nonwhite = ~(arr == 255).all(axis=2)
    ys, xs = np.nonzero(nonwhite)
    x0, y0, x1, y1 = item.entities[0].box
    assert (x0, y0) == (336, 0)
    # the red square sprite sits 16 px inside its 168-px box (margin of the 0.8 L square)
    red = (arr == [255, 0, 0]).all(axis=2)
    ry, rx = np.nonzero(red)
    assert (rx.min(), ry.min(), rx.max(), ry.max()) == (x0 + 16, y0 + 16, x0 + 150, y0 + 150)
    assert xs.min() >= 336 and xs.max() < 504


def test_blank_and_isolated_middle():
    g = canvas_for("pixtral")
    assert (np.array(blank_canvas(g)) == 255).all()
    img = isolated_middle(g, Entity("red", 0, (0, 0, 32, 32), color="red"))
    red = (np.array(img) == [255, 0, 0]).all(axis=2)
    x0, y0, x1, y1 = g.slot_box(1, "horizontal")
    assert red.sum() == 32 * 32 and red[y0:y1, x0:x1].all()


def test_reference_images_and_plan():
    g = canvas_for("gemma3")
    item = squares_items(g)[3]  # below: vertical layout
    refs = reference_images(item.entities, g)
    assert sorted(refs) == ["blue", "empty", "green", "red"]
    plan = ablation_plan(item, g)
    middle = tuple(g.slot_cells(1, "horizontal"))
    assert [s.reference for s in plan.slots] == ["red", "green", "blue"]
    assert all(s.reference_cells == middle for s in plan.slots)
    assert plan.slots[0].cells == tuple(g.slot_cells(0, "vertical"))
    assert len(plan.background) == 256 - 27
    capped = ablation_plan(item, g, background_cap=144)
    assert all(g.flat(c) < 144 for c in capped.background) and len(capped.background) == 144 - 9 - 9
    shapes_item = shapes_items("qwen2_vl")[0]
    assert [s.reference for s in ablation_plan(shapes_item, "qwen2_vl").slots] == [
        "red square", "green circle", "blue triangle"]


def test_grid_boxes_centred():
    g = canvas_for("qwen2_vl")
    boxes = grid_boxes(g, 3)  # extent 3*2 + 2*2 = 10 tokens, start 1
    assert boxes[0][0] == (28, 28, 84, 84)
    assert boxes[2][2] == (252, 252, 308, 308)
    assert boxes[1][2] == (252, 140, 308, 196)
    with pytest.raises(ValueError):
        grid_boxes(g, 4)


def test_grid_items():
    items = grid_items("qwen2_vl", 2, n_grids=6, orientation="vertical")
    assert len(items) == 6
    it = items[0]
    assert it.metadata["cells"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert [e.slot for e in it.entities] == [0, 0, 1, 1]  # vertical label = row index
    again = grid_items("qwen2_vl", 2, n_grids=6, orientation="vertical")
    assert [e.name for e in again[5].entities] == [e.name for e in items[5].entities]


@pytest.mark.parametrize("orientation", ["horizontal", "vertical"])
@pytest.mark.parametrize("sub_cell", [False, True])
def test_random_layout(orientation, sub_cell):
    g = canvas_for("qwen2_vl")
    rng = random.Random(3)
    axis = 0 if orientation == "horizontal" else 1
    for _ in range(30):
        boxes = random_layout(g, 3, rng, orientation, sub_cell=sub_cell, min_gap_px=4)
        for b in boxes:
            assert 0 <= b[0] < b[2] <= 336 and 0 <= b[1] < b[3] <= 336
            assert b[2] - b[0] == 56 and b[3] - b[1] == 56
            if not sub_cell:
                assert b[0] % 28 == 0 and b[1] % 28 == 0
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert a[axis + 2] + 4 <= b[axis]  # ordered and separated along the axis
    assert random_layout(g, 3, random.Random(5), orientation) == random_layout(g, 3, random.Random(5), orientation)


def test_random_layout_impossible():
    with pytest.raises(ValueError, match="could not place"):
        random_layout(canvas_for("qwen2_vl"), 7, random.Random(0), "horizontal", max_tries=50)


def test_renderer_rejects_bad_boxes():
    r = Renderer()
    with pytest.raises(ValueError):
        r.render(64, [Entity("red", 0, (10, 10, 10, 20), color="red")])
    with pytest.raises(ValueError, match="square"):
        r.render(64, [Entity("red", 0, (0, 0, 20, 10), color="red", shape="star")])
    assert isinstance(Item, type)
