import pytest

import spatial_interp as si
from spatial_interp.geometry import GeometryError, Grid, Region
from spatial_interp.site import SiteError


def test_site_names_and_parse_round_trip():
    for site in [si.site.vision_block(3), si.site.vision_out, si.site.lm_resid(0), si.site.lm_resid(7).last_token]:
        assert si.site.parse(str(site)) == site
    assert str(si.site.lm_resid(2).last_token) == "lm_resid.2.last_token"


@pytest.mark.parametrize("text", ["lm_resid", "vision_out.2", "mlp.3", "lm_resid.x", "vision_block.-1"])
def test_bad_site_strings_raise(text):
    with pytest.raises(SiteError):
        si.site.parse(text)


def test_last_token_only_on_lm_sites():
    with pytest.raises(SiteError, match="lm_resid"):
        _ = si.site.vision_out.last_token


def test_region_algebra_and_row_major_order():
    grid = Grid(12, 12)
    obj = Region.flat_ids(grid, [61, 62, 73, 74])  # Qwen's left slot (spec §2.2)
    strip = Region.columns(grid, 0, 4)
    assert obj.flat.tolist() == [61, 62, 73, 74]
    assert list(obj) == [(5, 1), (5, 2), (6, 1), (6, 2)]
    assert len(strip) == 48 and len(strip - obj) == 44 and (strip & obj) == obj
    assert len(obj.background()) == 140
    assert (strip | Region.columns(grid, 8, 12)).bounds == (0, 0, 12, 12)
    assert Region.rows(grid, 0, 2).flat.tolist() == list(range(24))


def test_region_errors_name_the_problem():
    grid = Grid(12, 12)
    with pytest.raises(GeometryError, match="outside the 12x12 grid"):
        Region.cells(grid, [(12, 0)])
    with pytest.raises(GeometryError, match="outside"):
        Region.flat_ids(grid, [144])
    with pytest.raises(GeometryError, match="does not fit"):
        Region.columns(grid, 10, 13)
    with pytest.raises(GeometryError, match="different grids"):
        _ = Region.all(grid) | Region.all(Grid(16, 16))
