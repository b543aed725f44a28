"""The docstring examples of the data package run as written."""

import doctest
import importlib

import pytest

MODULES = ["canvas", "palettes", "shapes", "stimuli", "items", "tasks", "pairs", "references", "regions",
           "prompts", "scoring", "coco", "objects", "whatsup", "gallery", "catalog"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"spatial_interp.data.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_package_docstring():
    import spatial_interp.data as sd

    assert doctest.testmod(sd).failed == 0
