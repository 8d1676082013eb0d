"""One decode step as an LLM takes it, per call: flash_attn_with_kvcache with the new token's k / v
appended in place and rotary applied to q and k (flash-attn's generation path), against the same
step in torch ops (rotary, index_copy_ into the cache, SDPA over the cache's filled prefix, GQA).
Short caches are where a call's fixed cost -- argument checks, the append, the rotary, thread
hand-off -- weighs most; long caches show the attention's own speed.

    python bench/decode_step_bench.py [--threads 2] [--repeats 200] [--out FILE.md]

Each case is checked first: ours and the torch step against the same step in fp64 (the numerical
rule: ours at most 2x the torch step's error, plus rounding noise), then timed alternately in one
process, each call after 64 MB of other reads (cold caches, as between a layer's decode steps in
a model), median of the repeats, in microseconds per call. "attention only" is ours without the append and rotary (the fwd_kvcache op), so the
difference is the step's fixed cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import flashattn_lite as fal
from flashattn_lite._bench_core import cpu_model
from flashattn_lite.reference import attention_ref

# (batch, heads, kv heads, head dim, cached tokens, cache rows, dtype): the cache holds the cached
# tokens + 16 rows, or (a model's preallocated cache) its own row count
CASES = [
    (1, 32, 8, 128, 128, None, torch.bfloat16),
    (1, 32, 8, 128, 128, 8192, torch.bfloat16),
    (1, 32, 8, 128, 1024, None, torch.bfloat16),
    (1, 32, 8, 128, 1024, 8192, torch.bfloat16),
    (1, 32, 8, 128, 8192, None, torch.bfloat16),
    (1, 32, 32, 128, 512, None, torch.bfloat16),
    (4, 32, 8, 128, 1024, None, torch.bfloat16),
    (1, 8, 8, 64, 256, None, torch.float32),
]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, acc: torch.dtype = torch.float32) -> torch.Tensor:
    """GPT-NeoX rotary of x (b, s, h, d) with cos / sin (b, s, d / 2), computed in acc."""
    x1, x2 = x.to(acc).chunk(2, dim=-1)
    c, s = cos.unsqueeze(2).to(acc), sin.unsqueeze(2).to(acc)
    out = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return out if acc == torch.float64 else out.to(x.dtype)


def make_steps(b: int, h: int, h_kv: int, d: int, n: int, rows: int | None, dtype: torch.dtype):
    cap = rows if rows is not None else n + 16
    kc, vc = torch.randn(b, cap, h_kv, d, dtype=dtype), torch.randn(b, cap, h_kv, d, dtype=dtype)
    q, k, v = (torch.randn(b, 1, x, d, dtype=dtype) for x in (h, h_kv, h_kv))
    theta = torch.arange(cap).float()[:, None] * (10000.0 ** (-torch.arange(0, d, 2).float() / d))[None]
    cos, sin = theta.cos().to(dtype), theta.sin().to(dtype)
    seqlens = torch.full((b,), n, dtype=torch.int32)
    pos = torch.full((b, 1), n, dtype=torch.long)
    kc_t, vc_t = kc.transpose(1, 2).contiguous(), vc.transpose(1, 2).contiguous()  # torch's (b, h, s, d)

    def ours() -> torch.Tensor:
        return fal.flash_attn_with_kvcache(
            q,
            kc,
            vc,
            k,
            v,
            rotary_cos=cos,
            rotary_sin=sin,
            cache_seqlens=seqlens,
            causal=True,
            rotary_interleaved=False,
        )

    def attention_only() -> torch.Tensor:
        return fal.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens + 1, causal=True)

    def torch_step() -> torch.Tensor:
        c, s = cos[pos], sin[pos]
        qr, kr = rotate(q, c, s), rotate(k, c, s)
        kc_t.index_copy_(2, pos[0], kr.transpose(1, 2))  # every sequence at the same position here
        vc_t.index_copy_(2, pos[0], v.transpose(1, 2))
        out = F.scaled_dot_product_attention(
            qr.transpose(1, 2), kc_t[:, :, : n + 1], vc_t[:, :, : n + 1], enable_gqa=True
        )
        return out.transpose(1, 2)

    def fp64_step() -> torch.Tensor:
        c, s = cos[pos], sin[pos]
        qr, kr = rotate(q, c, s, torch.float64), rotate(k, c, s, torch.float64)
        keys = torch.cat((kc[:, :n].double(), kr), dim=1)
        values = torch.cat((vc[:, :n].double(), v.double()), dim=1)
        return attention_ref(qr, keys, values, causal=True)[0]

    return ours, attention_only, torch_step, fp64_step


_EVICT = torch.ones(16 * 1024 * 1024)  # 64 MB: twice a 32 MB L3


def median_us(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median time per call, each call after reading 64 MB of other data: a model's other layers
    evict a layer's cache between two of its decode steps, so every step here starts cold, and no
    function gains from following another."""
    for f in fns:
        f()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            _EVICT.sum()
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e6 for t in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; flashattn_lite {fal.__version__} ISA {fal.cpu_isa()}, "
        f"torch {torch.__version__}; threads {args.threads}; median of {args.repeats}, microseconds per call",
        "",
        "| step (append 1 token + rotary, causal) | ours err (torch err) vs fp64 | ours us | attention only us "
        "| torch us | speedup |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    ok = True
    for b, h, h_kv, d, n, rows, dtype in CASES:
        ours, attention_only, torch_step, fp64_step = make_steps(b, h, h_kv, d, n, rows, dtype)
        with torch.no_grad():
            ref = fp64_step()  # before the caches hold the new token (positions < n are read)
            err = (ours().double() - ref).abs().max().item()
            t_err = (torch_step().double() - ref).abs().max().item()
            good = err <= 2 * t_err + 1e-6
            ok &= good
            us = median_us([ours, attention_only, torch_step], args.repeats)
        name = (
            f"B{b} H{h}/{h_kv} D{d} {n} cached{f' (of {rows} rows)' if rows else ''} {str(dtype).replace('torch.', '')}"
        )
        row = (
            f"| {name} | {err:.1e} ({t_err:.1e}){'' if good else ' WRONG'} | {us[0]:.1f} | {us[1]:.1f} | {us[2]:.1f} "
            f"| {us[2] / us[0]:.2f}x |"
        )
        lines.append(row)
        print(row, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
