"""The shipped organisms: offline loading, processor round trip, geometry, fast encoder, behaviour."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import spatial_interp as si
from spatial_interp.models.load import ORGANISM_DIR
from spatial_interp.models.verify import verify_geometry
from spatial_interp.training.encode import BatchEncoder, render_chat
from spatial_interp.training.evaluate import evaluate_scenes
from spatial_interp.training.stimuli import CANVASES, Renderer, random_scene, table1_scenes
from spatial_interp.training.vocab import COLOURS, OBJECTS, SYSTEM_TEXT


def test_loads_offline_fast(organism_name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    vlm = si.load(organism_name)
    assert time.perf_counter() - start < 2.0
    assert vlm.arch == ("qwen2_vl" if "qwen" in organism_name else "gemma3")
    assert (ORGANISM_DIR / organism_name.removeprefix("organism-") / "model.safetensors").stat().st_size <= 20 * 2**20


def test_processor_round_trip(organism, organism_name):
    folder = ORGANISM_DIR / organism_name.removeprefix("organism-")
    processor = AutoProcessor.from_pretrained(folder)
    tok = processor.tokenizer
    # Every answer word, lower-case and Capitalised, is exactly one known token.
    for word in [*COLOURS, *OBJECTS]:
        for variant in (word, word.capitalize()):
            ids = tok(variant, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and ids[0] != tok.unk_token_id, variant
    prompt = "The color of the square to the left of the red square is "
    text = render_chat(processor, prompt)
    assert SYSTEM_TEXT in text and prompt in text
    assert text == render_chat(organism.processor, prompt)
    assert tok.unk_token not in tok.tokenize(text.replace(organism.adapter.image_token, ""))


def test_geometry_self_check(organism):
    assert verify_geometry(organism).passed


def test_fast_encoder_matches_processor(organism):
    canvas = CANVASES[organism.canvas]
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, canvas) for _ in range(3)]
    renderer = Renderer()
    images = np.stack([renderer.render(s) for s in scenes])
    fast = BatchEncoder(organism.processor)(images, [s.prompt for s in scenes])
    organism.tokenizer.padding_side = "left"
    real = organism.processor(text=[render_chat(organism.processor, s.prompt) for s in scenes],
                              images=[[Image.fromarray(i)] for i in images], padding=True, return_tensors="pt")
    for key, value in real.items():
        assert torch.allclose(fast[key].float(), value.float(), atol=1e-5), key


def test_prepare_path_agrees_with_fast_path(organism):
    """vlm.prepare (the toolkit's public path) gives the same answers as the training encoder."""
    canvas = CANVASES[organism.canvas]
    scenes = table1_scenes("squares", canvas)[::40]
    renderer = Renderer()
    texts = [render_chat(organism.processor, s.prompt) for s in scenes]
    batch = organism.prepare([renderer.image(s) for s in scenes], texts, chat=False)
    slow = organism.forward(batch)[:, -1].argmax(-1)
    fast = evaluate_scenes(organism, scenes)
    assert organism.tokenizer.convert_ids_to_tokens(slow.tolist()) == fast.predictions


@pytest.mark.parametrize("task", ["squares", "shapes", "objects"])
def test_table1_sample_accuracy(organism, metrics, task):
    """A stratified sample of the paper's Table 1 items (every direction) scores near the model card's value.

    An organism that cannot see the image names one of 16+ entities at random (~0.06).
    """
    scenes = table1_scenes(task, CANVASES[organism.canvas])
    # A seeded sample, not a stride: items cycle through the 4 directions, so a stride of 4k would
    # pick one direction only.
    pick = np.random.default_rng(0).choice(len(scenes), 64, replace=False)
    result = evaluate_scenes(organism, [scenes[i] for i in pick])
    card = metrics["behaviour"]["table1"][task]["accuracy"]
    assert result.accuracy >= max(0.85, card - 0.08)


def test_card_metrics_are_consistent(metrics):
    """The two Table 1 renderings (training renderer, spatial_interp.data + vlm.prepare) agree."""
    b = metrics["behaviour"]
    for task in ("squares", "shapes", "objects"):
        assert abs(b["table1"][task]["accuracy"] - b["table1_toolkit"][task]["accuracy"]) <= 0.03
    assert metrics["size_mb"] <= 20


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_answers_held_out_random_layouts(organism, split):
    """Issue 5's targets, measured live on fresh scenes (seeds used neither in training nor for the card).

    Targets on the full sets: >= 97 % on held-out layouts, >= 90 % on held-out orderings. On a 96-item
    sample the bounds leave ~2 standard errors; an organism that reads left/right from the wrong cue (the
    earlier checkpoints: above/below right, left/right at chance) scores ~75 %.
    """
    rng = np.random.default_rng([2026, 11, 0 if split == "train" else 1])
    scenes = [random_scene(rng, CANVASES[organism.canvas], split=split) for _ in range(96)]
    result = evaluate_scenes(organism, scenes)
    assert result.accuracy >= (0.93 if split == "train" else 0.86), result.by("direction")
    assert min(result.by("direction").values()) >= 0.8, result.by("direction")


def test_card_records_targets_met(metrics):
    """The model card's full-set numbers (written by experiments/train_organism.py) meet issue 5's targets."""
    b = metrics["behaviour"]
    assert b["heldout_layouts"]["accuracy"] >= 0.97
    assert b["heldout_orderings"]["accuracy"] >= 0.90
    for task in ("squares", "shapes", "objects"):
        assert b["table1"][task]["accuracy"] >= 0.95
    assert metrics["size_mb"] <= 20
