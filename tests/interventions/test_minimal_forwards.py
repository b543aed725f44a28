"""Issue 12: every experiment runs the fewest forwards its batching allows, with unchanged results.

Each count is compared with a number worked out here from the inputs (distinct reference images,
chunks, α values), and each result with an independent computation through the engine's plain
``run`` (full forwards, explicit edits) or with the one-pair-at-a-time filter.
"""

from __future__ import annotations

import math
import random
import weakref

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.data import pairs as data_pairs
from spatial_interp.data import tasks
from spatial_interp.data.items import ItemSet
from spatial_interp.data.references import reference_key
from spatial_interp.evaluation import PairFilter, answers_correctly, evaluate
from spatial_interp.interventions.ablate import ReferenceCache, ablate, ablated_logits
from spatial_interp.interventions.engine import Edit, Read, count_forwards, read_and_stop, run
from spatial_interp.interventions.examples import as_example, example_chunks
from spatial_interp.interventions.metrics import raw_logits, top1
from spatial_interp.interventions.paper import criss_cross_regions, paper_ablation
from spatial_interp.interventions.steer import amplification, random_directions, steer, steer_runs
from tests._models import tiny_model

L0 = si.site.lm_resid(0)


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("tiny-qwen2-vl")


def _squares(vlm, n, seed=0):
    return tasks.sample_triples(tasks.squares_items(vlm.canvas), n, seed)


def _image_reads(batch, site=L0):
    return [Read(site, torch.full((lay.grid.n_cells,), lay.batch_index), lay.indices(None, site))
            for lay in batch.layouts]


# --- the counter and the early stop ----------------------------------------------------------------
def test_count_forwards_counts_rows_and_nests(qwen):
    items = _squares(qwen, 4)
    batch = qwen.prepare([it.image for it in items], [it.prompt for it in items])
    run(qwen, batch)  # outside any counter: not seen
    with count_forwards() as outer:
        run(qwen, batch)
        with count_forwards() as inner:
            read_and_stop(qwen, batch, _image_reads(batch))
    assert (outer.forwards, outer.rows, outer.stopped, outer.vision_images) == (2, 8, 1, 8)
    assert (inner.forwards, inner.rows, inner.stopped) == (1, 4, 1)


def test_collect_halts_each_forward_after_its_last_read_with_the_full_forwards_values(qwen, tmp_path):
    items = _squares(qwen, 6)[:6]
    sites = [si.site.vision_out, si.site.lm_resid(1)]
    with count_forwards() as seen:
        store = si.collect(qwen, items, sites, out=tmp_path / "acts", batch_size=4, progress=False)
    assert (seen.forwards, seen.stopped, seen.rows) == (2, 2, 6)  # ceil(6 / 4) chunks, each stopped
    for site in sites:
        expected = []
        for chunk in (items[:4], items[4:]):
            batch = qwen.prepare([it.image for it in chunk], [it.prompt for it in chunk])
            expected.append(torch.cat(run(qwen, batch, reads=_image_reads(batch, site)).reads).float().numpy())
        np.testing.assert_array_equal(store.rows(site)[0], np.concatenate(expected))


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-gemma3", "tiny-pixtral"])
def test_read_and_stop_equals_the_full_forward_and_needs_reads(name):
    vlm = tiny_model(name)
    items = _squares(vlm, 4)
    batch = vlm.prepare([it.image for it in items], [it.prompt for it in items])
    reads = _image_reads(batch) + [Read(si.site.lm_resid(2), torch.arange(4), torch.full((4,), batch.seq_len - 1))]
    full = run(vlm, batch, reads=reads).reads
    early = read_and_stop(vlm, batch, reads)
    assert all(torch.equal(a, b) for a, b in zip(full, early, strict=True))
    with pytest.raises(ValueError, match="at least one Read"):
        read_and_stop(vlm, batch, [])


# --- §7.1 ablation ---------------------------------------------------------------------------------
def _ablated_by_hand(vlm, items, ablation):
    """The ablation without any of the new machinery: a full forward per reference (image, prompt),
    read at lm_resid(0), written back with explicit set-edits in one forward of the items."""
    examples = [as_example(it) for it in items]
    batch = vlm.prepare([e.image for e in examples], [e.prompt for e in examples])
    edits = []
    for example, layout in zip(examples, batch.layouts, strict=True):
        for ref in ablation.references(example, layout):
            ref_batch = vlm.prepare([ref.example.image], [ref.example.prompt])
            acts = run(vlm, ref_batch, reads=_image_reads(ref_batch)).reads[0]
            source = ref.source if ref.source is not None else ref.target
            positions = layout.indices(ref.target, L0)
            edits.append(Edit.set(L0, torch.full_like(positions, layout.batch_index), positions, acts[source.flat]))
    return run(vlm, batch, edits).logits


def _reference_forwards(items, batch_size):
    """Reference forwards when items stream in chunks: each chunk runs the reference images (one per
    entity name, plus the empty canvas) that no earlier chunk ran, batch_size per forward."""
    seen, forwards = set(), 0
    for start in range(0, len(items), batch_size):
        new = {reference_key(e) for it in items[start:start + batch_size] for e in it.entities} | {"empty"}
        forwards += math.ceil(len(new - seen) / batch_size)
        seen |= new
    return forwards, len(seen)


@pytest.mark.parametrize("cap", [None, 96])
def test_ablation_is_bit_identical_to_explicit_edits(qwen, cap):
    items = _squares(qwen, 8)
    ablation = paper_ablation(qwen.canvas, background_cap=cap)
    assert torch.equal(ablated_logits(qwen, items, ablation), _ablated_by_hand(qwen, items, ablation))


def test_ablation_runs_one_reference_per_distinct_image_across_calls(qwen):
    items = _squares(qwen, 24, seed=3)
    ablation = paper_ablation(qwen.canvas)
    batch_size = 4
    expected, distinct = _reference_forwards(items, batch_size)
    assert expected > distinct / batch_size  # some chunk brings new references: streaming is exercised
    cache = ReferenceCache()
    with count_forwards() as first:
        a = ablate(qwen, items[:12], ablation, batch_size=batch_size, cache=cache)
        b = ablate(qwen, items[12:], ablation, batch_size=batch_size, cache=cache)
    assert len(cache) == distinct and cache.misses == distinct
    assert first.stopped == expected  # each distinct reference image once, the cache spanning both calls
    assert first.forwards == expected + 24 // batch_size  # + one forward per chunk of items
    # The full variant overwrites every image row: the items' own vision tower never runs.
    assert first.vision_images == distinct
    with count_forwards() as again:
        c = ablate(qwen, items, ablation, batch_size=batch_size, cache=cache)
    assert again.stopped == 0 and again.forwards == 24 // batch_size
    assert np.array_equal(np.concatenate([a.values, b.values]), c.values)
    assert c.coords["item"] == [it.id for it in items]


def test_reference_cache_refuses_another_model(qwen):
    cache = ReferenceCache()
    ablate(qwen, _squares(qwen, 4), paper_ablation(qwen.canvas), cache=cache)
    other = tiny_model("tiny-qwen2.5-vl")
    with pytest.raises(ValueError, match="use a new ReferenceCache"):
        ablate(other, _squares(other, 4), paper_ablation(other.canvas), cache=cache)


def test_reference_key_is_prompt_free_only_where_rows_are():
    example_a = as_example((tasks.empty_canvas_items("qwen2_vl", 1)[0].image, "one prompt"))
    example_b = as_example((example_a.image, "another prompt"))
    assert ReferenceCache.key(L0, example_a, None) == ReferenceCache.key(L0, example_b, None)
    assert ReferenceCache.key(si.site.lm_resid(1), example_a, None) != ReferenceCache.key(si.site.lm_resid(1),
                                                                                          example_b, None)


# --- §8 steering -----------------------------------------------------------------------------------
def _steered_by_hand(vlm, items, w, alpha):
    """One α, one forward of every item with the vision tower run (no feeding, no stacking)."""
    examples = [as_example(it) for it in items]
    batch = vlm.prepare([e.image for e in examples], [e.prompt for e in examples])
    edits = []
    for layout in batch.layouts:
        positions = layout.indices(None, L0)
        edits.append(Edit.steer(L0, torch.full_like(positions, layout.batch_index), positions, w,
                                torch.full((positions.numel(),), float(alpha))))
    return run(vlm, batch, edits if alpha else []).logits


def test_steer_counts_and_values(qwen):
    items = tasks.random_layout_items(tasks.task_for("squares", qwen.canvas), qwen.canvas, 6, seed=2, sub_cell=True)
    sets = [random_directions(qwen.d_model, 2, seed=0) * 3, random_directions(qwen.d_model, 2, seed=1) * 3]
    alphas = [0, 1, 4]
    with count_forwards() as seen:
        runs, base, _, names = steer_runs(qwen, items, sets, alphas, batch_size=3, metric=raw_logits())
    # 2 chunks × (1 unsteered + 2 sets × 2 non-zero α at one α per forward)
    assert seen.forwards == 2 * (1 + 2 * 2)
    assert seen.vision_images == 6  # only the unsteered forwards run the vision tower
    assert names == [it.id for it in items]
    for values, w in zip(runs, sets, strict=True):
        assert torch.equal(values[0], base)
        for k, alpha in enumerate(alphas):
            expected = _steered_by_hand(qwen, items, w, alpha)  # raw_logits: every final-position logit
            assert torch.equal(values[k], expected)


def test_amplification_shares_one_baseline(qwen):
    items = tasks.random_layout_items(tasks.task_for("squares", qwen.canvas), qwen.canvas, 4, seed=4, sub_cell=True)
    w, r = random_directions(qwen.d_model, 2, seed=3), random_directions(qwen.d_model, 2, seed=8)
    with count_forwards() as seen:
        summary, probe_run, random_run = amplification(qwen, items, w, [0, 2, 5], random=r, batch_size=4,
                                                       progress=False)
    assert seen.forwards == 1 + 2 * 2
    alone = steer(qwen, items, w, [0, 2, 5], batch_size=4, progress=False)
    assert np.array_equal(alone.values, probe_run.values)
    assert np.array_equal(random_run.extras["baseline"].values, alone.extras["baseline"].values)


# --- Table 1 ---------------------------------------------------------------------------------------
def test_evaluate_one_forward_per_batch_and_plain_forward_predictions(qwen):
    items = _squares(qwen, 9)[:10]  # whole triples: 12 items, cut to 10 so the last batch is short
    with count_forwards() as seen:
        result = evaluate(qwen, items, batch_size=4, progress=False)
    assert seen.forwards == 3 and seen.rows == 10
    for start in range(0, 10, 4):
        chunk = items[start:start + 4]
        logits = qwen.forward(qwen.prepare([it.image for it in chunk], [it.prompt for it in chunk]))[:, -1]
        said = [qwen.tokenizer.decode([int(t)]) for t in logits.argmax(-1)]
        assert result.predictions[start:start + 4] == said


# --- flat memory: only one chunk of a lazy item set is alive at a time ----------------------------
class LiveItems:
    """An ItemSet whose builders record how many built items are alive at once."""

    def __init__(self, base: ItemSet) -> None:
        self.live = self.peak = self.built = 0
        self.items = ItemSet([self._wrap(build) for build in base._builders])

    def _wrap(self, build):
        def make():
            item = build()
            self.live += 1
            self.built += 1
            self.peak = max(self.peak, self.live)
            weakref.finalize(item, self._dead)
            return item
        return make

    def _dead(self) -> None:
        self.live -= 1


@pytest.mark.parametrize("experiment", ["evaluate", "steer", "amplification", "ablate"])
def test_items_are_rendered_per_chunk(qwen, experiment):
    task = tasks.task_for("squares", qwen.canvas)
    tracker = LiveItems(tasks.random_layout_items(task, qwen.canvas, 12, seed=5))
    w = random_directions(qwen.d_model, 2, seed=0)
    run_it = {
        "evaluate": lambda items: evaluate(qwen, items, batch_size=4, progress=False),
        "steer": lambda items: steer(qwen, items, w, [0, 1], batch_size=4, progress=False),
        "amplification": lambda items: amplification(qwen, items, w, [0, 1], batch_size=4, progress=False),
        "ablate": lambda items: ablate(qwen, items, paper_ablation(qwen.canvas), batch_size=4),
    }[experiment]
    run_it(tracker.items)
    assert tracker.built >= 12
    # Each prepares the next chunk in a worker during this one's forward (spatial_interp.prefetch): two
    # chunks, plus the previous chunk's last item while the next renders.
    assert tracker.peak <= 2 * 4 + 1
    assert tracker.peak < 12  # never every item at once


def test_example_chunks_iterates_and_refuses_bad_sizes():
    items = [(tasks.empty_canvas_items("qwen2_vl", 1)[0].image, f"p{i}") for i in range(5)]
    assert [len(c) for c in example_chunks(iter(items), 2)] == [2, 2, 1]
    assert [len(c) for c in example_chunks(items, None)] == [5]
    with pytest.raises(ValueError, match="positive integer"):
        next(example_chunks(items, 0))


# --- pair filters ----------------------------------------------------------------------------------
class FakeFilter:
    """A deterministic batched filter (accepts a pair by a hash of its prompt pair) that logs its calls."""

    def __init__(self, rate: float, per_call: int) -> None:
        self.rate, self.pairs_per_call, self.calls = rate, per_call, []

    def verdict(self, clean, cf) -> bool:
        return random.Random(f"{clean.prompt}|{cf.prompt}|{clean.answer}|{cf.answer}").random() < self.rate

    def __call__(self, clean, cf) -> bool:
        return self.verdict(clean, cf)

    def many(self, pairs):
        self.calls.append(len(pairs))
        return [self.verdict(c, f) for c, f in pairs]


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 5])
def test_batched_filter_selects_what_the_sequential_one_does(rate, seed):
    task = tasks.task_for("squares", "qwen2_vl")
    fake = FakeFilter(rate, per_call=6)
    for kind in ("last_token", "criss_cross"):
        make = getattr(data_pairs, f"{kind}_pairs")
        one_by_one = make(task, "qwen2_vl", n_per_direction=5, max_attempts=30, seed=seed, keep=fake.verdict)
        fake.calls.clear()
        batched = make(task, "qwen2_vl", n_per_direction=5, max_attempts=30, seed=seed, keep=fake)
        assert batched.tuples() == one_by_one.tuples()
        assert batched.attempts == one_by_one.attempts
        assert [(p.attempt, p.index) for p in batched] == [(p.attempt, p.index) for p in one_by_one]
        assert max(fake.calls) <= 6
        assert len(fake.calls) < sum(one_by_one.attempts.values())


def test_pair_filter_forwards_are_minimal_on_a_model_that_answers(tmp_path):
    vlm = tiny_model("organism-qwen2-vl")
    task = tasks.task_for("squares", vlm.canvas)
    keep = answers_correctly(vlm, batch_size=8)
    with count_forwards() as seen:
        pair_set = data_pairs.criss_cross_pairs(task, vlm.canvas, n_per_direction=4, max_attempts=50, keep=keep)
    assert len(pair_set) == 16  # the organism answers these: every candidate is kept
    assert seen.forwards == 4 and seen.rows == 32  # one forward of the 4 pairs (8 items) per direction
    sequential = data_pairs.criss_cross_pairs(task, vlm.canvas, n_per_direction=4, max_attempts=50,
                                              keep=lambda c, f: keep(c, f))
    assert sequential.tuples() == pair_set.tuples()


def test_pair_filter_refuses_bad_batch_size(qwen):
    with pytest.raises(ValueError, match="positive integer"):
        PairFilter(qwen, batch_size=0)


def test_sweep_under_the_ablation_reuses_the_filters_references(tmp_path):
    """§7.2: the pair filter under the ablation computes each image's references; the sweep reuses them all."""
    vlm = tiny_model("organism-qwen2-vl")
    task = tasks.task_for("squares", vlm.canvas)
    ablation = paper_ablation(vlm.canvas)
    cache = ReferenceCache()
    keep = answers_correctly(vlm, ablation=ablation, cache=cache, batch_size=8)
    pairs = list(data_pairs.criss_cross_pairs(task, vlm.canvas, n_per_direction=1, max_attempts=20, keep=keep))
    assert pairs
    regions = {"object": criss_cross_regions(vlm)["object"]}
    sites = [si.site.lm_resid(1), si.site.lm_resid(2)]
    metric = top1(vlm.tokenizer, 0)
    misses = cache.misses
    with count_forwards() as shared:
        reused = si.sweep(vlm, pairs, sites, regions, metric, pairing="swap", ablation=ablation,
                          reference_cache=cache, progress=False)
    with count_forwards() as alone:
        fresh = si.sweep(vlm, pairs, sites, regions, metric, pairing="swap", ablation=ablation, progress=False)
    assert cache.misses == misses and shared.stopped == 0 < alone.stopped
    assert alone.forwards - shared.forwards == alone.stopped
    np.testing.assert_array_equal(reused.values, fresh.values)
