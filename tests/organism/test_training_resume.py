"""Training checkpoints are data only (safetensors + JSON): resume is bit-identical, tampering is refused."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from spatial_interp.training.checkpoint import CheckpointError, load_state, save_state
from spatial_interp.training.loop import train
from spatial_interp.training.organisms import PLANTED


def _tiny(mechanism: str, steps: int, stop: int | None = None):
    spec = PLANTED[mechanism]
    recipe = dataclasses.replace(spec.recipe, max_steps=steps, stop_step=stop, batch_size=4, eval_every=2,
                                 eval_items=4, curriculum_steps=1, warmup_steps=1)
    return dataclasses.replace(spec, recipe=recipe)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_legacy_pickle_checkpoint_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": _Payload(marker)}, tmp_path / "train_state.pt")
    with pytest.raises(ValueError, match="pickled checkpoint"):
        train(_tiny("position", 1), tmp_path, progress=False, workers=0)
    assert not marker.exists()


def test_resume_is_bit_identical(tmp_path):
    """4 steps in one go == 2 steps, a stop, then 2 more from the checkpoint (model, order head, AdamW)."""
    whole = train(_tiny("dual", 4), tmp_path / "whole", progress=False, workers=0)
    train(_tiny("dual", 4, stop=2), tmp_path / "split", progress=False, workers=0)
    state = load_state(tmp_path / "split" / "train_state")
    assert state["step"] == 2 and isinstance(next(iter(state["optimizer"]["state"])), int)
    split = train(_tiny("dual", 4), tmp_path / "split", progress=False, workers=0)
    assert whole.steps == split.steps == 4
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tampered_or_half_written_state_is_refused(tmp_path):
    path = tmp_path / "train_state"
    save_state({"w": torch.arange(3.0), "nested": {0: {"t": torch.ones(2)}}, "tuple": (1, 2)}, path)
    back = load_state(path)
    assert torch.equal(back["w"], torch.arange(3.0)) and torch.equal(back["nested"][0]["t"], torch.ones(2))
    save_state({"w": torch.zeros(3)}, tmp_path / "other")
    os.replace(tmp_path / "other.safetensors", path.with_suffix(".safetensors"))  # tensors of another step
    with pytest.raises(CheckpointError, match="checksum"):
        load_state(path)
    path.with_suffix(".json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="unknown format"):
        load_state(path)
    with pytest.raises(TypeError, match="cannot checkpoint"):
        save_state({"bad": object()}, tmp_path / "x")


def test_no_pickle_loading_in_the_package():
    import spatial_interp

    root = os.path.dirname(spatial_interp.__file__)
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    text = handle.read()
                for needle in ("weights_only=False", "allow_pickle=True", "import pickle", "torch.load(",
                               "cloudpickle"):
                    if needle in text:
                        offenders.append(f"{name}: {needle}")
    assert not offenders, offenders
