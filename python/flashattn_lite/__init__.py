"""flashattn_lite: exact, fused, memory-efficient attention for PyTorch.

Drop-in functions for ``flash_attn`` (``flash_attn_func`` and its packed variants, layout
(batch, seqlen, heads, head_dim)) and for ``torch.nn.functional.scaled_dot_product_attention``
(layout (batch, heads, seqlen, head_dim)), computed by hand-written kernels behind registered
torch ops (``torch.ops.flashattn_lite.fwd`` / ``bwd``) with fake and autograd implementations.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from ._compat import check_torch_compatible

check_torch_compatible()  # a clear ImportError instead of "undefined symbol" under another torch

from . import _C  # noqa: E402  (registers torch.ops.flashattn_lite.*, whose schemas _ops reads)

# isort: split
from . import _ops  # noqa: E402, F401  (fake + autograd registrations)
from . import nn as nn  # noqa: E402  (public: flashattn_lite.nn.MultiheadAttention, SelfAttention)
from ._version import __version__  # noqa: E402
from .errors import ArgumentError, ArgumentTypeError  # noqa: E402
from .interface import (  # noqa: E402
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    scaled_dot_product_attention,
)
from .kvcache import flash_attn_with_kvcache  # noqa: E402


def cpu_isa() -> str:
    """The CPU instruction set the kernels use: 'amx', 'avx512', 'avx2' or 'scalar'.

    'amx' is 'avx512' with the bf16 and fp16 forward and backward (and the bf16 multi-row decode) on AMX
    tiles (Intel Sapphire Rapids and later).

    Chosen once per process from CPUID/XCR0, or forced with FLASHATTN_LITE_CPU_ISA.
    """
    return str(_C.cpu_isa())


def available_isas() -> list[str]:
    """CPU instruction sets compiled into this build that this machine can run (best last)."""
    return list(_C.available_isas())


def build_info() -> dict:
    """What this build was compiled with: package and torch versions, compiler, CPU ISAs, CUDA."""
    return dict(_C.build_info())


__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "__version__",
    "available_isas",
    "build_info",
    "cpu_isa",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "scaled_dot_product_attention",
]
