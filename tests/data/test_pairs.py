import pytest

from spatial_interp.data.pairs import (
    build_pairs,
    criss_cross_pairs,
    last_token_pairs,
    last_token_squares_task,
    pair_slots,
    pairs_from_tuples,
    pool_sampler,
    task_item_maker,
)
from spatial_interp.data.tasks import task_for


def test_pair_slot_algebra():
    t = ("a", "b", "c", "d", "e")
    assert pair_slots("last_token", t, "left") == (("a", "b", "c"), "left", ("e", "b", "d"), "right")
    assert pair_slots("last_token", t, "above") == (("a", "b", "c"), "above", ("e", "b", "d"), "below")
    assert pair_slots("last_token", t, "right") == (("c", "b", "a"), "right", ("d", "b", "e"), "left")
    assert pair_slots("last_token", t, "below") == (("c", "b", "a"), "below", ("d", "b", "e"), "above")
    assert pair_slots("criss_cross", t[:3], "left") == (("a", "b", "c"), "left", ("c", "b", "a"), "left")
    assert pair_slots("criss_cross", t[:3], "below") == (("c", "b", "a"), "below", ("a", "b", "c"), "below")
    with pytest.raises(ValueError):
        pair_slots("criss_cross", t, "left")


def test_criss_cross_invariants():
    task = task_for("squares", "qwen2_vl")
    ps = criss_cross_pairs(task, "qwen2_vl", n_per_direction=3)
    assert list(ps.pairs) == ["left", "right", "above", "below"] and len(ps) == 12
    for p in ps:
        clean, cf = p.clean, p.cf
        assert clean.prompt == cf.prompt and clean.direction == cf.direction == p.direction
        assert [e.name for e in cf.entities] == [e.name for e in clean.entities][::-1]
        assert [e.box for e in cf.entities] == [e.box for e in clean.entities]
        assert clean.answer == p.elements[0] == p.prob_strs[0] == p.clean_answer
        assert cf.answer == p.elements[2] == p.cf_answer
        assert p.prob_strs == list(p.elements)


def test_last_token_invariants():
    task = task_for("shapes", "gemma3")
    ps = last_token_pairs(task, "qwen2_vl", n_per_direction=2)
    opp = {"left": "right", "right": "left", "above": "below", "below": "above"}
    for p in ps:
        clean, cf = p.clean, p.cf
        assert cf.direction == opp[clean.direction] and clean.direction == p.direction
        assert clean.entities[1].name == cf.entities[1].name == p.elements[1]
        assert clean.answer == p.elements[0] and cf.answer == p.elements[3]
        # clean answer on the queried side; cf answer on the opposite side of the cf image
        side = 0 if p.direction in ("left", "above") else 2
        assert clean.entities[side].name == clean.answer
        assert cf.entities[2 - side].name == cf.answer
        assert cf.prompt != clean.prompt and clean.orientation == cf.orientation
        assert len(p.prob_strs) == 5


def test_seeded_and_stream_order():
    task = task_for("squares", "qwen2_vl")
    a = criss_cross_pairs(task, "qwen2_vl", n_per_direction=4).tuples()
    b = criss_cross_pairs(task, "qwen2_vl", n_per_direction=4).tuples()
    assert a == b
    # the stream is consumed left, right, above, below: "left" alone draws the same first tuples
    only_left = criss_cross_pairs(task, "qwen2_vl", n_per_direction=4, directions=["left"]).tuples()
    assert only_left["left"] == a["left"]
    right_first = criss_cross_pairs(task, "qwen2_vl", n_per_direction=4, directions=["right"]).tuples()
    assert right_first["right"] == a["left"]  # same stream position
    assert a["right"] != a["left"]


def test_keep_filter_and_attempt_cap():
    task = task_for("squares", "qwen2_vl")
    seen = []

    def keep(clean, cf):
        seen.append((clean.id, cf.id))
        return clean.answer == "red"

    ps = criss_cross_pairs(task, "qwen2_vl", n_per_direction=3, directions=["left"], keep=keep)
    assert all(p.elements[0] == "red" for p in ps)
    assert ps.attempts["left"] >= 3 and len(seen) >= 3
    assert [p.attempt for p in ps["left"]] == sorted(p.attempt for p in ps["left"])
    assert ps["left"][-1].attempt == ps.attempts["left"]
    never = criss_cross_pairs(task, "qwen2_vl", n_per_direction=50, max_attempts=25, directions=["left"],
                              keep=lambda c, f: False)
    assert len(never) == 0 and never.attempts["left"] == 25


def test_duplicates_skipped():
    # a 3-name pool has only 6 criss-cross tuples
    task = task_for("squares", "qwen2_vl", palette=["red", "green", "blue"])
    ps = criss_cross_pairs(task, "qwen2_vl", n_per_direction=50, max_attempts=300, directions=["left"])
    assert len(ps["left"]) == 6 and len(set(map(tuple, ps.tuples()["left"]))) == 6
    assert ps.attempts["left"] == 300


def test_last_token_squares_pool(hf_tokenizer):
    assert [o.name for o in last_token_squares_task().options] == [
        "red", "green", "blue", "black", "brown", "gray", "orange"]
    assert len(last_token_squares_task(hf_tokenizer).options) == 7


def test_rebuild_from_tuples(tmp_path):
    task = task_for("squares", "qwen2_vl")
    ps = last_token_pairs(task, "qwen2_vl", n_per_direction=2)
    path = tmp_path / "pairs.json"
    ps.save_json(path)
    import json

    stored = json.loads(path.read_text())["pairs"]
    again = pairs_from_tuples("last_token", task_item_maker(task, "qwen2_vl"), stored)
    assert again.tuples() == ps.tuples()
    assert again["above"][1].cf == ps["above"][1].cf


def test_generic_builder_validates():
    task = task_for("squares", "qwen2_vl")
    with pytest.raises(ValueError, match="elements"):
        build_pairs("last_token", task_item_maker(task, "qwen2_vl"), pool_sampler(["red", "green", "blue"], 3))
    with pytest.raises(ValueError):
        pool_sampler(["red"], 3)
