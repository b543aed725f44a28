"""Scientific sanity of the shipped organisms: probes, patching and amplification behave as measured.

Small samples keep this fast. Each threshold sits between what the organism measures (its
MODEL_CARD.md) and what a broken hook, a wrong row index or an unused image would give.
"""

from __future__ import annotations

import numpy as np
import pytest

from spatial_interp import site as sites
from spatial_interp.training.evaluate import evaluate_scenes
from spatial_interp.training.mechanism import (
    SceneItem,
    amplification,
    criss_cross_pairs,
    fit_slot_probes,
    table1_pool,
    vision_out_patching,
)
from spatial_interp.training.stimuli import CANVASES
from tests.organism.conftest import EMERGENT, card_metrics, load_organism, require


# Only the emergent organisms (the planted ones have their own ground-truth tests, test_planted.py).
# Module-scoped overrides, so the session fixtures of conftest.py keep their own parameter cache.
@pytest.fixture(scope="module", params=list(EMERGENT))
def organism_name(request) -> str:
    return require(request.param)


@pytest.fixture(scope="module")
def organism(organism_name):
    return load_organism(organism_name)


@pytest.fixture(scope="module")
def metrics(organism_name) -> dict:
    return card_metrics(organism_name)


@pytest.fixture(scope="module")
def patching(organism):
    pairs = criss_cross_pairs(organism, CANVASES[organism.canvas], 24)
    assert len(pairs) == 24
    return vision_out_patching(organism, pairs)


@pytest.fixture(scope="module")
def probes(organism):
    return {o: fit_slot_probes(organism, o, n_train=60, n_test=30) for o in ("h", "v")}


def test_clean_to_clean_patch_never_changes_the_answer(patching):
    assert patching["clean_to_clean"]["changed"] == 0.0


def test_patching_every_image_position_gives_the_counterfactual_answer(patching):
    # All vision_out rows replaced = the counterfactual image; pairs are filtered to cf-correct.
    assert patching["all"]["flip"] == 1.0


def test_vision_tokens_carry_identity_not_order(patching, metrics):
    """The organisms' measured mechanism: object cells carry identity, background carries no order."""
    assert patching["objects_same"]["flip"] >= 0.9
    assert patching["background"]["changed"] <= 0.1
    assert patching["objects_swap"]["changed"] <= 0.2
    card = metrics["mechanism"]["patching"]
    assert card["objects_same"]["flip"] >= 0.9 and card["background"]["changed"] <= 0.1


def test_slot_probe_covers_every_site_and_beats_chance_in_the_lm(probes, organism, metrics):
    expected = {"vision_out", *[f"lm_resid.{s}" for s in range(organism.n_lm_layers + 1)]}
    for o in ("h", "v"):
        assert set(probes[o]["accuracy"]) == expected
    # vision_out is the spliced lm_resid.0 at image positions: identical features, identical probe.
    for o in ("h", "v"):
        assert probes[o]["accuracy"]["vision_out"] == probes[o]["accuracy"]["lm_resid.0"]
    card = metrics["mechanism"]["slot_probe"]
    best = max(max(v for k, v in card[o].items() if k.startswith("lm_resid")) for o in ("h", "v"))
    assert best > 0.4  # chance is 1/3


def test_amplification_alpha_zero_is_identity_and_large_alpha_changes_accuracy(organism, probes):
    rng = np.random.default_rng(0)
    pool = table1_pool(CANVASES[organism.canvas])
    scenes = [pool[i] for i in rng.choice(len(pool), 48, replace=False)]
    site0 = str(sites.lm_resid(0))
    result = amplification(organism, {o: probes[o]["probes"][site0] for o in ("h", "v")},
                           [SceneItem(s, str(i)) for i, s in enumerate(scenes)], alphas=(0, 64))
    # The baseline runs the training encoder, not vlm.prepare: α = 0 must agree across the two paths.
    baseline = evaluate_scenes(organism, scenes).accuracy
    assert result["probe"]["0"] == baseline
    assert result["random"]["0"] == baseline
    assert abs(result["probe"]["64"] - baseline) >= 0.1
