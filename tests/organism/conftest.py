"""Shared fixtures: each shipped organism is loaded once per session (single-threaded, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

import spatial_interp as si
from spatial_interp.models.load import ORGANISM_DIR

EMERGENT = {"organism-qwen2-vl": "qwen2-vl", "organism-gemma3": "gemma3"}
"""Organisms whose mechanism was learnt, not planted (tests/organism/test_mechanism.py reads them)."""
PLANTED = {f"organism-qwen2-vl-{m}": f"qwen2-vl-{m}" for m in ("position", "vision", "dual")}
"""Organisms with a planted route for order (tests/organism/test_planted.py)."""
ORGANISMS = {**EMERGENT, **PLANTED}


def _shipped(name: str) -> bool:
    return (ORGANISM_DIR / ORGANISMS[name] / "model.safetensors").is_file()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", params=list(ORGANISMS))
def organism_name(request) -> str:
    if not _shipped(request.param):
        pytest.skip(f"{request.param} is not shipped in this checkout")
    return request.param


@pytest.fixture(scope="session")
def organism(organism_name):
    return si.load(organism_name)


@pytest.fixture(scope="session")
def metrics(organism_name) -> dict:
    return json.loads((ORGANISM_DIR / ORGANISMS[organism_name] / "metrics.json").read_text())
