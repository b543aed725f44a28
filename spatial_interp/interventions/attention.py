"""Attention inside the vision tower: flow between regions, and attention knockout as an intervention.

Both work on the model's own attention kernel call. Every Hugging Face attention module hands its
post-rotary queries, keys and values to one ``attention_interface(module, q, k, v, attention_mask,
scaling=...)`` call; nnsight's ``.source`` exposes that call's inputs, so

* **flow** recomputes ``softmax(q kᵀ · scaling + mask)`` from those very inputs and sums it into
  region → region mass per head; the recomputed ``softmax · v`` is compared with the call's own
  output (the largest difference is returned, and over ``1e-5`` for float32 raises), so the flow is
  the attention the model ran, whatever kernel (eager, sdpa) it uses;
* **knockout** adds ``-inf`` to the call's additive mask where a query of one region would read a key
  of another, in the chosen blocks; the rest of the forward runs unchanged.

The architecture answers come from the adapter: ``vision_attention`` (the attention module under each
block), ``vision_attention_call`` (the source label of the kernel call) and
``vision_attention_segments`` (Qwen's packed ``cu_seqlens``: those blocks run every image, or window,
as one sequence, so the segments are folded into the mask and the call sees one segment).

Remote safety is the engine's (:mod:`.engine`): everything is resolved into plain tensors and strings
before the ``with`` block, and the body touches only the envoy, tensors and torch, so the same body
runs locally, with ``remote="local"`` and on NDIF.

Example:
    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.geometry import Region
    >>> from spatial_interp.interventions.attention import Knockout, attention_flow, knockout
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> items = [(Image.new("RGB", (336, 336), c), "The color is ") for c in ("red", "blue")]
    >>> left = lambda example, layout: Region.columns(layout.grid, 0, 4)
    >>> flow = attention_flow(vlm, items, {"left": left})
    >>> flow.axes, flow.coords["from"]
    (('block', 'head', 'item', 'from', 'to'), ['left', 'rest'])
    >>> bool(abs(flow.values.sum(-1) - 1).max() < 1e-4), flow.attrs["max_deviation"] < 1e-5
    (True, True)
    >>> blocked = attention_flow(vlm, items, {"left": left}, knockouts=[Knockout(queries="rest", keys=left)])
    >>> float(blocked.sel(**{"from": "rest", "to": "left"}).values.max())
    0.0
    >>> knockout(vlm, items, [Knockout(queries=left, keys="rest", blocks=(0,))]).axes
    ('item', 'metric')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..geometry import ImageLayout, Region
from ..models.vlm import DEFAULT_SYSTEM, VLM, Batch
from ..results import LabelledArray, provenance
from ..site import vision_block
from .engine import Edit, Read, _build_plan, forward_key, home_device
from .examples import Example, RegionSpec, as_example, prepared_chunks, resolve_region
from .metrics import Metric, evaluate

log = logging.getLogger(__name__)

REST = "rest"
"""Flow group of the cells no named region holds (and, in a knockout, the name for them)."""
NON_CELL = "non-cell"
"""Flow group of the block rows that belong to no cell (LLaVA's CLS row)."""
QUERY_CHUNK = 1024
"""Query rows per softmax chunk when computing flow (bounds memory at ``heads × chunk × sequence``)."""


class AttentionError(ValueError):
    """A knockout or flow request this model's vision attention cannot serve as asked."""


@dataclass(frozen=True)
class Knockout:
    """Queries in ``queries`` cannot read keys in ``keys`` at vision blocks ``blocks`` (``None``: all).

    ``queries`` and ``keys`` are region specs (a Region, a function ``(example, layout) -> Region``,
    ``None``/``"all"`` for every cell) or ``"rest"``: the cells not in the *other* region (e.g.
    ``Knockout(queries="rest", keys=objects)``: the background cannot read the objects). Rows of no
    cell (LLaVA's CLS) are never knocked out.

    >>> Knockout(queries="rest", keys=None, blocks=[1, 0]).blocks
    (0, 1)
    """

    queries: RegionSpec | str = None
    keys: RegionSpec | str = None
    blocks: Sequence[int] | None = None
    name: str = "knockout"

    def __post_init__(self) -> None:
        if self.queries == REST and self.keys == REST:
            raise AttentionError("a knockout's queries and keys cannot both be 'rest' (the rest of what?); name one "
                                 "region, e.g. Knockout(queries='rest', keys=objects)")
        if self.blocks is not None:
            blocks = [self.blocks] if isinstance(self.blocks, int) else list(self.blocks)
            for k in blocks:
                if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
                    raise AttentionError(f"knockout blocks must be vision block indices >= 0, got {k!r}")
            object.__setattr__(self, "blocks", tuple(sorted({int(k) for k in blocks})))

    def regions(self, example: Example, layout: ImageLayout) -> tuple[Region, Region]:
        """``(query cells, key cells)`` on this image."""
        named = {side: self._region(getattr(self, side), example, layout) for side in ("queries", "keys")
                 if getattr(self, side) != REST}
        everything = Region.all(layout.grid)
        q = named.get("queries", everything - named.get("keys", everything))
        k = named.get("keys", everything - named.get("queries", everything))
        return q, k

    def _region(self, spec: Any, example: Example, layout: ImageLayout) -> Region:
        region = resolve_region(spec, example, layout)
        if not isinstance(region, Region):
            raise AttentionError(f"knockout {self.name!r}: a region spec gave a {type(region).__name__}; queries and "
                                 "keys must each be one Region (not a Swap)")
        return region


@dataclass
class AttentionRun:
    logits: Float[Tensor, "batch vocab"]
    """Final-position logits of every batch row."""
    reads: list[Float[Tensor, "n d"]]
    """One tensor per :class:`~.engine.Read`, in the order given."""
    flow: dict[int, Float[Tensor, "heads groups groups"]]
    """Per flow block: attention mass summed over queries of each group onto keys of each group."""
    deviation: dict[int, float]
    """Per flow block: largest ``|softmax · v − the kernel's output|`` (the recomputation check)."""


# --- planning ------------------------------------------------------------------------------------
def check_attention(vlm: VLM, blocks: Sequence[int]) -> None:
    """Refuse what the kernel-call interception cannot serve: no vision blocks, bad indices, flash kernels."""
    n = vlm.n_vision_blocks
    if n == 0:
        raise AttentionError(f"{vlm.info.name} has no vision blocks (a depth-0 tower), so there is no vision "
                             "attention to read or knock out")
    bad = [k for k in blocks if not 0 <= k < n]
    if bad:
        raise AttentionError(f"vision blocks {bad} are out of range for {vlm.info.name}: blocks run 0..{n - 1}")
    implementation = getattr(vlm.config.vision_config, "_attn_implementation", None) or ""
    if "flash" in implementation:
        raise AttentionError(f"the vision tower runs {implementation!r}, which takes no additive mask and returns no "
                             "weights; load the model with attn_implementation='sdpa' or 'eager' for attention "
                             "flow and knockouts")


def attention_path(vlm: VLM, k: int) -> str:
    """Module path of vision block ``k``'s attention (the adapter names it)."""
    return f"{vlm.module_path(vision_block(k))}.{vlm.adapter.vision_attention}"


def _check_call(vlm: VLM, path: str) -> None:
    label = vlm.adapter.vision_attention_call
    names = vlm.envoy.get(path).source.names
    if label not in names:
        calls = [n for n in names if n.startswith("attention_interface")]
        raise AttentionError(f"{path} has no operation {label!r} (its attention calls: {calls}); the installed "
                             f"transformers' {vlm.arch} attention changed: update vision_attention_call in the "
                             "adapter")


def image_rows(vlm: VLM, layouts: Sequence[ImageLayout]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each image's rows in a flattened vision-block activation of this batch."""
    spans, start = [], 0
    for layout in layouts:
        n = vlm.adapter.vision_block_rows_per_image(layout.grid, vlm.processor, vlm.config)
        spans.append((start, start + n))
        start += n
    return spans


def knockout_flags(vlm: VLM, knockouts: Sequence[Knockout], examples: Sequence[Example],
                   layouts: Sequence[ImageLayout]) -> tuple[Bool[Tensor, "j rows"], Bool[Tensor, "j rows"]]:
    """Per knockout: which block rows are its queries, and which its keys (same rows at every block)."""
    total = image_rows(vlm, layouts)[-1][1]
    queries = torch.zeros(len(knockouts), total, dtype=torch.bool)
    keys = torch.zeros_like(queries)
    site = vision_block(0)
    for j, ko in enumerate(knockouts):
        for example, layout in zip(examples, layouts, strict=True):
            q, k = ko.regions(example, layout)
            queries[j, layout.indices(q, site)] = True
            keys[j, layout.indices(k, site)] = True
    return queries, keys


def flow_groups(vlm: VLM, regions: Mapping[str, RegionSpec], examples: Sequence[Example],
                layouts: Sequence[ImageLayout]) -> tuple[Int[Tensor, " rows"], list[str]]:
    """Group id ``image · G + group`` of every block row; groups are the regions, ``rest`` and ``non-cell``."""
    names = [*regions, REST, NON_CELL]
    n_groups = len(names)
    spans = image_rows(vlm, layouts)
    groups = torch.empty(spans[-1][1], dtype=torch.long)
    site = vision_block(0)
    for i, (example, layout, (start, stop)) in enumerate(zip(examples, layouts, spans, strict=True)):
        groups[start:stop] = i * n_groups + names.index(NON_CELL)
        taken = Region(layout.grid)
        for g, (name, spec) in enumerate(regions.items()):
            region = resolve_region(spec, example, layout)
            if not isinstance(region, Region):
                raise AttentionError(f"flow region {name!r} gave a {type(region).__name__}; give one Region per name")
            overlap = region & taken
            if len(overlap):
                raise AttentionError(f"flow region {name!r} shares {len(overlap)} cells with an earlier region on item "
                                     f"{example.name!r}; flow regions must be disjoint (subtract the earlier ones)")
            taken = taken | region
            groups[layout.indices(region, site)] = i * n_groups + g
        groups[layout.indices(Region.all(layout.grid) - taken, site)] = i * n_groups + names.index(REST)
    return groups, names


def _attention_steps(vlm: VLM, knockouts: Sequence[Knockout], flow_blocks: Sequence[int], flags, groups,
                     n_groups: int) -> dict[int, tuple]:
    """Per block: the plain-data attention step the trace body runs (see :func:`_traced`)."""
    device = home_device(vlm)
    every = range(vlm.n_vision_blocks)
    per_block: dict[int, list[int]] = {}
    for j, ko in enumerate(knockouts):
        for k in (every if ko.blocks is None else ko.blocks):
            per_block.setdefault(k, []).append(j)
    blocks = sorted(set(per_block) | set(flow_blocks))
    check_attention(vlm, blocks)
    steps = {}
    for k in blocks:
        path = attention_path(vlm, k)
        _check_call(vlm, path)
        chosen = per_block.get(k)
        qf = kf = None
        if chosen:
            qf, kf = flags[0][chosen].to(device), flags[1][chosen].to(device)
        g = groups.to(device) if k in flow_blocks else None
        steps[k] = (path, vlm.adapter.vision_attention_call, vlm.adapter.vision_attention_segments, qf, kf, g,
                    n_groups, QUERY_CHUNK)
    return steps


# --- the forward ---------------------------------------------------------------------------------
def run_attention(
    vlm: VLM,
    batch: Batch,
    examples: Sequence[Example],
    knockouts: Sequence[Knockout] = (),
    edits: Sequence[Edit] = (),
    reads: Sequence[Read] = (),
    *,
    flow: Mapping[str, RegionSpec] | None = None,
    flow_blocks: Sequence[int] | None = None,
    remote: bool | str = False,
) -> AttentionRun:
    """One forward over ``batch`` with knockouts, edits (as :func:`~.engine.run`) and reads, and optional flow.

    ``examples`` are the batch's items (region functions see them). ``flow`` names disjoint regions
    whose attention mass is summed at ``flow_blocks`` (default: every block) under the knockouts.
    """
    if not (isinstance(remote, bool) or remote == "local"):
        raise ValueError(f"remote must be False, True (NDIF) or 'local', got {remote!r}")
    if len(examples) != len(batch):
        raise ValueError(f"{len(examples)} examples for a batch of {len(batch)}; give one example per batch row")
    if remote is True:
        from ..models.remote import check_remote

        check_remote(vlm)
    examples = [as_example(e) for e in examples]
    knockouts = list(knockouts)
    for ko in knockouts:
        if not isinstance(ko, Knockout):
            raise TypeError(f"knockouts must be Knockout objects, got {type(ko).__name__}")
    flags = knockout_flags(vlm, knockouts, examples, batch.layouts) if knockouts else (None, None)
    groups, names = (flow_groups(vlm, flow, examples, batch.layouts) if flow is not None else (None, []))
    if flow is not None:
        flow_blocks = list(range(vlm.n_vision_blocks)) if flow_blocks is None else [int(k) for k in flow_blocks]
    else:
        flow_blocks = []
    attention = _attention_steps(vlm, knockouts, flow_blocks, flags, groups, len(names) * len(batch))

    # Edits and reads grouped by forward position; each attention step runs before its block's output.
    keyed: dict[tuple, tuple[list, list]] = {}
    for edit in edits:
        keyed.setdefault(forward_key(edit.site), ([], []))[0].append(edit)
    for i, read in enumerate(reads):
        keyed.setdefault(forward_key(read.site), ([], []))[1].append((i, read))
    plan, where = [], []
    for key in sorted({(0, k, 0) for k in attention} | {(*k, 1) for k in keyed}):
        if key[2] == 0:
            plan.append(("attention", *attention[key[1]]))
            continue
        step_edits, step_reads = keyed[key[:2]]
        (stream,), slices = _build_plan(vlm, step_edits, [r for _, r in step_reads])
        plan.append(("stream", *stream))
        where += [(i, len(plan) - 1, start, stop) for (i, _), (_, start, stop) in zip(step_reads, slices, strict=True)]
    if remote is False:
        gathered, flows, devs, logits = _traced(vlm.envoy, dict(batch.inputs), remote, plan)
    else:
        from ..models.remote import remote_timeout, within_time

        gathered, flows, devs, logits = within_time(_traced, (vlm.envoy, dict(batch.inputs), remote, plan),
                                                    remote_timeout())
    out: list[Tensor | None] = [None] * len(reads)
    for i, step, start, stop in where:
        out[i] = gathered[step][start:stop]
    steps_of = {step[1]: s for s, step in enumerate(plan) if step[0] == "attention"}
    flow_out = {k: flows[steps_of[attention[k][0]]] for k in flow_blocks}
    dev_out = {k: float(devs[steps_of[attention[k][0]]]) for k in flow_blocks}
    if knockouts and not torch.isfinite(logits).all():
        raise AttentionError("the knocked-out forward produced non-finite logits: some query was left no key it may "
                             "read (its whole attention segment, e.g. a Qwen2.5-VL window, lies in the knocked-out "
                             "keys); shrink the key region or exclude those blocks")
    return AttentionRun(logits=logits, reads=out, flow=flow_out, deviation=dev_out)


def _traced(envoy, inputs: dict, remote: bool | str, plan: list) -> tuple[list, list, list, Tensor]:
    """The trace body: attention steps and the engine's stream steps, in forward order (remote-safe)."""
    with torch.no_grad(), envoy.trace(**inputs, remote=remote):
        # Remote-safe body: only envoy, tensors, plain data and torch from here on. The stream steps below
        # repeat engine._traced_forward's edit/read loop on purpose: on NDIF a trace body cannot call this
        # package's functions (it is not installed there), so each body carries its own copy.
        gathered, flows, devs = [], [], []
        for step in plan:
            if step[0] == "attention":
                _, path, label, segments, qf, kf, groups, n_groups, chunk = step
                attn = envoy.get(path)
                allowed = None
                if segments is not None:
                    # Packed attention (one sequence holding every image, or window): fold the segments into
                    # the mask and hand the kernel one segment, so one call sees every row.
                    args, kwargs = attn.inputs
                    bounds = kwargs[segments]
                    n = int(bounds[-1])
                    ids = torch.searchsorted(bounds[1:].contiguous(), torch.arange(n, device=bounds.device),
                                             right=True)
                    allowed = (ids[:, None] == ids[None, :])[None]
                    attn.inputs = (args, {**kwargs, segments: torch.stack([bounds[0], bounds[-1]])})
                op = getattr(attn.source, label)
                args, kwargs = op.inputs
                q, key, value = args[1], args[2], args[3]
                b, h, s, d = q.shape
                in_kwargs = "attention_mask" in kwargs or len(args) < 5
                mask = kwargs.get("attention_mask") if in_kwargs else args[4]
                if mask is not None and mask.dtype == torch.bool:
                    mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
                if qf is not None:
                    qf, kf = qf.to(q.device).view(qf.shape[0], b, s), kf.to(q.device).view(kf.shape[0], b, s)
                    if allowed is None:
                        allowed = torch.ones(b, s, s, dtype=torch.bool, device=q.device)
                    for j in range(qf.shape[0]):
                        allowed = allowed & ~(qf[j][:, :, None] & kf[j][:, None, :])
                if allowed is not None:
                    extra = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
                    extra = extra.masked_fill(~allowed.to(q.device), float("-inf"))[:, None]
                    mask = extra if mask is None else mask + extra
                    if in_kwargs:
                        kwargs = {**kwargs, "attention_mask": mask}
                    else:
                        args = (*args[:4], mask, *args[5:])
                    op.inputs = (args, kwargs)
                gathered.append(None)
                if groups is None:
                    flows.append(None)
                    devs.append(None)
                    continue
                scale = kwargs.get("scaling")
                scale = d ** -0.5 if scale is None else scale
                qh, kh, vh = q.float(), key.float(), value.float()
                if kh.shape[1] != h:  # grouped keys/values, as the eager kernel repeats them
                    kh = kh.repeat_interleave(h // kh.shape[1], dim=1)
                    vh = vh.repeat_interleave(h // vh.shape[1], dim=1)
                onehot = torch.nn.functional.one_hot(groups.to(q.device).view(b, s), n_groups).float()
                mass = torch.zeros(h, n_groups, n_groups, device=q.device)
                recon = torch.empty(b, h, s, d, device=q.device)
                for s0 in range(0, s, chunk):
                    scores = qh[:, :, s0:s0 + chunk] @ kh.transpose(-1, -2) * scale
                    if mask is not None:
                        scores = scores + mask[:, :, s0:s0 + chunk].float()
                    p = scores.softmax(-1)
                    mass += torch.einsum("bqg,bhqk,bkf->hgf", onehot[:, s0:s0 + chunk], p, onehot)
                    recon[:, :, s0:s0 + chunk] = p @ vh
                output = op.output[0]
                devs.append((recon.transpose(1, 2) - output.float()).abs().max())
                flows.append(mass)
                continue
            _, path, from_input, field, flat, ops, read_rows, read_positions = step
            module = envoy.get(path)
            value = module.input if from_input else module.output
            if field is not None:
                value = getattr(value, field)
            here = value.device
            for kind, rows, positions, values, w, scaled in ops:
                positions, values = positions.to(here), values.to(here)
                index = torch.unravel_index(positions, value.shape[:-1]) if flat else (rows.to(here), positions)
                if kind == "set":
                    value[index] = values
                elif kind == "copy":
                    source = torch.unravel_index(values, value.shape[:-1]) if flat else (w.to(here), values)
                    value[index] = value[source]
                else:
                    hv = value[index]
                    value[index] = hv + values[:, None] * ((hv @ scaled.to(here).T) @ w.to(here))
            if read_positions is not None:
                read_positions = read_positions.to(here)
                if flat:
                    index = torch.unravel_index(read_positions, value.shape[:-1])
                else:
                    index = (read_rows.to(here), read_positions)
                gathered.append(value[index])
            else:
                gathered.append(None)
            flows.append(None)
            devs.append(None)
        logits = envoy.output.logits[:, -1]
        nnsight.save(gathered)
        nnsight.save(flows)
        nnsight.save(devs)
        nnsight.save(logits)
    return gathered, flows, devs, logits


# --- primitives ----------------------------------------------------------------------------------
def _tolerance(dtype: torch.dtype) -> float:
    """How far the recomputed ``softmax · v`` may sit from the kernel's output (kernels sum in other orders)."""
    return 1e-5 if dtype == torch.float32 else 1e-4 if dtype == torch.float64 else 2e-2


def attention_flow(
    vlm: VLM,
    items: Sequence[Any],
    regions: Mapping[str, RegionSpec],
    *,
    blocks: Sequence[int] | None = None,
    knockouts: Sequence[Knockout] = (),
    batch_size: int = 2,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
) -> LabelledArray:
    """Attention mass from each region's queries to each region's keys, per vision block and head.

    Args:
        items: examples, ``(image, prompt)`` tuples or ``data`` items.
        regions: ``{name: region spec}``, disjoint (e.g. objects, their strips); the cells none holds
            form ``"rest"``, rows of no cell ``"non-cell"`` (groups empty on every item are dropped).
        blocks: vision blocks to read (default: all).
        knockouts: measured under these knockouts (a knocked-out pair reads exactly 0).
        batch_size: images per forward (memory grows with ``batch · heads · chunk · sequence``).

    Returns:
        ``(block, head, item, from, to)``: the mean over a ``from`` query row of the softmax mass on
        ``to`` key rows (each row sums to 1 over ``to``; NaN where an item has no ``from`` row).
        ``attrs["max_deviation"]`` is the largest difference between the recomputed ``softmax · v``
        and the kernel's output over every block and batch (checked against ``1e-5`` in float32),
        ``attrs["n_rows"]`` the rows of each group per item.
    """
    if not isinstance(regions, Mapping) or not regions:
        raise AttentionError("attention_flow needs regions={name: region spec} with at least one region")
    for name in regions:
        if name in (REST, NON_CELL):
            raise AttentionError(f"{name!r} is the flow's own name for unnamed rows; rename that region")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    blocks = list(range(vlm.n_vision_blocks)) if blocks is None else [int(k) for k in blocks]
    check_attention(vlm, blocks)
    names = [*regions, REST, NON_CELL]
    g = len(names)
    values, counts, ids, worst = [], [], [], 0.0
    for chunk, batch in prepared_chunks(vlm, items, batch_size, system=system):
        out = run_attention(vlm, batch, chunk, knockouts, flow=regions, flow_blocks=blocks, remote=remote)
        groups, _ = flow_groups(vlm, regions, chunk, batch.layouts)
        n = torch.bincount(groups, minlength=g * len(chunk)).view(len(chunk), g).double()
        per_block = []
        for k in blocks:
            mass = out.flow[k].double().cpu()
            worst = max(worst, out.deviation[k])
            per_block.append(torch.stack([mass[:, i * g:(i + 1) * g, i * g:(i + 1) * g] for i in range(len(chunk))], 1)
                             / n[None, :, :, None])
        values.append(torch.stack(per_block))  # (block, head, item, from, to)
        counts.append(n)
        ids += [e.name for e in chunk]
    if worst > _tolerance(vlm.dtype):
        raise AttentionError(f"the recomputed attention differs from the model's kernel output by {worst:.2e} (more "
                             f"than {_tolerance(vlm.dtype):.0e}): the kernel call's inputs are not what it attends "
                             "with; the adapter's vision_attention_call may name the wrong operation")
    array = torch.cat(values, 2).numpy()
    n_rows = torch.cat(counts).numpy()
    keep = [i for i in range(g) if n_rows[:, i].sum() > 0]
    array = array[:, :, :, keep][..., keep]
    kept = [names[i] for i in keep]
    config = {"primitive": "attention_flow", "blocks": blocks, "regions": list(regions),
              "knockouts": [ko.name for ko in knockouts], "batch_size": batch_size}
    return LabelledArray(array.astype(np.float32), ("block", "head", "item", "from", "to"),
                         {"block": blocks, "head": list(range(array.shape[1])), "item": ids, "from": kept, "to": kept},
                         attrs={"max_deviation": worst, "n_rows": {names[i]: n_rows[:, i].tolist() for i in keep}},
                         provenance=provenance(vlm, config=config))


def knockout(
    vlm: VLM,
    items: Sequence[Any],
    knockouts: Sequence[Knockout],
    metric: Metric | None = None,
    *,
    batch_size: int = 8,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
) -> LabelledArray:
    """The metric on each item with ``knockouts`` applied; ``extras["clean"]`` holds the unknocked runs.

    ``metric`` defaults to the answer probabilities when items carry answers, else the top logit.
    Returns ``(item, metric)``.
    """
    from .metrics import default_metric

    knockouts = list(knockouts)
    if not knockouts:
        raise AttentionError("knockout() needs at least one Knockout")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    knocked, clean, ids, names = [], [], [], None
    for chunk, batch in prepared_chunks(vlm, items, batch_size, system=system):
        metric = metric if metric is not None else default_metric(vlm, chunk)
        base = run_attention(vlm, batch, chunk, remote=remote)
        out = run_attention(vlm, batch, chunk, knockouts, remote=remote)
        values, names = evaluate(metric, out.logits, chunk)
        knocked.append(values)
        clean.append(evaluate(metric, base.logits, chunk)[0])
        ids += [e.name for e in chunk]
    coords = {"item": ids, "metric": names}
    config = {"primitive": "knockout", "knockouts": [(ko.name, ko.blocks) for ko in knockouts],
              "batch_size": batch_size}
    result = LabelledArray(torch.cat(knocked).numpy(), ("item", "metric"), coords,
                           attrs={"knockouts": [ko.name for ko in knockouts]},
                           provenance=provenance(vlm, config=config))
    result.extras["clean"] = LabelledArray(torch.cat(clean).numpy(), ("item", "metric"), coords)
    return result


__all__ = ["NON_CELL", "REST", "AttentionError", "AttentionRun", "Knockout", "attention_flow", "attention_path",
           "check_attention", "flow_groups", "image_rows", "knockout", "knockout_flags", "run_attention"]
