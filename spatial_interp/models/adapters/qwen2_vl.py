"""Qwen2-VL: smart-resized image, 14 px patches merged 2×2 into one LM token per 28 px cell."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

from ...geometry import Grid, PixelTransform
from ..patch_embedding import as_matmul
from ..rope_index import rope_index_by_layout
from ..tokenizer import PROMPT_WORDS, build_word_tokenizer
from .base import Adapter, TinySpec

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Qwen's own chat format: ChatML turns, the default system line when none is given, and the image
# wrapped in vision start/end markers around one <|image_pad|> that the processor expands.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Real ids of Qwen2-VL's special tokens.
SPECIAL_TOKENS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}


def qwen_tokenizer(words=PROMPT_WORDS, *, real_ids: bool = False):
    """Word-level tokenizer with Qwen's special tokens and chat format.

    ``real_ids`` places the special tokens at their real ids (a 151k vocabulary, for real-size
    configs); otherwise they follow the words in a compact vocabulary.
    """
    return build_word_tokenizer(
        words,
        SPECIAL_TOKENS if real_ids else dict.fromkeys(SPECIAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


class Qwen2VLAdapter(Adapter):
    arch = "qwen2_vl"
    model_types = ("qwen2_vl",)
    canvas = "qwen2_vl"
    vision_blocks = "model.visual.blocks"
    vision_out_module = "model.visual.merger"
    image_token = "<|image_pad|>"
    native_size = (336, 336)
    extra_verify_sizes = ((448, 252), (280, 504), (500, 375))
    # Images (Qwen2.5-VL: windows) are segments of one packed sequence; the non-flash path calls the
    # kernel once per segment in its list comprehension, the third attention_interface operation.
    vision_attention = "attn"
    vision_attention_call = "attention_interface_2"
    vision_attention_segments = "cu_seqlens"

    def speed_up(self, model: torch.nn.Module) -> None:
        as_matmul(model.get_submodule("model.visual.patch_embed.proj"))  # a Conv3d over pre-cut patches
        rope_index_by_layout(model.get_submodule("model"))  # rotary positions once per distinct row layout

    def n_vision_blocks(self, config: Any) -> int:
        return config.vision_config.depth

    def d_vision(self, config: Any) -> int:
        return config.vision_config.embed_dim

    def _grid_thw(self, inputs: dict, b: int) -> tuple[int, int]:
        _, gh, gw = (int(v) for v in inputs["image_grid_thw"][b])
        return gh, gw

    def image_grid(self, inputs, b, image_size, processor):
        gh, gw = self._grid_thw(inputs, b)
        patch = processor.image_processor.patch_size
        merge = processor.image_processor.merge_size
        grid = Grid(gh // merge, gw // merge)
        return grid, PixelTransform.resize(image_size, (gw * patch, gh * patch)), patch * merge

    def merge_order(self, grid: Grid, processor: Any, config: Any) -> Tensor:
        """Position of each cell's merged unit in the vision blocks' row order (identity here)."""
        return torch.arange(grid.n_cells)

    def patch_rows(self, grid, processor, config):
        group = processor.image_processor.merge_size ** 2
        # The processor emits patches grouped by merge unit, so each cell's patches are contiguous.
        order = self.merge_order(grid, processor, config)
        return order[:, None] * group + torch.arange(group)[None, :]

    def tokenizer(self, *, real_ids: bool = False):
        return qwen_tokenizer(real_ids=real_ids)

    # Per-family data; Qwen2.5-VL overrides these and nothing else of loading.
    config_class: ClassVar[type] = Qwen2VLConfig
    processor_class: ClassVar[type] = Qwen2VLProcessor
    tiny_vision: ClassVar[dict] = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    real_vision: ClassVar[dict] = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4)
    real_max_positions: ClassVar[int] = 32768

    def tiny(self, seed: int) -> TinySpec:
        tokenizer = self.tokenizer()
        ids = tokenizer.convert_tokens_to_ids
        config = self.config_class(
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "mrope", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
            ),
            vision_config=dict(self.tiny_vision),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        )
        return TinySpec(config, self.processor(tokenizer))

    def processor(self, tokenizer) -> Qwen2VLProcessor:
        """The processor the real checkpoint ships: default size limits, CLIP normalisation."""
        image_processor = Qwen2VLImageProcessor(
            min_pixels=56 * 56, max_pixels=28 * 28 * 16384, image_mean=CLIP_MEAN, image_std=CLIP_STD
        )
        video_processor = Qwen2VLVideoProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
        return self.processor_class(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
            chat_template=tokenizer.chat_template,
        )

    def meta_config(self) -> Qwen2VLConfig:
        """The 7B-Instruct checkpoint's config (Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct)."""
        return self.config_class(
            text_config=dict(
                vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=self.real_max_positions,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
            ),
            vision_config=dict(self.real_vision),
        )
