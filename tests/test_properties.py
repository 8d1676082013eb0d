"""Property-based tests (hypothesis) against the fp64 reference: random shapes, dtypes, strides,
visibility rules and CPU ISAs. CI runs the bounded profile (>= 500 examples);
FAL_HYPOTHESIS_PROFILE=long runs 10x more."""
from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashattn_lite
from conftest import DTYPES, assert_rule
from flashattn_lite.reference import attention_ref

settings.register_profile("ci", max_examples=500, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FAL_HYPOTHESIS_PROFILE", "ci"))

ISAS = flashattn_lite.available_isas()


@st.composite
def cases(draw):
    b = draw(st.integers(1, 2))
    h_kv = draw(st.integers(1, 3))
    h = h_kv * draw(st.integers(1, 3))
    s_q = draw(st.integers(1, 80))
    s_k = draw(st.integers(0, 80))
    d = draw(st.integers(1, 80))
    d_v = draw(st.sampled_from([d, max(1, d // 2), d + 3]))
    dtype = draw(st.sampled_from(DTYPES))
    causal = draw(st.booleans())
    window = (draw(st.sampled_from([-1, 0, 1, 5, 30])), draw(st.sampled_from([-1, 0, 2, 17])))
    transposed = draw(st.booleans())  # SDPA-style storage viewed as (b, s, h, d)
    isa = draw(st.sampled_from(ISAS))
    seed = draw(st.integers(0, 2**31 - 1))
    return b, h, h_kv, s_q, s_k, d, d_v, dtype, causal, window, transposed, isa, seed


def _make(shape, dtype, transposed, gen):
    b, s, h, d = shape
    if transposed:
        return torch.randn((b, h, s, d), generator=gen).to(dtype).transpose(1, 2)
    return torch.randn(shape, generator=gen).to(dtype)


@given(cases())
def test_forward_matches_reference(case):
    b, h, h_kv, s_q, s_k, d, d_v, dtype, causal, window, transposed, isa, seed = case
    gen = torch.Generator().manual_seed(seed)
    q = _make((b, s_q, h, d), dtype, transposed, gen)
    k = _make((b, s_k, h_kv, d), dtype, transposed, gen)
    v = _make((b, s_k, h_kv, d_v), dtype, transposed, gen)
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa(isa)
    try:
        out, lse, _ = flashattn_lite.flash_attn_func(q, k, v, causal=causal, window_size=window, return_attn_probs=True)
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    ref, ref_lse = attention_ref(q, k, v, causal=causal, window_size=window)
    same, _ = attention_ref(q, k, v, causal=causal, window_size=window, upcast=False)
    assert_rule(out, ref, same, what=str(case))
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    assert torch.allclose(lse[fin].double(), ref_lse[fin].double(), rtol=tol, atol=tol)


@settings(max_examples=max(100, settings().max_examples // 5))
@given(cases())
def test_gradients_match_reference(case):
    b, h, h_kv, s_q, s_k, d, d_v, dtype, causal, window, transposed, isa, seed = case
    dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    gen = torch.Generator().manual_seed(seed)
    q = _make((b, s_q, h, d), dtype, transposed, gen).requires_grad_(True)
    k = _make((b, s_k, h_kv, d), dtype, transposed, gen).requires_grad_(True)
    v = _make((b, s_k, h_kv, d_v), dtype, transposed, gen).requires_grad_(True)
    dout = torch.randn((b, s_q, h, d_v), generator=gen).to(dtype)
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa(isa)
    try:
        out = flashattn_lite.flash_attn_func(q, k, v, causal=causal, window_size=window)
        grads = torch.autograd.grad(out, (q, k, v), dout)
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = torch.autograd.grad(attention_ref(q64, k64, v64, causal=causal, window_size=window)[0], (q64, k64, v64),
                              dout.double())
    qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
    same = torch.autograd.grad(attention_ref(qs, ks, vs, causal=causal, window_size=window, upcast=False)[0],
                               (qs, ks, vs), dout)
    for name, a, r, s in zip(("dq", "dk", "dv"), grads, ref, same):
        assert_rule(a, r, s, what=f"{name} {case}")
