import json

import pytest

from spatial_interp.data.canvas import canvas_for
from spatial_interp.data.items import Entity, Item, ItemSet, content_hash, load_dataset, save_dataset
from spatial_interp.data.palettes import ORANGE_PALETTE
from spatial_interp.data.tasks import (
    objects_items,
    random_layout_items,
    shapes_items,
    squares_items,
    squares_task,
    task_for,
)


def test_counts():
    assert len(squares_items("qwen2_vl")) == 480
    assert len(shapes_items("gemma3")) == 480
    assert len(objects_items("qwen2_vl")) == 1344
    assert len(objects_items("pixtral")) == 840
    assert len(objects_items("pixtral", drop_bomb=False)) == 1344  # Table 5 ablation keeps 8 objects


def test_squares_prompts_answers_order():
    items = squares_items("qwen2_vl")
    first = [items[i] for i in range(4)]
    assert [it.direction for it in first] == ["left", "right", "above", "below"]
    assert [it.orientation for it in first] == ["horizontal", "horizontal", "vertical", "vertical"]
    assert [it.prompt for it in first] == [
        "The color of the square to the left of the green square is ",
        "The color of the square to the right of the green square is ",
        "The color of the square above the green square is ",
        "The color of the square below the green square is ",
    ]
    assert [it.answer for it in first] == ["red", "blue", "red", "blue"]
    last = items[479]
    assert last.metadata["triple"] == ["gray", "brown", "black"] and last.answer == "black"
    assert {it.answer for it in items} == {"red", "green", "blue", "black", "brown", "gray"}


def test_answer_is_the_queried_side():
    for it in list(squares_items("pixtral"))[:40]:
        slot = 0 if it.direction in ("left", "above") else 2
        assert it.entity_in_slot(slot).name == it.answer
        assert f"the {it.entity_in_slot(1).name} square" in it.prompt


def test_shapes_and_objects_prompts():
    sh = shapes_items("pixtral")
    assert sh.name == "shapes"
    assert sh[4 * 60 + 1].prompt.startswith("The color of the shape to the right of the ")
    colours = {it.answer for it in sh}
    assert colours == set(ORANGE_PALETTE)
    it = sh[0]
    assert [(e.shape, e.color) for e in it.entities] == [("square", "red"), ("circle", "green"),
                                                         ("triangle", "blue")]
    assert it.prompt == "The color of the shape to the left of the green circle is "
    ob = objects_items("qwen2_vl")
    assert ob[0].prompt == "The object to the left of the apple is a(n) " and ob[0].answer == "orange"
    assert ob[3].prompt == "The object below the apple is a(n) " and ob[3].answer == "pot"
    assert ob[0].entities[0].color is None and ob[0].entities[0].shape is None


def test_custom_palette():
    items = squares_items("qwen2_vl", palette=["red", "green", "blue"])
    assert len(items) == 24
    assert task_for("objects", "qwen2_vl", objects=["apple", "key", "rose"]).options[1].name == "key"


def test_same_seed_same_bytes():
    a = squares_items("qwen2_vl")[:6]
    b = squares_items("qwen2_vl")[:6]
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(squares_items("qwen2_vl")[1:7])
    task = squares_task(["red", "green", "blue", "gray", "black"])
    r1 = random_layout_items(task, "qwen2_vl", 5, seed=7, sub_cell=True)
    r2 = random_layout_items(task, "qwen2_vl", 5, seed=7, sub_cell=True)
    r3 = random_layout_items(task, "qwen2_vl", 5, seed=8, sub_cell=True)
    assert content_hash(r1) == content_hash(r2) != content_hash(r3)


def test_random_layout_items_ground_truth():
    task = squares_task(["red", "green", "blue", "gray", "black"])
    g = canvas_for("qwen2_vl")
    for it in random_layout_items(task, g, 12, seed=2):
        axis = 0 if it.orientation == "horizontal" else 1
        starts = [e.box[axis] for e in it.entities]
        assert starts == sorted(starts) and [e.slot for e in it.entities] == [0, 1, 2]
        slot = 0 if it.direction in ("left", "above") else 2
        assert it.answer == it.entities[slot].name
        for e in it.entities:
            assert len(e.cells(g)) == 4  # token-aligned 2x2 entities


def test_save_load_round_trip(tmp_path):
    items = list(shapes_items("qwen2_vl")[:5])
    items[0].metadata["extra"] = {"nested": [1, 2]}
    folder = tmp_path / "ds"
    digest = save_dataset(items, folder, name="shapes")
    assert digest == content_hash(items)
    header = json.loads((folder / "dataset.json").read_text())
    assert header["n_items"] == 5 and header["sha256"] == digest
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    loaded = load_dataset(folder)
    assert loaded.name == "shapes" and len(loaded) == 5
    back = list(loaded)
    assert back == items
    assert isinstance(back[0].entities[0].box, tuple)
    # saving the loaded copy gives the same bytes
    assert save_dataset(back, tmp_path / "ds2") == digest
    assert (folder / "manifest.jsonl").read_bytes() == (tmp_path / "ds2" / "manifest.jsonl").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_save_refuses_overwrite_and_detects_tampering(tmp_path):
    items = squares_items("qwen2_vl")[:2]
    folder = tmp_path / "ds"
    save_dataset(items, folder)
    with pytest.raises(FileExistsError):
        save_dataset(items, folder)
    new = save_dataset(squares_items("qwen2_vl")[2:4], folder, overwrite=True)
    assert load_dataset(folder)[0].id == "squares-00002" and new
    img = folder / "images" / "00000.png"
    data = bytearray(img.read_bytes())
    data[-20] ^= 0xFF
    img.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="content hash"):
        load_dataset(folder)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_dataset(tmp_path / "nothing")


def test_failed_save_leaves_nothing(tmp_path):
    good = squares_items("qwen2_vl")[0]
    dup = [good, good]
    with pytest.raises(ValueError, match="duplicate"):
        save_dataset(dup, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_itemset_sequence():
    items = squares_items("qwen2_vl")
    assert isinstance(items[2:5], ItemSet) and len(items[2:5]) == 3
    assert items[-1].id == "squares-00479"
    fixed = ItemSet.from_items([items[0]])
    assert fixed[0] is fixed[0]
    ent = Entity("red", 0, (0, 0, 28, 28), color="red")
    assert Entity.from_json(ent.to_json()) == ent
    assert isinstance(items[0], Item)


def test_probing_items_and_split():
    from spatial_interp.data.tasks import PROBE_DUMMY_PROMPT, probe_split, probing_items

    items = probing_items(task_for("squares", "gemma3"), "gemma3", "vertical")
    assert len(items) == 120 and items[0].orientation == "vertical"
    assert items[0].prompt == PROBE_DUMMY_PROMPT and items[0].answer == ""
    assert len(probing_items(task_for("objects", "pixtral", drop_bomb=False), "pixtral_3x3", "horizontal")) == 336
    train, test = probe_split(336)
    assert (len(train), len(test)) == (252, 84) and sorted(train + test) == list(range(336))
    import random

    triples = list(range(120))
    random.Random(0).shuffle(triples)
    assert probe_split(120)[0] == triples[:90]


def test_squares_image_equals_independent_construction():
    import numpy as np

    # Gemma, "below" for (red, green, blue): vertical slots at token rows 0, 6, 12, cols 6..8 (56-px tokens)
    item = squares_items("gemma3")[3]
    expected = np.full((896, 896, 3), 255, dtype=np.uint8)
    for row_tok, rgb in ((0, (255, 0, 0)), (6, (0, 255, 0)), (12, (0, 0, 255))):
        expected[row_tok * 56:(row_tok + 3) * 56, 6 * 56:9 * 56] = rgb
    assert np.array_equal(np.array(item.image), expected)


def test_shapes_pixels_pinned():
    """Regression guard: these change only if the drawing rules or Pillow's rasteriser change."""
    import hashlib

    sh = shapes_items("qwen2_vl")
    digest = {i: hashlib.sha256(sh[i].image.tobytes()).hexdigest() for i in (2, 300)}
    assert sh[300].metadata["triple"] == ["black", "brown", "gray"]  # star, cross, heart
    assert digest == {
        2: "0fd242ab76d3f5210b1dec2f49ce16b14a6b2721f56bb8c99fcc9fac765065bd",
        300: "28db507b7f41214b5b102c4b5050e892c89163c9249acb9b974189599bcfca26",
    }


def test_item_canvas_geometry(tmp_path):
    item = squares_items("pixtral_3x3")[0]
    g = item.canvas_geometry()
    assert g == canvas_for("pixtral_3x3")
    assert item.entities[1].cells(g) == g.slot_cells(1, "horizontal") and len(item.entities[1].cells(g)) == 9
    save_dataset([item], tmp_path / "one")
    assert load_dataset(tmp_path / "one")[0].canvas_geometry() == g
    assert Item("x", item.image, "", "", "left", "horizontal", [], "t").canvas_geometry() is None
