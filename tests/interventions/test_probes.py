"""Probe: logreg and the paper's AdamW variant, split by image, heat maps, safetensors round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import spatial_interp as si
from spatial_interp.interventions.collect import collect
from spatial_interp.interventions.examples import Example
from spatial_interp.interventions.probes import Probe, split_items
from tests._models import tiny_model
from tests.interventions.conftest import PROMPT, noise


def _blobs(n_items=40, per_item=6, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 3
    y = rng.integers(0, 3, size=n_items * per_item)
    X = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    return X, y, np.repeat(np.arange(n_items), per_item)


def test_split_is_by_item_and_seeded():
    train, test = split_items(range(120), 0.25, seed=0)
    assert len(train) == 90 and len(test) == 30 and not set(train) & set(test)
    assert split_items(range(120), 0.25, seed=0) == (train, test)
    with pytest.raises(ValueError, match="non-empty"):
        split_items(range(1), 0.25)


@pytest.mark.parametrize("method", ["logreg", "adamw"])
def test_probe_learns_and_reports(method):
    X, y, groups = _blobs()
    probe = Probe.fit((X, y, groups), method=method, classes=["left", "middle", "right"], epochs=300, lr=5e-2)
    assert probe.report.accuracy > 0.9
    assert not set(probe.train_items) & set(probe.test_items)
    assert probe.report.confusion.values.sum() == probe.report.n_test_rows
    assert probe.directions.shape == (3, 16)


def test_explicit_test_items_replace_the_random_split():
    X, y, groups = _blobs()
    probe = Probe.fit((X, y, groups), test_items=[5, 0, 7])
    assert probe.test_items == [0, 5, 7] and probe.train_items == [g for g in range(40) if g not in (0, 5, 7)]
    assert probe.report.n_test_rows == 3 * 6 and probe.config["test_fraction"] is None
    with pytest.raises(ValueError, match="non-empty"):
        Probe.fit((X, y, groups), test_items=[99])


def test_adamw_matches_the_papers_recipe():
    X, y, groups = _blobs(seed=1)
    probe = Probe.fit((X, y, groups), method="adamw", seed=0)
    # The recipe written out with the global seed, as the authors' script does.
    train = np.isin(groups, probe.train_items)
    torch.manual_seed(0)
    W = (torch.randn(16, 3) / math.sqrt(16)).requires_grad_(True)
    b = (torch.randn(3) / math.sqrt(16)).requires_grad_(True)
    opt = torch.optim.AdamW([W, b], lr=1e-3, weight_decay=1e-4)
    inputs, targets = torch.from_numpy(X[train]), torch.from_numpy(y[train])
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(inputs @ W + b, targets).backward()
        opt.step()
    np.testing.assert_allclose(probe.W, W.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(probe.b, b.detach().numpy(), atol=1e-6)


def test_probe_on_store_heatmap_and_save(chat, tmp_path):
    vlm = chat(tiny_model("tiny-qwen2-vl"))
    items = [Example(noise((336, 336), 700 + i), PROMPT, id=f"img{i}") for i in range(8)]
    store = collect(vlm, items, [si.site.vision_out], out=tmp_path / "acts", batch_size=4, progress=False)

    def labels(item_id, cell):  # column thirds of the top row band; other cells are not training rows
        row, col = divmod(cell, 12)
        return col // 4 if row < 4 else None

    probe = Probe.fit(store, labels, site=si.site.vision_out, classes=["left", "middle", "right"])
    assert len(probe.train_items) == 6 and len(probe.test_items) == 2
    assert probe.report.n_test_rows == 2 * 48
    heat = probe.heatmap(store)
    assert heat.axes == ("class", "row", "col") and heat.shape == (3, 12, 12)
    np.testing.assert_allclose(heat.values.sum(0), 1.0, atol=1e-5)
    path = probe.save(tmp_path / "probe")
    assert path.with_suffix(".safetensors").is_file()
    again = Probe.load(tmp_path / "probe")
    np.testing.assert_array_equal(again.W, probe.W)
    assert again.classes == probe.classes and again.report.accuracy == probe.report.accuracy
    np.testing.assert_allclose(again.heatmap(store).values, heat.values)
    held = Probe.fit(store, labels, site=si.site.vision_out, test_items=["img7", "img1"])
    assert held.test_items == ["img1", "img7"] and held.train_items == [f"img{i}" for i in (0, 2, 3, 4, 5, 6)]
    with pytest.raises(ValueError, match="unknown probe method"):
        Probe.fit(store, labels, site=si.site.vision_out, method="svm")


def test_steer_takes_a_probe(chat):
    from spatial_interp.interventions.metrics import raw_logits
    from spatial_interp.interventions.steer import steer_logits

    vlm = chat(tiny_model("tiny-qwen2-vl"))
    rng = np.random.default_rng(0)
    probe = Probe(rng.normal(size=(vlm.d_model, 2)).astype(np.float32), np.zeros(2, np.float32), ["left", "right"])
    item = Example(noise((336, 336), 9), PROMPT)
    by_probe, _, _ = steer_logits(vlm, [item], probe, [2.0], metric=raw_logits())
    by_tensor, _, _ = steer_logits(vlm, [item], probe.directions, [2.0], metric=raw_logits())
    torch.testing.assert_close(by_probe, by_tensor)


def test_paper_probe_pipeline_on_data_items(chat, tmp_path):
    """Probing items → collect vision_out → slot labels → the §4 split (same as data.tasks.probe_split)."""
    from spatial_interp.data.tasks import probe_split, probing_items, task_for
    from spatial_interp.interventions.probes import slot_labels

    vlm = chat(tiny_model("tiny-qwen2-vl"))
    items = probing_items(task_for("squares", vlm.canvas), vlm.canvas, "horizontal")[:12]
    store = collect(vlm, items, [si.site.vision_out], out=tmp_path / "acts", batch_size=6, progress=False)
    labels = slot_labels(items, vlm.canvas)
    assert sorted(set(labels[items[0].id].values())) == [0, 1, 2] and len(labels[items[0].id]) == 12
    probe = Probe.fit(store, labels, method="adamw", classes=["left", "middle", "right"])
    train, test = probe_split(12)
    assert probe.train_items == [items[i].id for i in train] and probe.test_items == [items[i].id for i in test]
    assert probe.report.n_test_rows == 12 * len(test)
    assert probe.heatmap(store).shape == (3, 12, 12)


def test_relabelled_per_item_keeps_groups_and_renames_classes():
    from spatial_interp.interventions.probes import relabelled_per_item

    labels = {f"i{k}": {c: c % 3 for c in range(9)} for k in range(20)}
    out = relabelled_per_item(labels, 3, seed=1)
    assert out.keys() == labels.keys()
    renames = set()
    for item, cells in labels.items():
        rename = {cls: out[item][cell] for cell, cls in cells.items()}
        assert sorted(rename.values()) == [0, 1, 2]  # a bijection of the classes, cells unchanged
        renames.add(tuple(rename[c] for c in range(3)))
    assert len(renames) > 1 and out == relabelled_per_item(labels, 3, seed=1)
