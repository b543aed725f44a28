"""Qwen's patch embedding as one matmul: the same map as the stock Conv3d, on the module itself and the model."""

from __future__ import annotations

import pytest
import torch

from spatial_interp.models.patch_embedding import PatchwiseConv3d, as_matmul
from tests._models import tiny_model


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_loaded_qwen_models_embed_patches_by_matmul_with_the_stock_models_logits(name):
    vlm = tiny_model(name)
    proj = vlm.model.get_submodule("model.visual.patch_embed.proj")
    assert type(proj) is PatchwiseConv3d
    from PIL import Image

    batch = vlm.prepare([Image.new("RGB", (336, 336), c) for c in ("red", "navy")], ["The color is "] * 2)
    with torch.no_grad():
        fast = vlm.model(**batch.inputs).logits
        proj.__class__ = torch.nn.Conv3d  # the stock module, same parameters
        try:
            stock = vlm.model(**batch.inputs).logits
        finally:
            proj.__class__ = PatchwiseConv3d
    torch.testing.assert_close(fast, stock, atol=1e-4, rtol=1e-4)
    assert "model.visual.patch_embed.proj.weight" in vlm.model.state_dict()


def test_only_patchwise_convolutions_change_and_other_inputs_still_convolve():
    padded = torch.nn.Conv3d(3, 4, kernel_size=(2, 4, 4), stride=(2, 4, 4), padding=(0, 1, 1))
    strided = torch.nn.Conv3d(3, 4, kernel_size=(2, 4, 4), stride=(1, 2, 2))
    assert not as_matmul(padded) and not as_matmul(strided) and type(padded) is torch.nn.Conv3d
    conv = torch.nn.Conv3d(3, 4, kernel_size=(2, 4, 4), stride=(2, 4, 4))
    video = torch.randn(2, 3, 4, 8, 8)  # several patches per input: not pre-cut, so a real convolution
    expected, patches = conv(video), torch.randn(6, 3, 2, 4, 4)
    expected_patches = conv(patches)
    assert as_matmul(conv)
    torch.testing.assert_close(conv(video), expected)
    torch.testing.assert_close(conv(patches), expected_patches, atol=1e-5, rtol=1e-5)
