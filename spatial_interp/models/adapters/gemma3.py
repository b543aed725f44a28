"""Gemma-3: fixed 896 px resize, SigLIP 64×64 patches average-pooled 4×4 into 16×16 LM tokens."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

from ...geometry import Grid, PixelTransform
from ..tokenizer import PROMPT_WORDS, SYSTEM_PRELUDE, build_word_tokenizer
from .base import Adapter, TinySpec

# Gemma's own chat format: no system role, so the system text opens the first user turn; the
# image is one <start_of_image> that the processor expands into 256 soft tokens.
CHAT_TEMPLATE = SYSTEM_PRELUDE + (
    "{{ bos_token }}"
    "{% for m in messages if m['role'] != 'system' %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if loop.first and ns.system %}{{ ns.system }}\n\n{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Real ids of Gemma-3's special tokens.
SPECIAL_TOKENS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<start_of_turn>": 105, "<end_of_turn>": 106,
                  "<start_of_image>": 255999, "<end_of_image>": 256000, "<image_soft_token>": 262144}


def gemma_tokenizer(words=PROMPT_WORDS, *, real_ids: bool = False):
    """Word-level tokenizer with Gemma-3's special tokens and chat format (``real_ids``: see Qwen's)."""
    return build_word_tokenizer(
        words,
        SPECIAL_TOKENS if real_ids else dict.fromkeys(SPECIAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
        },
    )


class Gemma3Adapter(Adapter):
    arch = "gemma3"
    model_types = ("gemma3",)
    canvas = "gemma3"
    vision_blocks = "model.vision_tower.encoder.layers"
    vision_out_module = "model.multi_modal_projector"
    lm_mid_residual = "pre_feedforward_layernorm"  # post_attention_layernorm normalises the attention output
    image_token = "<image_soft_token>"
    native_size = (896, 896)
    extra_verify_sizes = ((640, 480),)

    def image_token_id(self, config: Any) -> int:
        return config.image_token_index

    def _sides(self, config: Any) -> tuple[int, int]:
        patches = config.vision_config.image_size // config.vision_config.patch_size
        tokens = int(round(config.mm_tokens_per_image ** 0.5))
        return patches, tokens

    def image_grid(self, inputs, b, image_size, processor):
        size = processor.image_processor.size
        side = processor.image_seq_length ** 0.5
        grid = Grid(int(side), int(side))
        return grid, PixelTransform.resize(image_size, (size["width"], size["height"])), size["width"] // grid.cols

    def patch_rows(self, grid, processor, config):
        patches, tokens = self._sides(config)
        pool = patches // tokens
        r, c = torch.meshgrid(torch.arange(grid.rows), torch.arange(grid.cols), indexing="ij")
        i, j = torch.meshgrid(torch.arange(pool), torch.arange(pool), indexing="ij")
        rows = (r.reshape(-1, 1) * pool + i.reshape(1, -1)) * patches + c.reshape(-1, 1) * pool + j.reshape(1, -1)
        return rows

    def vision_block_rows_per_image(self, grid, processor, config):
        patches, _ = self._sides(config)
        return patches * patches

    def encoder_outputs(self, features, sizes):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # Gemma-3 takes one (images, tokens, d) tensor rather than a tuple of per-image rows.
        return {"image": BaseModelOutputWithPooling(pooler_output=torch.stack(torch.split(features, sizes)))}

    def randomize_tiny(self, model: torch.nn.Module, generator: torch.Generator) -> None:
        # Gemma-3 initialises its input projection to zeros, which would make every image identical.
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            weight.copy_(torch.randn(weight.shape, generator=generator) * weight.shape[0] ** -0.5)

    def tokenizer(self, *, real_ids: bool = False):
        return gemma_tokenizer(real_ids=real_ids)

    def tiny(self, seed: int) -> TinySpec:
        tokenizer = self.tokenizer()
        ids = tokenizer.convert_tokens_to_ids
        config = Gemma3Config(
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                sliding_window=512, max_position_embeddings=4096,
                pad_token_id=ids("<pad>"), eos_token_id=ids("<eos>"), bos_token_id=ids("<bos>"),
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=896, patch_size=14, vision_use_head=False,
            ),
            mm_tokens_per_image=256, boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"),
        )
        return TinySpec(config, self.processor(tokenizer))

    def processor(self, tokenizer) -> Gemma3Processor:
        """The processor google/gemma-3-4b-it ships: 896 px bilinear resize, no pan-and-scan."""
        image_processor = Gemma3ImageProcessor(
            size={"height": 896, "width": 896}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False
        )
        return Gemma3Processor(image_processor, tokenizer, chat_template=tokenizer.chat_template,
                               image_seq_length=256)

    def meta_config(self) -> Gemma3Config:
        """google/gemma-3-4b-it."""
        return Gemma3Config(
            text_config=dict(
                vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                sliding_window=1024,
            ),
            vision_config=dict(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=896, patch_size=14, vision_use_head=False,
            ),
            mm_tokens_per_image=256,
        )
