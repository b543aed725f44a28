"""Every strip tiling holds exactly one entity slot per band (the criss-cross strip swap relies on it)."""

from __future__ import annotations

import pytest

from spatial_interp.data.canvas import canvas_for
from spatial_interp.data.regions import STRIP_TILING, strip_bands


@pytest.mark.parametrize("model", [m for m in STRIP_TILING if m != "pixtral_3x3"])
@pytest.mark.parametrize("orientation", ["horizontal", "vertical"])
def test_each_band_holds_its_slot(model, orientation):
    geom = canvas_for(model)
    bands = strip_bands(model, orientation)
    assert sum(len(b) for b in bands) == geom.n_tokens ** 2  # the bands tile the grid
    for slot, band in enumerate(bands):
        inside = set(band.cells())
        for other in range(len(bands)):
            cells = set(geom.slot_cells(other, orientation))
            assert (cells <= inside) == (other == slot), (model, slot, other)
