import pytest

from spatial_interp.data.canvas import CANVAS_PRESETS, CanvasGeometry, canvas_for

# spec §2.2: flat token ids per slot, (slot 0, 1, 2)
SPEC_IDS = {
    ("qwen2_vl", "horizontal"): [[61, 62, 73, 74], [65, 66, 77, 78], [69, 70, 81, 82]],
    ("qwen2_vl", "vertical"): [[17, 18, 29, 30], [65, 66, 77, 78], [113, 114, 125, 126]],
    ("gemma3", "horizontal"): [[96, 97, 98, 112, 113, 114, 128, 129, 130],
                               [102, 103, 104, 118, 119, 120, 134, 135, 136],
                               [108, 109, 110, 124, 125, 126, 140, 141, 142]],
    ("gemma3", "vertical"): [[6, 7, 8, 22, 23, 24, 38, 39, 40],
                             [102, 103, 104, 118, 119, 120, 134, 135, 136],
                             [198, 199, 200, 214, 215, 216, 230, 231, 232]],
    ("pixtral", "horizontal"): [[92, 93, 107, 108], [96, 97, 111, 112], [100, 101, 115, 116]],
    ("pixtral", "vertical"): [[36, 37, 51, 52], [96, 97, 111, 112], [156, 157, 171, 172]],
}

# spec §2.2 inclusive boxes, converted to half-open (x1 + 1, y1 + 1)
SPEC_BOXES = {
    "qwen2_vl": [(28, 140, 84, 196), (140, 140, 196, 196), (252, 140, 308, 196)],
    "gemma3": [(0, 336, 168, 504), (336, 336, 504, 504), (672, 336, 840, 504)],
}


def test_presets():
    assert CANVAS_PRESETS["qwen2_vl"] == CanvasGeometry(12, 28, 2, 2)
    assert CANVAS_PRESETS["qwen2_5_vl"] == CanvasGeometry(12, 28, 2, 2)
    assert CANVAS_PRESETS["gemma3"] == CanvasGeometry(16, 56, 3, 3)
    assert CANVAS_PRESETS["pixtral"] == CanvasGeometry(15, 16, 2, 2)
    assert CANVAS_PRESETS["pixtral_3x3"] == CanvasGeometry(15, 16, 3, 3)
    assert CANVAS_PRESETS["llava"] == CanvasGeometry(24, 14, 4, 4)
    assert [canvas_for(n).canvas_px for n in ("qwen2_vl", "gemma3", "pixtral", "llava")] == [336, 896, 240, 336]
    with pytest.raises(TypeError):
        CANVAS_PRESETS["x"] = CanvasGeometry(12, 28, 2, 2)


def test_canvas_for_unknown_lists_names():
    with pytest.raises(ValueError, match="qwen2_vl.*gemma3.*pixtral_3x3"):
        canvas_for("qwen3")
    assert canvas_for("Qwen2-VL") is CANVAS_PRESETS["qwen2_vl"]


@pytest.mark.parametrize("key", sorted(SPEC_IDS))
def test_spec_token_ids(key):
    name, orientation = key
    g = canvas_for(name)
    assert [g.slot_flat_ids(s, orientation) for s in range(3)] == SPEC_IDS[key]


@pytest.mark.parametrize("name", sorted(SPEC_BOXES))
def test_spec_pixel_boxes(name):
    g = canvas_for(name)
    assert [g.slot_box(s, "horizontal") for s in range(3)] == SPEC_BOXES[name]


def test_pixtral_box_and_old_geometry():
    assert canvas_for("pixtral").slot_box(0, "horizontal") == (32, 96, 64, 128)
    old = canvas_for("pixtral_3x3")
    assert [old.slot_origin(s, "horizontal") for s in range(3)] == [(6, 0), (6, 6), (6, 12)]
    assert len(old.slot_cells(0, "horizontal")) == 9


def test_slot_origins_col_row():
    g = canvas_for("qwen2_vl")
    # spec lists (col, row): (1,5) (5,5) (9,5) horizontally
    assert [g.slot_origin(s, "horizontal")[::-1] for s in range(3)] == [(1, 5), (5, 5), (9, 5)]
    assert [g.slot_origin(s, "vertical")[::-1] for s in range(3)] == [(5, 1), (5, 5), (5, 9)]


def test_box_cells_half_open():
    g = canvas_for("qwen2_vl")
    assert g.box_cells((28, 140, 84, 196)) == [(5, 1), (5, 2), (6, 1), (6, 2)]
    assert g.box_cells((28, 140, 85, 196)) == [(5, 1), (5, 2), (5, 3), (6, 1), (6, 2), (6, 3)]
    assert g.box_cells((0, 0, 1, 1)) == [(0, 0)]
    assert g.box_cells((10, 10, 10, 20)) == []
    assert g.flat((5, 1)) == 61 and g.unflat(61) == (5, 1)


def test_invalid_geometry():
    with pytest.raises(ValueError):
        CanvasGeometry(5, 10, 2, 2)
    with pytest.raises(ValueError):
        canvas_for("qwen2_vl").slot_origin(3, "horizontal")
    with pytest.raises(ValueError):
        canvas_for("qwen2_vl").slot_origin(0, "diagonal")
