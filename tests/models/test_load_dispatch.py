"""si.load with device_map= / max_memory=: refused where it cannot work, never moved after dispatch."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import spatial_interp as si


def test_device_map_is_refused_for_tiny_models_and_with_a_device():
    with pytest.raises(ValueError, match="device_map= does not apply"):
        si.load("tiny-qwen2-vl", device_map="auto")
    with pytest.raises(ValueError, match="not both"):
        si.load("organism-qwen2-vl", device="cuda", device_map="auto")
    with pytest.raises(ValueError, match="max_memory= only applies with device_map="):
        si.load("organism-qwen2-vl", max_memory={"cpu": "1GiB"})


def test_dispatched_checkpoint_loads_in_dtype_and_is_not_moved(monkeypatch):
    from transformers import AutoModelForImageTextToText

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "accelerate" else real_find_spec(name, *a))
    seen = {}
    original = AutoModelForImageTextToText.from_pretrained

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device_map", "max_memory")}
        model = original(path, **kwargs)

        def refuse(*args, **kw):
            raise AssertionError("a dispatched model must not be moved")

        model.to = refuse
        return model

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", fake_from_pretrained)
    vlm = si.load("organism-qwen2-vl", dtype="bfloat16", device_map="auto", max_memory={"cpu": "2GiB"})
    assert seen["device_map"] == "auto" and seen["max_memory"] == {"cpu": "2GiB"}
    assert seen["dtype"] is torch.bfloat16  # loaded in the dtype asked for, not cast afterwards
    assert {p.dtype for p in vlm.model.parameters()} == {torch.bfloat16}


def test_device_map_without_accelerate_names_the_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match="pip install accelerate"):
        si.load("organism-qwen2-vl", device_map="auto")


def test_meta_load_ignores_placement():
    vlm = si.load("organism-qwen2-vl", device="meta", device_map="auto", max_memory={0: "1GiB"})
    assert vlm.device.type == "meta"
