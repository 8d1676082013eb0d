"""Shared helpers: the numerical rule and random inputs (never zeros)."""
from __future__ import annotations

import os
import zlib

import pytest
import torch

import flashattn_lite  # noqa: F401

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# Rounding noise added to the rule's bound, relative to the magnitude of the reference: one
# rounding of the output dtype, plus the accumulator's (fp32; fp64 for fp64) rounding over a sum
# of n terms, sqrt(n) * eps. (For fp64 the "same dtype" yardstick *is* the reference, so the
# bound is only this noise.)
EPS = {dt: torch.finfo(dt).eps for dt in DTYPES}
ACC_EPS = {dt: (EPS[torch.float64] if dt == torch.float64 else EPS[torch.float32]) for dt in DTYPES}

HAS_CUDA = torch.cuda.is_available() and flashattn_lite.build_info()["cuda"]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_rule(out: torch.Tensor, ref: torch.Tensor, same_dtype: torch.Tensor, factor: float = 2.0,
                what: str = "out", n_terms: int = 1024) -> None:
    """flash-attn's rule: max|out - ref| <= factor * max|same_dtype - ref| + noise, with
    noise = (eps(dtype) + sqrt(n_terms) * eps(accumulator)) * max(1, |ref|).

    ``ref`` is the fp64 reference; ``same_dtype`` the same computation done naively in out's dtype.
    """
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    assert not torch.isnan(out).any(), f"{what}: NaN in output"
    err = max_err(out, ref)
    err_same = max_err(same_dtype, ref)
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    bound = factor * err_same + (EPS[out.dtype] + n_terms**0.5 * ACC_EPS[out.dtype]) * scale
    assert err <= bound, f"{what}: max err {err:.3e} > bound {bound:.3e} (same-dtype err {err_same:.3e})"


def randn(shape, dtype, device="cpu", requires_grad=False, gen=None):
    t = torch.randn(shape, dtype=torch.float32, device=device, generator=gen).to(dtype)
    return t.requires_grad_(requires_grad)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # fresh but reproducible data per test: seed from the test id (crc32: the same in every process,
    # unlike hash()); FLASHATTN_LITE_TEST_SEED=N draws other data for a whole run
    seed = (zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("FLASHATTN_LITE_TEST_SEED", "0"))) % (2**31)
    torch.manual_seed(seed)
    yield


ISAS = flashattn_lite.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per CPU ISA this machine can run (scalar, avx2, avx512)."""
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa(request.param)
    yield request.param
    flashattn_lite._C._set_cpu_isa(before)
