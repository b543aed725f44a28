"""An independent implementation of the interventions with plain PyTorch forward hooks.

It shares only the geometry (``layout.indices``) with the library: every item runs alone (batch of
one), activations are captured and written by hooks on ``vlm.module(site)``, and no nnsight or
``spatial_interp.interventions`` code is used. The library's batched nnsight results must match it.
"""

from __future__ import annotations

import contextlib

import torch


def _hidden_of(vlm, site, output):
    return vlm.adapter.vision_out_tensor(output) if site.kind == "vision_out" else output


@contextlib.contextmanager
def hooked(vlm, site, edit):
    """Run ``edit(activation)`` (in place; LM: (batch, pos, d), vision: (rows, d) copy written back)."""
    module = vlm.module(site)

    def apply(tensor):
        if site.is_vision:
            flat = tensor.reshape(-1, tensor.shape[-1]).clone()
            edit(flat)
            tensor.copy_(flat.view(tensor.shape))
        else:
            edit(tensor)

    if vlm.reads_input(site):
        def pre(mod, args, kwargs):
            if args:
                hidden = args[0].clone()
                apply(hidden)
                return (hidden, *args[1:]), kwargs
            hidden = kwargs["hidden_states"].clone()
            apply(hidden)
            return args, {**kwargs, "hidden_states": hidden}

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(mod, args, output):
            apply(_hidden_of(vlm, site, output))
            return output

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def single(vlm, image, prompt, system=None):
    return vlm.prepare([image], [prompt], **({} if system is None else {"system": system}))


@torch.no_grad()
def capture(vlm, image, prompt, site, region=None):
    """Activation rows of ``region`` at ``site`` for one item (rows in ``layout.indices`` order)."""
    batch = single(vlm, image, prompt)
    positions = batch.layouts[0].indices(region, site)
    out = {}

    def grab(t):
        out["rows"] = (t[positions] if site.is_vision else t[0, positions]).clone()

    with hooked(vlm, site, grab):
        vlm.model(**batch.inputs)
    return out["rows"]


@torch.no_grad()
def capture_many(vlm, image, prompt, requests):
    """``capture`` for several ``(site, region)`` requests in one forward."""
    batch = single(vlm, image, prompt)
    out = [None] * len(requests)
    with contextlib.ExitStack() as stack:
        for k, (site, region) in enumerate(requests):
            positions = batch.layouts[0].indices(region, site)

            def grab(t, k=k, positions=positions, site=site):
                out[k] = (t[positions] if site.is_vision else t[0, positions]).clone()

            stack.enter_context(hooked(vlm, site, grab))
        vlm.model(**batch.inputs)
    return out


@torch.no_grad()
def run_with_writes(vlm, image, prompt, writes):
    """Final logits of one item with ``writes = [(site, region_or_positions_fn, values)]`` applied in order."""
    batch = single(vlm, image, prompt)
    layout = batch.layouts[0]
    with contextlib.ExitStack() as stack:
        for site, region, values in writes:
            positions = region(layout) if callable(region) else layout.indices(region, site)

            def write(t, positions=positions, values=values, site=site):
                if site.is_vision:
                    t[positions] = values
                else:
                    t[0, positions] = values

            stack.enter_context(hooked(vlm, site, write))
        return vlm.model(**batch.inputs).logits[0, -1]


@torch.no_grad()
def steered(vlm, image, prompt, site, region, directions, alpha):
    batch = single(vlm, image, prompt)
    positions = batch.layouts[0].indices(region, site)

    def steer(t):
        h = t[0, positions]
        coef = (h @ directions.T) / (directions.norm(dim=1) ** 2 + 1e-8)
        t[0, positions] = h + alpha * coef @ directions

    with hooked(vlm, site, steer):
        return vlm.model(**batch.inputs).logits[0, -1]


@torch.no_grad()
def plain(vlm, image, prompt):
    return vlm.model(**single(vlm, image, prompt).inputs).logits[0, -1]


@torch.no_grad()
def capture_with_writes(vlm, image, prompt, writes, site, region):
    """Rows of ``region`` at ``site`` after ``writes`` (hooks registered first run first)."""
    batch = single(vlm, image, prompt)
    layout = batch.layouts[0]
    out = {}
    with contextlib.ExitStack() as stack:
        for w_site, w_region, values in writes:
            positions = layout.indices(w_region, w_site)

            def write(t, positions=positions, values=values):
                t[0, positions] = values

            stack.enter_context(hooked(vlm, w_site, write))
        positions = layout.indices(region, site)
        stack.enter_context(hooked(vlm, site, lambda t: out.__setitem__("rows", t[0, positions].clone())))
        vlm.model(**batch.inputs)
    return out["rows"]
