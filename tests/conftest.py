"""Shared test set-up: one torch thread (the CI machine has 2 cores) and cached tiny models."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from tests._models import TINY_NAMES, tiny_model

torch.set_num_threads(1)
# scikit-learn's probe fits use OpenBLAS, whose own threads fight torch's on 2 cores (10-40x slower fits).
threadpool_limits(1)


@pytest.fixture(params=TINY_NAMES)
def tiny_vlm(request):
    """Each architecture's random tiny model (loaded once per session)."""
    return tiny_model(request.param)
