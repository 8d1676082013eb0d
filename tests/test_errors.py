"""Bad input raises a clear Python exception naming the argument and the rule."""

from __future__ import annotations

import pytest
import torch

from flashattn_lite import flash_attn_func, flash_attn_qkvpacked_func, scaled_dot_product_attention

from conftest import call_bwd, call_fwd, randn


def qkv(b=1, s_q=8, s_k=8, h=2, h_kv=2, d=16, dtype=torch.float32):
    return randn((b, s_q, h, d), dtype), randn((b, s_k, h_kv, d), dtype), randn((b, s_k, h_kv, d), dtype)


def test_integer_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"q must have dtype float32, float64, bfloat16 or float16"):
        flash_attn_func(q.to(torch.int32), k, v)


def test_mixed_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"k must have the same dtype as q"):
        flash_attn_func(q, k.double(), v)


def test_rank():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must have 4 dims"):
        flash_attn_func(q[0], k, v)


def test_rank_direct_op():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"k must have 4 dims"):
        call_fwd(q, k[0], v)


def test_batch_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"k and v must have the batch size of q"):
        flash_attn_func(q, k.expand(2, -1, -1, -1), v)


def test_head_dim_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"k must have the head_dim of q"):
        flash_attn_func(q, k[..., :8], v)


def test_heads_not_multiple():
    q, k, v = qkv(h=3, h_kv=2)
    with pytest.raises(ValueError, match=r"heads of q \(3\) must be a multiple of the heads of k/v \(2\)"):
        flash_attn_func(q, k, v)


def test_seqlen_kv_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"v must have the seqlen of k"):
        flash_attn_func(q, k, v[:, :5])


def test_window():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"window_size entries must be >= -1"):
        flash_attn_func(q, k, v, window_size=(-2, 0))


def test_window_direct_op():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"window_size must be \(left, right\) with each >= -1"):
        call_fwd(q, k, v, window_left=-5)


def test_scale_not_finite():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"softmax_scale must be finite"):
        flash_attn_func(q, k, v, softmax_scale=float("nan"))


@pytest.mark.parametrize(
    "kw,exc,msg",
    [
        ({"softcap": -1.0}, ValueError, r"softcap must be >= 0 and finite"),
        ({"softcap": float("inf")}, ValueError, r"softcap must be >= 0 and finite"),
        ({"dropout_p": 1.0}, ValueError, r"dropout_p must be in \[0, 1\)"),
        ({"dropout_p": -0.1}, ValueError, r"dropout_p must be in \[0, 1\)"),
        ({"alibi_slopes": torch.ones(3)}, ValueError, r"alibi_slopes must have shape \(heads,\) = \(2,\)"),
        ({"alibi_slopes": torch.ones(2, 2)}, ValueError, r"alibi_slopes must have shape .*\(batch, heads\) = \(1, 2\)"),
        ({"alibi_slopes": torch.ones(2, dtype=torch.float64)}, TypeError, r"alibi_slopes must be float32"),
    ],
)
def test_bad_feature_values(kw, exc, msg):
    q, k, v = qkv()
    with pytest.raises(exc, match=msg):
        flash_attn_func(q, k, v, **kw)


@pytest.mark.parametrize(
    "rng,exc,msg",
    [
        (None, ValueError, r"rng_state \(int64 \[seed, offset\]\) is required when dropout_p > 0"),
        (torch.zeros(2, dtype=torch.int32), TypeError, r"rng_state must be int64"),
        (torch.zeros(3, dtype=torch.int64), ValueError, r"rng_state must hold 2 values"),
    ],
)
def test_bad_rng_state(rng, exc, msg):
    q, k, v = qkv()
    with pytest.raises(exc, match=msg):
        call_fwd(q, k, v, rng_state=rng, dropout_p=0.5)


@pytest.mark.parametrize(
    "mask,exc,msg",
    [
        (torch.ones(8, 9, dtype=torch.bool), ValueError, r"attn_mask of shape \[8, 9\] is not broadcastable"),
        (torch.ones(3, 2, 8, 8, dtype=torch.bool), ValueError, r"attn_mask of shape .* is not broadcastable"),
        (torch.ones(1, 1, 1, 8, 8, dtype=torch.bool), ValueError, r"attn_mask must have at most 4 dims"),
        (torch.ones(8, 8, dtype=torch.int64), TypeError, r"attn_mask must be bool \(True = attend\) or a floating"),
    ],
)
def test_bad_mask(mask, exc, msg):
    q = randn((1, 2, 8, 16), torch.float32)
    with pytest.raises(exc, match=msg):
        scaled_dot_product_attention(q, q, q, attn_mask=mask)


def test_mask_not_a_tensor():
    q = randn((1, 2, 8, 16), torch.float32)
    with pytest.raises(TypeError, match=r"attn_mask must be a torch.Tensor"):
        scaled_dot_product_attention(q, q, q, attn_mask=[[True]])


def _varlen(cu_q, cu_k, max_q=8, max_k=8, total_q=8, total_k=8):
    from flashattn_lite import flash_attn_varlen_func

    q = randn((total_q, 2, 16), torch.float32)
    k = randn((total_k, 2, 16), torch.float32)
    return flash_attn_varlen_func(q, k, k, cu_q, cu_k, max_q, max_k)


I32 = dict(dtype=torch.int32)


@pytest.mark.parametrize(
    "cu_q,cu_k,kw,exc,msg",
    [
        (torch.tensor([0, 4, 8]), torch.tensor([0, 4, 8], **I32), {}, TypeError, r"cu_seqlens_q must be int32"),
        (
            torch.tensor([0, 5, 3], **I32),
            torch.tensor([0, 4, 8], **I32),
            {},
            ValueError,
            r"cu_seqlens_q must be non-decreasing",
        ),
        (
            torch.tensor([1, 4, 8], **I32),
            torch.tensor([0, 4, 8], **I32),
            {},
            ValueError,
            r"cu_seqlens_q\[0\] must be 0",
        ),
        (
            torch.tensor([0, 4, 9], **I32),
            torch.tensor([0, 4, 8], **I32),
            {},
            ValueError,
            r"cu_seqlens_q\[-1\] = 9 is beyond the 8 packed tokens",
        ),
        (
            torch.tensor([0, 4, 8], **I32),
            torch.tensor([0, 4], **I32),
            {},
            ValueError,
            r"cu_seqlens_k must have shape \(3,\)",
        ),
        (
            torch.tensor([0, 4, 8], **I32),
            torch.tensor([0, 4, 8], **I32),
            {"max_q": 3},
            ValueError,
            r"max_seqlen_q = 3 is smaller than the longest sequence \(4\)",
        ),
        (
            torch.tensor([0, 2, 8], **I32),
            torch.tensor([0, 1, 8], **I32),
            {"max_k": 6},
            ValueError,
            r"max_seqlen_k = 6 is smaller than the longest sequence \(7\)",
        ),
    ],
)
def test_bad_cu_seqlens(cu_q, cu_k, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        _varlen(cu_q, cu_k, **kw)


def test_varlen_rank():
    from flashattn_lite import flash_attn_varlen_func

    q = randn((1, 8, 2, 16), torch.float32)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"q must have 3 dims \(total_q, heads, head_dim\)"):
        flash_attn_varlen_func(q, q, q, cu, cu, 8, 8)


def test_cu_seqlens_alone_direct_op():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"cu_seqlens_q and cu_seqlens_k must be given together"):
        call_fwd(q, k, v, cu_seqlens_q=torch.zeros(2, dtype=torch.int32))


def test_seqused_k_out_of_range():
    q, k, v = qkv(b=2)
    with pytest.raises(ValueError, match=r"seqused_k\[1\] = 9 must be in \[0, 8\]"):
        call_fwd(q, k, v, seqused_k=torch.tensor([3, 9], dtype=torch.int32))


def test_qkvpacked_shape():
    with pytest.raises(ValueError, match=r"qkv must have shape \(batch, seqlen, 3, heads, head_dim\)"):
        flash_attn_qkvpacked_func(randn((1, 4, 2, 2, 8), torch.float32))


def test_sdpa_mask_and_causal():
    q = randn((1, 2, 8, 16), torch.float32)
    with pytest.raises(ValueError, match=r"attn_mask and is_causal=True cannot both be set"):
        scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool), is_causal=True)


def test_sdpa_heads_without_gqa():
    q, k = randn((1, 4, 8, 16), torch.float32), randn((1, 2, 8, 16), torch.float32)
    with pytest.raises(ValueError, match=r"pass enable_gqa=True"):
        scaled_dot_product_attention(q, k, k)


def test_sdpa_rank():
    with pytest.raises(ValueError, match=r"query must have 4 dims"):
        scaled_dot_product_attention(torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16))


def test_bwd_bad_lse_shape():
    q, k, v = qkv()
    out, lse = call_fwd(q, k, v)
    with pytest.raises(ValueError, match=r"softmax_lse must have shape"):
        call_bwd(out, q, k, v, out, lse[:, :1])


def test_bwd_bad_lse_dtype():
    q, k, v = qkv()
    out, lse = call_fwd(q, k, v)
    with pytest.raises(TypeError, match=r"softmax_lse must be Float"):
        call_bwd(out, q, k, v, out, lse.double())


def test_not_a_tensor():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"q must be a torch.Tensor"):
        flash_attn_func(q.tolist(), k, v)
