"""The one place that runs an nnsight trace: a batch, a list of edits, a list of reads.

Every primitive (collect, patch, sweep, steer, ablate) reduces its work to forwards of the form
"at these sites, overwrite (or steer) these rows, read those rows, return the final-position logits",
and hands them to :func:`run`.

Remote safety: the trace body below touches only the nnsight envoy, tensors, plain Python data
(strings, tuples, lists) and torch. Everything architecture- or package-specific (module paths,
which output field holds the vision embeddings, row indices) is resolved into a plain ``plan``
before the ``with`` block, so the same body runs locally, through nnsight's serialisation round
trip (``remote="local"``), and on NDIF (``remote=True``).

Example:
    >>> import torch, spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.interventions.engine import Edit, Read, run
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> batch = vlm.prepare([Image.new("RGB", (336, 336), "red")] * 2, ["The color is "] * 2)
    >>> pos = batch.layouts[0].indices(None, si.site.lm_resid(1))
    >>> rows = torch.zeros(len(pos), dtype=torch.long)
    >>> out = run(vlm, batch, [Edit.set(si.site.lm_resid(1), rows, pos, torch.zeros(len(pos), vlm.d_model))],
    ...           [Read(si.site.lm_resid(1), rows, pos)])
    >>> float(out.reads[0].abs().max()), tuple(out.logits.shape)[0]
    (0.0, 2)
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import nnsight
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..geometry import ImageLayout
from ..models.vlm import VLM, Batch
from ..site import Site, lm_resid, resolve

EditKind = Literal["set", "copy", "steer"]


def check_finite(values: Tensor | np.ndarray, name: str, fix: str = "") -> None:
    """Raise ValueError naming ``name`` and how many of its entries are NaN or infinite.

    A single NaN in a steering direction or an α turns every steered activation (and, through
    ``0 · NaN``, even the α = 0 rows) into NaN, and the scores into silent nonsense; refusing at the
    boundary names the culprit instead.
    """
    array = values.detach().float().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=float)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite (NaN or inf) entr{'y' if bad == 1 else 'ies'} out of "
                         f"{array.size}" + (f"; {fix}" if fix else ""))


@dataclass(frozen=True)
class Edit:
    """One in-place change to a site's activation during a forward.

    For LM sites ``rows`` are batch rows and ``positions`` sequence positions (paired element-wise);
    for vision sites ``rows`` is ``None`` and ``positions`` are rows of the flattened ``(rows, d)``
    activation. Edits apply in ``phase`` order at a site (ablation 0, patch 1, steering 2), so an
    ablation and a patch can share a forward and a site.
    """

    site: Site
    rows: Int[Tensor, " n"] | None
    positions: Int[Tensor, " n"]
    kind: EditKind
    values: Float[Tensor, "n d"] | None = None
    directions: Float[Tensor, "k d"] | None = None
    alphas: Float[Tensor, " n"] | None = None
    phase: int = 1
    source_rows: Int[Tensor, " n"] | None = None
    source_positions: Int[Tensor, " n"] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", resolve(self.site))

    @classmethod
    def set(cls, site: Site, rows: Tensor | None, positions: Tensor, values: Tensor, phase: int = 1) -> Edit:
        """Overwrite the rows with ``values`` (patching, ablation)."""
        if values.shape[0] != positions.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions but {values.shape[0]} value rows")
        return cls(site, rows, positions, "set", values=values, phase=phase)

    @classmethod
    def copy(cls, site: Site, rows: Tensor | None, positions: Tensor, source_rows: Tensor | None,
             source_positions: Tensor, phase: int = 1) -> Edit:
        """Overwrite the rows with other rows of the same activation in the same forward (all read
        before any is written), e.g. a permutation of an image's rows."""
        if source_positions.shape[0] != positions.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions but {source_positions.shape[0]} source positions")
        if (rows is None) != (source_rows is None):
            raise ValueError("give rows and source_rows together (LM sites) or neither (vision sites)")
        return cls(site, rows, positions, "copy", phase=phase, source_rows=source_rows,
                   source_positions=source_positions)

    @classmethod
    def steer(cls, site: Site, rows: Tensor | None, positions: Tensor, directions: Tensor, alphas: Tensor,
              phase: int = 2) -> Edit:
        """``h += α · Σ_k (⟨h, w_k⟩ / (‖w_k‖² + 1e-8)) · w_k`` on the rows (§8.3).

        ``directions`` and ``alphas`` must be finite (ValueError otherwise). A zero direction adds
        nothing (its projection is 0, never 0/0), so α = 0 and all-zero directions are the identity.
        """
        if alphas.shape[0] != positions.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions but {alphas.shape[0]} alphas")
        if directions.dim() != 2:
            raise ValueError(f"steering directions must be (k, d), got shape {tuple(directions.shape)}")
        check_finite(directions, "steering directions", "fix or drop the direction rows holding them")
        check_finite(alphas, "steering alphas", "give finite α values")
        return cls(site, rows, positions, "steer", directions=directions, alphas=alphas, phase=phase)


@dataclass(frozen=True)
class Read:
    """Rows of a site's activation to return (after that site's edits)."""

    site: Site
    rows: Int[Tensor, " n"] | None
    positions: Int[Tensor, " n"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", resolve(self.site))


@dataclass
class RunOutput:
    logits: Float[Tensor, "batch vocab"]
    """Final-position logits of every batch row."""
    reads: list[Float[Tensor, "n d"]]
    """One tensor per :class:`Read`, in the order given."""


def forward_key(site: Site) -> tuple[int, int]:
    """Where a site sits in the forward pass (nnsight needs modules accessed in this order)."""
    rank = {"vision_block": 0, "vision_out": 1, "lm_resid": 2}[site.kind]
    return rank, site.index or 0


def home_device(vlm: VLM) -> torch.device:
    """Where plan tensors live: the model's device, or the CPU for a weightless (meta) model that only
    serves remote traces; the trace body moves them to each activation's device anyway."""
    device = vlm.device
    return torch.device("cpu") if device.type == "meta" else device


def _cat(parts: Sequence[Tensor | None]) -> Tensor | None:
    return None if parts[0] is None else torch.cat(list(parts))


def _build_plan(vlm: VLM, edits: Sequence[Edit], reads: Sequence[Read]) -> tuple[list, list[tuple[int, int, int]]]:
    """Group edits and reads by module access, in forward order, as plain tuples of tensors."""
    device, dtype = home_device(vlm), vlm.dtype
    steps: dict[tuple[int, int], dict] = {}
    for edit in edits:
        vlm.check_site(edit.site)
        steps.setdefault(forward_key(edit.site), {"site": edit.site, "edits": [], "reads": []})["edits"].append(edit)
    for i, read in enumerate(reads):
        vlm.check_site(read.site)
        steps.setdefault(forward_key(read.site), {"site": read.site, "edits": [], "reads": []})["reads"].append(
            (i, read))

    # For each read: (plan step, start, stop) of its rows in that step's gathered tensor.
    plan, read_slices = [], [(0, 0, 0)] * len(reads)
    for step_index, key in enumerate(sorted(steps)):
        step = steps[key]
        site: Site = step["site"]
        # Merge edits of one phase and kind (and, for steering, one direction set) into a single indexed
        # write: one Python-level operation per group keeps the greenlet overhead independent of batch size.
        groups: dict[tuple, list[Edit]] = {}
        for edit in step["edits"]:
            group = (edit.phase, edit.kind, id(edit.directions) if edit.kind == "steer" else 0)
            groups.setdefault(group, []).append(edit)
        ops = []
        for group in sorted(groups, key=lambda g: (g[0], g[1])):
            members = groups[group]
            rows = _cat([e.rows for e in members])
            positions = torch.cat([e.positions for e in members]).to(device)
            rows = None if rows is None else rows.to(device)
            if group[1] == "set":
                values = torch.cat([e.values for e in members]).to(device=device, dtype=dtype)
                ops.append(("set", rows, positions, values, None, None))
            elif group[1] == "copy":
                # (source positions, source rows) ride in the (values, w) slots of the op tuple.
                source_rows = _cat([e.source_rows for e in members])
                ops.append(("copy", rows, positions, torch.cat([e.source_positions for e in members]).to(device),
                            None if source_rows is None else source_rows.to(device), None))
            else:
                # w / (‖w‖² + 1e-8) in float32 before the cast: in float16 the 1e-8 underflows to 0, so a
                # zero direction would give 0/0 = NaN (and NaN · α = NaN even at α = 0).
                w32 = members[0].directions.to(device=device, dtype=torch.float32)
                scaled = (w32 / (w32.pow(2).sum(-1, keepdim=True) + 1e-8)).to(dtype)
                w = w32.to(dtype)
                alphas = torch.cat([e.alphas for e in members]).to(device=device, dtype=dtype)
                ops.append(("steer", rows, positions, alphas, w, scaled))
        read_rows = read_positions = None
        if step["reads"]:
            offset, parts_r, parts_p = 0, [], []
            for i, read in step["reads"]:
                n = int(read.positions.shape[0])
                read_slices[i] = (step_index, offset, offset + n)
                offset += n
                parts_r.append(read.rows)
                parts_p.append(read.positions)
            read_rows = _cat(parts_r)
            read_rows = None if read_rows is None else read_rows.to(device)
            read_positions = torch.cat(parts_p).to(device)
        field = vlm.adapter.vision_out_field if site.kind == "vision_out" else None
        plan.append((vlm.module_path(site), vlm.reads_input(site), field, site.is_vision, ops,
                     read_rows, read_positions))
    return plan, read_slices


def _apply_ops(value: Tensor, ops: list, flat: bool) -> None:
    """The trace body's edit loop, for a tensor held outside any trace (see ``prefix`` in :func:`run`)."""
    for kind, rows, positions, values, w, scaled in ops:
        index = torch.unravel_index(positions, value.shape[:-1]) if flat else (rows, positions)
        if kind == "set":
            value[index] = values
        elif kind == "copy":
            value[index] = value[torch.unravel_index(values, value.shape[:-1]) if flat else (w, values)]
        else:
            h = value[index]
            value[index] = h + values[:, None] * ((h @ scaled.T) @ w)


def run(
    vlm: VLM,
    batch: Batch,
    edits: Sequence[Edit] = (),
    reads: Sequence[Read] = (),
    *,
    vision_features: Float[Tensor, "rows d"] | None = None,
    prefix: tuple[int, Float[Tensor, "batch pos d"]] | None = None,
    remote: bool | str = False,
) -> RunOutput:
    """One forward over ``batch`` with ``edits`` applied and ``reads`` returned.

    Args:
        vision_features: ``vision_out`` rows for the whole batch (in batch order). When given, the
            vision tower is not run: these embeddings are spliced in directly, so every edit and read
            must be at an LM site.
        prefix: ``(m, h)`` with ``h`` the unedited ``lm_resid(m)`` of this batch (e.g. from an earlier
            clean forward). Decoder layers ``0 … m-1`` are then skipped, their output replaced by ``h``
            with the ``lm_resid(m)`` edits applied, since without edits below ``m`` they would
            recompute exactly ``h``. Edits and reads must all be at ``lm_resid(s)``, ``s >= m``.
        remote: ``False`` (local), ``True`` (NDIF) or ``"local"`` (nnsight's serialisation round trip).
            ``True`` first checks, without a network call, that NDIF could serve the request
            (:func:`~spatial_interp.models.remote.check_remote`).
    """
    if not (isinstance(remote, bool) or remote == "local"):
        raise ValueError(f"remote must be False (local), True (NDIF) or 'local' (serialisation round trip), "
                         f"got {remote!r}")
    if remote is True:
        from ..models.remote import check_remote

        check_remote(vlm)
    if vision_features is not None:
        vision = [x.site for x in [*edits, *reads] if x.site.is_vision]
        if vision:
            raise ValueError(f"cannot edit or read {vision[0]} when vision features are fed in (the vision "
                             "tower does not run); pass vision_features=None")
    skip_paths: list[str] = []
    skip_value = None
    early_reads: dict[int, Tensor] = {}
    late_reads = list(range(len(reads)))
    if prefix is not None:
        m, residual = prefix
        early = [x.site for x in [*edits, *reads] if x.site.is_vision or x.site.index < m]
        if m < 1 or early:
            raise ValueError(f"a prefix of {m} layers needs every edit and read at lm_resid(s) with s >= {m} >= 1"
                             + (f"; got {early[0]}" if early else ""))
        at_m = [i for i, r in enumerate(reads) if r.site.index == m]
        late_reads = [i for i in late_reads if i not in at_m]
        skip_value = residual.to(device=home_device(vlm), dtype=vlm.dtype).clone()
        pre_plan, pre_slices = _build_plan(vlm, [e for e in edits if e.site.index == m], [reads[i] for i in at_m])
        for _, _, _, flat, ops, read_rows, read_positions in pre_plan:
            _apply_ops(skip_value, ops, flat)
            if read_positions is not None:
                for i, (_, start, stop) in zip(at_m, pre_slices, strict=True):
                    early_reads[i] = skip_value[read_rows[start:stop], read_positions[start:stop]].clone()
        edits = [e for e in edits if e.site.index != m]
        skip_paths = [vlm.module_path(lm_resid(i + 1)) for i in range(m)]
    plan, read_slices = _build_plan(vlm, edits, [reads[i] for i in late_reads])
    inputs = dict(batch.inputs)
    if vision_features is not None:
        inputs.pop("pixel_values", None)
        sizes = [layout.grid.n_cells for layout in batch.layouts]
        inputs["mm_encoder_outputs"] = vlm.adapter.encoder_outputs(
            vision_features.to(device=home_device(vlm), dtype=vlm.dtype), sizes)

    _note_forward(batch, vision=vision_features is None, skipped=len(skip_paths), stopped=False)
    if remote is False:
        gathered, logits = _traced_forward(vlm.envoy, inputs, remote, skip_paths, skip_value, plan)
    else:
        from ..models.remote import remote_timeout, within_time

        # NDIF can accept a request and never answer; nnsight's wait has no deadline of its own.
        gathered, logits = within_time(_traced_forward, (vlm.envoy, inputs, remote, skip_paths, skip_value, plan),
                                       remote_timeout())

    out: list[Tensor | None] = [None] * len(reads)
    for i, (step, start, stop) in zip(late_reads, read_slices, strict=True):
        out[i] = gathered[step][start:stop]
    for i, value in early_reads.items():
        out[i] = value
    return RunOutput(logits=logits, reads=out)



def _traced_forward(envoy, inputs: dict, remote: bool | str, skip_paths: list[str], skip_value: Tensor | None,
                    plan: list) -> tuple[list, Tensor]:
    """The one trace body (see the module docstring): returns the gathered reads and final logits."""
    with torch.no_grad(), envoy.trace(**inputs, remote=remote):
        # Remote-safe body: only envoy, tensors, plain data and torch from here on.
        for path in skip_paths:
            envoy.get(path).skip(skip_value)
        gathered = []
        for path, from_input, field, flat, ops, read_rows, read_positions in plan:
            module = envoy.get(path)
            value = module.input if from_input else module.output
            if field is not None:
                value = getattr(value, field)
            here = value.device  # on NDIF the activations may live elsewhere than the shipped tensors
            for kind, rows, positions, values, w, scaled in ops:
                positions, values = positions.to(here), values.to(here)
                # Vision rows are flat over all leading dims; unravel them instead of reshaping, since a
                # reshape of a non-contiguous output would copy and the write would not reach the model.
                index = torch.unravel_index(positions, value.shape[:-1]) if flat else (rows.to(here), positions)
                if kind == "set":
                    value[index] = values
                elif kind == "copy":
                    source = torch.unravel_index(values, value.shape[:-1]) if flat else (w.to(here), values)
                    value[index] = value[source]
                else:
                    h = value[index]
                    value[index] = h + values[:, None] * ((h @ scaled.to(here).T) @ w.to(here))
            if read_positions is not None:
                read_positions = read_positions.to(here)
                if flat:
                    index = torch.unravel_index(read_positions, value.shape[:-1])
                else:
                    index = (read_rows.to(here), read_positions)
                gathered.append(value[index])
            else:
                gathered.append(None)
        logits = envoy.output.logits[:, -1]
        nnsight.save(gathered)
        nnsight.save(logits)
    return gathered, logits


def repeat_batch(vlm: VLM, batch: Batch, k: int) -> Batch:
    """``batch`` stacked ``k`` times along the batch axis (replica ``r`` holds rows ``r·n … r·n+n-1``).

    Every input tensor lists items (or, for Qwen's ``pixel_values``, their patches) in batch order,
    so concatenating it ``k`` times is the batch of ``k`` copies; layouts are shifted to match.
    """
    if k == 1:
        return batch
    inputs = {name: torch.cat([value] * k) for name, value in batch.inputs.items()}
    n = len(batch)
    out_rows = sum(layout.grid.n_cells for layout in batch.layouts)
    block_rows = sum(vlm.adapter.vision_block_rows_per_image(layout.grid, vlm.processor, vlm.config)
                     for layout in batch.layouts)
    layouts = [
        dataclasses.replace(
            layout,
            batch_index=layout.batch_index + r * n,
            vision_out_rows=layout.vision_out_rows + r * out_rows,
            vision_block_rows=layout.vision_block_rows + r * block_rows,
        )
        for r in range(k)
        for layout in batch.layouts
    ]
    return Batch(inputs=inputs, layouts=layouts, texts=list(batch.texts) * k)


def vision_feature_reads(layouts: Sequence[ImageLayout]) -> list[Read]:
    """One read of every ``vision_out`` row of these items, in order (to feed back with ``vision_features``)."""
    from ..site import vision_out

    return [Read(vision_out, None, torch.cat([layout.vision_out_rows for layout in layouts]))]


# --- counting forwards -----------------------------------------------------------------------------
@dataclass
class ForwardCount:
    """What :func:`count_forwards` saw: every traced forward of the engine (``run``, ``read_and_stop``).

    Attributes:
        forwards: traced forwards.
        rows: batch rows over all of them.
        vision_images: images that went through the vision tower (fed vision features do not).
        stopped: forwards halted after their last read (no LM output, no logits).
        layers_skipped: decoder layers replaced by a cached prefix, summed over forwards.
    """

    forwards: int = 0
    rows: int = 0
    vision_images: int = 0
    stopped: int = 0
    layers_skipped: int = 0


# A context variable, not a module global: nested counters see the same forwards, and concurrent
# threads or tasks each count their own.
_COUNTERS: ContextVar[tuple[ForwardCount, ...]] = ContextVar("spatial_interp_forward_counters", default=())


@contextmanager
def count_forwards() -> Iterator[ForwardCount]:
    """Count the engine's traced forwards inside the ``with`` block (nested blocks all count).

    Example:
        >>> import spatial_interp as si
        >>> from PIL import Image
        >>> from spatial_interp.interventions.engine import count_forwards, run
        >>> vlm = si.load("tiny-qwen2-vl")
        >>> batch = vlm.prepare([Image.new("RGB", (336, 336), "red")] * 3, ["The color is "] * 3)
        >>> with count_forwards() as seen:
        ...     _ = run(vlm, batch)
        >>> seen.forwards, seen.rows, seen.vision_images
        (1, 3, 3)
    """
    counter = ForwardCount()
    token = _COUNTERS.set((*_COUNTERS.get(), counter))
    try:
        yield counter
    finally:
        _COUNTERS.reset(token)


def note_forward(batch: Batch, *, vision: bool = True, skipped: int = 0, stopped: bool = False) -> None:
    """Record one forward over ``batch`` in every active :func:`count_forwards` counter: for forwards
    run outside the engine (``vlm.forward``), so that counts cover them too."""
    _note_forward(batch, vision=vision, skipped=skipped, stopped=stopped)


def _note_forward(batch: Batch, *, vision: bool, skipped: int, stopped: bool) -> None:
    for counter in _COUNTERS.get():
        counter.forwards += 1
        counter.rows += len(batch)
        counter.vision_images += len(batch) if vision and "pixel_values" in batch.inputs else 0
        counter.stopped += int(stopped)
        counter.layers_skipped += skipped


# --- forwards that stop early ----------------------------------------------------------------------
def read_and_stop(vlm: VLM, batch: Batch, reads: Sequence[Read], *, remote: bool | str = False) -> list[Tensor]:
    """The ``reads`` of one unedited forward over ``batch``, halted right after the last of them.

    Nothing past the last read's module runs: reads at ``lm_resid(0)`` cost the vision tower and the
    embedding, no decoder layer and no unembedding. The values are those :func:`run` returns for the
    same reads (it is the same forward up to that point).

    Example:
        >>> import spatial_interp as si
        >>> from PIL import Image
        >>> from spatial_interp.interventions.engine import Read, read_and_stop, run
        >>> vlm = si.load("tiny-gemma3")
        >>> batch = vlm.prepare([Image.new("RGB", (896, 896), "red")], ["The color is "])
        >>> layout = batch.layouts[0]
        >>> read = Read(si.site.lm_resid(0), torch.zeros(layout.grid.n_cells, dtype=torch.long),
        ...             layout.indices(None, si.site.lm_resid(0)))
        >>> bool(torch.equal(read_and_stop(vlm, batch, [read])[0], run(vlm, batch, reads=[read]).reads[0]))
        True
    """
    if not reads:
        raise ValueError("read_and_stop() needs at least one Read (it returns nothing else)")
    if not (isinstance(remote, bool) or remote == "local"):
        raise ValueError(f"remote must be False (local), True (NDIF) or 'local' (serialisation round trip), "
                         f"got {remote!r}")
    if remote is True:
        from ..models.remote import check_remote

        check_remote(vlm)
    plan, read_slices = _build_plan(vlm, [], reads)
    _note_forward(batch, vision=True, skipped=0, stopped=True)
    if remote is False:
        gathered = _traced_reads(vlm.envoy, dict(batch.inputs), remote, plan)
    else:
        from ..models.remote import remote_timeout, within_time

        gathered = within_time(_traced_reads, (vlm.envoy, dict(batch.inputs), remote, plan), remote_timeout())
    # nnsight's stop leaves a young reference cycle (exception -> traceback -> frame) that pins every
    # caller frame, with the chunk's images and input tensors, until the cyclic collector runs; a
    # young-generation pass (milliseconds) frees them now, so memory stays one chunk deep.
    gc.collect(1)
    return [gathered[step][start:stop] for step, start, stop in read_slices]


def _traced_reads(envoy, inputs: dict, remote: bool | str, plan: list) -> list:
    """Trace body of :func:`read_and_stop` (remote-safe like ``_traced_forward``): gather, then stop."""
    with torch.no_grad(), envoy.trace(**inputs, remote=remote) as tracer:
        gathered = []
        for path, from_input, field, flat, _ops, read_rows, read_positions in plan:
            module = envoy.get(path)
            value = module.input if from_input else module.output
            if field is not None:
                value = getattr(value, field)
            here = value.device
            read_positions = read_positions.to(here)
            index = (torch.unravel_index(read_positions, value.shape[:-1]) if flat
                     else (read_rows.to(here), read_positions))
            gathered.append(value[index])
        nnsight.save(gathered)
        tracer.stop()
    return gathered


# --- gradients (attribution patching) --------------------------------------------------------------
@dataclass
class GradientOutput:
    """What :func:`run_gradients` returns for one forward-backward."""

    logits: Float[Tensor, "batch vocab"]
    """Final-position logits of every batch row."""
    scores: Float[Tensor, " batch"]
    """The differentiated readout per batch row."""
    reads: list[Float[Tensor, "n d"]]
    """Activation rows, one tensor per :class:`Read`, in the order given."""
    grads: list[Float[Tensor, "n d"]]
    """``∂ Σ_rows score / ∂ activation`` at the same rows (each row's own score, as rows do not interact)."""


def run_gradients(
    vlm: VLM,
    batch: Batch,
    reads: Sequence[Read],
    transform: str,
    ids: Int[Tensor, "batch k"],
    coeffs: Float[Tensor, "batch k"],
    *,
    edits: Sequence[Edit] = (),
    remote: bool | str = False,
) -> GradientOutput:
    """One forward and one backward over ``batch``: activations and gradients at ``reads``.

    The score of batch row ``i`` is ``Σ_k coeffs[i, k] · f(logits_i)[ids[i, k]]`` with ``f`` the identity
    (``transform="logit"``), softmax (``"prob"``) or log-softmax (``"logprob"``) of the final-position
    logits, or the log-ratio of two probability masses (``"log_odds"``): :func:`~.metrics.readout`,
    spelled out inside the trace so the body stays remote-safe. The backward is of the sum over rows;
    items of a batch do not interact, so each row's gradient is its own score's. Weights stay frozen:
    only the first read activation is made to require a gradient, so the backward computes
    activation gradients and no weight gradient.

    ``edits`` (``Edit.set`` only) overwrite rows before they are read, e.g. with points on the path from
    clean to patched activations (integrated gradients): a read at an edited row then returns the
    written value and the gradient of the score with respect to it. Without edits the forward is the
    unedited one.

    Example:
        >>> import torch, spatial_interp as si
        >>> from PIL import Image
        >>> from spatial_interp.interventions.engine import Read, run_gradients
        >>> vlm = si.load("tiny-qwen2-vl")
        >>> batch = vlm.prepare([Image.new("RGB", (336, 336), "red")], ["The color is "])
        >>> pos = batch.layouts[0].indices(None, si.site.lm_resid(1))
        >>> out = run_gradients(vlm, batch, [Read(si.site.lm_resid(1), torch.zeros_like(pos), pos)], "logit",
        ...                     torch.tensor([[5]]), torch.tensor([[1.0]]))
        >>> tuple(out.grads[0].shape) == (len(pos), vlm.d_model), bool(out.grads[0].abs().sum() > 0)
        (True, True)
    """
    if not reads:
        raise ValueError("run_gradients() needs at least one Read (the activations to differentiate)")
    if transform not in ("logit", "prob", "logprob", "log_odds"):
        raise ValueError(f"transform must be 'logit', 'prob', 'logprob' or 'log_odds', got {transform!r}")
    if ids.shape != coeffs.shape or ids.dim() != 2 or ids.shape[0] != len(batch):
        raise ValueError(f"ids and coeffs must both be (batch={len(batch)}, k); got {tuple(ids.shape)} and "
                         f"{tuple(coeffs.shape)}")
    if not (isinstance(remote, bool) or remote == "local"):
        raise ValueError(f"remote must be False (local), True (NDIF) or 'local' (serialisation round trip), "
                         f"got {remote!r}")
    if remote is True:
        from ..models.remote import check_remote

        check_remote(vlm)
    bad = [e for e in edits if e.kind != "set"]
    if bad:
        raise ValueError(f"run_gradients() applies only Edit.set edits (values to differentiate at), got a "
                         f"{bad[0].kind!r} edit at {bad[0].site}")
    read_keys = {forward_key(r.site) for r in reads}
    unread = [e.site for e in edits if forward_key(e.site) not in read_keys]
    if unread:
        raise ValueError(f"run_gradients() edits {unread[0]} without reading it; read every edited site")
    plan, read_slices = _build_plan(vlm, edits, reads)
    device = home_device(vlm)
    args = (vlm.envoy, dict(batch.inputs), remote, plan, transform, ids.to(device),
            coeffs.to(device=device, dtype=torch.float32))
    _note_forward(batch, vision=True, skipped=0, stopped=False)
    if remote is False:
        values, grads, logits, scores = _traced_gradients(*args)
    else:
        from ..models.remote import remote_timeout, within_time

        values, grads, logits, scores = within_time(_traced_gradients, args, remote_timeout())
        if edits:
            # The serialised trace with edits leaves reference cycles that segfault when the collector
            # meets them inside the next serialisation (nnsight 0.8, measured); collecting them here is safe.
            gc.collect()
    return GradientOutput(logits=logits, scores=scores,
                          reads=[values[step][start:stop] for step, start, stop in read_slices],
                          grads=[grads[step][start:stop] for step, start, stop in read_slices])


def _traced_gradients(envoy, inputs: dict, remote: bool | str, plan: list, transform: str, ids: Tensor,
                      coeffs: Tensor) -> tuple[list, list, Tensor, Tensor]:
    # Trace body of run_gradients (remote-safe like _traced_forward). nnsight finds the `with
    # total.backward():` block by its line in the file, but a serialised trace (remote) runs reformatted
    # code without comments and with each statement on one line: so up to that block the body has no
    # comment and no statement spanning lines, or the lines would not match.
    # The first read activation is made to require a gradient (weights are frozen, so nothing else
    # would); latest activation first in the backward block, the order autograd produces gradients.
    with torch.enable_grad(), envoy.trace(**inputs, remote=remote):
        tensors, indices, values = [], [], []
        for path, from_input, field, flat, ops, read_rows, read_positions in plan:
            module = envoy.get(path)
            value = module.input if from_input else module.output
            if field is not None:
                value = getattr(value, field)
            for _kind, rows, positions, written, _w, _scaled in ops:
                positions = positions.to(value.device)
                edit_rows = None if flat else rows.to(value.device)
                edit_index = torch.unravel_index(positions, value.shape[:-1]) if flat else (edit_rows, positions)
                value[edit_index] = written.to(value.device)
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
                grads[k] = tensors[k].grad[indices[k]]
        logits = logits.detach()
        scores = scores.detach()
        nnsight.save(values)
        nnsight.save(grads)
        nnsight.save(logits)
        nnsight.save(scores)
    return values, grads, logits, scores
