"""Pixtral: native-resolution 16 px patches, one ``[IMG_BREAK]`` after each row of ``[IMG]`` tokens."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaConfig, PixtralImageProcessor, PixtralProcessor

from ...geometry import Grid, PixelTransform
from ..tokenizer import PROMPT_WORDS, SYSTEM_PRELUDE, build_word_tokenizer
from .base import Adapter, TinySpec

# mistral-community/pixtral-12b format: "<s>[INST]...[/INST]", the system text leading the user
# turn, each image a single [IMG] that the processor expands row by row.
CHAT_TEMPLATE = SYSTEM_PRELUDE + (
    "{{ bos_token }}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}[INST]{% if loop.last and ns.system %}{{ ns.system }}\n\n{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}[IMG]"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}[/INST]"
    "{% else %}{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Pixtral's special-token ids are small, so the tiny tokenizer keeps the real ones.
SPECIAL_TOKENS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[IMG]": 10,
                  "[IMG_BREAK]": 12, "[IMG_END]": 13, "<pad>": 11}


def pixtral_tokenizer(words=PROMPT_WORDS, *, real_ids: bool = True):
    """Word-level tokenizer with Pixtral's special tokens (always at their real, small ids)."""
    return build_word_tokenizer(
        words, SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", extra_special_tokens={"image_token": "[IMG]"},
    )


class PixtralAdapter(Adapter):
    arch = "pixtral"
    model_types = ("llava",)
    canvas = "pixtral"
    vision_blocks = "model.vision_tower.transformer.layers"
    vision_attention = "attention"  # its mask is already block-diagonal over the images
    vision_out_module = "model.multi_modal_projector"
    image_token = "[IMG]"
    native_size = (240, 240)
    extra_verify_sizes = ((288, 240), (1100, 700))

    @staticmethod
    def matches(config: Any) -> bool:
        return getattr(config.vision_config, "model_type", "") == "pixtral"

    def image_grid(self, inputs, b, image_size, processor):
        h, w = (int(v) for v in inputs["image_sizes"][b])
        patch = processor.patch_size
        return Grid(h // patch, w // patch), PixelTransform.resize(image_size, (w, h)), patch

    def patch_rows(self, grid, processor, config):
        # The tower concatenates every image's patch grid into one sequence, row-major.
        return torch.arange(grid.n_cells)[:, None]

    def tokenizer(self, *, real_ids: bool = False):
        return pixtral_tokenizer(real_ids=real_ids)

    def tiny(self, seed: int) -> TinySpec:
        tokenizer = self.tokenizer()
        config = LlavaConfig(
            text_config=dict(
                model_type="mistral", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=8192, pad_token_id=11, bos_token_id=1, eos_token_id=2,
            ),
            vision_config=dict(
                model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=1024, patch_size=16, head_dim=16,
            ),
            image_token_id=10, vision_feature_layer=-1, vision_feature_select_strategy="full",
            projector_hidden_act="gelu", multimodal_projector_bias=True,
        )
        return TinySpec(config, self.processor(tokenizer))

    def processor(self, tokenizer) -> PixtralProcessor:
        """The processor mistral-community/pixtral-12b ships: longest edge 1024, 16 px patches."""
        image_processor = PixtralImageProcessor(size={"longest_edge": 1024}, patch_size={"height": 16, "width": 16})
        return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=16,
                                spatial_merge_size=1, chat_template=tokenizer.chat_template)

    def meta_config(self) -> LlavaConfig:
        """mistral-community/pixtral-12b."""
        return LlavaConfig(
            text_config=dict(
                model_type="mistral", vocab_size=131072, hidden_size=5120, intermediate_size=14336,
                num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                max_position_embeddings=1024000, rope_parameters={"rope_type": "default", "rope_theta": 1e9},
            ),
            vision_config=dict(
                model_type="pixtral", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                num_attention_heads=16, image_size=1024, patch_size=16, head_dim=64,
            ),
            image_token_id=10, vision_feature_layer=-1, vision_feature_select_strategy="full",
            projector_hidden_act="gelu", multimodal_projector_bias=True,
        )
