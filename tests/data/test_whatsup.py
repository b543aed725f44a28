import numpy as np
import pytest
from PIL import Image

from spatial_interp.data.regions import (
    CellRange,
    strip_bands,
    whatsup_criss_cross_regions,
    whatsup_label_box,
    whatsup_probing_regions,
)
from spatial_interp.data.whatsup import (
    WHATSUP_CANDIDATES,
    WhatsUpImages,
    halves_composite,
    whatsup_candidates,
    whatsup_items,
    whatsup_pairs,
    whatsup_side_pools,
)

CHAIR_SIDES = ["plate", "mug", "book", "cap", "orange", "cup", "bowl", "lemon", "oven-mitt"]
TABLE_SIDES = ["bowl", "lemon", "plate", "mug", "book", "cup"]


def colour_of(name, relation):
    h = sum(map(ord, name + relation))
    return (h * 37 % 200 + 20, h * 91 % 200 + 20, h * 53 % 200 + 20)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlled_images")
    for ref, sides in (("chair", CHAIR_SIDES), ("table", TABLE_SIDES)):
        for name in sides:
            for rel in ("left_of", "right_of"):
                Image.new("RGB", (40, 40), colour_of(name, rel)).save(root / f"{name}_{rel}_{ref}.jpeg", quality=95)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(root / "vase_left_of_chair.jpeg")  # no right_of photo
    Image.new("RGB", (40, 40), (1, 2, 3)).save(root / "cup_on_chair.jpeg")  # other relations are ignored
    return WhatsUpImages(root)


def test_halves_composite_bilinear():
    a = Image.new("RGB", (10, 10), (255, 0, 0))
    b = Image.new("RGB", (10, 10), (0, 0, 255))
    out = np.array(halves_composite(a, b, 7))
    assert out.shape == (7, 7, 3)
    assert (out[:, :3] == [255, 0, 0]).all() and (out[:, 3:] == [0, 0, 255]).all()  # x < 7 // 2 from a
    grad = Image.fromarray(np.tile(np.arange(0, 200, 10, dtype=np.uint8), (20, 1)))
    mixed = np.array(halves_composite(grad, grad, 10))[:, :, 0]
    assert (mixed == np.array(grad.convert("RGB").resize((10, 10), Image.Resampling.BILINEAR))[:, :, 0]).all()


def test_composite_from_files(images):
    img = images.composite("plate", "chair", "mug", 32)
    arr = np.array(img).astype(int)
    assert img.size == (32, 32)
    assert np.abs(arr[:, :16] - colour_of("plate", "left_of")).max() <= 4
    assert np.abs(arr[:, 16:] - colour_of("mug", "right_of")).max() <= 4


def test_sides_and_candidates(images, hf_tokenizer):
    assert images.sides("chair") == sorted(CHAIR_SIDES)  # vase lacks right_of; cup_on_chair ignored
    kept = whatsup_candidates("chair", hf_tokenizer)
    # candidate-list order, single-token names of the tiny vocabulary only
    assert kept == ["plate", "mug", "book", "cap", "orange", "cup", "bowl", "lemon"]
    assert "oven-mitt" not in kept and "hat" not in kept
    assert len(WHATSUP_CANDIDATES["chair"]) == 44 and len(WHATSUP_CANDIDATES["table"]) == 29
    assert len(WHATSUP_CANDIDATES["armchair"]) == 31
    with pytest.raises(ValueError, match="known"):
        whatsup_candidates("sofa")


def test_items(images, hf_tokenizer):
    items = whatsup_items(images, 48, tokenizer=hf_tokenizer, references=["chair"])
    n = len(whatsup_candidates("chair", hf_tokenizer))
    assert len(items) == n * (n - 1) * 2
    first, second = items[0], items[1]
    target, distractor = first.metadata["triple"][0], first.metadata["triple"][2]
    assert first.direction == "left" and first.answer == target
    assert first.prompt == "The object on the floor to the left of the chair is a(n) "
    assert second.direction == "right" and second.answer == target
    assert second.metadata["triple"] == [distractor, "chair", target]
    assert second.prompt == "The object on the floor to the right of the chair is a(n) "
    assert [e.slot for e in first.entities] == [0, 1, 2] and first.entities[1].name == "chair"
    assert first.entities[0].box == whatsup_label_box("chair", "left", 48) == (9, 36, 18, 45)
    assert first.image.size == (48, 48)


def test_missing_files_name_path_and_source(images, hf_tokenizer):
    with pytest.raises(FileNotFoundError, match=r"lemon2_left_of_table\.jpeg.*What'sUp"):
        whatsup_items(images, 32, candidates={"table": ["bowl", "lemon2"], "chair": []}, references=["table"])
    with pytest.raises(FileNotFoundError, match=r"ghost_left_of_chair\.jpeg.*What'sUp"):
        images.load("ghost", "left_of", "chair")
    with pytest.raises(FileNotFoundError, match="What'sUp"):
        WhatsUpImages("/nonexistent/folder").sides("chair")


def test_pairs(images, hf_tokenizer):
    pools = whatsup_side_pools(images, hf_tokenizer)
    assert set(pools) == {"chair", "table"} and "oven-mitt" not in pools["chair"]
    lt = whatsup_pairs("last_token", images, 32, pools=pools, n_per_direction=3)
    assert list(lt.pairs) == ["left", "right"]
    for p in lt:
        ref = p.elements[1]
        assert ref in pools and set(p.elements) - {ref} <= set(pools[ref])
        assert p.clean.answer == p.elements[0] and p.cf.answer == p.elements[3]
        assert p.cf.direction != p.clean.direction
    cc = whatsup_pairs("criss_cross", images, 32, pools=pools, n_per_direction=2)
    for p in cc:
        assert p.clean.prompt == p.cf.prompt and p.cf.metadata["triple"] == p.clean.metadata["triple"][::-1]
    assert whatsup_pairs("criss_cross", images, 32, pools=pools, n_per_direction=2).tuples() == cc.tuples()


# spec §4 resulting ranges: (rows, cols) per label L/M/R
SPEC_PROBING = {
    (12, "chair"): [((9, 11), (2, 4)), ((3, 11), (4, 8)), ((9, 11), (7, 10))],
    (12, "table"): [((7, 11), (1, 3)), ((3, 11), (3, 9)), ((7, 11), (9, 10))],
    (12, "armchair"): [((9, 11), (1, 4)), ((4, 11), (3, 8)), ((9, 11), (8, 10))],
    (16, "chair"): [((12, 15), (3, 6)), ((4, 15), (6, 10)), ((12, 15), (10, 13))],
    (16, "table"): [((10, 15), (2, 4)), ((5, 15), (4, 12)), ((10, 15), (12, 14))],
    (16, "armchair"): [((13, 15), (2, 5)), ((6, 15), (5, 11)), ((13, 15), (11, 14))],
    (15, "chair"): [((11, 14), (2, 6)), ((3, 14), (5, 9)), ((11, 14), (9, 12))],
    (15, "table"): [((9, 14), (1, 4)), ((4, 14), (3, 11)), ((9, 14), (11, 13))],
    (15, "armchair"): [((12, 14), (1, 5)), ((5, 14), (4, 10)), ((12, 14), (10, 13))],
}


@pytest.mark.parametrize("key", sorted(SPEC_PROBING))
def test_probing_regions_match_spec(key):
    n, ref = key
    regions = whatsup_probing_regions(ref, n)
    assert [tuple(regions[label]) for label in ("left", "middle", "right")] == SPEC_PROBING[key]


def test_probing_uses_bankers_rounding():
    # Qwen chair left cols: 24/64 * 12 = 4.5 -> round() gives 4 (half-up would give 5)
    assert whatsup_probing_regions("chair", 12)["left"].cols == (2, 4)
    assert whatsup_probing_regions("table", 12)["right"] == CellRange((7, 11), (9, 10))


def test_criss_cross_regions():
    q = whatsup_criss_cross_regions("qwen2_vl", "table")
    assert q["object"] == (CellRange((6, 11), (0, 3)), CellRange((6, 11), (9, 12)))
    assert q["strip"][0].cells()[:2] == [(0, 0), (0, 1)] and len(q["strip"][0]) == 36
    g = whatsup_criss_cross_regions("gemma3", "table")
    assert len(g["strip"][0]) == 96 and len(g["strip"][1]) == 64  # the suspect unequal map, kept verbatim
    for model, n in (("qwen2_vl", 12), ("gemma3", 16)):
        for ref in ("chair", "table", "armchair"):
            r = whatsup_criss_cross_regions(model, ref)
            left, right = r["object"]
            assert len(left) == len(right)
            assert all(b.rows == (0, n) for b in r["strip"])
    assert whatsup_criss_cross_regions("qwen2_5_vl", "chair") == whatsup_criss_cross_regions("qwen2_vl", "chair")
    with pytest.raises(ValueError, match="pixtral"):
        whatsup_criss_cross_regions("pixtral", "chair")


def test_strip_bands():
    assert [b.cols for b in strip_bands("qwen2_vl", "horizontal")] == [(0, 4), (4, 8), (8, 12)]
    assert [b.rows for b in strip_bands("pixtral", "vertical")] == [(0, 5), (5, 10), (10, 15)]
    assert [b.cols for b in strip_bands("gemma3", "horizontal")] == [(0, 5), (5, 11), (11, 16)]
    assert strip_bands("gemma3", "vertical")[0].cols == (0, 16)
    with pytest.raises(ValueError):
        strip_bands("qwen2_vl", "horizontal", widths=(4, 3, 2))
    assert [b.cols for b in strip_bands("llava", "horizontal")] == [(0, 8), (8, 16), (16, 24)]
    with pytest.raises(ValueError, match="unknown canvas geometry"):
        strip_bands("idefics", "horizontal")


def test_probing_tuples(images):
    from spatial_interp.data.whatsup import whatsup_probing_items, whatsup_probing_tuples

    tuples = whatsup_probing_tuples(images, n=20)
    assert len(tuples) == 20 and all(t[1] in ("chair", "table") and t[0] != t[2] for t in tuples)
    assert tuples == whatsup_probing_tuples(images, n=20)
    total = 9 * 8 + 6 * 5  # chair has 9 two-photo objects, table 6
    assert len(whatsup_probing_tuples(images, n=1000)) == total
    items = whatsup_probing_items(images, 24, n=3)
    assert len(items) == 3 and items[0].image.size == (24, 24)


def test_catalog_whatsup(images, hf_tokenizer):
    from spatial_interp.data.catalog import task_items, whatsup_size_for

    assert [whatsup_size_for(m) for m in ("qwen2_vl", "gemma3", "pixtral", "pixtral_3x3", "llava")] == [
        336, 896, 512, 512, 336]
    with pytest.raises(ValueError, match="whatsup_dir"):
        task_items("whatsup", "qwen2_vl")
    # the fixture folder lacks some candidate photos (e.g. chair_left_of_table.jpeg)
    with pytest.raises(FileNotFoundError, match=r"not found: .*chair_left_of_table\.jpeg"):
        task_items("whatsup", "qwen2_vl", whatsup_dir=images.root, tokenizer=hf_tokenizer)
