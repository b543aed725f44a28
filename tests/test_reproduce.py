"""The paper pipeline end to end on tiny models: every experiment runs and lands in the report, a re-run
resumes bit-identically, other settings are refused before any work, and the report's sentences follow
the numbers (chance-level results on a random model are reported as chance)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import pytest

import spatial_interp as si
import spatial_interp.mechanism as mechanism_module
import spatial_interp.reproduce as rp
from spatial_interp.attribution_experiment import AttributionConfig
from spatial_interp.cli import main
from spatial_interp.mechanism import MechanismConfig
from spatial_interp.reproduce import PaperConfig, ReproduceMismatchError, reproduce
from spatial_interp.stats import wilson_interval
from spatial_interp.vision_depth import VisionDepthConfig
from tests._models import tiny_model

SMALL = PaperConfig(tasks=("squares",), pairs_per_direction=1, filter_pairs=False, eval_limit=8, alphas=(0, 2),
                    amplify_items=4, position_items=12, progress=False, verdict=None, vision_depth=None,
                    attribution=None)


def _paragraphs(html: str) -> dict[str, str]:
    """Section title → its text, from the report's HTML."""
    out, title = {}, None
    for heading, paragraph in re.findall(r"<h2>(.*?)</h2>|<p>(.*?)</p>", html, flags=re.S):
        if heading:
            title = heading
            out[title] = ""
        elif title is not None:
            out[title] += paragraph
    return out


def test_reproduce_runs_every_experiment(tmp_path):
    vlm = tiny_model("tiny-pixtral")
    cfg = PaperConfig(tasks=("squares",), pairs_per_direction=1, filter_pairs=False, eval_limit=8, alphas=(0, 2),
                      amplify_items=4, position_items=12, progress=False,
                      verdict=MechanismConfig(items=8, pairs_per_direction=1, filter_pairs=False, probe_items=12,
                                              position_items=12),
                      vision_depth=VisionDepthConfig(probe_items=12, blank_items=4, pairs_per_direction=1,
                                                     flow_items=1, knockout_items=4),
                      attribution=AttributionConfig(pairs_per_direction=1, filter_pairs=False, cell_check=8))
    summary = reproduce(vlm, tmp_path, cfg)
    exp = summary["experiments"]
    assert set(exp) == {"behaviour", "probing", "last_token", "criss_cross", "ablation", "criss_cross_ablated",
                        "amplification", "vision_depth", "attribution", "verdicts"}
    assert [v["numbers"]["model"] for v in exp["verdicts"]["models"]] == ["tiny-pixtral"]
    assert exp["behaviour"]["squares"]["n"] == 8
    assert set(exp["behaviour"]["squares"]["per_direction"]) == {"left", "right", "above", "below"}
    assert exp["last_token"]["n_pairs"] == 4 and exp["criss_cross"]["regions"] == ["object", "strip"]
    # Metrics are named by what each answer is, never c0..c4.
    assert exp["last_token"]["metrics"] == ["clean answer", "middle", "clean image at cf slot", "cf answer",
                                            "cf image at clean slot"]
    assert exp["criss_cross"]["metrics"] == ["clean answer", "middle", "cf answer"]
    assert len(exp["last_token"]["mean"]) == 5 and len(exp["last_token"]["mean"][0]) == vlm.n_lm_layers + 1
    assert set(exp["ablation"]) == {"full", "capped"}
    assert exp["amplification"]["summary"]["probe_fixed_at_alpha0"] == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    for title in ("What was measured", "Table 1", "§4", "§5", "§6", "Table 5", "§7.2", "§8", "Which route",
                  "vision encoder", "Attribution"):
        assert title in html
    assert not re.search(r'"c[0-4]"', json.dumps(exp)) and ">c2<" not in html  # no bare c0..c4 metric names


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_reproduce_runs_on_the_other_architectures(tmp_path, name):
    """With the tests above (Pixtral, Qwen2-VL, Gemma-3) every architecture runs the whole pipeline."""
    summary = reproduce(tiny_model(name), tmp_path, SMALL)
    exp = summary["experiments"]
    assert exp["criss_cross"]["n_pairs"] == 4 and exp["criss_cross_ablated"]["n_pairs"] == 4
    assert exp["probing"]["horizontal"]["n_test_rows"] > 0 and (tmp_path / "report.html").is_file()


def test_compared_organisms_measured_in_the_background_equal_the_serial_run(tmp_path):
    """The panel measured in a spawned worker (one torch thread, as here) is the serial panel, number for number."""
    verdict = MechanismConfig(items=8, pairs_per_direction=1, filter_pairs=False, probe_items=12, position_items=0)
    cfg = dataclasses.replace(SMALL, verdict=verdict, compare_organisms=("organism-qwen2-vl-position",))
    vlm = tiny_model("tiny-qwen2-vl")
    background = reproduce(vlm, tmp_path / "background", cfg)["experiments"]["verdicts"]
    serial = reproduce(vlm, tmp_path / "serial", dataclasses.replace(cfg, background=False))["experiments"]["verdicts"]
    assert [m["numbers"]["model"] for m in background["models"]] == ["tiny-qwen2-vl", "organism-qwen2-vl-position"]
    assert json.dumps(background, sort_keys=True) == json.dumps(serial, sort_keys=True)


def test_the_verdict_reuses_the_position_control_of_section_4_which_equals_measuring_it_again(tmp_path,
                                                                                               monkeypatch):
    verdict = MechanismConfig(items=8, pairs_per_direction=1, filter_pairs=False, probe_items=12, position_items=12,
                              batch_size=SMALL.batch_size)
    cfg = dataclasses.replace(SMALL, verdict=verdict)
    vlm = tiny_model("tiny-qwen2-vl")
    calls = []
    counted = rp.order_vs_position

    def counting(*args, **kwargs):
        calls.append(kwargs["n_items"])
        return counted(*args, **kwargs)

    monkeypatch.setattr(rp, "order_vs_position", counting)
    monkeypatch.setattr(mechanism_module, "order_vs_position", counting)
    exp = reproduce(vlm, tmp_path / "shared", cfg)["experiments"]
    assert calls == [12]  # §4 only: the verdict took §4's measurement
    reused = exp["verdicts"]["models"][0]["numbers"]["position_control"]
    fresh = mechanism_module.position_control(vlm, dataclasses.replace(verdict, seed=cfg.seed))
    assert json.dumps(reused, sort_keys=True) == json.dumps(json.loads(json.dumps(fresh)), sort_keys=True)
    # Other orderings than §4's: the verdict measures its own.
    other = dataclasses.replace(cfg, verdict=dataclasses.replace(verdict, position_items=8))
    calls.clear()
    reproduce(vlm, tmp_path / "own", other)
    assert calls == [12, 8]


def test_an_organisms_vision_depth_measured_in_the_background_equals_the_one_measured_here(tmp_path, monkeypatch,
                                                                                           caplog):
    vlm = si.load("organism-qwen2-vl-position")
    depth = VisionDepthConfig(probe_items=12, blank_items=4, pairs_per_direction=1, flow_items=1, knockout_items=4)
    cfg = dataclasses.replace(SMALL, vision_depth=depth, tasks=("squares",), eval_limit=4)
    ran = []
    here = rp.vision_depth
    monkeypatch.setattr(rp, "vision_depth", lambda *a, **k: ran.append(1) or here(*a, **k))
    background = reproduce(vlm, tmp_path / "background", cfg)["experiments"]["vision_depth"]
    assert ran == []  # the forked worker measured it (the forked copy of this patch was its, not ours)
    serial = reproduce(vlm, tmp_path / "serial", dataclasses.replace(cfg, background=False))["experiments"]
    assert ran == [1] and json.dumps(background, sort_keys=True) == json.dumps(serial["vision_depth"], sort_keys=True)
    # Other weights under the organism's name are refused; a worker that fails leaves the work to this process.
    with pytest.raises(ValueError, match="other weights than the run's model"):
        rp.organism_vision_depth(vlm.info.name, "not-these-weights", dataclasses.asdict(depth), str(tmp_path / "w"))
    monkeypatch.setattr(rp, "organism_vision_depth", _failing_in_the_worker)
    with caplog.at_level("WARNING"):
        other = reproduce(vlm, tmp_path / "other", cfg)["experiments"]["vision_depth"]
    assert "failed (refused); measuring it here" in caplog.text and ran == [1, 1]
    assert json.dumps(other, sort_keys=True) == json.dumps(serial["vision_depth"], sort_keys=True)


def test_an_organisms_own_verdict_measured_in_the_background_equals_the_one_measured_here(tmp_path, monkeypatch,
                                                                                          caplog):
    """Submitted after §4 (with §4's position control), measured by the worker, equal to the serial run."""
    vlm = si.load("organism-qwen2-vl-position")
    verdict = MechanismConfig(items=8, pairs_per_direction=1, filter_pairs=False, probe_items=12, position_items=12,
                              batch_size=SMALL.batch_size)
    cfg = dataclasses.replace(SMALL, verdict=verdict, compare_organisms=(), eval_limit=4)
    ran = []
    here = rp.mechanism
    monkeypatch.setattr(rp, "mechanism", lambda *a, **k: ran.append(1) or here(*a, **k))
    background = reproduce(vlm, tmp_path / "background", cfg)["experiments"]["verdicts"]
    assert ran == []  # the forked worker measured it (its copy of the patch counted there)
    serial = reproduce(vlm, tmp_path / "serial", dataclasses.replace(cfg, background=False))["experiments"]
    assert ran == [1] and json.dumps(background, sort_keys=True) == json.dumps(serial["verdicts"], sort_keys=True)
    with pytest.raises(ValueError, match="other weights than the run's model"):
        rp.organism_verdict(vlm.info.name, dataclasses.asdict(verdict), "not-these-weights")
    monkeypatch.setattr(rp, "organism_verdict", _failing_in_the_worker)
    with caplog.at_level("WARNING"):
        other = reproduce(vlm, tmp_path / "other", cfg)["experiments"]["verdicts"]
    assert "failed (refused); measuring it here" in caplog.text and ran == [1, 1]
    assert json.dumps(other, sort_keys=True) == json.dumps(serial["verdicts"], sort_keys=True)


def _failing_in_the_worker(*args):
    raise RuntimeError("refused")


def test_rerun_resumes_bit_identically_and_other_settings_are_refused_before_any_work(tmp_path, monkeypatch):
    vlm = tiny_model("tiny-qwen2-vl")
    reproduce(vlm, tmp_path, SMALL)
    first = (tmp_path / "summary.json").read_bytes()
    (tmp_path / "report.html").unlink()

    def no_work(*args, **kwargs):
        raise AssertionError("a finished experiment was recomputed")

    with monkeypatch.context() as patched:
        for name in ("evaluate", "collect", "sweep", "ablate", "steer_amplification"):
            patched.setattr(rp, name, no_work)
        reproduce(vlm, tmp_path, SMALL)  # every experiment reused
    assert (tmp_path / "summary.json").read_bytes() == first
    assert (tmp_path / "report.html").is_file()  # the report is rewritten

    # An interrupted run: one experiment's result is gone, the rest are reused, the numbers are the same.
    shutil.rmtree(tmp_path / "ablation")
    with monkeypatch.context() as patched:
        patched.setattr(rp, "evaluate", no_work)
        reproduce(vlm, tmp_path, SMALL)
    assert (tmp_path / "summary.json").read_bytes() == first

    other = rp.dataclasses.replace(SMALL, seed=1)
    with monkeypatch.context() as patched:
        patched.setattr(rp, "evaluate", no_work)  # refused before Table 1 starts
        with pytest.raises(ReproduceMismatchError, match=r"--out .*seed: 0 → 1.*--force"):
            reproduce(vlm, tmp_path, other)
    assert (tmp_path / "summary.json").read_bytes() == first  # nothing of the earlier run was touched
    fresh = reproduce(vlm, tmp_path, other, force=True)
    assert fresh["config"]["seed"] == 1 and fresh["run_key"] != json.loads(first)["run_key"]


def test_cli_rerun_and_refusal(tmp_path, capsys, caplog):
    args = ["reproduce", "--model", "tiny-qwen2-vl", "--out", str(tmp_path), "--tasks", "squares",
            "--pairs-per-direction", "1", "--no-filter", "--limit", "4", "--alphas", "0", "2", "--amplify-items", "4",
            "--no-verdict", "--no-vision-depth", "--no-attribution",
            "--no-progress"]
    assert main(args) == 0
    caplog.clear()
    assert main(args) == 0
    assert "Table 1: reusing the finished result" in caplog.text  # shown at default verbosity by the CLI
    capsys.readouterr()
    assert main([*args, "--seed", "3"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --out") and "--force" in error and len(error.strip().splitlines()) == 1
    assert main([*args, "--seed", "3", "--force"]) == 0


def test_random_model_report_calls_chance_chance(tmp_path):
    """A random tiny model has learned nothing: wherever its numbers' intervals cover chance, the report's
    words must say chance — computed here independently from the stored numbers."""
    vlm = tiny_model("tiny-pixtral")
    summary = reproduce(vlm, tmp_path, SMALL)
    text = _paragraphs((tmp_path / "report.html").read_text(encoding="utf-8"))
    banner = next(v for k, v in text.items() if k.startswith("What was measured"))
    assert "random weights" in banner and "should sit at its chance" in banner
    probing = next(v for k, v in text.items() if k.startswith("§4"))
    for orientation in ("horizontal", "vertical"):
        r = summary["experiments"]["probing"][orientation]
        low, high = wilson_interval(round(r["accuracy"] * r["n_test_rows"]), r["n_test_rows"])
        expected = "above chance" if low > 1 / 3 else "below chance" if high < 1 / 3 else "at chance"
        assert re.search(rf"{orientation} {r['accuracy']:.3f} on \d+ held-out entity tokens, {expected}", probing)
    assert "ordering is carried" not in probing  # the old fixed claim
    table1 = next(v for k, v in text.items() if k.startswith("Table 1"))
    b = summary["experiments"]["behaviour"]["squares"]
    low, high = wilson_interval(b["correct"], b["n"])
    expected = "above chance" if low > 1 / 3 else "below chance" if high < 1 / 3 else "at chance"
    assert f"squares {b['accuracy']:.3f}, {expected}" in table1


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no headless Chromium on this machine")
def test_report_renders_without_console_errors(tmp_path):
    reproduce(tiny_model("tiny-qwen2-vl"), tmp_path, SMALL)
    browser = next(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b))
    done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", (tmp_path / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert "plotly" in done.stdout.lower()
    console = [line for line in done.stderr.splitlines()
               if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
    assert not console, console
