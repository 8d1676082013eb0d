"""Property-based tests (hypothesis) against the fp64 reference: random shapes, dtypes, strides,
visibility rules, score transforms (softcap, ALiBi), SDPA masks, NaN inputs and CPU ISAs. CI runs
the bounded profile (>= 500 examples for the forward); FLASHATTN_LITE_HYPOTHESIS_PROFILE=long runs 10x more."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashattn_lite
from flashattn_lite.reference import attention_ref, sdpa_ref

from conftest import DTYPES, assert_rule

pytestmark = pytest.mark.property

settings.register_profile(
    "ci", max_examples=500, deadline=None, derandomize=False, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FLASHATTN_LITE_HYPOTHESIS_PROFILE", "ci"))

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


@st.composite
def transforms(draw, b: int, h: int):
    """softcap and ALiBi slopes ((h,) or (b, h)), each present or not."""
    softcap = draw(st.sampled_from([0.0, 0.0, 0.5, 5.0, 50.0]))
    alibi = draw(st.sampled_from([None, "h", "bh"]))
    seed = draw(st.integers(0, 2**31 - 1))
    slopes = None
    if alibi is not None:
        gen = torch.Generator().manual_seed(seed)
        slopes = torch.rand((h,) if alibi == "h" else (b, h), generator=gen) * 0.5
    return softcap, slopes


def _on_isa(isa, fn):
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa(isa)
    try:
        return fn()
    finally:
        flashattn_lite._C._set_cpu_isa(before)


def _make(shape, dtype, transposed, gen):
    b, s, h, d = shape
    if transposed:
        return torch.randn((b, h, s, d), generator=gen).to(dtype).transpose(1, 2)
    return torch.randn(shape, generator=gen).to(dtype)


@given(cases(), st.data())
def test_forward_matches_reference(case, data):
    b, h, h_kv, s_q, s_k, d, d_v, dtype, causal, window, transposed, isa, seed = case
    softcap, slopes = data.draw(transforms(b, h))
    gen = torch.Generator().manual_seed(seed)
    q = _make((b, s_q, h, d), dtype, transposed, gen)
    k = _make((b, s_k, h_kv, d), dtype, transposed, gen)
    v = _make((b, s_k, h_kv, d_v), dtype, transposed, gen)
    kw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)
    out, lse, _ = _on_isa(isa, lambda: flashattn_lite.flash_attn_func(q, k, v, return_attn_probs=True, **kw))
    ref, ref_lse = attention_ref(q, k, v, **kw)
    same, _ = attention_ref(q, k, v, upcast=False, **kw)
    assert_rule(out, ref, same, what=f"{case} softcap={softcap} alibi={None if slopes is None else slopes.shape}")
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    assert torch.allclose(lse[fin].double(), ref_lse[fin].double(), rtol=tol, atol=tol)


@st.composite
def sdpa_cases(draw):
    b, h_kv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h = h_kv * draw(st.integers(1, 2))
    s_q, s_k, d = draw(st.integers(1, 70)), draw(st.integers(1, 70)), draw(st.integers(1, 70))
    dtype = draw(st.sampled_from(DTYPES))
    # mask broadcast shape: any of b, h, s_q may be 1
    mshape = (draw(st.sampled_from([1, b])), draw(st.sampled_from([1, h])), draw(st.sampled_from([1, s_q])), s_k)
    kind = draw(st.sampled_from(["bool", "float"]))
    isa = draw(st.sampled_from(ISAS))
    seed = draw(st.integers(0, 2**31 - 1))
    return b, h, h_kv, s_q, s_k, d, dtype, mshape, kind, isa, seed


@settings(max_examples=max(100, settings().max_examples // 3))
@given(sdpa_cases())
def test_sdpa_masks_match_reference(case):
    b, h, h_kv, s_q, s_k, d, dtype, mshape, kind, isa, seed = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(shape, generator=gen).to(dtype) for shape in ((b, h, s_q, d), (b, h_kv, s_k, d), (b, h_kv, s_k, d))
    )
    keep = torch.rand(mshape, generator=gen) > 0.3
    mask = (
        keep
        if kind == "bool"
        else torch.where(keep, torch.randn(mshape, generator=gen), torch.tensor(float("-inf"))).to(
            dtype if dtype != torch.float16 else torch.float32
        )
    )
    kw = dict(attn_mask=mask)  # (SDPA refuses a mask with is_causal)
    out = _on_isa(isa, lambda: flashattn_lite.scaled_dot_product_attention(q, k, v, enable_gqa=h != h_kv, **kw))
    ref = sdpa_ref(q, k, v, **kw)
    same = sdpa_ref(q, k, v, upcast=False, **kw)
    assert_rule(out, ref, same, what=str(case))


@settings(max_examples=max(100, settings().max_examples // 5))
@given(cases(), st.sampled_from(["q", "k", "v"]), st.data())
def test_nan_input_matches_reference_pattern(case, where, data):
    b, h, h_kv, s_q, s_k, d, d_v, dtype, causal, window, transposed, isa, seed = case
    if s_k == 0:
        s_k = 1
    gen = torch.Generator().manual_seed(seed)
    q = _make((b, s_q, h, d), dtype, transposed, gen)
    k = _make((b, s_k, h_kv, d), dtype, transposed, gen)
    v = _make((b, s_k, h_kv, d_v), dtype, transposed, gen)
    t = {"q": q, "k": k, "v": v}[where]
    idx = tuple(data.draw(st.integers(0, n - 1)) for n in t.shape)
    t[idx] = float("nan")
    kw = dict(causal=causal, window_size=window)
    out, lse, _ = _on_isa(isa, lambda: flashattn_lite.flash_attn_func(q, k, v, return_attn_probs=True, **kw))
    ref, ref_lse = attention_ref(q, k, v, **kw)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (case, where, idx)
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse)), (case, where, idx)
    same, _ = attention_ref(q, k, v, upcast=False, **kw)
    fin = ~torch.isnan(ref)
    assert_rule(out[fin], ref[fin], same[fin], what=f"{case} NaN in {where}{idx}")


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
    ref = torch.autograd.grad(
        attention_ref(q64, k64, v64, causal=causal, window_size=window)[0], (q64, k64, v64), dout.double()
    )
    qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
    same = torch.autograd.grad(
        attention_ref(qs, ks, vs, causal=causal, window_size=window, upcast=False)[0], (qs, ks, vs), dout
    )
    # a gradient sums over the query rows of a kv head and the head dims: rounding noise grows with
    # that length, also where the true gradient cancels to ~0 (e.g. s_k = 1: dS = P (dP - D) = 0)
    n_terms = max(1024, s_q * (h // h_kv) * max(d, d_v))
    for name, a, r, s in zip(("dq", "dk", "dv"), grads, ref, same):
        assert_rule(a, r, s, what=f"{name} {case}", n_terms=n_terms)
