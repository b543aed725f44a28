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



# --- the language model's attention (attribution's QK fix) ----------------------------------------
@dataclass
class LMAttention:
    """One decoder layer's attention kernel call over a batch, as the model ran it (float32, CPU)."""

    query: Float[Tensor, "batch heads seq d_head"]
    """Post-rotary queries (after any q-norm), the kernel's input."""
    key: Float[Tensor, "batch kv_heads seq d_head"]
    value: Float[Tensor, "batch kv_heads seq d_head"]
    mask: Float[Tensor, "batch mask_heads seq seq"]
    """Additive mask (0 or -inf) with causality and any sliding window folded in, as the kernel applied it."""
    scaling: float
    output_grad: Float[Tensor, "batch seq heads d_head"] | None
    """``∂ metric / ∂`` the kernel's output (per head, before ``o_proj``); None from a forward-only run."""
    deviation: float
    """Largest ``|softmax(q kᵀ · scaling + mask) · v − the kernel's output|`` (the recomputation check)."""
    mid_grad: Float[Tensor, "batch seq d_model"] | None = None
    """``∂ metric / ∂`` the residual stream between this layer's attention and its MLP (None without a backward)."""

    def heads(self, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Batch row ``b``'s ``(q, k, v)``, each ``(heads, seq, d_head)``: grouped keys/values repeated
        per query head as the kernel does."""
        q, k, v = self.query[b], self.key[b], self.value[b]
        if k.shape[0] != q.shape[0]:
            k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
            v = v.repeat_interleave(q.shape[0] // v.shape[0], dim=0)
        return q, k, v


def lm_attention_path(vlm: VLM, layer: int) -> str:
    """Module path of decoder layer ``layer``'s attention (the adapter names it)."""
    return f"{vlm.adapter.lm_layers}.{layer}.{vlm.adapter.lm_attention}"


def check_lm_attention(vlm: VLM, layers: Sequence[int]) -> None:
    """Refuse LM attention the kernel-call interception cannot recompute exactly: flash kernels (no mask),
    logit soft-capping, an adapter label that names no operation, bad layer indices."""
    n = vlm.n_lm_layers
    bad = [k for k in layers if not 0 <= k < n]
    if bad:
        raise AttentionError(f"decoder layers {bad} are out of range for {vlm.info.name}: layers run 0..{n - 1}")
    text = vlm.adapter.text_config(vlm.config)
    implementation = getattr(text, "_attn_implementation", None) or ""
    if implementation not in ("sdpa", "eager"):
        raise AttentionError(f"the language model runs {implementation!r} attention, whose kernel call takes no "
                             "additive mask to recompute the pattern from; load the model with "
                             "attn_implementation='sdpa' or 'eager' for the QK fix")
    cap = getattr(text, "attn_logit_softcapping", None)
    if cap is not None:
        raise AttentionError(f"{vlm.info.name} soft-caps its attention logits (attn_logit_softcapping={cap}); the "
                             "QK fix recomputes plain softmax(q k^T * scaling + mask) and would not be exact")
    for k in layers:
        path = lm_attention_path(vlm, k)
        names = vlm.envoy.get(path).source.names
        label = vlm.adapter.lm_attention_call
        if label not in names:
            calls = [c for c in names if c.startswith("attention_interface")]
            raise AttentionError(f"{path} has no operation {label!r} (its attention calls: {calls}); the installed "
                                 f"transformers' {vlm.arch} attention changed: update lm_attention_call in the "
                                 "adapter")


def _lm_attention_steps(vlm: VLM, layers: Sequence[int]) -> dict[int, tuple[str, str, str]]:
    check_lm_attention(vlm, layers)
    return {k: (lm_attention_path(vlm, k), vlm.adapter.lm_attention_call,
                f"{vlm.adapter.lm_layers}.{k}.{vlm.adapter.lm_mid_residual}") for k in layers}


def _additive_mask(vlm: VLM, layer: int, mask: Tensor | None, shape: tuple[int, int, int]) -> Tensor:
    """The kernel's mask as additive float32 ``(batch, 1|heads, seq, seq)``; ``None`` is the sdpa kernel's
    causal default (its ``is_causal`` flag; eager always receives a mask)."""
    b, s, s_k = shape
    if mask is None:
        module = vlm.model.get_submodule(lm_attention_path(vlm, layer))
        allowed = torch.ones(s, s_k, dtype=torch.bool)
        if getattr(module, "is_causal", True) and s > 1:
            allowed = torch.tril(allowed, diagonal=s_k - s)
        mask = allowed[None, None].expand(b, 1, s, s_k)
    mask = mask.cpu()
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, float("-inf"))
    return mask.float()[..., :s_k]


def _lm_attention(vlm: VLM, layer: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, out: Tensor,
                  grad: Tensor | None, mid_grad: Tensor | None = None) -> LMAttention:
    """Plain CPU float32 tensors of one captured kernel call, checked against its own output."""
    q, k, v, out = q.float().cpu(), k.float().cpu(), v.float().cpu(), out.float().cpu()
    scaling = vlm.model.get_submodule(lm_attention_path(vlm, layer)).scaling
    mask = _additive_mask(vlm, layer, mask, (q.shape[0], q.shape[2], k.shape[2]))
    found = LMAttention(q, k, v, mask, float(scaling), None if grad is None else grad.float().cpu(), 0.0,
                        None if mid_grad is None else mid_grad.float().cpu())
    worst = 0.0
    for b in range(q.shape[0]):
        qh, kh, vh = found.heads(b)
        p = (qh @ kh.transpose(-1, -2) * found.scaling + mask[b]).softmax(-1).nan_to_num(0.0)
        worst = max(worst, float((p @ vh - out[b].transpose(0, 1)).abs().max()))
    found.deviation = worst
    if worst > 10 * _tolerance(vlm.dtype):
        raise AttentionError(f"the recomputed attention of decoder layer {layer} differs from the model's kernel "
                             f"output by {worst:.2e}: the kernel call's inputs are not what it attends with; the "
                             "adapter's lm_attention_call may name the wrong operation")
    return found


def _ordered(vlm: VLM, edits: Sequence[Edit], reads: Sequence[Read], attention: Mapping[int, tuple[str, str]]
             ) -> tuple[list, list[tuple[int, int, int]]]:
    """Stream steps (the engine's plan) and attention steps in forward order, and each read's slice."""
    keyed: dict[tuple, tuple[list, list]] = {}
    for edit in edits:
        keyed.setdefault(forward_key(edit.site), ([], []))[0].append(edit)
    for i, read in enumerate(reads):
        keyed.setdefault(forward_key(read.site), ([], []))[1].append((i, read))
    plan, where = [], [(0, 0, 0)] * len(reads)
    for key in sorted({(2, k, 1) for k in attention} | {(*k, 0) for k in keyed}):
        if key[2] == 1:
            plan.append(("attention", *attention[key[1]]))
            continue
        step_edits, step_reads = keyed[key[:2]]
        (stream,), slices = _build_plan(vlm, step_edits, [r for _, r in step_reads])
        plan.append(("stream", *stream))
        for (i, _), (_, start, stop) in zip(step_reads, slices, strict=True):
            where[i] = (len(plan) - 1, start, stop)
    return plan, where


def run_gradients_attention(
    vlm: VLM,
    batch: Batch,
    reads: Sequence[Read],
    layers: Sequence[int],
    transform: str,
    ids: Int[Tensor, "batch k"],
    coeffs: Float[Tensor, "batch k"],
    *,
    remote: bool | str = False,
) -> tuple[Any, dict[int, LMAttention]]:
    """:func:`~.engine.run_gradients` (unedited) plus, at decoder ``layers``, the attention kernel call's
    inputs and ``∂ score / ∂`` its output, from the same forward-backward.

    Returns the engine's ``GradientOutput`` and ``{layer: LMAttention}``. Each layer's recomputed
    ``softmax · v`` is checked against the kernel's own output (``LMAttention.deviation``).

    Example:
        >>> import torch, spatial_interp as si
        >>> from PIL import Image
        >>> from spatial_interp.interventions.attention import run_gradients_attention
        >>> from spatial_interp.interventions.engine import Read
        >>> vlm = si.load("tiny-qwen2-vl")
        >>> batch = vlm.prepare([Image.new("RGB", (336, 336), "red")], ["The color is "])
        >>> pos = batch.layouts[0].indices(None, si.site.lm_resid(1))
        >>> out, attn = run_gradients_attention(vlm, batch, [Read(si.site.lm_resid(1), torch.zeros_like(pos), pos)],
        ...                                     [1], "logit", torch.tensor([[5]]), torch.tensor([[1.0]]))
        >>> tuple(attn[1].output_grad.shape)[2:], attn[1].deviation < 1e-5
        ((4, 16), True)
    """
    from .engine import GradientOutput, _note_forward

    if not reads:
        raise ValueError("run_gradients_attention() needs at least one Read (the activations to differentiate)")
    if not (isinstance(remote, bool) or remote == "local"):
        raise ValueError(f"remote must be False, True (NDIF) or 'local', got {remote!r}")
    if remote is True:
        from ..models.remote import check_remote

        check_remote(vlm)
    attention = _lm_attention_steps(vlm, layers)
    plan, where = _ordered(vlm, [], reads, attention)
    if plan[0][0] != "stream":
        raise ValueError("run_gradients_attention() needs a read before the first attention layer it captures")
    device = home_device(vlm)
    args = (vlm.envoy, dict(batch.inputs), remote, plan, transform, ids.to(device),
            coeffs.to(device=device, dtype=torch.float32))
    _note_forward(batch, vision=True, skipped=0, stopped=False)
    if remote is False:
        values, grads, logits, scores = _traced_gradients_attention(*args)
    else:
        from ..models.remote import remote_timeout, within_time

        values, grads, logits, scores = within_time(_traced_gradients_attention, args, remote_timeout())
    out = GradientOutput(logits=logits, scores=scores, reads=[values[s][a:b] for s, a, b in where],
                         grads=[grads[s][a:b] for s, a, b in where])
    captured = {}
    for s, step in enumerate(plan):
        if step[0] == "attention":
            layer = next(k for k, v in attention.items() if v[0] == step[1])
            q, k, v, mask, output, _ = values[s]
            output_grad, mid_grad = grads[s]
            captured[layer] = _lm_attention(vlm, layer, q, k, v, mask, output, output_grad, mid_grad)
    return out, captured


def _traced_gradients_attention(envoy, inputs: dict, remote: bool | str, plan: list, transform: str, ids: Tensor,
                                coeffs: Tensor) -> tuple[list, list, Tensor, Tensor]:
    # Trace body (remote-safe; the engine's _traced_gradients with attention steps): as there, no comment
    # and no multi-line statement up to the backward block, whose line nnsight finds by matching the file.
    with torch.enable_grad(), envoy.trace(**inputs, remote=remote):
        tensors, indices, values = [], [], []
        for step in plan:
            if step[0] == "attention":
                op = getattr(envoy.get(step[1]).source, step[2])
                args, kwargs = op.inputs
                mask = kwargs.get("attention_mask") if "attention_mask" in kwargs or len(args) < 5 else args[4]
                output = op.output[0]
                mid = envoy.get(step[3]).input
                tensors.append([output, mid])
                indices.append(None)
                values.append([args[1].detach(), args[2].detach(), args[3].detach(), mask, output.detach(), None])
                continue
            _, path, from_input, field, flat, _ops, read_rows, read_positions = step
            module = envoy.get(path)
            value = module.input if from_input else module.output
            if field is not None:
                value = getattr(value, field)
            if not tensors and not value.requires_grad:
                value.requires_grad_(True)
            here = value.device
            read_positions = read_positions.to(here)
            flat_index = torch.unravel_index(read_positions, value.shape[:-1]) if flat else None
            index = flat_index if flat else (read_rows.to(here), read_positions)
            tensors.append(value)
            indices.append(index)
            values.append(value[index].detach())
        logits = envoy.output.logits[:, -1]
        x = logits.float()
        here = x.device
        coeffs = coeffs.to(here)
        ids = ids.to(here)
        if transform == "log_odds":
            chosen = x.log_softmax(-1).gather(1, ids)
            plus = (chosen + coeffs.clamp(min=0).log()).logsumexp(-1)
            scores = plus - (chosen + (-coeffs).clamp(min=0).log()).logsumexp(-1)
        else:
            if transform == "prob":
                x = x.softmax(-1)
            elif transform == "logprob":
                x = x.log_softmax(-1)
            scores = (x.gather(1, ids) * coeffs).sum(-1)
        grads = [None] * len(tensors)
        total = scores.sum()
        with total.backward():
            for k in range(len(tensors) - 1, -1, -1):
                if indices[k] is None:
                    mid_grad = tensors[k][1].grad.detach()
                    grads[k] = [tensors[k][0].grad.detach(), mid_grad]
                else:
                    grads[k] = tensors[k].grad[indices[k]]
        logits = logits.detach()
        scores = scores.detach()
        nnsight.save(values)
        nnsight.save(grads)
        nnsight.save(logits)
        nnsight.save(scores)
    return values, grads, logits, scores


def lm_attention_rows(
    vlm: VLM,
    batch: Batch,
    edits: Sequence[Edit],
    rows: Mapping[int, tuple[Int[Tensor, " n"], Int[Tensor, " n"]]],
    *,
    remote: bool | str = False,
) -> dict[int, tuple[Float[Tensor, "n heads d_head"], Float[Tensor, "n kv_heads d_head"],
                     Float[Tensor, "n kv_heads d_head"]]]:
    """Post-rotary ``(query, key, value)`` rows of decoder layers' attention kernel calls in one edited forward.

    ``rows[layer] = (batch rows, positions)`` to return at that layer; ``edits`` (``Edit.set``) are
    applied as in :func:`~.engine.run`. The forward stops after the last layer asked for. A row's query
    key and value depend only on that row's residual entering the layer (norm, projection, rotary), so an edit
    that writes a patched row gives exactly the query and key that row has in the patched forward.

    Example:
        >>> import torch, spatial_interp as si
        >>> from PIL import Image
        >>> from spatial_interp.interventions.attention import lm_attention_rows
        >>> vlm = si.load("tiny-gemma3")
        >>> batch = vlm.prepare([Image.new("RGB", (896, 896), "red")], ["The color is "])
        >>> q, k, v = lm_attention_rows(vlm, batch, [], {0: (torch.tensor([0, 0]), torch.tensor([3, 4]))})[0]
        >>> tuple(q.shape), tuple(k.shape), tuple(v.shape)
        ((2, 4, 16), (2, 2, 16), (2, 2, 16))
    """
    import gc

    from .engine import _note_forward

    if not rows:
        raise ValueError("lm_attention_rows() needs at least one layer's rows")
    if not (isinstance(remote, bool) or remote == "local"):
        raise ValueError(f"remote must be False, True (NDIF) or 'local', got {remote!r}")
    bad = [e for e in edits if e.kind != "set"]
    if bad:
        raise ValueError(f"lm_attention_rows() applies Edit.set edits only, got a {bad[0].kind!r} edit")
    attention = _lm_attention_steps(vlm, sorted(rows))
    device = home_device(vlm)
    plan, _ = _ordered(vlm, edits, [], attention)
    last = max(i for i, step in enumerate(plan) if step[0] == "attention")
    plan = [(*step, rows[int(step[1].split(".")[-2])][0].to(device), rows[int(step[1].split(".")[-2])][1].to(device))
            if step[0] == "attention" else step for step in plan[:last + 1]]
    _note_forward(batch, vision=True, skipped=0, stopped=True)
    if remote is False:
        gathered = _traced_attention_rows(vlm.envoy, dict(batch.inputs), remote, plan)
    else:
        from ..models.remote import remote_timeout, within_time

        gathered = within_time(_traced_attention_rows, (vlm.envoy, dict(batch.inputs), remote, plan),
                               remote_timeout())
    gc.collect(1)  # nnsight's stop leaves a reference cycle pinning the inputs (see engine.read_and_stop)
    layers = [int(step[1].split(".")[-2]) for step in plan if step[0] == "attention"]
    found = [g for g, step in zip(gathered, plan, strict=True) if step[0] == "attention"]
    return {k: tuple(x.float().cpu() for x in qkv) for k, qkv in zip(layers, found, strict=True)}


def _traced_attention_rows(envoy, inputs: dict, remote: bool | str, plan: list) -> list:
    """Trace body of :func:`lm_attention_rows` (remote-safe): stream edits, attention row reads, stop."""
    with torch.no_grad(), envoy.trace(**inputs, remote=remote) as tracer:
        gathered = []
        for step in plan:
            if step[0] == "attention":
                _, path, label, _mid, rows, positions = step
                args, _kwargs = getattr(envoy.get(path).source, label).inputs
                q, key, value = args[1], args[2], args[3]
                here = q.device
                rows, positions = rows.to(here), positions.to(here)
                gathered.append([q[rows, :, positions], key[rows, :, positions], value[rows, :, positions]])
                continue
            _, path, from_input, field, flat, ops, _read_rows, _read_positions = step
            module = envoy.get(path)
            value = module.input if from_input else module.output
            if field is not None:
                value = getattr(value, field)
            here = value.device
            for _kind, rows, positions, written, _w, _scaled in ops:
                positions = positions.to(here)
                index = torch.unravel_index(positions, value.shape[:-1]) if flat else (rows.to(here), positions)
                value[index] = written.to(here)
            gathered.append(None)
        nnsight.save(gathered)
        tracer.stop()
    return gathered


__all__ = ["NON_CELL", "REST", "AttentionError", "AttentionRun", "Knockout", "LMAttention", "attention_flow",
           "attention_path", "check_attention", "check_lm_attention", "flow_groups", "image_rows", "knockout",
           "knockout_flags", "lm_attention_path", "lm_attention_rows", "run_attention", "run_gradients_attention"]
