"""What a run will cost, before it runs: parameters, activation memory per forward, the batch that fits a
GPU, and the forwards of ``reproduce`` — read from a model built on the ``meta`` device (no weights).

The activation figure is an estimate of the *peak* of one no-grad forward, per item, in the model's dtype:
the larger of the vision tower's and the LM's one-block working set (residual stream, q/k/v/o,
an eager attention matrix, the MLP's intermediate activations) plus the logits at every position. It
is an upper estimate for eager attention; SDPA/flash kernels need less. Forwards are counted from the
experiment sizes of :class:`~spatial_interp.reproduce.PaperConfig` with the same batching; the pair
filters' counts are lower bounds (each rejected draw costs two more item rows).

Example:
    >>> from spatial_interp.models.load import meta_vlm
    >>> cost = plan(meta_vlm("qwen2_vl"), gpu_memory_gib=80)
    >>> round(cost["parameters"]["total"] / 1e9, 2), cost["sequence_length"] > 144
    (8.29, True)
    >>> cost["fits"]["batch_size"] >= 1
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from PIL import Image

GIB = 1024 ** 3
HEADROOM = 0.9
"""Share of the GPU's memory a plan fills (the CUDA context and allocator fragmentation take the rest)."""


def _bytes_per_value(dtype: Any) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(dtype).replace("torch.", ""), 4)


def _attr(config: Any, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    return default


def _block_working_set(tokens: int, width: int, heads: int, intermediate: int) -> int:
    """Values alive at once in one transformer block: residual + normed input, q/k/v/o, the attention matrix
    (eager), and the MLP's gate/up/activation tensors — the larger of the attention and MLP halves."""
    attention = 4 * tokens * width + heads * tokens * tokens
    mlp = 3 * tokens * intermediate
    return 2 * tokens * width + max(attention, mlp)


def parameters(vlm: Any) -> dict[str, int]:
    """Parameter counts: total, and the vision tower's and the LM's (from module names)."""
    total = vision = 0
    for name, tensor in vlm.model.named_parameters():
        total += tensor.numel()
        if "visual" in name or "vision" in name or "multi_modal_projector" in name:
            vision += tensor.numel()
    return {"total": total, "vision": vision, "language_model": total - vision}


def activation_bytes(vlm: Any, image_size: tuple[int, int] | None = None) -> dict[str, int]:
    """Estimated peak activation bytes of one item's forward (see the module docstring), and its parts."""
    size = image_size or vlm.adapter.native_size
    batch = vlm.prepare([Image.new("RGB", size, "white")], ["The color of the square to the left of the red square is"])
    tokens = int(batch.inputs["input_ids"].shape[1])
    layout = batch.layouts[0]
    text, vision = vlm.adapter.text_config(vlm.config), vlm.config.vision_config
    width_v = vlm.d_vision
    # Patches entering the tower: every patch of every cell (Qwen merges 2×2, Gemma pools 4×4 afterwards).
    patches = int(layout.indices(None, _first_vision_site(vlm)).numel()) if vlm.n_vision_blocks else 0
    per = _bytes_per_value(vlm.dtype)
    lm = _block_working_set(tokens, vlm.d_model, _attr(text, "num_attention_heads", default=1),
                            _attr(text, "intermediate_size", default=4 * vlm.d_model))
    tower = _block_working_set(patches, width_v, _attr(vision, "num_attention_heads", "num_heads", default=1),
                               _attr(vision, "intermediate_size", default=4 * width_v)) if patches else 0
    logits = tokens * _attr(text, "vocab_size", default=len(vlm.tokenizer))  # the head's width, not the tokenizer's
    return {"sequence_length": tokens, "vision_patches": patches, "lm_block": lm * per, "vision_block": tower * per,
            "logits": logits * 4, "peak": max(lm, tower) * per + logits * 4}


def _first_vision_site(vlm: Any) -> Any:
    from .site import vision_block

    return vision_block(0)


def reproduce_forwards(vlm: Any, cfg: Any, batch_size: int) -> dict[str, dict[str, int]]:
    """Item rows and forwards of each experiment of ``reproduce`` at ``cfg``'s sizes, ``batch_size`` rows a forward."""
    from .data import tasks as data_tasks

    def forwards(rows: int) -> int:
        return math.ceil(rows / batch_size)

    limits = [n for n in (cfg.eval_limit, cfg.ablation_limit) if n is not None]
    counts: dict[str, dict[str, int]] = {}
    table1 = {t: len(getattr(data_tasks, f"{t}_items")(vlm.canvas)) for t in cfg.tasks}
    rows = sum(min(n, cfg.eval_limit) if cfg.eval_limit else n for n in table1.values())
    counts["Table 1"] = {"rows": rows, "forwards": sum(forwards(min(n, cfg.eval_limit) if cfg.eval_limit else n)
                                                        for n in table1.values())}
    task = data_tasks.task_for("squares", vlm.canvas)
    probing = sum(len(data_tasks.probing_items(task, vlm.canvas, o)) for o in ("horizontal", "vertical"))
    counts["§4 probes"] = {"rows": probing, "forwards": 2 * forwards(probing // 2)}
    pairs = 4 * cfg.pairs_per_direction
    slots = vlm.n_lm_layers + 1
    for name, regions in (("§5 last token", 1), ("§6 criss-cross", 2), ("§7.2 under the ablation", 1)):
        patched = pairs * slots * regions
        # clean + source runs, the patched rows, and at least the accepted pairs' two filter rows
        rows = 2 * pairs + patched + (2 * pairs if cfg.filter_pairs else 0)
        counts[name] = {"rows": rows, "forwards": forwards(2 * pairs) + forwards(patched)
                        + (forwards(2 * pairs) if cfg.filter_pairs else 0)}
    ablated = sum(min([n, *limits]) if limits else n for n in table1.values())
    counts["Table 5 ablation"] = {"rows": 2 * ablated, "forwards": 2 * sum(
        forwards(min([n, *limits]) if limits else n) for n in table1.values())}
    steered = cfg.amplify_items * (1 + 2 * sum(1 for a in cfg.alphas if a != 0))
    counts["§8 amplification"] = {"rows": steered, "forwards": forwards(cfg.amplify_items) + 2 * forwards(
        cfg.amplify_items * sum(1 for a in cfg.alphas if a != 0))}
    counts["total"] = {key: sum(c[key] for c in counts.values()) for key in ("rows", "forwards")}
    return counts


def plan(vlm: Any, *, gpu_memory_gib: float | None = None, batch_size: int | None = None,
         image_size: tuple[int, int] | None = None, paper_sizes: bool = True) -> dict[str, Any]:
    """The cost of running ``vlm`` (a meta-device model is enough): see the module docstring."""
    from .reproduce import PaperConfig

    params = parameters(vlm)
    per = _bytes_per_value(vlm.dtype)
    weights = params["total"] * per
    activations = activation_bytes(vlm, image_size)
    out: dict[str, Any] = {"model": vlm.info.name, "arch": vlm.arch, "dtype": str(vlm.dtype).replace("torch.", ""),
                           "parameters": params, "weights_bytes": weights,
                           "sequence_length": activations["sequence_length"], "activations": activations}
    if gpu_memory_gib is not None:
        if gpu_memory_gib <= 0:
            raise ValueError(f"--gpu-memory must be a positive number of GiB, got {gpu_memory_gib}")
        free = gpu_memory_gib * GIB * HEADROOM - weights
        fits = int(free // activations["peak"]) if free > 0 else 0
        out["fits"] = {"gpu_memory_gib": gpu_memory_gib, "batch_size": fits,
                       "note": "the weights alone do not fit" if free <= 0 else
                       f"{HEADROOM:.0%} of the memory, minus the weights, over the per-item peak"}
    batch = batch_size or (out.get("fits", {}).get("batch_size") or PaperConfig().batch_size)
    cfg = PaperConfig.paper_sizes() if paper_sizes else PaperConfig()
    out["reproduce"] = {"paper_sizes": paper_sizes, "batch_size": batch,
                        "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                                   if k in ("tasks", "pairs_per_direction", "amplify_items", "alphas", "eval_limit",
                                            "ablation_limit", "filter_pairs")},
                        "experiments": reproduce_forwards(vlm, cfg, max(1, batch))}
    return out
