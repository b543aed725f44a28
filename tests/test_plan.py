"""``plan`` and ``spatial-interp plan``: counts checked against the model itself and the engine's counter."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from spatial_interp.cli import main
from spatial_interp.interventions.engine import count_forwards
from spatial_interp.models.load import meta_vlm
from spatial_interp.plan import GIB, HEADROOM, plan
from spatial_interp.reproduce import PaperConfig, behaviour
from tests._models import tiny_model


def test_plan_counts_match_the_model_and_the_engine():
    vlm = tiny_model("tiny-qwen2-vl")
    cost = plan(vlm, gpu_memory_gib=1, batch_size=4, paper_sizes=False)
    assert cost["parameters"]["total"] == sum(p.numel() for p in vlm.model.parameters())
    assert 0 < cost["parameters"]["vision"] < cost["parameters"]["total"]
    assert cost["weights_bytes"] == 4 * cost["parameters"]["total"]  # float32
    batch = vlm.prepare([Image.new("RGB", vlm.adapter.native_size)],
                        ["The color of the square to the left of the red square is"])
    assert cost["sequence_length"] == batch.inputs["input_ids"].shape[1]
    peak = cost["activations"]["peak"]
    assert cost["fits"]["batch_size"] == int((1 * GIB * HEADROOM - cost["weights_bytes"]) // peak)
    # Table 1's forward count is exact: measured with the engine's counter on the same sizes and batching.
    cfg = PaperConfig(tasks=("squares",), eval_limit=8, batch_size=4, progress=False)
    with count_forwards() as seen:
        behaviour(vlm, cfg)
    from spatial_interp.plan import reproduce_forwards

    assert reproduce_forwards(vlm, cfg, 4)["Table 1"] == {"rows": 8, "forwards": seen.forwards} == {"rows": 8,
                                                                                                   "forwards": 2}


def test_plan_on_a_real_size_meta_model():
    cost = plan(meta_vlm("qwen2_vl"), gpu_memory_gib=80)
    assert cost["parameters"]["total"] == pytest.approx(8.29e9, rel=0.01)  # Qwen2-VL-7B-Instruct
    assert cost["activations"]["vision_patches"] == 4 * 144  # 2×2 patches per 28 px cell of the 12×12 grid
    experiments = cost["reproduce"]["experiments"]
    assert experiments["Table 1"]["rows"] == 480 + 480 + 1344
    batch = cost["reproduce"]["batch_size"]
    assert experiments["Table 1"]["forwards"] == sum(math.ceil(n / batch) for n in (480, 480, 1344))
    with pytest.raises(ValueError, match="positive"):
        plan(meta_vlm("qwen2_vl"), gpu_memory_gib=0)


def test_plan_cli(capsys):
    assert main(["plan", "meta-gemma3", "--gpu-memory", "24", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "parameters 4.3" in out and "on 24 GiB: batch size" in out and "total" in out
    assert main(["plan", "meta-gemma3", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
