"""The questions every architecture adapter answers.

Nothing outside ``spatial_interp/models/adapters`` branches on the architecture: the wrapper,
the interventions and the CLI ask an :class:`Adapter` instead. An adapter is one small file that
names module paths, builds each image's :class:`~spatial_interp.geometry.ImageLayout` from the
processor's real output, and describes the architecture-exact tiny model used offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from ...geometry import Grid, ImageLayout, PixelTransform


@dataclass(frozen=True)
class TinySpec:
    """What a ``tiny-<arch>`` model is built from: a config and a processor, both offline."""

    config: Any
    processor: Any


class Adapter:
    """Architecture adapter. Subclasses fill the class attributes and the abstract methods."""

    arch: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    """``config.model_type`` values this adapter serves."""
    canvas: ClassVar[str]
    """Name of the stimulus canvas preset (``spatial_interp.data.canvas``) native to this model."""
    lm_layers: ClassVar[str] = "model.language_model.layers"
    final_norm: ClassVar[str] = "model.language_model.norm"
    unembed: ClassVar[str] = "lm_head"
    vision_blocks: ClassVar[str]
    vision_out_module: ClassVar[str]
    image_token: ClassVar[str]
    native_size: ClassVar[tuple[int, int]]
    """``(width, height)`` of the paper's synthetic canvas for this model (an exact grid, no resampling)."""
    extra_verify_sizes: ClassVar[tuple[tuple[int, int], ...]] = ()
    """Further image sizes the geometry self-check covers (resizes, crops, odd aspect ratios)."""

    # --- sizes ----------------------------------------------------------------------------------
    def text_config(self, config: Any) -> Any:
        return config.text_config

    def n_lm_layers(self, config: Any) -> int:
        return self.text_config(config).num_hidden_layers

    def d_model(self, config: Any) -> int:
        return self.text_config(config).hidden_size

    def n_vision_blocks(self, config: Any) -> int:
        return config.vision_config.num_hidden_layers

    def d_vision(self, config: Any) -> int:
        return config.vision_config.hidden_size

    def image_token_id(self, config: Any) -> int:
        return config.image_token_id

    vision_attention: ClassVar[str] = "self_attn"
    """Attention module under each vision block (``vision_blocks.K.<this>``)."""
    vision_attention_call: ClassVar[str] = "attention_interface_1"
    """nnsight ``.source`` label of that module's kernel call ``attention_interface(self, q, k, v, mask, ...)``
    (the call the sdpa/eager path runs), where attention flow reads and knockouts mask."""
    vision_attention_segments: ClassVar[str | None] = None
    """Keyword input of the attention module giving packed segment bounds (``cu_seqlens``), if the tower
    runs every image as one sequence split into segments; ``None``: images are batch rows or masked."""

    lm_attention: ClassVar[str] = "self_attn"
    """Attention module under each decoder layer (``lm_layers.K.<this>``)."""
    lm_attention_call: ClassVar[str] = "attention_interface_1"
    """nnsight ``.source`` label of that module's kernel call ``attention_interface(self, q, k, v, mask, ...)``
    (post-rotary queries, keys and values), where attribution's QK fix reads the attention pattern."""
    lm_mid_residual: ClassVar[str] = "post_attention_layernorm"
    """Module under each decoder layer whose input is the residual stream between attention and MLP
    (the skip connection's sum), where ``method="atp-attn"`` reads the gradient past the attention."""

    vision_out_field: ClassVar[str | None] = None
    """Attribute of ``vision_out_module``'s output holding the spliced embeddings (``None``: the output
    itself). Plain data, so code that must run remotely (inside an NDIF trace) can use it."""

    # --- streams --------------------------------------------------------------------------------
    def vision_out_tensor(self, output: Any) -> Tensor:
        """The spliced vision embeddings inside ``vision_out_module``'s output."""
        return output if self.vision_out_field is None else getattr(output, self.vision_out_field)

    def encoder_outputs(self, features: Tensor, sizes: list[int]) -> dict[str, Any]:
        """Precomputed vision embeddings in the form the model's ``mm_encoder_outputs`` argument takes.

        ``features`` are ``(rows, d)`` ``vision_out`` rows over a batch, ``sizes`` the rows of each
        image. Feeding them instead of ``pixel_values`` runs the LM without the vision tower.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"image": BaseModelOutputWithPooling(pooler_output=tuple(torch.split(features, sizes)))}

    def flatten_vision(self, value: Tensor) -> Tensor:
        """A ``(rows, d)`` view of a vision activation (shares storage, so writes go through)."""
        return value.reshape(-1, value.shape[-1])

    # --- geometry -------------------------------------------------------------------------------
    def image_grid(
        self, inputs: Mapping[str, Tensor], b: int, image_size: tuple[int, int], processor: Any
    ) -> tuple[Grid, PixelTransform, int]:
        """Grid, pixel transform and processed pixels per cell of batch item ``b``.

        Read from what the processor produced for that item, so the layout is the geometry the model
        actually saw; ``image_size`` is the original ``(width, height)``.
        """
        raise NotImplementedError

    def patch_rows(self, grid: Grid, processor: Any, config: Any) -> Tensor:
        """``(cells, patches_per_cell)`` rows of one image's vision-block activation, row-major cells."""
        raise NotImplementedError

    def vision_block_rows_per_image(self, grid: Grid, processor: Any, config: Any) -> int:
        """How many rows one image occupies in a (flattened) vision-block activation."""
        return int(self.patch_rows(grid, processor, config).numel())

    def layouts(
        self,
        inputs: Mapping[str, Tensor],
        images: list[Image.Image],
        processor: Any,
        config: Any,
    ) -> list[ImageLayout]:
        """One layout per image of a batch (one image per prompt), from the processor's output."""
        input_ids = inputs["input_ids"]
        token_id = self.image_token_id(config)
        layouts, vision_offset, out_offset = [], 0, 0
        for b, image in enumerate(images):
            grid, transform, cell_px = self.image_grid(inputs, b, image.size, processor)
            positions = (input_ids[b] == token_id).nonzero().flatten()
            patches = self.patch_rows(grid, processor, config)
            layouts.append(
                ImageLayout(
                    grid=grid,
                    image_size=image.size,
                    transform=transform,
                    cell_px=cell_px,
                    batch_index=b,
                    lm_positions=positions,
                    vision_out_rows=torch.arange(grid.n_cells) + out_offset,
                    vision_block_rows=patches + vision_offset,
                    last_position=input_ids.shape[1] - 1,
                )
            )
            vision_offset += self.vision_block_rows_per_image(grid, processor, config)
            out_offset += grid.n_cells
        return layouts

    def verify_sizes(self) -> list[tuple[int, int]]:
        return [self.native_size, *self.extra_verify_sizes]

    # --- loading --------------------------------------------------------------------------------
    @staticmethod
    def matches(config: Any) -> bool:
        """Whether this adapter serves ``config`` among those sharing its ``model_type``."""
        return True

    def speed_up(self, model: torch.nn.Module) -> None:
        """Give modules forwards that compute the same map faster (float rounding aside), in place, before
        anything hooks them; nothing by default."""

    def randomize_tiny(self, model: torch.nn.Module, generator: torch.Generator) -> None:
        """Re-initialise weights a random tiny model must not keep at their default (none here)."""

    def tokenizer(self, *, real_ids: bool = False) -> Any:
        """Offline word-level tokenizer with this family's special tokens and chat template."""
        raise NotImplementedError

    def processor(self, tokenizer: Any) -> Any:
        """The processor class and settings the real checkpoint ships, around ``tokenizer``."""
        raise NotImplementedError

    def tiny(self, seed: int) -> TinySpec:
        """Config and processor of the architecture-exact random tiny model."""
        raise NotImplementedError

    def meta_config(self) -> Any:
        """The real flagship checkpoint's config, written out (no download), for meta-device checks."""
        raise NotImplementedError
