"""The docstring examples of the training modules run as written."""

import doctest
import importlib

import pytest

MODULES = [f"spatial_interp.training.{m}" for m in (
    "vocab", "stimuli", "encode", "organisms", "evaluate", "mechanism", "loop", "report", "checkpoint")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
