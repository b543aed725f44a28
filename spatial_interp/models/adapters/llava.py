"""LLaVA-1.5: shortest-edge resize and centre crop to 336 px, CLIP 14 px patches, CLS row dropped."""

from __future__ import annotations

from typing import Any

import torch
from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

from ...geometry import Grid, PixelTransform
from ..tokenizer import PROMPT_WORDS, build_word_tokenizer
from .base import Adapter, TinySpec
from .qwen2_vl import CLIP_MEAN, CLIP_STD

# llava-hf's 1.5 format: "USER: <image>\n... ASSISTANT:", a system text leading the first turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{{ m['content'][0]['text'] }}{% endif %} "
    "{% else %}{{ 'USER: ' if m['role'] == 'user' else 'ASSISTANT: ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}</s>{% endif %} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llava_tokenizer(words=PROMPT_WORDS, *, real_ids: bool = False):
    """Word-level tokenizer with LLaVA-1.5's (Llama) special tokens and chat format."""
    return build_word_tokenizer(
        words,
        {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000 if real_ids else None,
         "<pad>": 32001 if real_ids else None},
        chat_template=CHAT_TEMPLATE,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


class LlavaAdapter(Adapter):
    arch = "llava"
    model_types = ("llava",)
    canvas = "llava"
    vision_blocks = "model.vision_tower.encoder.layers"
    vision_out_module = "model.multi_modal_projector"
    image_token = "<image>"
    native_size = (336, 336)
    extra_verify_sizes = ((448, 336), (500, 400))

    @staticmethod
    def matches(config: Any) -> bool:
        return getattr(config.vision_config, "model_type", "") == "clip_vision_model"

    def image_grid(self, inputs, b, image_size, processor):
        ip = processor.image_processor
        short = ip.size["shortest_edge"]
        crop_w, crop_h = ip.crop_size["width"], ip.crop_size["height"]
        w, h = image_size
        # Resize so the short side is `short` (long side truncated as the processor does), then
        # crop the centre.
        if w <= h:
            rw, rh = short, int(short * h / w)
        else:
            rw, rh = int(short * w / h), short
        ox, oy = (rw - crop_w) // 2, (rh - crop_h) // 2
        transform = PixelTransform(rw / w, rh / h, ox, oy, (crop_w, crop_h))
        patch = processor.patch_size
        return Grid(crop_h // patch, crop_w // patch), transform, patch

    def patch_rows(self, grid, processor, config):
        # Row 0 of every vision block is the CLS token.
        return (torch.arange(grid.n_cells) + 1)[:, None]

    def vision_block_rows_per_image(self, grid, processor, config):
        return grid.n_cells + 1

    def tokenizer(self, *, real_ids: bool = False):
        return llava_tokenizer(real_ids=real_ids)

    def tiny(self, seed: int) -> TinySpec:
        tokenizer = self.tokenizer()
        ids = tokenizer.convert_tokens_to_ids
        config = LlavaConfig(
            text_config=dict(
                model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=4096, pad_token_id=ids("<pad>"), bos_token_id=1, eos_token_id=2,
            ),
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=2, image_size=336, patch_size=14, projection_dim=32,
            ),
            image_token_id=ids("<image>"), vision_feature_layer=-2, vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
        return TinySpec(config, self.processor(tokenizer))

    def processor(self, tokenizer) -> LlavaProcessor:
        """The processor llava-hf/llava-1.5-7b-hf ships: CLIP 336 resize + centre crop."""
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
            image_mean=CLIP_MEAN, image_std=CLIP_STD,
        )
        return LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=tokenizer.chat_template,
        )

    def meta_config(self) -> LlavaConfig:
        """llava-hf/llava-1.5-7b-hf."""
        return LlavaConfig(
            text_config=dict(
                model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=4096, rms_norm_eps=1e-5,
            ),
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                projection_dim=768,
            ),
            image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
