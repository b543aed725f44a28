"""Scientific sanity of the shipped organisms: probes, patching and amplification behave as measured.

Small samples keep this fast; the thresholds sit well between what the organism measures (see
its MODEL_CARD.md) and what a broken hook, a wrong row index or an untrained model would give.
"""

from __future__ import annotations

import numpy as np
import pytest

from spatial_interp import site as sites
from spatial_interp.training.evaluate import SceneRunner
from spatial_interp.training.mechanism import (
    amplification,
    criss_cross_pairs,
    fit_slot_probes,
    vision_out_patching,
)
from spatial_interp.training.stimuli import CANVASES, table1_scenes
from spatial_interp.training.vocab import TASKS


@pytest.fixture(scope="module")
def runner(organism):
    return SceneRunner(organism)


@pytest.fixture(scope="module")
def probes(organism, runner):
    return fit_slot_probes(organism, "h", n_train=60, n_test=30, runner=runner)


@pytest.fixture(scope="module")
def patching(organism, runner):
    pairs = criss_cross_pairs(organism, runner, CANVASES[organism.canvas], 24)
    assert len(pairs) == 24
    return vision_out_patching(organism, pairs, runner)


def test_slot_probe_reads_order_in_the_lm(probes, organism):
    acc = probes["accuracy"]
    assert set(acc) == {"vision_out", *[f"lm_resid.{s}" for s in range(organism.n_lm_layers + 1)]}
    # Chance is 1/3; the organism's LM image positions carry the slot.
    assert max(acc.values()) >= 0.8


def test_clean_to_clean_patch_never_flips(patching):
    assert patching["clean_to_clean"]["changed"] == 0.0


def test_patching_all_positions_flips(patching):
    assert patching["all"]["flip"] >= 0.9


def test_amplification_alpha_zero_is_identity(organism, runner, probes):
    rng = np.random.default_rng(0)
    pool = [s for t in TASKS for s in table1_scenes(t, CANVASES[organism.canvas])]
    scenes = [pool[i] for i in rng.choice(len(pool), 36, replace=False)]
    v_probes = fit_slot_probes(organism, "v", n_train=60, n_test=10, runner=runner)
    site0 = str(sites.lm_resid(0))
    result = amplification(organism, {"h": probes["probes"][site0], "v": v_probes["probes"][site0]}, runner,
                           scenes, alphas=(0, 64))
    from spatial_interp.training.evaluate import evaluate_scenes

    baseline = evaluate_scenes(organism, scenes, runner=runner).accuracy
    assert result["probe"]["0"] == baseline
    assert abs(result["probe"]["64"] - baseline) >= 0.1
