"""A catalogue of bad inputs: each must be refused with an error that names the bad value and the fix.

Issue 10 ("no silent wrong results"): a NaN direction, a 16-bit PNG, a float site index or a typo in
a YAML config must not run to a wrong answer (or to an OOM kill, or to a traceback after an hour of
work). Every case asserts the exception type and the words a user needs to fix the input; CLI cases
assert exit status 2 and a single ``error:`` line on stderr (no traceback).
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spatial_interp as si
from spatial_interp.cli import main
from spatial_interp.geometry import GeometryError, Grid, Region
from spatial_interp.images import MAX_IMAGE_PIXELS, check_image_size, to_rgb
from spatial_interp.interventions.engine import Edit, Read, run
from spatial_interp.interventions.examples import Example, PatchPair
from spatial_interp.interventions.metrics import raw_logits
from spatial_interp.interventions.patch import patch, patch_logits
from spatial_interp.interventions.probes import Probe
from spatial_interp.interventions.steer import amplification, random_directions, steer, steer_logits
from spatial_interp.models.load import UnknownModelError
from spatial_interp.models.remote import RemoteError, check_remote
from spatial_interp.models.vlm import ModelInfo
from spatial_interp.site import SiteError, resolve, resolve_all
from tests._models import tiny_model

PROMPT = "The color of the square is "


@pytest.fixture(scope="module")
def vlm():
    return tiny_model("tiny-qwen2-vl")


def picture(vlm, seed=0):
    w, h = vlm.adapter.native_size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- si.load ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [None, 42, ["tiny-qwen2-vl"]])
def test_load_needs_a_name_string(name):
    with pytest.raises(TypeError, match="model name string") as info:
        si.load(name)
    assert repr(name) in str(info.value) and "tiny-qwen2-vl" in str(info.value)


def test_load_empty_name():
    with pytest.raises(UnknownModelError, match="empty model name.*tiny-qwen2-vl"):
        si.load("  ")


def test_load_unknown_tiny_model_lists_the_real_ones():
    with pytest.raises(UnknownModelError, match="'tiny-nonsense'.*available: tiny-qwen2-vl"):
        si.load("tiny-nonsense")


def test_load_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'float64'.*bfloat16"):
        si.load("tiny-qwen2-vl", dtype="float64")


# --- images ----------------------------------------------------------------------------------------
def test_16bit_image_is_scaled_not_clipped_to_white(caplog):
    deep = Image.new("I;16", (8, 8), 30000)  # PIL's convert("RGB") makes this pure white
    with caplog.at_level(logging.WARNING, logger="spatial_interp.images"):
        rgb = to_rgb(deep)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (117, 117, 117)  # 30000 / 257
    assert "I;16" in caplog.text and "257" in caplog.text


def test_32bit_int_image_holding_16bit_values():
    values = np.array([[0, 65535], [257 * 100, 0]], dtype=np.int32)
    rgb = to_rgb(Image.fromarray(values))
    assert rgb.getpixel((1, 0)) == (255, 255, 255) and rgb.getpixel((0, 1)) == (100, 100, 100)


def test_float_image_in_unit_range_is_not_black(caplog):
    image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))  # PIL's convert gives (0, 0, 0)
    with caplog.at_level(logging.WARNING, logger="spatial_interp.images"):
        assert to_rgb(image).getpixel((0, 0)) == (128, 128, 128)
    assert "0..1 multiplied by 255" in caplog.text


def test_float_image_outside_0_255_is_scaled_by_its_range():
    image = Image.fromarray(np.array([[-1.0, 3.0]], dtype=np.float32))
    rgb = to_rgb(image)
    assert rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((1, 0)) == (255, 255, 255)


def test_float_image_with_nan_is_refused():
    values = np.zeros((4, 4), dtype=np.float32)
    values[0, :3] = np.nan
    with pytest.raises(ValueError, match=r"images\[2\] \(mode F\) has 3 NaN or infinite pixels.*nan_to_num"):
        to_rgb(Image.fromarray(values), "images[2]")


@pytest.mark.parametrize("image", [
    Image.new("RGBA", (6, 6), (0, 0, 0, 0)),
    Image.new("LA", (6, 6), (0, 0)),
], ids=["RGBA", "LA"])
def test_transparency_is_composited_on_white(image, caplog):
    with caplog.at_level(logging.WARNING, logger="spatial_interp.images"):
        assert to_rgb(image).getpixel((3, 3)) == (255, 255, 255)  # PIL's convert gives black
    assert "composited" in caplog.text and "36 transparent" in caplog.text


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_opaque_rgba_converts_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="spatial_interp.images"):
        assert to_rgb(Image.new("RGBA", (4, 4), (10, 20, 30, 255))).getpixel((0, 0)) == (10, 20, 30)
    assert caplog.text == ""


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_zero_size_image_is_refused(vlm, size):
    with pytest.raises(ValueError, match=rf"images\[1\] is {size[0]}x{size[1]} pixels: both sides must be >= 1"):
        vlm.prepare([picture(vlm), Image.new("RGB", size)], [PROMPT, PROMPT])


def test_oversized_image_is_refused_before_any_pixel(vlm):
    image = Image.new("L", (1, 1))
    image._size = (100_000, 100_000)  # a header-only giant: no pixel memory behind it
    with pytest.raises(ValueError, match=r"100000x100000 = 10,000,000,000 pixels.*MAX_IMAGE_PIXELS.*downscale"):
        vlm.prepare([image], [PROMPT])


def test_image_size_check_names_the_bound():
    assert check_image_size((7000, 7000)) == (7000, 7000)
    with pytest.raises(ValueError, match=f"{MAX_IMAGE_PIXELS:,}"):
        check_image_size((10_000, 10_000))
    with pytest.raises(TypeError, match="width must be an integer number of pixels, got 3.5"):
        check_image_size((3.5, 4))


def test_prepare_refuses_a_non_image_and_a_non_string_prompt(vlm):
    with pytest.raises(TypeError, match=r"images\[0\] is ndarray, expected a PIL.Image.Image"):
        vlm.prepare([np.zeros((4, 4, 3))], [PROMPT])
    with pytest.raises(TypeError, match=r"prompts\[0\] is int, expected a str"):
        vlm.prepare([picture(vlm)], [5])


def test_16bit_image_reaches_the_model_scaled(vlm):
    """End to end: a 16-bit image and its 8-bit equivalent give the same model inputs."""
    deep = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16))
    eight = Image.fromarray(np.rint(np.asarray(deep) / 257).astype(np.uint8)).convert("RGB")
    a, b = (vlm.prepare([im.resize(vlm.adapter.native_size, Image.NEAREST)], [PROMPT]) for im in (deep, eight))
    torch.testing.assert_close(a.inputs["pixel_values"], b.inputs["pixel_values"])


# --- geometry --------------------------------------------------------------------------------------
def test_grid_must_be_positive_ints():
    with pytest.raises(GeometryError, match="grid must be positive, got 0x3"):
        Grid(0, 3)
    with pytest.raises(TypeError, match="Grid rows must be an int, got 2.5"):
        Grid(2.5, 3)


def test_region_cells_refuse_fractional_coordinates():
    with pytest.raises(TypeError, match="cell row must be an int, got 1.5"):
        Region.cells(Grid(4, 4), [(1.5, 2)])  # int() would silently pick cell (1, 2)


def test_region_cells_outside_the_grid():
    with pytest.raises(GeometryError, match=r"cells \[\(4, 0\)\] lie outside the 4x4 grid \(rows 0..3"):
        Region.cells(Grid(4, 4), [(4, 0)])


def test_region_flat_ids_outside_the_grid():
    with pytest.raises(GeometryError, match=r"flat ids \[16\] lie outside the 4x4 grid \(0..15\)"):
        Region.flat_ids(Grid(4, 4), [16])


def test_region_rect_reversed_range():
    with pytest.raises(GeometryError, match=r"rows range \[3, 1\) does not fit 0..4"):
        Region.rect(Grid(4, 4), (3, 1), (0, 2))


def test_regions_on_different_grids():
    with pytest.raises(GeometryError, match="different grids"):
        Region.all(Grid(4, 4)) | Region.all(Grid(5, 5))


@pytest.mark.parametrize("box, message", [
    ((0, 0, 400, 10), "outside the 336x336 image"),
    ((float("nan"), 0, 10, 10), "is empty: need x1 > x0"),
    ((10, 10, 10, 20), "is empty: need x1 > x0"),
])
def test_bad_pixel_boxes(vlm, box, message):
    layout = vlm.prepare([Image.new("RGB", (336, 336), "white")], [PROMPT]).layouts[0]
    with pytest.raises(GeometryError, match=message):
        layout.box_to_cells(box)


# --- sites -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [2.0, 2.5, "3", True])
def test_site_index_must_be_an_int(index):
    with pytest.raises(TypeError, match=r"lm_resid index must be an int.*si.site.parse\('lm_resid.3'\)"):
        si.site.lm_resid(index)


def test_site_index_numpy_int_is_accepted():
    assert si.site.lm_resid(np.int64(2)) == si.site.lm_resid(2)


def test_negative_site_index():
    with pytest.raises(SiteError, match="site index must be >= 0, got -1"):
        si.site.vision_block(-1)
    with pytest.raises(SiteError, match="'lm_resid.-1': site index must be >= 0"):
        si.site.parse("lm_resid.-1")


def test_unparseable_site_string():
    with pytest.raises(SiteError, match="cannot parse site 'lm_resid.x'; expected vision_block.K"):
        resolve("lm_resid.x")


def test_site_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"a site must be a Site .*\('lm_resid.3', 'vision_out'\), got 3"):
        resolve(3)
    with pytest.raises(TypeError, match="single site 'lm_resid.1'; wrap it in a list"):
        resolve_all("lm_resid.1")


def test_site_out_of_range_for_the_model_as_string(vlm):
    with pytest.raises(SiteError, match=r"lm_resid.99 is out of range for tiny-qwen2-vl: lm_resid indices run 0..3"):
        vlm.check_site("lm_resid.99")


def test_patch_accepts_string_sites_like_collect(vlm):
    pair = PatchPair(Example(picture(vlm, 1), PROMPT), Example(picture(vlm, 2), PROMPT), answers=("red", "blue"))
    by_site = patch_logits(vlm, [pair], si.site.lm_resid(1))
    by_text = patch_logits(vlm, [pair], "lm_resid.1")
    torch.testing.assert_close(by_text, by_site, atol=0, rtol=0)
    assert patch(vlm, [pair], "vision_out").attrs["site"] == "vision_out"


def test_sweep_and_steer_accept_the_same_string_sites(vlm):
    from spatial_interp.interventions.sweep import sweep

    pair = PatchPair(Example(picture(vlm, 1), PROMPT), Example(picture(vlm, 2), PROMPT), answers=("red", "blue"))
    by_text = sweep(vlm, [pair], ["lm_resid.1", "vision_out"], None, progress=False)
    by_site = sweep(vlm, [pair], [si.site.lm_resid(1), si.site.vision_out], None, progress=False)
    assert by_text.coords["site"] == ["lm_resid.1", "vision_out"]
    np.testing.assert_array_equal(by_text.values, by_site.values)
    w = random_directions(vlm.d_model, 2)
    item = [Example(picture(vlm, 3), PROMPT)]
    text, _, _ = steer_logits(vlm, item, w, [1.0], site="lm_resid.2", metric=raw_logits())
    site, _, _ = steer_logits(vlm, item, w, [1.0], site=si.site.lm_resid(2), metric=raw_logits())
    torch.testing.assert_close(text, site, atol=0, rtol=0)


def test_patch_refuses_a_non_site(vlm):
    pair = PatchPair(Example(picture(vlm, 1), PROMPT), Example(picture(vlm, 2), PROMPT), answers=("red", "blue"))
    with pytest.raises(TypeError, match="a site must be a Site"):
        patch(vlm, [pair], 1)


# --- steering --------------------------------------------------------------------------------------
def _items(vlm, n=2):
    return [Example(picture(vlm, 10 + i), PROMPT, answer="red") for i in range(n)]


@pytest.mark.parametrize("alphas, count", [([0, float("nan"), 1], 1), ([float("inf"), -float("inf")], 2)])
def test_steer_refuses_non_finite_alphas(vlm, alphas, count):
    with pytest.raises(ValueError, match=f"alphas has {count} non-finite .*give finite α values"):
        steer(vlm, _items(vlm, 1), random_directions(vlm.d_model), alphas, progress=False)


@pytest.mark.parametrize("alphas, error, message", [
    (3, TypeError, "alphas must be a sequence of numbers such as"),
    ([], ValueError, "at least one alpha"),
    (["a"], TypeError, "alphas must all be numbers"),
])
def test_steer_refuses_malformed_alpha_grids(vlm, alphas, error, message):
    with pytest.raises(error, match=message):
        steer(vlm, _items(vlm, 1), random_directions(vlm.d_model), alphas, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_steer_refuses_non_finite_directions(vlm, bad):
    w = random_directions(vlm.d_model, 2)
    w[1, :3] = bad
    with pytest.raises(ValueError, match="steering directions .* has 3 non-finite .*fix or drop the direction rows"):
        steer(vlm, _items(vlm, 1), w, [0, 1], progress=False)


def test_steer_refuses_batch_size_zero(vlm):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        steer(vlm, _items(vlm, 1), random_directions(vlm.d_model), [0, 1], batch_size=0, progress=False)


def test_steer_wrong_direction_shape_names_the_transpose(vlm):
    with pytest.raises(ValueError, match=r"\(k, d_model=64\), got \(64, 2\); a probe's W .* must be transposed"):
        steer(vlm, _items(vlm, 1), random_directions(vlm.d_model).T, [0, 1], progress=False)


def test_zero_direction_and_alpha_zero_are_the_identity(vlm):
    items = _items(vlm)
    zero = torch.zeros(1, vlm.d_model)
    values, base, _ = steer_logits(vlm, items, zero, [0.0, 5.0], metric=raw_logits())
    assert torch.isfinite(values).all()
    for a in range(2):
        torch.testing.assert_close(values[a], base, atol=1e-5, rtol=0)
    huge = random_directions(vlm.d_model, 2) * 1e30
    values, base, _ = steer_logits(vlm, items, huge, [0.0], metric=raw_logits())
    torch.testing.assert_close(values[0], base, atol=1e-5, rtol=0)


def test_edit_steer_refuses_non_finite_values():
    positions = torch.arange(3)
    with pytest.raises(ValueError, match="steering directions has 1 non-finite"):
        Edit.steer(si.site.lm_resid(0), positions, positions, torch.tensor([[1.0, float("nan")]]), torch.ones(3))
    with pytest.raises(ValueError, match="steering alphas has 1 non-finite"):
        Edit.steer(si.site.lm_resid(0), positions, positions, torch.ones(1, 2), torch.tensor([1.0, float("inf"), 0]))


def test_amplification_checks_the_random_directions_first(vlm, monkeypatch):
    import importlib

    steer_module = importlib.import_module("spatial_interp.interventions.steer")  # the package re-exports steer()
    monkeypatch.setattr(steer_module, "steer", lambda *a, **k: pytest.fail("the probe run started"))
    bad = torch.full((2, vlm.d_model), float("nan"))
    with pytest.raises(ValueError, match=f"steering directions .* has {2 * vlm.d_model} non-finite"):
        amplification(vlm, _items(vlm, 1), random_directions(vlm.d_model), [0, 1], random=bad, progress=False)
    with pytest.raises(ValueError, match="alphas has 1 non-finite"):
        amplification(vlm, _items(vlm, 1), random_directions(vlm.d_model), [0, float("nan")], progress=False)


# --- probes ----------------------------------------------------------------------------------------
def _probe_data(n=60, d=8):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int), np.arange(n) // 3


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_probe_refuses_non_finite_features(bad):
    X, y, g = _probe_data()
    X[[3, 7], 1] = bad
    with pytest.raises(ValueError, match=r"X have 2 non-finite \(NaN or inf\) entries in 2 of 60 rows; drop those"):
        Probe.fit((X, y, g))


def test_probe_refuses_non_integer_labels():
    X, y, g = _probe_data()
    with pytest.raises(ValueError, match="integer class indices 0..n_classes-1, got non-integer values such as"):
        Probe.fit((X, y + 0.5, g))
    with pytest.raises(TypeError, match="map class names to indices and pass the names as classes="):
        Probe.fit((X, np.array(["a", "b"] * 30), g))


def test_probe_refuses_mismatched_shapes():
    X, y, g = _probe_data()
    with pytest.raises(ValueError, match=r"one entry per row: got X \(60, 8\), y \(59,\)"):
        Probe.fit((X, y[:-1], g))
    with pytest.raises(ValueError, match=r"X must be 2-D \(rows, d\), got shape \(60,\)"):
        Probe.fit((X[:, 0], y, g))
    with pytest.raises(TypeError, match=r"ActivationStore or a tuple \(X, y, groups\)"):
        Probe.fit(X)


# --- remote pre-check ------------------------------------------------------------------------------
@pytest.fixture
def no_api_key(monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)


def _hub_model(name="Qwen/Qwen2-VL-2B-Instruct"):
    return types.SimpleNamespace(info=ModelInfo(name=name, source="hub"))


def test_remote_refuses_a_tiny_model_without_key_naming_both_fixes(vlm, no_api_key):
    with pytest.raises(RemoteError) as info:
        check_remote(vlm)
    message = str(info.value)
    assert "'tiny-qwen2-vl' is a tiny model" in message and "hub id" in message
    assert "NDIF_API_KEY" in message and "set_default_api_key" in message and "remote='local'" in message


def test_remote_hub_model_needs_only_the_key(no_api_key, monkeypatch):
    with pytest.raises(RemoteError, match="no NDIF API key") as info:
        check_remote(_hub_model())
    assert "hub id" not in str(info.value)
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    check_remote(_hub_model())  # nothing left to fix


def test_remote_refuses_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    with pytest.raises(RemoteError, match="is a local checkpoint folder; NDIF serves only Hugging Face hub"):
        check_remote(_hub_model(str(tmp_path)))


def test_run_checks_remote_before_tracing(vlm, no_api_key):
    batch = vlm.prepare([picture(vlm)], [PROMPT])
    reads = [Read(si.site.lm_resid(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))]
    with pytest.raises(RemoteError, match="cannot run remotely"):
        run(vlm, batch, reads=reads, remote=True)
    with pytest.raises(ValueError, match="remote must be False .* got 'ndif'"):
        run(vlm, batch, reads=reads, remote="ndif")


# --- command line ----------------------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads the model: these inputs must be refused before any work."""
    from spatial_interp.commands import eval as eval_cmd
    from spatial_interp.commands import geometry, info, sweep

    for module in (eval_cmd, geometry, info, sweep):
        monkeypatch.setattr(module, "load_model", lambda args, **k: pytest.fail("the model was loaded"))


def cli_error(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and lines and lines[-1].startswith("error: ")
    assert sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


@pytest.mark.parametrize("size, message", [
    (("100000", "100000"), "10,000,000,000 pixels, more than the 50,000,000 allowed"),
    (("0", "336"), "is 0x336 pixels: both sides must be >= 1"),
])
def test_cli_info_refuses_absurd_image_sizes(capsys, no_model, size, message):
    assert message in cli_error(capsys, "info", "tiny-qwen2-vl", "--image-size", *size)


@pytest.mark.parametrize("command", ["info", "eval", "geometry"])
def test_cli_remote_on_a_local_command(capsys, no_model, command):
    line = cli_error(capsys, command, "tiny-qwen2-vl", "--remote")
    assert f"{command} runs locally and has no --remote mode; drop --remote" in line


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_cli_meta_device_for_a_forward(capsys, no_model, command):
    line = cli_error(capsys, command, "tiny-qwen2-vl", "--device", "meta")
    assert "--device meta loads no weights; use --device cpu" in line


def test_cli_eval_out_is_an_existing_folder(capsys, no_model, tmp_path):
    line = cli_error(capsys, "eval", "tiny-qwen2-vl", "--out", str(tmp_path))
    assert f"--out {tmp_path} is an existing folder" in line and "eval.json" in line


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_cli_out_is_an_existing_file(capsys, no_model, tmp_path, command):
    existing = tmp_path / "result.json"
    existing.write_text("{}")
    assert "a file of that name already exists" in cli_error(capsys, command, "tiny-qwen2-vl", "--out", str(existing))


def test_cli_sweep_bad_site_before_loading(capsys, no_model):
    assert "cannot parse site 'lm_resid.x'" in cli_error(capsys, "sweep", "tiny-qwen2-vl", "--sites", "lm_resid.x")


def test_cli_library_error_is_one_line(capsys):
    line = cli_error(capsys, "info", "--model", "tiny-nonsense")
    assert line.startswith("error: unknown tiny model 'tiny-nonsense'; available: tiny-qwen2-vl")


def test_cli_debug_reraises(no_model):
    from spatial_interp.commands._shared import CommandError

    with pytest.raises(CommandError, match="no --remote mode"):
        main(["info", "tiny-qwen2-vl", "--remote", "--debug"])


@pytest.mark.parametrize("yaml_text, message", [
    ('batch_size: "abc"\n', "batch_size: argument --batch-size: invalid int value: 'abc'"),
    ("task: nonsense\n", "task: argument --task: invalid choice: 'nonsense'"),
    ('json: "yes"\n', "json: argument --json: expected true or false, got 'yes'"),
    ("limit: [1, 2]\n", "limit: argument --limit: expected one value"),
    ("nonsense_option: 1\n", "unknown option 'nonsense_option' for eval"),
])
def test_cli_config_values_go_through_the_flags_types(capsys, no_model, tmp_path, yaml_text, message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as info:
        main(["eval", "--config", str(config)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_config_values_are_converted(tmp_path):
    import spatial_interp.cli as cli

    config = tmp_path / "c.yaml"
    config.write_text("image_size: [448, 336]\nout: runs/x\nverbose: true\nmodel: tiny-gemma3\n")
    argv = ["info", "--config", str(config), "--model", "tiny-llava"]
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    cli.apply_config(args, parser, argv)
    assert args.image_size == [448, 336] and args.out == Path("runs/x") and args.verbose is True
    assert args.model == "tiny-llava"  # the command line wins over the file


@pytest.mark.parametrize("name", ["spatial_interp.images", "spatial_interp.site", "spatial_interp.models.remote"])
def test_docstring_examples(name):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).failed == 0
