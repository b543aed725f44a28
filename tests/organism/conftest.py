"""Shared fixtures: each shipped organism is loaded once per session (single-threaded, CPU)."""

from __future__ import annotations

import functools
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


def require(name: str) -> str:
    """``name``, or skip the test when this checkout does not ship that organism."""
    if not _shipped(name):
        pytest.skip(f"{name} is not shipped in this checkout")
    return name


@functools.cache
def load_organism(name: str):
    """Each organism loaded once per test session, whichever module asks first."""
    return si.load(require(name))


def card_metrics(name: str) -> dict:
    return json.loads((ORGANISM_DIR / ORGANISMS[name] / "metrics.json").read_text())


@pytest.fixture(scope="session", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", params=list(ORGANISMS))
def organism_name(request) -> str:
    return require(request.param)


@pytest.fixture(scope="session")
def organism(organism_name):
    return load_organism(organism_name)


@pytest.fixture(scope="session")
def metrics(organism_name) -> dict:
    return card_metrics(organism_name)
