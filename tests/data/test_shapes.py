import numpy as np
import pytest

from spatial_interp.data.palettes import (
    BROWN_PALETTE,
    LAST_TOKEN_PALETTE,
    ORANGE_PALETTE,
    objects_for,
    palette_for,
    shape_pairs,
)
from spatial_interp.data.shapes import heart_points, shape_sprite, star_points


def alpha(shape, size):
    return np.array(shape_sprite(shape, size, (255, 0, 0)))[:, :, 3] > 0


def extent(mask, axis):
    idx = np.nonzero(mask.any(axis=axis))[0]
    return int(idx.min()), int(idx.max())


def test_palettes():
    assert palette_for("qwen2_vl") == BROWN_PALETTE == ("red", "green", "blue", "black", "brown", "gray")
    assert palette_for("gemma3") == BROWN_PALETTE
    assert palette_for("pixtral") == ORANGE_PALETTE == ("red", "green", "blue", "black", "orange", "gray")
    assert palette_for("pixtral_3x3") == ORANGE_PALETTE
    assert len(LAST_TOKEN_PALETTE) == 8 and LAST_TOKEN_PALETTE[-2:] == ("orange", "white")
    assert shape_pairs(BROWN_PALETTE) == [("square", "red"), ("circle", "green"), ("triangle", "blue"),
                                          ("star", "black"), ("cross", "brown"), ("heart", "gray")]
    assert shape_pairs(ORANGE_PALETTE)[4] == ("cross", "orange")
    assert len(objects_for("qwen2_vl")) == 8 and "bomb" not in objects_for("pixtral")
    assert len(objects_for("pixtral", drop_bomb_for_pixtral=False)) == 8


@pytest.mark.parametrize(("size", "bar", "start"), [(56, 18, 19), (32, 10, 11), (168, 56, 56), (48, 16, 16)])
def test_cross_bar_widths(size, bar, start):
    m = alpha("cross", size)
    # vertical bar: full height, columns [start, start + bar)
    assert m[0].sum() == bar and extent(m[:1], 0) == (start, start + bar - 1)
    assert m[:, start].all() and not m[0, start - 1] and not m[0, start + bar]
    # horizontal bar: full width
    assert m[:, 0].sum() == bar and m[start].all()


def test_cross_odd_offset_truncates():
    # L = 50: w = 16, off = 17.0; L = 51: w = 17, off = 17.0; L = 53: w = 17, off = 18.0
    m = alpha("cross", 50)
    assert extent(m[:1], 0) == (17, 32)
    m = alpha("cross", 55)  # w = 18, off = 18.5 -> Pillow truncates to columns 18..35
    assert extent(m[:1], 0) == (18, 35)


def test_square_margin():
    # L = 56: side 44.8, off 5.6 -> Pillow covers pixels 5..49 (end 49.4 truncated)
    m = alpha("square", 56)
    assert extent(m, 0) == (5, 49) and extent(m, 1) == (5, 49)
    assert m[5:50, 5:50].all() and m.sum() == 45 * 45
    # L = 168 (Gemma): side 134.4, off 16.8 -> 16..150
    assert extent(alpha("square", 168), 0) == (16, 150)


def test_circle_centred():
    m = alpha("circle", 56)  # diameter 50.4, off 2.8 -> bbox [2.8, 52.2]
    assert extent(m, 0) == (2, 52) and extent(m, 1) == (2, 52)
    assert m[27, 27] and not m[0, 0] and not m[4, 4]


def test_triangle_top_aligned():
    size = 56
    m = alpha("triangle", size)
    h = size * 3 ** 0.5 / 2  # 48.5
    top, bottom = extent(m, 1)
    assert top == 0 and bottom == int(h)
    assert extent(m, 0) == (0, size - 1)
    assert not m[int(h) + 2:].any()  # nothing below the base: not vertically centred


def test_star_geometry():
    pts = star_points(56)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    assert min(xs) == pytest.approx(0) and max(xs) == pytest.approx(55)  # stretched to full width
    assert min(ys) == pytest.approx(0)  # top spike at radius (L-1)/2 above the centre
    assert pts[0] == pytest.approx((27.5, 0.0))
    assert max(ys) < 55  # y not stretched
    m = alpha("star", 56)
    assert m[28, 28] and not m[0, 0]


def test_heart_normalised():
    pts = heart_points(56)
    assert len(pts) == 100
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    assert min(xs) == pytest.approx(0) and max(xs) == pytest.approx(55)
    assert min(ys) == pytest.approx(0) and max(ys) == pytest.approx(55)
    # t = 0 is the top notch (x = 0 -> middle, y = 13-5-2-1 = 5 -> below the lobes' top)
    assert pts[0][0] == pytest.approx(27.5) and 0 < pts[0][1] < 55
    m = alpha("heart", 56)
    assert m[30, 28] and not m[0, 0]


def test_sprite_alpha_binary_and_colour():
    arr = np.array(shape_sprite("heart", 56, (128, 128, 128)))
    assert set(np.unique(arr[:, :, 3])) == {0, 255}
    assert (arr[arr[:, :, 3] == 255][:, :3] == 128).all()
    with pytest.raises(ValueError, match="known shapes"):
        shape_sprite("hexagon", 10, (0, 0, 0))


@pytest.mark.parametrize("shape", ["square", "circle", "triangle", "star", "cross", "heart"])
def test_every_shape_draws(shape):
    from spatial_interp.data.palettes import SHAPES

    assert shape in SHAPES
    m = alpha(shape, 32)
    assert 0.2 * 32 * 32 < m.sum() < 32 * 32
