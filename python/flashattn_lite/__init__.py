"""flashattn_lite: exact, fused, memory-efficient attention for PyTorch.

Drop-in functions for ``flash_attn`` (``flash_attn_func`` and its packed variants, layout
(batch, seqlen, heads, head_dim)) and for ``torch.nn.functional.scaled_dot_product_attention``
(layout (batch, heads, seqlen, head_dim)), computed by hand-written kernels behind registered
torch ops (``torch.ops.flashattn_lite.fwd`` / ``bwd``) with fake and autograd implementations.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # registers torch.ops.flashattn_lite.*
from . import _ops  # noqa: F401  (fake + autograd registrations)
from ._version import __version__
from .interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    scaled_dot_product_attention,
)


def build_info() -> dict:
    """What this build was compiled with: package and torch versions, compiler, CPU ISAs, CUDA."""
    return dict(_C.build_info())


__all__ = [
    "__version__",
    "build_info",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "scaled_dot_product_attention",
]
