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
    ]
    for dtype, b, s_q, h, h_kv, d, s_k, causal in cases:
        q = torch.randn(b, s_q, h, d, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(b, s_k, h_kv, d, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn(b, s_k, h_kv, d, device=dev, dtype=dtype, requires_grad=True)
        out = fal.flash_attn_func(q, k, v, causal=causal)
        out.float().sum().backward()
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
    print("sanitize cases ran")


if __name__ == "__main__":
    main()
