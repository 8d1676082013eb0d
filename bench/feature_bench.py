"""What each feature costs on the CPU, against the same call without it (same process, same inputs).

    python bench/feature_bench.py [--threads 2] [--repeats 5] [--out bench/results/features-DATE.md]

Rows:
* sliding window: forward time for window w at N = 8192 -- tiles outside the window are skipped,
  so the time grows with N * w, not N^2 (the column "time / (N * w)" stays flat);
* softcap, ALiBi, bool / additive masks, dropout: fwd and fwd+bwd time relative to the plain call
  (these run an element-wise pass over the score tile, see DEVELOPERS.md);
* varlen: packed sequences against the same sequences padded to the longest (no work on padding);
* KV cache: paged (page sizes 1, 16, 256) against a contiguous cache, decode of one query.
Every timed call is first checked against the fp64 reference (or against its plain twin).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

import flashattn_lite as fal
from flashattn_lite.reference import attention_ref

HERE = Path(__file__).resolve().parent


def timeit(fn: Callable[[], object], repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def check_close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    err = (a.double() - b.double()).abs().max().item()
    if not err <= tol:
        raise SystemExit(f"{what}: check failed, max err {err:.3e} > {tol:.1e}")


def window_rows(repeats: int) -> list[str]:
    n, h, d = 8192, 4, 64
    q, k, v = (torch.randn(1, n, h, d, dtype=torch.bfloat16) for _ in range(3))
    rows = ["| window (left, 0), causal | fwd ms | time / (N·w) ns |", "|---|---|---|"]
    for w in (128, 256, 512, 1024, 2048):
        small = slice(0, 512)
        ref = attention_ref(q[:, small], k[:, small], v[:, small], causal=True, window_size=(w, 0))[0]
        got = fal.flash_attn_func(q[:, small], k[:, small], v[:, small], causal=True, window_size=(w, 0))
        check_close(got, ref, 3e-2, f"window {w}")
        t = timeit(partial(fal.flash_attn_func, q, k, v, causal=True, window_size=(w, 0)), repeats)
        rows.append(f"| ({w}, 0) | {t * 1e3:.1f} | {t / (n * w) * 1e9:.3f} |")
    t = timeit(lambda: fal.flash_attn_func(q, k, v, causal=True), repeats)
    rows.append(f"| causal, no window (w = N) | {t * 1e3:.1f} | {t / (n * n / 2) * 1e9:.3f} (per N²/2) |")
    return rows


def _fwd_bwd(fn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
    fn(qq, kk, vv).sum().backward()


def _feature_cases(
    slopes: torch.Tensor, bmask: torch.Tensor, fmask: torch.Tensor
) -> list[tuple[str, Callable[..., torch.Tensor]]]:
    return [
        ("plain", lambda q, k, v: fal.flash_attn_func(q, k, v)),
        ("softcap 30", lambda q, k, v: fal.flash_attn_func(q, k, v, softcap=30.0)),
        ("ALiBi", lambda q, k, v: fal.flash_attn_func(q, k, v, alibi_slopes=slopes)),
        (
            "bool mask (N, N)",
            lambda q, k, v: fal.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bmask[: q.shape[1], : k.shape[1]]
            ).transpose(1, 2),
        ),
        (
            "float mask (N, N)",
            lambda q, k, v: fal.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=fmask[: q.shape[1], : k.shape[1]]
            ).transpose(1, 2),
        ),
        ("dropout 0.1", lambda q, k, v: fal.flash_attn_func(q, k, v, dropout_p=0.1)),
    ]


def feature_rows(repeats: int) -> list[str]:
    n, h, d = 2048, 8, 64
    rows = [
        "| feature (B1 H8 N2048 D64) | dtype | fwd ms | × plain | fwd+bwd ms | × plain |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(1, n, h, d, dtype=dtype) for _ in range(3))
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
        bmask = torch.rand(n, n) > 0.1
        fmask = torch.randn(n, n, dtype=dtype)
        slopes = torch.rand(h) * 0.1
        cases = _feature_cases(slopes, bmask, fmask)
        small = (q[:, :256], k[:, :256], v[:, :256])
        check_close(cases[1][1](*small), attention_ref(*small, softcap=30.0)[0], 3e-2, "softcap")
        check_close(
            cases[3][1](*small),
            attention_ref(*small, attn_mask=bmask[:256, :256], bottom_right=False)[0],
            3e-2,
            "bool mask",
        )
        base_f = base_b = 0.0
        for name, fn in cases:
            tf = timeit(partial(fn, q, k, v), repeats)
            tb = timeit(partial(_fwd_bwd, fn, q, k, v), max(3, repeats // 2))
            if name == "plain":
                base_f, base_b = tf, tb
            rows.append(
                f"| {name} | {str(dtype).replace('torch.', '')} | {tf * 1e3:.1f} | {tf / base_f:.2f} | "
                f"{tb * 1e3:.1f} | {tb / base_b:.2f} |"
            )
        del qs, ks, vs
    return rows


def varlen_rows(repeats: int) -> list[str]:
    lens = [2048, 256, 1024, 64, 512, 1900, 16, 700]
    h, d = 8, 64
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    total, mx = int(cu[-1]), max(lens)
    q, k, v = (torch.randn(total, h, d, dtype=torch.bfloat16) for _ in range(3))
    pad = [torch.zeros(len(lens), mx, h, d, dtype=torch.bfloat16) for _ in range(3)]
    for i, n in enumerate(lens):
        for t, src in zip(pad, (q, k, v)):
            t[i, :n] = src[cu[i] : cu[i + 1]]
    out = fal.flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=True)
    one = fal.flash_attn_func(q[None, : lens[0]], k[None, : lens[0]], v[None, : lens[0]], causal=True)[0]
    check_close(out[: lens[0]], one, 1e-2, "varlen")
    tv = timeit(lambda: fal.flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=True), repeats)
    tp = timeit(lambda: fal.flash_attn_func(*pad, causal=True), repeats)
    return [
        "| varlen, 8 sequences (16..2048 tokens), causal bf16 H8 D64 | ms |",
        "|---|---|",
        f"| packed (flash_attn_varlen_func) | {tv * 1e3:.1f} |",
        f"| padded to 2048 (flash_attn_func) | {tp * 1e3:.1f} |",
        f"| padded / packed | {tp / tv:.2f}× |",
    ]


def kvcache_rows(repeats: int) -> list[str]:
    b, h, h_kv, d, n = 4, 32, 8, 128, 8192
    rows = [
        "| KV cache decode, B4 H32 (H_kv 8) D128, 8192 keys, bf16 | µs | GB/s | × contiguous |",
        "|---|---|---|---|",
    ]
    q = torch.randn(b, 1, h, d, dtype=torch.bfloat16)
    kc, vc = (torch.randn(b, n, h_kv, d, dtype=torch.bfloat16) for _ in range(2))
    seqlens = torch.full((b,), n, dtype=torch.int32)
    nbytes = 2 * b * n * h_kv * d * 2
    base = fal.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens)
    tc = timeit(lambda: fal.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens), repeats * 4)
    rows.append(f"| contiguous | {tc * 1e6:.0f} | {nbytes / tc / 1e9:.1f} | 1.00 |")
    for ps in (1, 16, 256):
        npg = n // ps
        perm = torch.randperm(b * npg).view(b, npg).to(torch.int32)
        kp = torch.empty(b * npg, ps, h_kv, d, dtype=torch.bfloat16)
        vp = torch.empty_like(kp)
        kp[perm.flatten().long()] = kc.reshape(b * npg, ps, h_kv, d)
        vp[perm.flatten().long()] = vc.reshape(b * npg, ps, h_kv, d)
        got = fal.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=perm)
        check_close(got, base, 0.0, f"paged {ps}")
        t = timeit(
            partial(fal.flash_attn_with_kvcache, q, kp, vp, cache_seqlens=seqlens, block_table=perm), repeats * 4
        )
        rows.append(f"| paged, page size {ps} | {t * 1e6:.0f} | {nbytes / t / 1e9:.1f} | {t / tc:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        f"# flashattn_lite feature costs ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"ISA {fal.cpu_isa()}, torch {torch.__version__}; median of {args.repeats}.",
        "Command: `python bench/feature_bench.py`",
        "",
    ]
    for part in (window_rows, feature_rows, varlen_rows, kvcache_rows):
        rows = part(args.repeats)
        print("\n".join(rows), flush=True)
        lines += rows + [""]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
