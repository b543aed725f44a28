"""The VLM wrapper: one object that prepares batches and exposes every stream as an nnsight trace.

Example:
    >>> import torch, spatial_interp as si
    >>> from PIL import Image
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> batch = vlm.prepare([Image.new("RGB", (336, 336), "white")], ["The color of the square is "])
    >>> batch.layouts[0].grid.rows, batch.layouts[0].grid.cols
    (12, 12)
    >>> with vlm.trace(batch):
    ...     embeds = vlm.stream(si.site.vision_out).save()
    ...     h3 = vlm.stream(si.site.lm_resid(3)).save()
    >>> tuple(embeds.shape), tuple(h3.shape)[-1] == vlm.d_model
    ((144, 64), True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from nnsight.modeling.transformers import TransformersModel
from PIL import Image
from torch import Tensor

from ..geometry import ImageLayout
from ..images import to_rgb
from ..site import Site, SiteError, resolve
from .adapters import Adapter

DEFAULT_SYSTEM = object()
"""Sentinel: use the paper's system text (``spatial_interp.data.prompts.SYSTEM_TEXT``)."""


@dataclass
class Batch:
    """Model inputs for several (image, prompt) items plus the geometry of each image."""

    inputs: dict[str, Tensor]
    layouts: list[ImageLayout]
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layouts)

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class ModelInfo:
    """Provenance of a loaded model (recorded in every saved result)."""

    name: str
    revision: str | None = None
    source: str = "hub"
    extra: dict[str, Any] = field(default_factory=dict)


class VLM:
    """A vision-language model with its processor, adapter and nnsight envoy.

    Attributes:
        arch: ``"qwen2_vl" | "qwen2_5_vl" | "gemma3" | "llava" | "pixtral"``.
        model: the Hugging Face ``...ForConditionalGeneration`` module.
        processor: its processor.
        envoy: the nnsight wrapper of ``model``; traces run through it.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, adapter: Adapter, info: ModelInfo) -> None:
        self.model = model.eval()
        adapter.speed_up(model)
        self.processor = processor
        self.adapter = adapter
        self.info = info
        self.config = model.config

    @functools.cached_property
    def envoy(self) -> TransformersModel:
        """The nnsight wrapper of :attr:`model` (built on first use).

        A TransformersModel rather than a bare NNsight, so traces can run on NDIF (``remote=True``) or
        through nnsight's serialisation round trip (``remote="local"``).
        """
        return TransformersModel(
            self.model, processor=self.processor, tokenizer=self.processor.tokenizer,
            task="image-text-to-text", device=self.device,
        )

    # --- description ----------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.adapter.arch

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def n_lm_layers(self) -> int:
        return self.adapter.n_lm_layers(self.config)

    @property
    def n_vision_blocks(self) -> int:
        return self.adapter.n_vision_blocks(self.config)

    @property
    def d_model(self) -> int:
        return self.adapter.d_model(self.config)

    @property
    def d_vision(self) -> int:
        return self.adapter.d_vision(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_token_id(self) -> int:
        return self.adapter.image_token_id(self.config)

    @property
    def canvas(self) -> Any:
        """The stimulus canvas native to this model (a ``spatial_interp.data.canvas`` preset name, or a
        ``CanvasGeometry`` a shipped organism records in its config as ``spatial_interp_canvas``)."""
        custom = getattr(self.config, "spatial_interp_canvas", None)
        if custom:
            from ..data.canvas import CanvasGeometry

            return CanvasGeometry(**custom)
        return self.adapter.canvas

    def __repr__(self) -> str:
        return (f"VLM({self.info.name!r}, arch={self.arch}, lm_layers={self.n_lm_layers}, "
                f"d_model={self.d_model}, vision_blocks={self.n_vision_blocks})")

    # --- inputs ---------------------------------------------------------------------------------
    def render(self, prompt: str, system: Any = DEFAULT_SYSTEM) -> str:
        """The chat-templated text for one user prompt (one image placeholder first, as in the paper)."""
        from ..data.prompts import SYSTEM_TEXT, render_prompt

        return render_prompt(self.processor, prompt, system=SYSTEM_TEXT if system is DEFAULT_SYSTEM else system)

    def prepare(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        system: Any = DEFAULT_SYSTEM,
        *,
        chat: bool = True,
    ) -> Batch:
        """Process ``images`` and user ``prompts`` (one image each) into a left-padded batch.

        Images are converted to 8-bit RGB by :func:`spatial_interp.images.to_rgb` (16-bit and float
        images scaled by their range, transparency composited on white, each such change logged as a
        warning); an image with a zero side or over ``MAX_IMAGE_PIXELS`` pixels is a ValueError.

        Args:
            system: system text; defaults to the paper's, ``None`` for the template's own default.
            chat: apply the processor's chat template; ``False`` takes ``prompts`` as final texts
                (each must already contain the image placeholder).
        """
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
        if not images:
            raise ValueError("prepare() needs at least one (image, prompt) pair")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{i}] is {type(prompt).__name__}, expected a str")
        # One conversion policy (16-bit and float scaled by their range, alpha composited on white,
        # zero-size and oversized images refused): see spatial_interp.images.
        images = [to_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        texts = [self.render(p, system) for p in prompts] if chat else prompts
        self.tokenizer.padding_side = "left"
        # One image per prompt, nested per sample: the form every processor accepts for a batch.
        encoded = self.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
        inputs = {k: v for k, v in encoded.items() if isinstance(v, Tensor)}
        layouts = self.adapter.layouts(inputs, images, self.processor, self.config)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return Batch(inputs=inputs, layouts=layouts, texts=texts)

    # --- running --------------------------------------------------------------------------------
    def trace(self, batch: Batch, *, remote: bool | str = False, **kwargs: Any):
        """An nnsight trace of one forward over ``batch`` (all items in one invoke).

        Read or write streams inside it with :meth:`stream`, in forward order (vision before LM,
        lower layers before higher). Use as ``with vlm.trace(batch): ...``. ``remote=True`` sends
        the trace to NDIF; ``remote="local"`` runs nnsight's serialisation round trip in process.
        Batching is one invoke holding every item (nnsight refuses several multimodal invokes);
        index rows with each item's :class:`ImageLayout`.
        """
        if remote is True:
            from .remote import check_remote

            check_remote(self)
        return self.envoy.trace(**batch.inputs, remote=remote, **kwargs)

    def module_path(self, site: Site) -> str:
        """Dotted path (under ``vlm.model``) of the module whose input/output is ``site``."""
        self.check_site(site)
        if site.kind == "vision_out":
            return self.adapter.vision_out_module
        if site.kind == "vision_block":
            return f"{self.adapter.vision_blocks}.{site.index}"
        return f"{self.adapter.lm_layers}.{max(site.index - 1, 0)}"

    def reads_input(self, site: Site) -> bool:
        """Whether ``site`` is a module *input* (only ``lm_resid(0)``, the decoder-layer-0 input)."""
        return site.kind == "lm_resid" and site.index == 0

    def module(self, site: Site) -> torch.nn.Module:
        """The plain PyTorch module behind ``site`` (for raw hooks)."""
        return self.model.get_submodule(self.module_path(site))

    def stream(self, site: Site) -> Float[Tensor, "..."]:
        """Inside a trace: the live activation at ``site``.

        LM sites are ``(batch, pos, d_model)`` (``last_token``: ``(batch, d_model)``); vision sites
        are ``(rows, d)`` over the whole batch (see :meth:`ImageLayout.indices`). The tensor is the
        one the model uses, so in-place writes (``h[b, rows] = ...``) intervene.
        """
        envoy = self.envoy.get(self.module_path(site))
        value = envoy.input if self.reads_input(site) else envoy.output
        if site.kind == "vision_out":
            value = self.adapter.vision_out_tensor(value)
        if site.is_vision:
            return self.adapter.flatten_vision(value)
        return value[:, -1] if site.only_last_token else value

    def logits(self) -> Float[Tensor, "batch pos vocab"]:
        """Inside a trace: the model's output logits."""
        return self.envoy.output.logits

    @torch.no_grad()
    def forward(self, batch: Batch) -> Float[Tensor, "batch pos vocab"]:
        """Plain forward (no trace): logits."""
        return self.model(**batch.inputs).logits

    def check_site(self, site: Site | str) -> None:
        """Raise :class:`SiteError` if ``site`` (a Site or its string form) does not exist in this model."""
        site = resolve(site)
        limits = {"vision_block": self.n_vision_blocks - 1, "lm_resid": self.n_lm_layers, "vision_out": None}
        top = limits[site.kind]
        if top is not None and not 0 <= site.index <= top:
            raise SiteError(
                f"{site} is out of range for {self.info.name}: {site.kind} indices run 0..{top} "
                f"({self.n_vision_blocks} vision blocks, {self.n_lm_layers} LM layers → lm_resid 0..{self.n_lm_layers})"
            )
