"""Attention flow and knockout against a hand-written eager attention (plain PyTorch, no nnsight).

The reference recomputes each vision attention module from its own weights and inputs in a forward
hook (projections, rotary, per-image / per-segment softmax, output projection, written out here per
architecture family), applies a hand-built mask, and replaces the module's output. It shares only the
geometry (``layout.indices``) with the library.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions.attention import (
    AttentionError,
    Knockout,
    attention_flow,
    attention_path,
    knockout,
    run_attention,
)
from spatial_interp.interventions.engine import Read
from spatial_interp.interventions.examples import Example
from tests._models import TINY_NAMES, tiny_model
from tests.interventions.conftest import PROMPT, noise


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _hand_attention(vlm, module, args, kwargs, blocked, keep):
    """The module's attention recomputed by hand with ``blocked`` (global rows × rows) masked out.

    Returns the module's output and the per-head softmax as a (heads, rows, rows) global matrix."""
    x = args[0] if args else kwargs["hidden_states"]
    if vlm.arch in ("qwen2_vl", "qwen2_5_vl"):
        n = x.shape[0]
        q, k, v = module.qkv(x).reshape(n, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = (t.unsqueeze(-2).float() for t in kwargs["position_embeddings"])
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, rows, dim)
        bounds = kwargs["cu_seqlens"].tolist()
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            allowed[a:b, a:b] = True
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        p = scores.masked_fill(~(allowed & ~blocked), float("-inf")).softmax(-1)
        keep.append(p)
        return module.proj((p @ v).transpose(0, 1).reshape(n, -1))
    bsz, s, _ = x.shape
    heads = module.num_heads
    q, k, v = (proj(x).view(bsz, s, heads, -1).transpose(1, 2)
               for proj in (module.q_proj, module.k_proj, module.v_proj))
    extra = torch.zeros(bsz, 1, s, s)
    if vlm.arch == "pixtral":
        cos, sin = (t.unsqueeze(0) for t in kwargs["position_embeddings"])
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        extra = extra + kwargs["attention_mask"]
    scale = module.scale if hasattr(module, "scale") else module.scaling
    diag = torch.stack([blocked[b * s:(b + 1) * s, b * s:(b + 1) * s] for b in range(bsz)])[:, None]
    scores = q @ k.transpose(-1, -2) * scale + extra
    p = scores.masked_fill(diag, float("-inf")).softmax(-1)  # (batch, heads, s, s)
    full = torch.zeros(heads, bsz * s, bsz * s)
    for b in range(bsz):
        full[:, b * s:(b + 1) * s, b * s:(b + 1) * s] = p[b]
    keep.append(full)
    out = module.o_proj if vlm.arch == "pixtral" else module.out_proj
    return out((p @ v).transpose(1, 2).reshape(bsz, s, -1)), None


@contextlib.contextmanager
def hand_masked(vlm, blocks, blocked, keep):
    handles = []
    for k in blocks:
        def hook(module, args, kwargs, output):
            return _hand_attention(vlm, module, args, kwargs, blocked, keep)
        handles.append(vlm.model.get_submodule(attention_path(vlm, k)).register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _setup(name, n=2):
    vlm = tiny_model(name)
    examples = [Example(noise(vlm.adapter.native_size, 700 + i), PROMPT) for i in range(n)]
    batch = vlm.prepare([e.image for e in examples], [e.prompt for e in examples])
    return vlm, examples, batch


def _left(example, layout):
    return Region.columns(layout.grid, 0, max(1, layout.grid.cols // 3))


def _blocked(vlm, batch, queries, keys):
    """Global (rows × rows) mask: a query row of ``queries`` may not read a key row of ``keys``, per image."""
    spans = si.interventions.attention.image_rows(vlm, batch.layouts)
    blocked = torch.zeros(spans[-1][1], spans[-1][1], dtype=torch.bool)
    site = si.site.vision_block(0)
    for layout in batch.layouts:
        q = layout.indices(queries(layout), site)
        k = layout.indices(keys(layout), site)
        blocked[q[:, None], k[None, :]] = True
    return blocked


@pytest.mark.parametrize("name", TINY_NAMES)
def test_knockout_equals_hand_masked_attention(name):
    vlm, examples, batch = _setup(name, n=1 if name == "tiny-gemma3" else 2)  # Gemma: 4096 rows an image
    last = vlm.n_vision_blocks - 1
    blocks = [0] if last == 0 else [0, last]
    # The background cannot read the left strip: every query outside it loses those keys.
    ko = Knockout(queries="rest", keys=_left, blocks=blocks)
    blocked = _blocked(vlm, batch, lambda lay: Region.all(lay.grid) - _left(None, lay), lambda lay: _left(None, lay))
    rows = torch.cat([lay.indices(None, si.site.vision_block(last)) for lay in batch.layouts])
    read = Read(si.site.vision_block(last), None, rows)
    clean = run_attention(vlm, batch, examples, reads=[read])
    ours = run_attention(vlm, batch, examples, [ko], reads=[read])
    seen = {}

    def grab(module, args, output):
        seen["rows"] = vlm.adapter.flatten_vision(output[0] if isinstance(output, tuple) else output)[rows]

    with torch.no_grad(), hand_masked(vlm, blocks, blocked, []):
        handle = vlm.module(si.site.vision_block(last)).register_forward_hook(grab)
        try:
            logits = vlm.model(**batch.inputs).logits[:, -1]
        finally:
            handle.remove()
    mismatch = (ours.reads[0] - seen["rows"]).abs().max()
    torch.testing.assert_close(ours.reads[0], seen["rows"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.logits, logits, atol=1e-5, rtol=0)
    # ...and the knockout moves the tower far more than the two implementations differ (otherwise the
    # comparison above could not tell a working knockout from none).
    effect = (ours.reads[0] - clean.reads[0]).abs().max()
    assert effect > 1e-3 and effect > 100 * mismatch, (float(effect), float(mismatch))


def o_dim(output, vlm):
    return vlm.adapter.vision_out_tensor(output).shape[-1]


@pytest.mark.parametrize("name", TINY_NAMES)
def test_knockout_of_nothing_is_the_clean_run(name):
    vlm, examples, batch = _setup(name)
    nothing = Knockout(queries=lambda ex, lay: Region(lay.grid), keys=None)  # no query row: nothing blocked
    with torch.no_grad():
        clean = vlm.model(**batch.inputs).logits[:, -1]
    out = run_attention(vlm, batch, examples, [nothing])
    torch.testing.assert_close(out.logits, clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_flow_equals_hand_softmax(name):
    vlm, examples, batch = _setup(name, n=1 if name == "tiny-gemma3" else 2)  # Gemma: 4096 rows an image
    regions = {"left": _left}
    flow = attention_flow(vlm, examples, regions)
    keep = []
    spans = si.interventions.attention.image_rows(vlm, batch.layouts)
    blocked = torch.zeros(spans[-1][1], spans[-1][1], dtype=torch.bool)
    with torch.no_grad(), hand_masked(vlm, range(vlm.n_vision_blocks), blocked, keep):
        vlm.model(**batch.inputs)
    site = si.site.vision_block(0)
    for k, p in enumerate(keep):
        for i, (layout, (start, stop)) in enumerate(zip(batch.layouts, spans, strict=True)):
            left = layout.indices(_left(None, layout), site)
            rest = layout.indices(Region.all(layout.grid) - _left(None, layout), site)
            groups = {"left": left, "rest": rest}
            if "non-cell" in flow.coords["from"]:
                cells = torch.cat([left, rest])
                groups["non-cell"] = torch.tensor([r for r in range(start, stop) if r not in set(cells.tolist())])
            for a, qa in groups.items():
                for b, kb in groups.items():
                    want = p[:, qa][:, :, kb].sum(-1).mean(-1)
                    got = torch.from_numpy(flow.sel(block=k, item=examples[i].name, **{"from": a, "to": b}).values)
                    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=0)
    assert flow.attrs["max_deviation"] < 1e-5
    sums = flow.values.sum(-1)
    assert abs(sums - 1).max() < 1e-4


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-pixtral"])
def test_flow_under_knockout_reads_zero_where_blocked(name):
    vlm, examples, _ = _setup(name, n=1)
    ko = Knockout(queries=_left, keys="rest")
    flow = attention_flow(vlm, examples, {"left": _left}, knockouts=[ko])
    assert float(flow.sel(**{"from": "left", "to": "rest"}).values.max()) == 0.0
    assert abs(flow.sel(**{"from": "left", "to": "left"}).values - 1).max() < 1e-5
    clean = attention_flow(vlm, examples, {"left": _left}).sel(**{"from": "left", "to": "rest"}).values
    # Qwen2.5-VL's windowed blocks tile the grid in 4-cell windows, so the left 4 columns never see the rest
    # there; its full-attention blocks (and every Gemma block) do.
    full = getattr(vlm.config.vision_config, "fullatt_block_indexes", None) or range(vlm.n_vision_blocks)
    windowed = [k for k in range(vlm.n_vision_blocks) if k not in full]
    assert clean[list(full)].min() > 0.01
    assert windowed == [] or float(abs(clean[windowed]).max()) == 0.0


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-pixtral"])
def test_remote_round_trip(chat, name):
    vlm, examples, _ = _setup(name)
    vlm = chat(vlm)
    ko = [Knockout(queries="rest", keys=_left, blocks=(0,))]
    local = knockout(vlm, examples, ko)
    remote = knockout(vlm, examples, ko, remote="local")
    torch.testing.assert_close(torch.from_numpy(remote.values), torch.from_numpy(local.values), atol=1e-6, rtol=0)
    f_local = attention_flow(vlm, examples, {"left": _left}, knockouts=ko)
    f_remote = attention_flow(vlm, examples, {"left": _left}, knockouts=ko, remote="local")
    torch.testing.assert_close(torch.from_numpy(f_remote.values), torch.from_numpy(f_local.values), atol=1e-6, rtol=0)


def test_bad_requests_are_refused(monkeypatch):
    vlm, examples, batch = _setup("tiny-qwen2-vl", n=1)
    with pytest.raises(AttentionError, match="both be 'rest'"):
        Knockout(queries="rest", keys="rest")
    with pytest.raises(AttentionError, match="block indices"):
        Knockout(blocks=[-1])
    with pytest.raises(AttentionError, match="out of range"):
        run_attention(vlm, batch, examples, [Knockout(blocks=[vlm.n_vision_blocks])])
    with pytest.raises(AttentionError, match="disjoint"):
        attention_flow(vlm, examples, {"a": _left, "b": _left})
    with pytest.raises(AttentionError, match="flow's own name"):
        attention_flow(vlm, examples, {"rest": _left})
    monkeypatch.setattr(vlm.config.vision_config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(AttentionError, match="sdpa"):
        attention_flow(vlm, examples, {"left": _left})
