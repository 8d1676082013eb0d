"""Small CUDA cases for compute-sanitizer (memcheck / racecheck): every kernel family once, with
awkward sizes (partial tiles, padded head dims, masked rows)."""

from __future__ import annotations

import torch

import flashattn_lite as fal


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    cases = [
        (torch.bfloat16, 1, 70, 2, 1, 59, 33, True),  # tensor-core fwd, padded d, s_q > s_k
        (torch.float16, 2, 65, 4, 2, 128, 130, False),  # tensor-core fwd, GQA, partial tiles
        (torch.bfloat16, 1, 40, 2, 2, 256, 97, True),  # tensor-core fwd, D=256 (BN=32)
        (torch.float32, 1, 37, 2, 1, 40, 50, True),  # SIMT fwd
        # unmasked middle tiles between masked ones, a window's left edge (masked front tiles), and
        # a decode split over the keys (the combine pass): forward variant 2's own paths
        (torch.bfloat16, 1, 130, 2, 1, 64, 1000, True),
        (torch.float16, 1, 150, 2, 2, 100, 700, (40, 3)),
        (torch.bfloat16, 2, 1, 4, 2, 128, 5000, False),
    ]
    for dtype, b, s_q, h, h_kv, d, s_k, causal in cases:
        kw = {"causal": True, "window_size": causal} if isinstance(causal, tuple) else {"causal": causal}
        q = torch.randn(b, s_q, h, d, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(b, s_k, h_kv, d, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn(b, s_k, h_kv, d, device=dev, dtype=dtype, requires_grad=True)
        out = fal.flash_attn_func(q, k, v, **kw)
        out.float().sum().backward()
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
    for d, s_q, s_k in ((64, 130, 200), (100, 33, 70)):  # softcap / ALiBi on the variant-2 kernels
        q, k, v = (
            torch.randn(1, n, 4, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for n in (s_q, s_k, s_k)
        )
        slopes = torch.rand(4, device=dev) * 0.3
        out = fal.flash_attn_func(q, k, v, causal=True, softcap=2.0, alibi_slopes=slopes)
        out.float().sum().backward()
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
    feature_cases(dev)  # the feature SIMT kernels (attn_simt_feat.cuh)
    print("sanitize cases ran")


def feature_cases(dev: str) -> None:
    """varlen fwd+bwd, a bool and a float mask with its gradient, dropout fwd+bwd, a paged KV cache
    with leftpad: one small call each."""
    bf = torch.bfloat16
    lq, lk = [3, 70], [50, 1]
    cq = torch.tensor([0, 3, 73], dtype=torch.int32, device=dev)
    ck = torch.tensor([0, 50, 51], dtype=torch.int32, device=dev)
    q = torch.randn(sum(lq), 4, 40, device=dev, dtype=bf, requires_grad=True)
    k, v = (torch.randn(sum(lk), 2, 40, device=dev, dtype=bf, requires_grad=True) for _ in range(2))
    out = fal.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=True)
    out.float().sum().backward()
    q, k, v = (torch.randn(2, 3, n, 32, device=dev, requires_grad=True) for n in (33, 77, 77))
    for mask in (
        torch.rand(2, 1, 33, 77, device=dev) > 0.3,
        torch.randn(1, 3, 33, 77, device=dev, requires_grad=True),
    ):
        fal.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
    q, k, v = (torch.randn(2, n, 4, 40, device=dev, dtype=bf, requires_grad=True) for n in (65, 130, 130))
    fal.flash_attn_func(q, k, v, dropout_p=0.3, causal=True).float().sum().backward()
    kc, vc = (torch.randn(9, 16, 2, 64, device=dev, dtype=bf) for _ in range(2))
    table = torch.randperm(9, device=dev)[:8].view(2, 4).to(torch.int32)
    qd = torch.randn(2, 1, 8, 64, device=dev, dtype=bf)
    seqlens = torch.tensor([40, 64], dtype=torch.int32, device=dev)
    leftpad = torch.tensor([5, 0], dtype=torch.int32, device=dev)
    out = fal.flash_attn_with_kvcache(
        qd, kc, vc, cache_seqlens=seqlens, cache_leftpad=leftpad, block_table=table, causal=True
    )
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


if __name__ == "__main__":
    main()
