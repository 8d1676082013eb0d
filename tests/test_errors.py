"""Bad input raises a clear Python exception naming the argument and the rule."""
from __future__ import annotations

import pytest
import torch

from conftest import randn
from flashattn_lite import flash_attn_func, flash_attn_qkvpacked_func, scaled_dot_product_attention


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
        torch.ops.flashattn_lite.fwd(q, k[0], v, None, None, None, None, None, None, None, -1, -1, 1.0, False,
                                     True, -1, -1, 0.0, 0.0, 0)


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
        torch.ops.flashattn_lite.fwd(q, k, v, None, None, None, None, None, None, None, -1, -1, 1.0, False,
                                     True, -5, -1, 0.0, 0.0, 0)


def test_scale_not_finite():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"softmax_scale must be finite"):
        flash_attn_func(q, k, v, softmax_scale=float("nan"))


@pytest.mark.parametrize("kw,msg", [({"dropout_p": 0.1}, "dropout_p > 0"), ({"softcap": 5.0}, "softcap > 0"),
                                    ({"alibi_slopes": torch.ones(2)}, "alibi_slopes")])
def test_not_built_yet(kw, msg):
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match=msg):
        flash_attn_func(q, k, v, **kw)


def test_bad_dropout_value():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        flash_attn_func(q, k, v, dropout_p=1.5)


def test_not_built_direct_op():
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match=r"cu_seqlens_q \(varlen\) is not implemented yet"):
        torch.ops.flashattn_lite.fwd(q, k, v, None, None, torch.zeros(2, dtype=torch.int32), None, None, None,
                                     None, -1, -1, 1.0, False, True, -1, -1, 0.0, 0.0, 0)


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
    out, lse = torch.ops.flashattn_lite.fwd(q, k, v, None, None, None, None, None, None, None, -1, -1, 1.0,
                                            False, True, -1, -1, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"softmax_lse must have shape"):
        torch.ops.flashattn_lite.bwd(out, None, q, k, v, out, lse[:, :1], None, None, None, None, None, None,
                                     -1, -1, 1.0, False, True, -1, -1, 0.0, 0.0, False)


def test_bwd_bad_lse_dtype():
    q, k, v = qkv()
    out, lse = torch.ops.flashattn_lite.fwd(q, k, v, None, None, None, None, None, None, None, -1, -1, 1.0,
                                            False, True, -1, -1, 0.0, 0.0, 0)
    with pytest.raises(TypeError, match=r"softmax_lse must be Float"):
        torch.ops.flashattn_lite.bwd(out, None, q, k, v, out, lse.double(), None, None, None, None, None, None,
                                     -1, -1, 1.0, False, True, -1, -1, 0.0, 0.0, False)


def test_not_a_tensor():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"q must be a torch.Tensor"):
        flash_attn_func(q.tolist(), k, v)
