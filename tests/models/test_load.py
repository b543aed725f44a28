"""Loading: tiny models are architecture-exact, seeded and offline; real-size configs on meta; errors."""

import pytest
import torch
from PIL import Image

import spatial_interp as si
from spatial_interp.models import UnknownModelError, UnsupportedArchitectureError
from spatial_interp.models.adapters import adapter_for_config
from spatial_interp.models.load import meta_vlm
from spatial_interp.site import SiteError
from tests._models import tiny_model

EXPECTED_CLASSES = {
    "tiny-qwen2-vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLImageProcessor"),
    "tiny-qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor"),
    "tiny-gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor", "Gemma3ImageProcessor"),
    "tiny-llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessor"),
    "tiny-pixtral": ("LlavaForConditionalGeneration", "PixtralProcessor", "PixtralImageProcessor"),
}


@pytest.mark.parametrize("name", list(EXPECTED_CLASSES))
def test_tiny_models_use_the_real_classes(name):
    vlm = tiny_model(name)
    model_cls, proc_cls, image_cls = EXPECTED_CLASSES[name]
    assert type(vlm.model).__name__ == model_cls
    assert type(vlm.processor).__name__ == proc_cls
    assert type(vlm.processor.image_processor).__name__ == image_cls
    assert adapter_for_config(vlm.config).arch == vlm.arch


def test_tiny_models_are_seeded():
    a, b, c = si.load("tiny-gemma3", seed=3), si.load("tiny-gemma3", seed=3), si.load("tiny-gemma3", seed=4)
    pa, pb, pc = (dict(m.model.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    key = "model.language_model.embed_tokens.weight"
    assert not torch.equal(pa[key], pc[key])
    # Gemma-3 zero-initialises its image projection; the tiny model must not keep that.
    assert pa["model.multi_modal_projector.mm_input_projection_weight"].abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "rendered"),
    [
        ("tiny-qwen2-vl", "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                          "<|vision_end|>Q <|im_end|>\n<|im_start|>assistant\n"),
        ("tiny-gemma3", "<bos><start_of_turn>user\nSYS\n\n<start_of_image>Q <end_of_turn>\n<start_of_turn>model\n"),
        ("tiny-llava", "SYS USER: <image>\nQ  ASSISTANT:"),
        ("tiny-pixtral", "<s>[INST]SYS\n\n[IMG]Q [/INST]"),
    ],
)
def test_chat_templates_render_the_family_format(name, rendered):
    vlm = tiny_model(name)
    messages = [{"role": "system", "content": [{"type": "text", "text": "SYS"}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q "}]}]
    text = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == rendered


def test_answer_words_are_single_tokens():
    tok = tiny_model("tiny-qwen2-vl").tokenizer
    for word in ["red", "Red", " red", " Red", "apple", " Apple"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1


# Real flagship configs, written out in the adapters (values of the public config.json files).
META = {
    "qwen2_vl": (28, 3584, 32, 336, (12, 12), 12),
    "qwen2_5_vl": (28, 3584, 32, 336, (12, 12), 12),
    "gemma3": (34, 2560, 27, 896, (16, 16), 16),
    "llava": (32, 4096, 24, 336, (24, 24), 24),
    "pixtral": (40, 5120, 24, 240, (15, 15), 16),
}


@pytest.mark.parametrize("arch", list(META))
def test_real_size_configs_on_meta(arch):
    layers, width, blocks, size, grid, row_stride = META[arch]
    vlm = meta_vlm(arch)
    assert next(vlm.model.parameters()).device.type == "meta"
    assert (vlm.n_lm_layers, vlm.d_model, vlm.n_vision_blocks) == (layers, width, blocks)
    layout = vlm.prepare([Image.new("RGB", (size, size), "white")], ["hi"]).layouts[0]
    assert (layout.grid.rows, layout.grid.cols) == grid
    pos = layout.lm_positions
    assert int(pos[grid[1]] - pos[0]) == row_stride  # Pixtral: one [IMG_BREAK] after each row (C + 1)
    assert int(pos[1] - pos[0]) == 1
    assert vlm.image_token_id == {"qwen2_vl": 151655, "qwen2_5_vl": 151655, "gemma3": 262144, "llava": 32000,
                                  "pixtral": 10}[arch]


def test_unknown_tiny_name_lists_the_choices():
    with pytest.raises(UnknownModelError, match="tiny-qwen2-vl.*tiny-pixtral"):
        si.load("tiny-mamba")


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import LlamaConfig

    with pytest.raises(UnsupportedArchitectureError, match="qwen2_vl, qwen2_5_vl, gemma3, llava, pixtral"):
        adapter_for_config(LlamaConfig())


def test_unreachable_checkpoint_says_what_to_use_offline(tmp_path):
    with pytest.raises(UnknownModelError, match="tiny-"):
        si.load(str(tmp_path / "no-such-model"))


def test_offline_hub_id_fails_fast_with_one_line(monkeypatch, tmp_path):
    """No network: one short connection attempt, then the cache only — no retries, one clear line."""
    import time

    from spatial_interp.models import hub

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub.hub_reachable(timeout=1.0) is False
    assert hub.cache_only("someone/some-vlm") and not hub.cache_only(str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(UnknownModelError) as error:
        si.load("someone/some-vlm")
    assert time.perf_counter() - started < 20  # generous: the point is no 30 s of retries
    message = str(error.value)
    assert "\n" not in message and "unreachable" in message and "tiny-qwen2-vl" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline_by_setting() and hub.cache_only("someone/some-vlm")


def test_import_and_help_do_not_import_torch():
    """``import spatial_interp`` and ``spatial-interp --help`` stay light (torch loads on first use);
    the timing itself is in benchmarks/import_time.py."""
    import subprocess
    import sys

    probe = ("import sys, spatial_interp as si; from spatial_interp.cli import build_parser; build_parser(); "
             "heavy = [m for m in ('torch', 'transformers', 'nnsight', 'torchvision') if m in sys.modules]; "
             "print(','.join(heavy) or 'none'); si.Region; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["none", "True"]  # light until a name that needs torch is touched


def test_site_out_of_range():
    vlm = tiny_model("tiny-llava")
    with pytest.raises(SiteError, match=r"lm_resid indices run 0..3"):
        vlm.module_path(si.site.lm_resid(4))
    with pytest.raises(SiteError, match="vision_block"):
        vlm.module_path(si.site.vision_block(3))


def test_prepare_rejects_bad_input():
    vlm = tiny_model("tiny-qwen2-vl")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        vlm.prepare([Image.new("RGB", (8, 8))] * 2, ["x"])
    with pytest.raises(TypeError, match="PIL"):
        vlm.prepare(["not an image"], ["x"])


def test_local_checkpoint_folder_loads_like_a_real_checkpoint(tiny_vlm, tmp_path):
    """The real loading path (AutoConfig → adapter, AutoModelForImageTextToText, AutoProcessor) on a saved folder."""
    tiny_vlm.model.save_pretrained(tmp_path)
    tiny_vlm.processor.save_pretrained(tmp_path)
    loaded = si.load(str(tmp_path))
    assert loaded.arch == tiny_vlm.arch and loaded.info.source == "hub"
    assert type(loaded.processor) is type(tiny_vlm.processor)
    assert type(loaded.processor.image_processor) is type(tiny_vlm.processor.image_processor)
    image = Image.new("RGB", tiny_vlm.adapter.native_size, "red")
    original = tiny_vlm.prepare([image], ["The color of the square is "])
    again = loaded.prepare([image], ["The color of the square is "])
    assert torch.equal(original.inputs["input_ids"], again.inputs["input_ids"])
    assert torch.allclose(tiny_vlm.forward(original), loaded.forward(again), atol=1e-6)
