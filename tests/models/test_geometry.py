"""Geometry of every architecture, proven by pixel perturbation (see spatial_interp/models/verify.py)."""

import pytest
from PIL import Image

import spatial_interp as si
from spatial_interp.geometry import GeometryError
from spatial_interp.models.adapters.qwen2_vl import Qwen2VLAdapter
from spatial_interp.models.verify import verify_geometry
from tests._models import tiny_model


def test_pixel_perturbation_oracle(tiny_vlm):
    """Cell-aligned boxes change exactly the predicted rows; unaligned boxes stay inside them.

    Covers the native canvas, a border-touching box, and (per adapter) resized / cropped /
    non-square images at vision_block(0) input order, vision_out and lm_resid(0).
    """
    report = verify_geometry(tiny_vlm)
    failures = [(c.image_size, c.box, name, d) for c in report.cases for name, d in c.sites.items() if not d["passed"]]
    assert not failures
    assert any(c.aligned for c in report.cases) and any(not c.aligned for c in report.cases)
    assert any(c.box[0] == 0 and c.box[1] == 0 for c in report.cases)  # touches the border


def test_oracle_catches_a_wrong_vision_row_order():
    """Qwen2.5-VL's window order is not Qwen2-VL's: using the latter must fail the check."""
    vlm = si.load("tiny-qwen2.5-vl")
    vlm.adapter.merge_order = Qwen2VLAdapter().merge_order  # type: ignore[method-assign]
    report = verify_geometry(vlm, [(336, 336)])
    assert not report.per_site()["vision_block.0"]
    assert report.per_site()["vision_out"]


@pytest.mark.parametrize(
    ("name", "size", "grid"),
    [("tiny-qwen2-vl", (336, 336), (12, 12)), ("tiny-qwen2-vl", (448, 252), (9, 16)),
     ("tiny-qwen2-vl", (500, 375), (13, 18)), ("tiny-gemma3", (640, 480), (16, 16)),
     ("tiny-llava", (448, 336), (24, 24)), ("tiny-pixtral", (240, 240), (15, 15)),
     ("tiny-pixtral", (288, 240), (15, 18))],
)
def test_grid_sizes(name, size, grid):
    vlm = tiny_model(name)
    layout = vlm.prepare([Image.new("RGB", size, "white")], ["hi"]).layouts[0]
    assert (layout.grid.rows, layout.grid.cols) == grid


def test_paper_slot_boxes_map_to_paper_token_ids():
    """Spec §2.2: Qwen's horizontal slots at 336 px are flat ids [61,62,73,74] [65,66,77,78] [69,70,81,82]."""
    layout = tiny_model("tiny-qwen2-vl").prepare([Image.new("RGB", (336, 336))], ["hi"]).layouts[0]
    boxes = [(28, 140, 84, 196), (140, 140, 196, 196), (252, 140, 308, 196)]
    assert [layout.box_to_cells(b).flat.tolist() for b in boxes] == [[61, 62, 73, 74], [65, 66, 77, 78],
                                                                     [69, 70, 81, 82]]


def test_box_centres_give_each_cell_to_at_most_one_of_disjoint_boxes():
    layout = tiny_model("tiny-qwen2-vl").prepare([Image.new("RGB", (336, 336))], ["hi"]).layouts[0]
    left, right = (0, 0, 40, 28), (44, 0, 84, 28)  # 28 px cells: both touch column 1, whose centre is x = 42
    assert [c for _, c in layout.box_to_cells(left)] == [0, 1] and [c for _, c in layout.box_to_cells(right)] == [1, 2]
    assert [c for _, c in layout.box_to_cells(left, centres=True)] == [0]
    assert [c for _, c in si.Region.box(layout, right, centres=True)] == [2]
    assert list(layout.box_to_cells((20, 20, 75, 50), centres=True)) == [(1, 1), (1, 2)]  # half-open at 70 < 75
    aligned = (28, 140, 84, 196)
    assert layout.box_to_cells(aligned, centres=True) == layout.box_to_cells(aligned)


def test_pixtral_positions_skip_one_break_per_row():
    vlm = tiny_model("tiny-pixtral")
    batch = vlm.prepare([Image.new("RGB", (240, 240))], ["hi"])
    layout, ids = batch.layouts[0], batch.inputs["input_ids"][0]
    pos = layout.lm_positions
    assert (pos[15:] - pos[:-15]).unique().tolist() == [16]  # row stride C + 1
    tok = vlm.tokenizer.convert_tokens_to_ids
    assert ids[pos[14] + 1] == tok("[IMG_BREAK]") and ids[pos[-1] + 1] == tok("[IMG_END]")
    assert [tok("[IMG]"), tok("[IMG_BREAK]"), tok("[IMG_END]")] == [10, 12, 13]


def test_batch_layouts_with_different_sizes_and_left_padding():
    vlm = tiny_model("tiny-qwen2-vl")
    batch = vlm.prepare([Image.new("RGB", (336, 336)), Image.new("RGB", (448, 252))], ["a", "a much longer prompt"])
    ids = batch.inputs["input_ids"]
    for b, layout in enumerate(batch.layouts):
        assert layout.batch_index == b
        assert (ids[b, layout.lm_positions] == vlm.image_token_id).all()
        assert layout.last_position == ids.shape[1] - 1
    # vision rows of the second image start after the first image's 144 cells (576 patches)
    assert batch.layouts[1].vision_out_rows[0] == 144
    assert batch.layouts[1].indices(None, si.site.vision_block(0)).min() == 576


def test_box_errors():
    layout = tiny_model("tiny-qwen2-vl").prepare([Image.new("RGB", (336, 336))], ["hi"]).layouts[0]
    with pytest.raises(GeometryError, match="outside the 336x336 image"):
        layout.box_to_cells((300, 300, 340, 320))
    with pytest.raises(GeometryError, match="empty"):
        layout.box_to_cells((10, 10, 10, 20))
    with pytest.raises(GeometryError, match="grid"):
        layout.indices(si.Region.all(si.Grid(16, 16)), si.site.vision_out)


def test_image_token_count_mismatch_is_reported():
    vlm = tiny_model("tiny-qwen2-vl")
    batch = vlm.prepare([Image.new("RGB", (336, 336))], ["hi"])
    ids = batch.inputs["input_ids"].clone()
    ids[0, batch.layouts[0].lm_positions[0]] = 0  # one image token fewer than the grid has cells
    with pytest.raises(GeometryError, match="different number of image tokens"):
        vlm.adapter.layouts({**batch.inputs, "input_ids": ids}, [Image.new("RGB", (336, 336))], vlm.processor,
                            vlm.config)
