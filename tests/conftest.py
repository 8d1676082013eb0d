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


def assert_rule(
    out: torch.Tensor,
    ref: torch.Tensor,
    same_dtype: torch.Tensor,
    factor: float = 2.0,
    what: str = "out",
    n_terms: int = 1024,
) -> None:
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


def slow(*values):
    """A parametrize entry that only the full run takes: marked ``slow``, which the quick loop
    (``pytest -m "not slow and not property" tests``) deselects."""
    return pytest.param(*values, marks=pytest.mark.slow)


# DTYPES with fp64 and fp16 marked slow (same test ids): the quick loop keeps fp32 and bf16, the
# dtypes of the SIMD kernels, in the large grids.
DTYPES_THIN = [torch.float32, slow(torch.float64), torch.bfloat16, slow(torch.float16)]


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
    """Runs the test once per CPU ISA this machine can run (scalar, avx2, avx512, amx)."""
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa(request.param)
    yield request.param
    flashattn_lite._C._set_cpu_isa(before)


# Direct calls of the ops by keyword, every argument named in the schema (csrc/torch/module.cpp):
# neutral values for the optional ones, overridden per call.
OP_NEUTRAL = dict(
    attn_mask=None,
    alibi_slopes=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    seqused_k=None,
    block_table=None,
    rng_state=None,
    max_seqlen_q=-1,
    max_seqlen_k=-1,
    softmax_scale=1.0,
    causal=False,
    bottom_right=True,
    window_left=-1,
    window_right=-1,
    softcap=0.0,
    dropout_p=0.0,
    num_splits=0,
    deterministic=False,
    dlse=None,
    mask_grad=False,
)


def op_kwargs(op, **given):
    """Keyword arguments for `op` (a torch.ops.flashattn_lite overload): `given`, then OP_NEUTRAL for
    the schema's other arguments; fails when the schema names an argument neither provides."""
    names = [a.name for a in op._schema.arguments]
    missing = [n for n in names if n not in given and n not in OP_NEUTRAL]
    assert not missing, f"{op}: no value for {missing}"
    unknown = set(given) - set(names)
    assert not unknown, f"{op} has no argument {sorted(unknown)}"
    return {n: given[n] if n in given else OP_NEUTRAL[n] for n in names}


def call_fwd(q, k, v, **kw):
    op = torch.ops.flashattn_lite.fwd.default
    return op(**op_kwargs(op, q=q, k=k, v=v, **kw))


def call_bwd(dout, q, k, v, out, softmax_lse, **kw):
    op = torch.ops.flashattn_lite.bwd.default
    return op(**op_kwargs(op, dout=dout, q=q, k=k, v=v, out=out, softmax_lse=softmax_lse, **kw))
