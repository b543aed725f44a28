"""The docstring examples of the intervention modules and results run as written."""

import doctest
import importlib

import pytest

MODULES = ["spatial_interp.results", "spatial_interp.stats", "spatial_interp.progress", "spatial_interp.data.published",
           "spatial_interp.report.reproduction", "spatial_interp.report.figures", "spatial_interp.vision_depth",
           "spatial_interp.report.vision_depth", "spatial_interp.models.patch_embedding",
           "spatial_interp.models.rope_index", "spatial_interp.background", "spatial_interp.prefetch"] + [
    f"spatial_interp.interventions.{m}" for m in (
    "examples", "engine", "metrics", "patch", "sweep", "collect", "probes", "logistic", "steer", "ablate", "paper",
    "attention", "attribution")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
