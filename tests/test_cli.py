import json

import pytest

from spatial_interp.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_info_json(capsys):
    code, out = run(capsys, "info", "tiny-pixtral", "--json")
    info = json.loads(out)
    assert code == 0 and info["grid"] == [15, 15] and info["position_row_stride"] == 16
    assert info["n_lm_layers"] == 3 and info["lm_resid_slots"] == 4


def test_geometry_box(capsys):
    code, out = run(capsys, "geometry", "tiny-qwen2-vl", "--image-size", "336", "336", "--box", "28", "140", "84",
                    "196", "--json")
    info = json.loads(out)
    assert code == 0 and info["flat_ids"] == [61, 62, 73, 74]
    assert info["rows"]["vision_out"] == [61, 62, 73, 74]
    assert len(info["rows"]["vision_block.0"]) == 16


def test_geometry_verify_passes(capsys):
    code, out = run(capsys, "geometry", "--verify", "tiny-llava", "--image-size", "448", "336")
    assert code == 0 and "PASS" in out


def test_geometry_bad_box_is_a_clear_error():
    with pytest.raises(SystemExit, match="outside the 336x336 image"):
        main(["geometry", "tiny-qwen2-vl", "--box", "0", "0", "400", "10"])


def test_config_file_fills_options(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: tiny-gemma3\njson: true\n")
    code, out = run(capsys, "info", "--config", str(config))
    assert json.loads(out)["arch"] == "gemma3"


def test_the_program_entry_exits_with_mains_code_and_its_whole_output(tmp_path):
    """``spatial-interp`` is :func:`entry` (main, then an exit past the last collections): same code, same output."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^spatial-interp = "spatial_interp.cli:entry"$', pyproject, re.M)
    ok = subprocess.run([sys.executable, "-m", "spatial_interp.cli", "info", "tiny-pixtral", "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and json.loads(ok.stdout)["grid"] == [15, 15]
    bad = subprocess.run([sys.executable, "-m", "spatial_interp.cli", "plan", "meta-gemma3", "--batch-size", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stdout == ""


def test_a_first_import_runs_with_collections_paused_and_leaves_what_it_made_frozen(tmp_path):
    import subprocess
    import sys

    (tmp_path / "probe_module.py").write_text("import gc\nCOLLECTING = gc.isenabled()\n")
    script = (
        "import gc, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from spatial_interp.cli import _import_without_collections\n"
        "gc.unfreeze()\n"
        "_import_without_collections('probe_module')\n"
        "import probe_module\n"
        "frozen = gc.get_freeze_count()\n"
        "_import_without_collections('probe_module')  # imported already: nothing done\n"
        "print(probe_module.COLLECTING, gc.isenabled(), frozen > 0, gc.get_freeze_count() == frozen)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "True"]
