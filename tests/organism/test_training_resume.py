"""Training resume reads checkpoints as data only: a crafted train_state.pt cannot run code."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from spatial_interp.training.loop import STATE_FILE, train
from spatial_interp.training.organisms import PLANTED


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": _Payload(marker)}, tmp_path / STATE_FILE)
    spec = PLANTED["position"]
    spec = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, max_steps=1, batch_size=2, eval_items=2))
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        train(spec, tmp_path, progress=False, workers=0)
    assert not marker.exists()
