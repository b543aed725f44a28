"""The docstring examples of the intervention modules and results run as written."""

import doctest
import importlib

import pytest

MODULES = ["spatial_interp.results"] + [f"spatial_interp.interventions.{m}" for m in (
    "examples", "engine", "metrics", "patch", "sweep", "collect", "probes", "steer", "ablate", "paper")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
