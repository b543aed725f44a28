"""Traced streams equal an independent plain-PyTorch forward-hook capture on the same modules."""

import numpy as np
import torch
from PIL import Image

import spatial_interp as si
from tests._models import tiny_model


def images(size, n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def hook_capture(vlm, batch, sites):
    """Reference: register raw hooks on each site's module, run vlm.model(**inputs)."""
    captured, handles = {}, []
    for s in sites:
        module = vlm.model.get_submodule(vlm.module_path(s))
        if s.kind == "lm_resid" and s.index == 0:
            def pre(m, args, kwargs, s=s):
                captured[str(s)] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(m, args, out, s=s):
                value = out.pooler_output if hasattr(out, "pooler_output") and s.kind == "vision_out" else out
                value = value[0] if isinstance(value, tuple) else value
                captured[str(s)] = value.detach().clone()
            handles.append(module.register_forward_hook(post))
    with torch.no_grad():
        logits = vlm.model(**batch.inputs).logits
    for h in handles:
        h.remove()
    return captured, logits


def test_trace_matches_raw_hooks_and_plain_forward(tiny_vlm):
    vlm = tiny_vlm
    size = vlm.adapter.native_size
    batch = vlm.prepare(images(size, 2), ["The color of the square is ", "Which object is on the left "])
    sites = [si.site.vision_block(0), si.site.vision_block(vlm.n_vision_blocks - 1), si.site.vision_out,
             si.site.lm_resid(0), si.site.lm_resid(1), si.site.lm_resid(vlm.n_lm_layers)]
    reference, ref_logits = hook_capture(vlm, batch, sites)
    traced = {}
    with vlm.trace(batch):
        for s in sites:
            traced[str(s)] = vlm.stream(s).save()
        last = vlm.stream(si.site.lm_resid(vlm.n_lm_layers).last_token).save()
        logits = vlm.logits().save()
    for s in sites:
        ref = reference[str(s)]
        ref = ref.reshape(-1, ref.shape[-1]) if s.is_vision else ref
        assert torch.allclose(traced[str(s)], ref, atol=1e-6), s
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    assert torch.allclose(vlm.forward(batch), logits, atol=1e-6)
    assert torch.equal(last, traced[str(sites[-1])][:, -1])
    assert traced["vision_out"].shape == (sum(layout.grid.n_cells for layout in batch.layouts), vlm.d_model)


def test_in_place_write_in_trace_changes_downstream_like_a_hook():
    """Zeroing lm_resid(1) at the image rows inside a trace equals doing it with a raw hook."""
    vlm = tiny_model("tiny-qwen2-vl")
    batch = vlm.prepare(images((336, 336), 1), ["The color of the square is "])
    rows = batch.layouts[0].indices(si.Region.columns(batch.layouts[0].grid, 0, 4), si.site.lm_resid(1))
    with vlm.trace(batch):
        h = vlm.stream(si.site.lm_resid(1))
        h[0, rows] = 0.0
        traced = vlm.logits().save()

    def zero(module, args, out):
        out[0, rows] = 0.0
        return out

    handle = vlm.model.get_submodule(vlm.module_path(si.site.lm_resid(1))).register_forward_hook(zero)
    try:
        reference = vlm.forward(batch)
    finally:
        handle.remove()
    assert torch.allclose(traced, reference, atol=1e-6)
    assert not torch.allclose(traced, vlm.forward(batch), atol=1e-3)
