"""Patch embeddings that are one matrix product, run as one.

Qwen2-VL and Qwen2.5-VL embed patches the processor has already cut out with a ``Conv3d`` whose kernel
equals its stride and its input (``3 × 2 × 14 × 14``): a linear map of each flattened patch. CPU
convolution kernels run that 7× slower than the matrix product (measured on 4608 patches, 1 thread:
39 ms against 5.5 ms; a fifth of a whole organism forward), so :func:`as_matmul` gives the module a
forward that is that product. The module keeps its class's parameters, name and hooks, so state
dicts, nnsight paths and ``remote=True`` (which runs the stock model on NDIF) see nothing new; outputs
equal the convolution's to float rounding (summation order only).

Example:
    >>> import torch
    >>> from spatial_interp.models.patch_embedding import PatchwiseConv3d, as_matmul
    >>> conv = torch.nn.Conv3d(3, 8, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False)
    >>> x = torch.randn(5, 3, 2, 14, 14)
    >>> expected = conv(x)
    >>> as_matmul(conv) and isinstance(conv, PatchwiseConv3d)
    True
    >>> bool(torch.allclose(conv(x), expected, atol=1e-5)), conv(x).shape
    (True, torch.Size([5, 8, 1, 1, 1]))
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class PatchwiseConv3d(torch.nn.Conv3d):
    """A ``Conv3d`` with kernel = stride, no padding, dilation or groups: one matmul per call on whole patches."""

    def forward(self, x: Float[Tensor, "patches c t h w"]) -> Float[Tensor, "patches out 1 1 1"]:
        if tuple(x.shape[2:]) != self.kernel_size:  # not pre-cut patches: the convolution itself
            return super().forward(x)
        out = torch.nn.functional.linear(x.flatten(1), self.weight.flatten(1), self.bias)
        return out.view(*out.shape, 1, 1, 1)


def as_matmul(conv: torch.nn.Module) -> bool:
    """Make ``conv`` a :class:`PatchwiseConv3d` in place when it is a plain patchwise ``Conv3d``; whether it did."""
    patchwise = (type(conv) is torch.nn.Conv3d and conv.stride == conv.kernel_size and conv.groups == 1
                 and conv.padding == (0, 0, 0) and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros")
    if patchwise:
        conv.__class__ = PatchwiseConv3d
    return patchwise
