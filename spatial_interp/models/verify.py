"""Pixel-perturbation proof of the pixel → cell → row mapping.

With every vision block bypassed (each block passes its input through), no computation mixes
tokens, so perturbing the pixels of a box can only change the rows holding that box. For a box
aligned to cells the changed rows must be *exactly* ``layout.indices(region, site)``; for any box
they must lie inside it. This runs on any model, real or tiny: ``spatial-interp geometry --verify``.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.models.verify import verify_geometry
    >>> report = verify_geometry(si.load("tiny-pixtral"))
    >>> report.passed
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .. import site as sites
from ..geometry import Box, ImageLayout
from ..site import Site
from .vlm import VLM

SITES = (sites.vision_block(0), sites.vision_out, sites.lm_resid(0))
PROMPT = "The color of the square to the left of the red square is "


@contextlib.contextmanager
def bypass_vision_blocks(vlm: VLM) -> Iterator[None]:
    """Make every vision block return its own input (hidden states), so no block mixes tokens."""

    def passthrough(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    blocks = vlm.model.get_submodule(vlm.adapter.vision_blocks)
    # Prepended so hooks that record hidden states (transformers installs them lazily) see the bypass.
    handles = [block.register_forward_hook(passthrough, with_kwargs=True, prepend=True) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class CaseResult:
    """One perturbation: a box on an image of some size, checked at each site."""

    image_size: tuple[int, int]
    box: Box
    aligned: bool
    region_cells: int
    sites: dict[str, dict] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(s["passed"] for s in self.sites.values())


@dataclass
class VerifyReport:
    model: str
    cases: list[CaseResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def per_site(self) -> dict[str, bool]:
        names = dict.fromkeys(name for c in self.cases for name in c.sites)
        return {name: all(c.sites[name]["passed"] for c in self.cases) for name in names}

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "passed": self.passed,
            "per_site": self.per_site(),
            "cases": [
                {"image_size": list(c.image_size), "box": list(c.box), "aligned": c.aligned,
                 "region_cells": c.region_cells, "sites": c.sites}
                for c in self.cases
            ],
        }


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def perturb(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Invert the pixels inside an integer half-open box (every channel changes by ≥ 1)."""
    pixels = np.array(image)
    x0, y0, x1, y1 = box
    patch = pixels[y0:y1, x0:x1]
    pixels[y0:y1, x0:x1] = np.where(patch == 127, 0, 255 - patch)
    return Image.fromarray(pixels)


def checked_sites(vlm: VLM) -> tuple[Site, ...]:
    """The sites the check covers: a vision tower of depth 0 (each token its own patch's embedding, as in
    the planted position organism) has no vision block to check."""
    return SITES if vlm.n_vision_blocks else SITES[1:]


def _capture(vlm: VLM, images: list[Image.Image]) -> tuple[list[ImageLayout], dict[str, torch.Tensor]]:
    batch = vlm.prepare(images, [PROMPT] * len(images))
    saved = {}
    sites = checked_sites(vlm)
    with torch.no_grad(), bypass_vision_blocks(vlm), vlm.trace(batch):
        if sites[0] == SITES[0]:
            # Block 0's input: under the bypass every block's output equals it, in the same row order.
            patches = vlm.envoy.get(f"{vlm.adapter.vision_blocks}.0").input
            saved[str(SITES[0])] = vlm.adapter.flatten_vision(patches).detach().clone().save()
        for s in sites[1 if sites[0] == SITES[0] else 0:]:
            saved[str(s)] = vlm.stream(s).detach().clone().save()
    return batch.layouts, saved


def aligned_box(layout: ImageLayout, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer pixel box of a cell rectangle, if the processor does not resample the image.

    Resampling kernels straddle cell borders, so exactness can only be demanded without them.
    """
    if (layout.transform.scale_x, layout.transform.scale_y) != (1.0, 1.0):
        raise ValueError("the processor resamples this image size")
    x0, y0, _, _ = layout.cell_box(rows[0], cols[0])
    _, _, x1, y1 = layout.cell_box(rows[1] - 1, cols[1] - 1)
    box = tuple(round(v) for v in (x0, y0, x1, y1))
    if max(abs(a - b) for a, b in zip(box, (x0, y0, x1, y1), strict=True)) > 1e-6:
        raise ValueError("cells do not map to whole pixels at this image size")
    return box  # type: ignore[return-value]


def _cases(layout: ImageLayout) -> list[tuple[tuple[int, int, int, int], bool]]:
    """A cell-aligned interior box, a cell-aligned box touching the top-left border, and an unaligned box."""
    g = layout.grid
    interior = ((g.rows // 3, g.rows // 3 + 2), (g.cols // 2, g.cols // 2 + 3))
    border = ((0, 2), (0, 1))
    out = []
    for rows, cols in (interior, border):
        with contextlib.suppress(ValueError):  # this size is resampled: no exact cell-aligned box
            out.append((aligned_box(layout, rows, cols), True))
    x0, y0, x1, y1 = layout.cell_box(g.rows - 3, 1)
    w, h = x1 - x0, y1 - y0
    # Edges well inside cells, so resampling kernels cannot reach a neighbouring cell.
    unaligned = (int(x0 + 0.4 * w), int(y0 + 0.4 * h), int(x1 + 0.6 * w), int(y1 + 0.6 * h))
    out.append((unaligned, False))
    return out


def verify_geometry(
    vlm: VLM, image_sizes: list[tuple[int, int]] | None = None, *, seed: int = 0, atol: float = 1e-6
) -> VerifyReport:
    """Check ``layout.indices`` against the rows that actually change under a pixel perturbation.

    ``image_sizes`` default to the architecture's own check sizes (its native canvas and
    non-square sizes that exercise resizing and cropping).
    """
    sizes = image_sizes or vlm.adapter.verify_sizes()
    cases = []
    for k, size in enumerate(sizes):
        base = noise_image(size, seed + k)
        probe_layout = vlm.prepare([base], [PROMPT]).layouts[0]
        for box, aligned in _cases(probe_layout):
            layouts, clean = _capture(vlm, [base, perturb(base, box)])
            region = layouts[0].box_to_cells(box)
            result = CaseResult(size, box, aligned, len(region))
            for s in checked_sites(vlm):
                acts = clean[str(s)]
                if s.kind == "lm_resid":
                    # Same prompt and image size, so both items sit at the same positions.
                    diff = (acts[0] - acts[1]).abs().amax(-1)
                else:
                    # Every row of item 0 against the same row of item 1; other rows stay 0.
                    rows0, rows1 = layouts[0].indices(None, s), layouts[1].indices(None, s)
                    diff = torch.zeros(int(acts.shape[0]))
                    diff[rows0] = (acts[rows0] - acts[rows1]).abs().amax(-1)
                predicted = layouts[0].indices(region, s)
                changed = set((diff > atol).nonzero().flatten().tolist())
                expected = set(predicted.tolist())
                ok = changed == expected if aligned else changed <= expected and bool(changed)
                result.sites[str(s)] = {
                    "passed": ok, "changed": len(changed), "predicted": len(expected),
                    "unexpected": sorted(changed - expected)[:10], "missing": sorted(expected - changed)[:10],
                }
            cases.append(result)
    return VerifyReport(vlm.info.name, cases)

