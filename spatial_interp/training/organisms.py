"""The two organism designs: model config, processor and training recipe per architecture.

Both are the real transformers classes (``Qwen2VLForConditionalGeneration``,
``Gemma3ForConditionalGeneration``) at a tiny width and depth, with the family's own chat format
and special tokens and a word-level vocabulary in which every prompt word and answer is one token.

Geometry choices (documented in each model card):

- **Qwen2-VL** keeps the paper's LM geometry: a 336 px canvas gives a 12×12 grid of LM tokens, one
  per 28 px cell, so the paper's slot token ids and 4/4/4 strips hold. Its processor resizes to at
  most 168 px and does not merge patches (``merge_size=1``): 12×12 patches of 14 px, one per token.
  At the real 336 px with a 2×2 merge the vision tower's 576 patches made a step cost ~2.7 s on the
  shared 2-core machine (≈110 min for 2,500 steps), far over the 30-minute budget.
- **Gemma-3** keeps the 16×16 LM token grid of the paper's 896 px canvas (56 px cells, entity and
  spacing 3 cells). Its processor resizes to 224 px and the SigLIP tower sees 16×16 patches of
  14 px, one per LM token: the projector's average pool is kept but has kernel 1 (the real model:
  896 px, 64×64 patches pooled 4×4). A 64×64-patch tower (4,096 tokens) or even a 32×32 one pooled
  2×2 costs 4–16× more attention per image and cannot train within the CPU budget.

Learning left/right: a tiny LM only orders image tokens along an axis if its position encoding turns
enough across the grid, so Qwen's M-RoPE uses theta 10 and a 2/7/7 (time, height, width) split, and
both recipes start with a Squares-only curriculum (see :class:`TrainRecipe`). Gemma-3's 1-D RoPE
needed no change.

Example:
    >>> from spatial_interp.training.organisms import SPECS
    >>> SPECS["gemma3"].build_processor().image_processor.size["height"]
    224
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.adapters.gemma3 import gemma_tokenizer
from ..models.adapters.qwen2_vl import Qwen2VLAdapter, qwen_tokenizer
from .stimuli import CANVASES, Canvas
from .vocab import organism_words


@dataclass(frozen=True)
class TrainRecipe:
    """Optimisation settings (identical across restarts; only the seed changes)."""

    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_steps: int = 1500
    eval_every: int = 100
    eval_items: int = 192
    stop_accuracy: float = 0.995
    """Stop early once the validation suite (random layouts and held-out orderings) reaches this."""
    stall_step: int = 1200
    stall_accuracy: float = 0.3
    """A run whose rolling train accuracy is below this at ``stall_step`` restarts with the next seed."""
    max_restarts: int = 3
    curriculum_steps: int = 0
    """Train on ``curriculum_tasks`` only for this many steps, then on all tasks."""
    curriculum_tasks: tuple[str, ...] = ("squares",)
    permuted_fraction: float = 0.0
    """Fraction of training items whose image rows are shuffled at the splice (:mod:`.routes`)."""
    ablated_fraction: float = 0.0
    """Fraction of training items under the paper's §7.1 ordering ablation at the splice (:mod:`.routes`)."""
    order_loss: float = 0.0
    """Weight of an auxiliary loss that trains a linear read-out (discarded after training) to name each
    entity cell's slot from the vision tower's output: it gives the tower the ordering signal directly.
    Pilots of the vision organism (train accuracy at step 400, Squares curriculum): answer loss alone at
    lr 3e-3 0.39 (0.37 at step 800, all tasks); order loss 0.1 at lr 3e-3 0.42; order loss 1.0 at lr 1e-3 0.80."""
    stop_step: int | None = None
    """Stop after this many steps while the learning-rate schedule still spans ``max_steps`` (how a
    checkpoint taken part-way through a schedule is reproduced exactly)."""


@dataclass(frozen=True)
class OrganismSpec:
    """Everything needed to build one organism from scratch."""

    arch: str
    name: str
    canvas: Canvas
    mechanism: str = "emergent"
    """``"emergent"`` (whatever training found) or the planted route for order: ``"position"``,
    ``"vision"`` or ``"dual"`` (see :data:`PLANTED`)."""
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    dims: dict[str, int] = field(default_factory=dict)
    train_canvas: Canvas | None = None
    """Canvas the training scenes are drawn on (default: ``canvas``). Gemma draws its training scenes at
    half the paper's pixel size (same cells and layouts), since its processor downsamples to 224 px anyway
    and drawing 896 px canvases dominated the step time; evaluation always uses ``canvas``."""

    @property
    def init_std(self) -> float:
        """Weight-init std: transformers' 0.02 is tuned for widths in the thousands; at width 64 it leaves
        attention logits near zero for hundreds of steps (the feasibility run's stall), so use ~1/sqrt(width)
        unless the design says otherwise."""
        return self.dims.get("init_milli", 20) / 1000

    @property
    def data_canvas(self) -> Canvas:
        return self.train_canvas or self.canvas

    def build_processor(self) -> Any:
        if self.arch == "qwen2_vl":
            from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

            real = Qwen2VLAdapter().processor(qwen_tokenizer(organism_words()))
            side = self.dims["image_size"]
            # The real processor's settings, except: images are resized to at most side x side pixels
            # and patches are not merged (merge 1), so a 336 px canvas gives 12x12 LM tokens of 28 px.
            ip = real.image_processor
            image_processor = Qwen2VLImageProcessor(
                min_pixels=56 * 56, max_pixels=side * side, image_mean=ip.image_mean, image_std=ip.image_std,
                patch_size=ip.patch_size, temporal_patch_size=ip.temporal_patch_size, merge_size=self.dims["merge"],
            )
            return Qwen2VLProcessor(image_processor=image_processor, tokenizer=real.tokenizer,
                                    video_processor=real.video_processor, chat_template=real.chat_template)
        from transformers import Gemma3ImageProcessor, Gemma3Processor

        tokenizer = gemma_tokenizer(organism_words())
        side = self.dims["image_size"]
        image_processor = Gemma3ImageProcessor(
            size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False
        )
        return Gemma3Processor(image_processor, tokenizer, chat_template=tokenizer.chat_template,
                               image_seq_length=256)

    def build_config(self, processor: Any) -> Any:
        tok = processor.tokenizer
        ids = tok.convert_tokens_to_ids
        d = self.dims
        head_dim = 32
        if self.arch == "qwen2_vl":
            from transformers import Qwen2VLConfig

            return Qwen2VLConfig(
                text_config=dict(
                    vocab_size=len(tok), hidden_size=d["hidden"], intermediate_size=2 * d["hidden"],
                    num_hidden_layers=d["layers"], num_attention_heads=d["hidden"] // head_dim,
                    num_key_value_heads=1, max_position_embeddings=2048, rms_norm_eps=1e-6,
                    # head_dim 32 → 16 rotary pairs over (time, height, width). M-RoPE gives the width
                    # section the lowest frequencies: with the real split (1/4, 3/8, 3/8) and theta 1e4
                    # they turn < 0.04 rad across 12 columns, so a tiny LM cannot tell left from right by
                    # position (theta 100: ~0.7 rad, still learnt only above/below in 1,800 steps).
                    # Time 2 pairs, 7 + 7 spatial, theta 10: width turns 1.4-3.2 rad across the image.
                    rope_parameters={"rope_type": "mrope", "mrope_section": list(mrope_section(d)),
                                     "rope_theta": float(d["rope_theta"])},
                    bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                    tie_word_embeddings=False, initializer_range=self.init_std,
                ),
                vision_config=dict(depth=d["vision_layers"], embed_dim=d["vision_hidden"], hidden_size=d["hidden"],
                                   num_heads=d["vision_hidden"] // head_dim, mlp_ratio=2,
                                   spatial_merge_size=d["merge"], initializer_range=self.init_std,
                                   **({"rope_parameters": {"rope_theta": float(d["vision_rope_theta"])}}
                                      if "vision_rope_theta" in d else {})),
                image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            )
        from transformers import Gemma3Config

        return Gemma3Config(
            text_config=dict(
                vocab_size=len(tok), hidden_size=d["hidden"], intermediate_size=2 * d["hidden"],
                num_hidden_layers=d["layers"], num_attention_heads=d["hidden"] // head_dim, num_key_value_heads=1,
                head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=512,
                max_position_embeddings=2048,
                pad_token_id=ids("<pad>"), eos_token_id=ids("<eos>"), bos_token_id=ids("<bos>"),
                initializer_range=self.init_std,
            ),
            vision_config=dict(
                hidden_size=d["vision_hidden"], intermediate_size=2 * d["vision_hidden"],
                num_hidden_layers=d["vision_layers"], num_attention_heads=d["vision_hidden"] // head_dim,
                image_size=d["image_size"], patch_size=14, vision_use_head=False,
            ),
            mm_tokens_per_image=256, boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"),
        )

    def build_model(self, processor: Any, seed: int) -> torch.nn.Module:
        """A freshly initialised model (deterministic in ``seed``)."""
        from transformers import AutoModelForImageTextToText

        config = self.build_config(processor)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForImageTextToText.from_config(config)
            if self.arch == "gemma3":
                # Gemma-3 initialises its input projection to zeros, so every image would embed
                # identically and no gradient could tell images apart; give it a scaled Gaussian.
                weight = model.model.multi_modal_projector.mm_input_projection_weight
                with torch.no_grad():
                    weight.normal_(0.0, weight.shape[0] ** -0.5)
        return model


def mrope_section(dims: dict[str, int], pairs: int = 16) -> tuple[int, int, int]:
    """(time, height, width) rotary pairs: ``mrope_time`` for time, the rest split evenly.

    ``mrope_time = 16`` puts every pair on the time axis, which is constant over one image's tokens:
    the LM's position encoding then cannot tell image tokens apart.
    """
    t = dims.get("mrope_time", 4)
    return t, (pairs - t) // 2, pairs - t - (pairs - t) // 2


SPECS: dict[str, OrganismSpec] = {
    "qwen2_vl": OrganismSpec(
        arch="qwen2_vl", name="qwen2-vl", canvas=CANVASES["qwen2_vl"],
        recipe=TrainRecipe(lr=3e-3, max_steps=1600, curriculum_steps=400, stall_step=600, stall_accuracy=0.5),
        dims={"hidden": 64, "layers": 3, "vision_hidden": 64, "vision_layers": 2, "image_size": 168, "merge": 1,
              "init_milli": 100, "rope_theta": 10, "mrope_time": 2},
    ),
    "gemma3": OrganismSpec(
        arch="gemma3", name="gemma3", canvas=CANVASES["gemma3"],
        # Validation every 200 steps: each pass renders 384 896-px scenes (~15 s). The shipped weights are the
        # same as with 100 (its early stop never fired; reproduced byte for byte).
        recipe=TrainRecipe(lr=3e-3, max_steps=1800, curriculum_steps=400, stall_step=600, stall_accuracy=0.5,
                           eval_every=200),
        train_canvas=Canvas(16, 28, 3, 3),
        dims={"hidden": 64, "layers": 4, "vision_hidden": 32, "vision_layers": 2, "image_size": 224,
              "init_milli": 100},
    ),
}
"""The shipped organisms' designs, keyed by architecture."""


_QWEN_PLANTED_DIMS = {"hidden": 64, "layers": 3, "vision_hidden": 64, "image_size": 168, "merge": 1,
                      "init_milli": 100, "rope_theta": 10, "mrope_time": 2}

PLANTED: dict[str, OrganismSpec] = {
    # Depth 0: the vision tower is patch embedding + merger MLP, each token a function of its own 14 px
    # patch, so no token can know where it sits or what is next to it; the LM must order by M-RoPE.
    "position": OrganismSpec(
        arch="qwen2_vl", name="qwen2-vl-position", canvas=CANVASES["qwen2_vl"], mechanism="position",
        recipe=TrainRecipe(lr=3e-3, max_steps=1600, curriculum_steps=400, stall_step=600, stall_accuracy=0.5),
        dims={**_QWEN_PLANTED_DIMS, "vision_layers": 0},
    ),
    # Every rotary pair on the time axis (constant over the image) and every training item's image rows
    # shuffled at the splice: the LM cannot read where a token sits, so order must be in the tokens.
    "vision": OrganismSpec(
        arch="qwen2_vl", name="qwen2-vl-vision", canvas=CANVASES["qwen2_vl"], mechanism="vision",
        recipe=TrainRecipe(lr=1e-3, max_steps=2400, curriculum_steps=400, stall_step=900, stall_accuracy=0.4,
                           permuted_fraction=1.0, order_loss=1.0),
        dims={**_QWEN_PLANTED_DIMS, "vision_layers": 3, "mrope_time": 16, "vision_rope_theta": 100},
    ),
    # Both routes: a third of the items shuffled (needs the vision route), a third under the §7.1
    # ablation (needs the LM's positional route), a third clean.
    "dual": OrganismSpec(
        arch="qwen2_vl", name="qwen2-vl-dual", canvas=CANVASES["qwen2_vl"], mechanism="dual",
        recipe=TrainRecipe(lr=1e-3, max_steps=2400, curriculum_steps=400, stall_step=900, stall_accuracy=0.4,
                           permuted_fraction=1 / 3, ablated_fraction=1 / 3, order_loss=1.0),
        dims={**_QWEN_PLANTED_DIMS, "vision_layers": 3, "vision_rope_theta": 100},
    ),
}
"""The planted-mechanism Qwen2-VL organisms (issue 9), keyed by the route for order they must use."""


PLANTED_TRUTH: dict[str, dict[str, bool]] = {
    "position": {"vision_route": False, "lm_position_route": True},
    "vision": {"vision_route": True, "lm_position_route": False},
    "dual": {"vision_route": True, "lm_position_route": True},
}
"""The routes for order each planted organism has by construction (``spatial_interp.mechanism``'s names)."""

CONSTRUCTION: dict[str, str] = {
    "position": (
        "The vision tower has depth 0: each image token is the patch embedding and merger MLP of its own 14 px "
        "patch, so a token cannot depend on any other patch and carries no order (moving an entity by whole "
        "cells leaves its tokens bit-identical; tests/organism/test_planted.py checks it). The LM keeps "
        "M-RoPE over (time, height, width), so order can only come from where the tokens sit."),
    "vision": (
        "Every rotary pair of the LM's M-RoPE is on the time axis (mrope_section = [16, 0, 0]), which is "
        "constant over one image's tokens, and during training every item's image rows are shuffled at the "
        "splice (a fresh permutation per item and step), so the LM can read neither M-RoPE nor causal order "
        "off the image: order must be in the vision tokens' content. A 3-block vision tower computes it."),
    "dual": (
        "The LM keeps M-RoPE over (time, height, width), and training mixes three routes per item: a third "
        "clean, a third with the image rows shuffled at the splice (only the vision tokens' content can give "
        "order) and a third under the paper's §7.1 ordering ablation at the splice (each slot's rows replaced "
        "by the entity drawn alone at the middle slot, the background by the empty canvas: only the LM's "
        "reading of positions can give order). Which route wins on clean inputs is measured, not built in."),
}


def spec_for(arch: str, mechanism: str = "emergent") -> OrganismSpec:
    """The organism design of ``arch`` with ``mechanism`` (``"emergent"``: the original organisms)."""
    if mechanism == "emergent":
        if arch not in SPECS:
            raise ValueError(f"no organism design for arch {arch!r}; use one of {', '.join(sorted(SPECS))}")
        return SPECS[arch]
    if mechanism not in PLANTED:
        raise ValueError(f"unknown mechanism {mechanism!r}; use emergent or one of {', '.join(PLANTED)}")
    spec = PLANTED[mechanism]
    if spec.arch != arch:
        raise ValueError(f"the planted {mechanism} organism is built on {spec.arch}, not {arch}")
    return spec
