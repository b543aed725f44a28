import json
from pathlib import Path

import pytest
from PIL import Image

from spatial_interp.data.coco import (
    attach_boxes,
    clean_prediction,
    coco_image_path,
    coco_items,
    coco_prompt,
    eval_order,
    instance_index,
    load_coco_qa,
    load_instances,
    parse_caption,
    prompt_style_for,
    xywh_to_box,
)

EXCERPT = Path(__file__).parent / "fixtures" / "coco_qa_two_obj.excerpt.json"


@pytest.fixture(scope="module")
def records():
    return load_coco_qa(EXCERPT)


def test_parse_excerpt(records):
    assert len(records) == 20
    r0 = records[0]
    assert (r0.image_id, r0.subject, r0.relation, r0.object, r0.axis) == (
        37777, "dining table", "left", "refrigerator", "horizontal")
    assert (records[1].subject, records[1].relation, records[1].object) == ("refrigerator", "right", "oven")
    assert (records[2].image_id, records[2].subject, records[2].relation, records[2].object, records[2].axis) == (
        331352, "toilet", "below", "sink", "vertical")
    by_caption = {(r.subject, r.object) for r in records}
    assert ("cup", "hot dog") in by_caption and ("potted plant", "dining table") in by_caption
    assert ("bench", "teddy bear") in by_caption and ("umbrella", "sports ball") in by_caption
    assert sum(r.axis == "horizontal" for r in records) == 12 and sum(r.axis == "vertical" for r in records) == 8
    for r in records:  # the distractor is the flipped relation
        flipped = {"left": "right", "right": "left", "above": "below", "below": "above"}[r.relation]
        assert parse_caption(r.distractor) == (r.subject, flipped, r.object)


def test_parse_caption_variants():
    assert parse_caption("A photo of a cup above of a table") == ("cup", "above", "table")
    assert parse_caption("A photo of an apple below the bowl.") == ("apple", "below", "bowl")
    assert parse_caption("A photo of a dog on a couch") is None
    assert parse_caption("A photo of a dog in front of a car") is None


def test_missing_qa_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"coco_qa_two_obj\.json.*What'sUp"):
        load_coco_qa(tmp_path / "coco_qa_two_obj.json")


def _instances():
    return {
        "images": [{"id": 37777, "file_name": "000000037777.jpg"}],
        "categories": [{"id": 67, "name": "dining table"}, {"id": 82, "name": "refrigerator"},
                       {"id": 79, "name": "oven"}],
        "annotations": [
            {"image_id": 37777, "category_id": 67, "bbox": [10.2, 20.7, 30.0, 10.0], "area": 1.0},
            {"image_id": 37777, "category_id": 67, "bbox": [0.0, 0.0, 50.0, 40.0], "area": 0.5},  # largest box
            {"image_id": 37777, "category_id": 82, "bbox": [60.5, 5.0, 20.0, 50.25], "area": 9.0},
            {"image_id": 99, "category_id": 79, "bbox": [1, 1, 1, 1], "area": 1.0},
        ],
    }


def test_boxes_join(records, tmp_path):
    assert xywh_to_box([10.2, 20.7, 30.0, 10.0]) == (10, 20, 41, 31)
    idx = instance_index(_instances())
    assert idx[37777] == {"dining table": (0, 0, 50, 40), "refrigerator": (60, 5, 81, 56)}
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(_instances()))
    assert load_instances(path) == idx
    joined = attach_boxes(records[:2], idx)
    assert joined[0].subject_box == (0, 0, 50, 40) and joined[0].object_box == (60, 5, 81, 56)
    assert joined[1].subject_box == (60, 5, 81, 56) and joined[1].object_box is None  # no oven in 37777
    upper = instance_index({**_instances(), "categories": [{"id": 67, "name": "Dining Table"}]})
    assert attach_boxes(records[:1], upper)[0].subject_box == (0, 0, 50, 40)  # case-insensitive
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json.*COCO 2017 annotations"):
        load_instances(tmp_path / "missing" / "instances_val2017.json")


def test_prompts():
    assert coco_prompt("a dining table", "a refrigerator", "horizontal") == (
        "Using the refrigerator as the reference point, which side is the dining table on? "
        "Answer with one word: left or right.")
    assert coco_prompt("toilet", "sink", "vertical", order="rl").endswith("Answer with one word: below or above.")
    assert coco_prompt("toilet", "sink", "vertical") == (
        "Using the sink as the reference point, where is the toilet located? Answer with one word: above or below.")
    assert coco_prompt("tv", "chair", "horizontal", style="direct") == (
        "Is the tv to the left or to the right of the chair? Answer with one word.")
    assert coco_prompt("toilet", "sink", "vertical", style="direct", order="rl") == (
        "Is the toilet below or above the sink? Answer with one word.")
    assert [prompt_style_for(m) for m in ("qwen2_vl", "pixtral", "gemma3")] == ["relative", "relative", "direct"]
    with pytest.raises(ValueError):
        coco_prompt("a", "b", "diagonal")
    assert clean_prediction(" Left</s>") == "left"


def test_eval_order(records):
    gem = eval_order(records, "gemma3")
    assert [r.axis for r in gem] == ["vertical"] * 8 + ["horizontal"] * 12
    assert eval_order(records, "qwen2_vl") == records


def test_items(records, tmp_path):
    for r in records[:3]:
        path = coco_image_path(tmp_path, r.image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (10, 20, 30)).save(path)
    assert coco_image_path(tmp_path, 37777).name == "000000037777.jpg"
    joined = attach_boxes(records[:3], instance_index(_instances()))
    items = coco_items(joined, tmp_path, model="gemma3")
    assert len(items) == 6
    first = items[0]  # gemma: the vertical record first
    assert first.metadata["image_id"] == 331352 and first.metadata["order"] == "lr"
    assert first.answer == "below" and first.orientation == "vertical" and first.metadata["system"] is None
    assert items[1].prompt == "Is the toilet below or above the sink? Answer with one word."
    table = items[2]
    assert [(e.name, e.slot) for e in table.entities] == [("dining table", 0), ("refrigerator", 1)]
    assert table.image.size == (64, 48)
    with pytest.raises(FileNotFoundError, match=r"000000491497\.jpg.*val2017"):
        coco_items(records[:4], tmp_path, model="qwen2_vl")


def test_catalog_coco(records, tmp_path):
    from spatial_interp.data.catalog import system_text_for, task_items

    for r in records:
        path = coco_image_path(tmp_path, r.image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.new("RGB", (8, 8)).save(path)
    ann = tmp_path / "instances_val2017.json"
    ann.write_text(json.dumps(_instances()))
    items = task_items("coco", "pixtral_3x3", coco_qa=EXCERPT, coco_dir=tmp_path, coco_annotations=ann)
    assert len(items) == 40 and items[0].metadata["style"] == "relative"
    assert items[0].entities[0].box == (0, 0, 50, 40)
    assert system_text_for("coco") is None and system_text_for("whatsup")
    with pytest.raises(ValueError, match="coco_dir"):
        task_items("coco", "qwen2_vl")
    # one-folder layout: <dir>/coco_qa_two_obj.json, <dir>/val2017/, <dir>/annotations/instances_val2017.json
    import shutil

    shutil.copy(EXCERPT, tmp_path / "coco_qa_two_obj.json")
    with_boxes = task_items("coco", "gemma3", coco_dir=tmp_path)
    assert len(with_boxes) == 40 and with_boxes[0].entities == []  # no annotations/ folder yet
    (tmp_path / "annotations").mkdir()
    shutil.copy(ann, tmp_path / "annotations" / "instances_val2017.json")
    boxed = [it for it in task_items("coco", "gemma3", coco_dir=tmp_path) if it.entities]
    assert {it.metadata["image_id"] for it in boxed} == {37777}
    with pytest.raises(ValueError, match="known tasks"):
        task_items("clevr", "qwen2_vl")
