"""Shared test set-up: one torch thread (the CI machine has 2 cores) and cached tiny models."""

from __future__ import annotations

import pytest
import torch

from tests._models import TINY_NAMES, tiny_model

torch.set_num_threads(1)


@pytest.fixture(params=TINY_NAMES)
def tiny_vlm(request):
    """Each architecture's random tiny model (loaded once per session)."""
    return tiny_model(request.param)
