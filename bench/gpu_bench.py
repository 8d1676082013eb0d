"""GPU benchmark: flashattn_lite (default kernels; the earlier forward variant 1 that
FLASHATTN_LITE_CUDA_FWD=v1 selects; the earlier backward variant 1, FLASHATTN_LITE_CUDA_BWD=v1, in the
fwd+bwd rows) vs torch SDPA's flash / efficient / cudnn backends, bf16.

Every provider is checked against an fp64 reference on a slice before it is timed. Timing: CUDA
events, warm-up, median of repeats, an L2 flush (a 256 MB write) before each repeat. Writes a
JSON list of rows and prints a table. FLOPs: fwd 4*B*H*N*N*D (halved for causal), fwd+bwd 3.5x.
Decode rows report GB/s: bytes of K and V read (plus q and out), over the median time.
Usage: python bench/gpu_bench.py [--out results.json] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashattn_lite as fal
from flashattn_lite.reference import sdpa_ref

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
_L2 = None


def flush_l2() -> None:
    global _L2
    if _L2 is None:
        _L2 = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    _L2.zero_()


def time_ms(fn, repeats: int = 10, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        flush_l2()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


# flashattn_lite under kernel-variant settings (the dispatcher reads them at each call, so they are
# set for the provider's whole check and timing: forward and backward). flashattn_lite_v1: the tensor-core
# kernels from before issue 14's variants; flashattn_lite_bwd_v1: today's forward with the old backward.
PROVIDER_ENV = {
    "flashattn_lite_v1": {"FLASHATTN_LITE_CUDA_FWD": "v1", "FLASHATTN_LITE_CUDA_BWD": "v1"},
    "flashattn_lite_bwd_v1": {"FLASHATTN_LITE_CUDA_BWD": "v1"},
}


@contextlib.contextmanager
def provider_env(name: str):
    env = PROVIDER_ENV.get(name, {})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def provider_fn(name: str):
    if name.startswith("flashattn_lite"):
        return fal.scaled_dot_product_attention

    def run(q, k, v, is_causal=False, enable_gqa=False):
        with sdpa_kernel(BACKENDS[name]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)

    return run


def _fwd_bwd(fn, qg, kg, vg, do, causal: bool) -> None:
    o = fn(qg, kg, vg, is_causal=causal)
    torch.autograd.grad(o, (qg, kg, vg), do)


def check(fn, q, k, v, causal: bool) -> tuple[bool, float]:
    # reference on the first batch and the first kv head's query heads, fp64
    g = q.shape[1] // k.shape[1]
    qs, ks, vs = q[:1, :g], k[:1, :1], v[:1, :1]
    with torch.no_grad():
        ref = sdpa_ref(qs, ks, vs, is_causal=causal)
        out = fn(q, k, v, is_causal=causal, enable_gqa=g > 1)[:1, :g]
    err = (out.double() - ref).abs().max().item()
    return err < 3e-2, err


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bwd-max-n", type=int, default=16384, help="largest N timed for fwd+bwd")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    seqs = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    providers = [
        "flashattn_lite",
        "flashattn_lite_v1",
        "flashattn_lite_bwd_v1",
        "flash",
        "efficient",
        "cudnn",
    ]
    for d in (64, 128):
        for n in seqs:
            for causal in (False, True):
                b, h = max(1, 16384 // n), 2048 // d
                for mode in ("fwd", "fwd+bwd"):
                    if mode == "fwd+bwd" and n > args.bwd_max_n:
                        continue
                    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                    flops = 4.0 * b * h * n * n * d * (0.5 if causal else 1.0) * (3.5 if mode == "fwd+bwd" else 1.0)
                    for prov in providers:
                        if prov == "flashattn_lite_bwd_v1" and mode != "fwd+bwd":
                            continue  # the same kernels as flashattn_lite here
                        with provider_env(prov):
                            fn = provider_fn(prov)
                            row = dict(provider=prov, mode=mode, b=b, h=h, n=n, d=d, causal=causal, dtype="bf16")
                            try:
                                ok, err = check(fn, q, k, v, causal)
                                row["max_err"] = err
                                if not ok:
                                    row["status"] = "WRONG"
                                    rows.append(row)
                                    continue
                                if mode == "fwd":
                                    run = partial(fn, q, k, v, is_causal=causal)
                                else:
                                    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                                    run = partial(_fwd_bwd, fn, qg, kg, vg, torch.randn_like(q), causal)
                                t = time_ms(run)
                                ms = statistics.median(t)
                                row.update(status="ok", ms=ms, ms_min=min(t), ms_max=max(t), tflops=flops / ms / 1e9)
                            except Exception as e:  # a backend that does not support the case
                                row.update(status=f"n/a ({type(e).__name__})")
                            rows.append(row)
    # decode: 1 query vs long KV, bandwidth
    for b, h, h_kv, n in ((8, 32, 32, 8192), (8, 32, 32, 32768), (1, 32, 32, 32768), (1, 32, 8, 65536)):
        d = 128
        q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, h_kv, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        nbytes = 2 * (k.numel() + v.numel() + 2 * q.numel())
        for prov in providers:
            if prov == "flashattn_lite_bwd_v1":
                continue  # decode rows: forward only
            with provider_env(prov):
                fn = provider_fn(prov)
                row = dict(provider=prov, mode="decode", b=b, h=h, h_kv=h_kv, n=n, d=d, causal=False, dtype="bf16")
                try:
                    ok, err = check(fn, q, k, v, False)
                    row["max_err"] = err
                    if not ok:
                        row["status"] = "WRONG"
                    else:
                        t = time_ms(partial(fn, q, k, v, enable_gqa=h_kv < h))
                        ms = statistics.median(t)
                        row.update(status="ok", ms=ms, ms_min=min(t), ms_max=max(t), gbps=nbytes / ms / 1e6)
                except Exception as e:
                    row.update(status=f"n/a ({type(e).__name__})")
                rows.append(row)
    # bandwidth ceiling: device-to-device copy
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = statistics.median(time_ms(lambda: y.copy_(x), repeats=5))
    copy_gbps = 2 * x.numel() / t / 1e6
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  copy bandwidth {copy_gbps:.0f} GB/s")
    print(
        f"{'mode':8s} {'D':>4s} {'N':>6s} {'causal/shape':>12s} "
        + " ".join(f"{p:>17s}" for p in providers)
        + "  (TFLOP/s; decode GB/s)"
    )

    def key_of(r):
        tag = f"B{r['b']}H{r['h']}/{r.get('h_kv', r['h'])}" if r["mode"] == "decode" else str(r["causal"])
        return (r["mode"], r["d"], r["n"], tag)

    keys = sorted({key_of(r) for r in rows})
    for key in keys:
        cells = []
        for p in providers:
            r = next((r for r in rows if key_of(r) == key and r["provider"] == p), None)
            if r is None or r["status"] != "ok":
                cells.append(f"{(r or {}).get('status', '-')[:17]:>17s}")
            else:
                cells.append(f"{r.get('tflops', r.get('gbps', 0)):17.1f}")
        ours = next((r for r in rows if key_of(r) == key and r["provider"] == "flashattn_lite"), {})
        flash = next((r for r in rows if key_of(r) == key and r["provider"] == "flash"), {})
        v1 = next((r for r in rows if key_of(r) == key and r["provider"] == "flashattn_lite_v1"), {})
        extra = ""
        if ours.get("status") == "ok" and flash.get("status") == "ok":
            extra += f"  x{flash['ms'] / ours['ms']:.2f} vs flash"
        if v1.get("status") == "ok" and flash.get("status") == "ok":
            extra += f"  (v1 x{flash['ms'] / v1['ms']:.2f})"
        b2 = next((r for r in rows if key_of(r) == key and r["provider"] == "flashattn_lite_bwd_v1"), {})
        if key[0] == "fwd+bwd" and b2.get("status") == "ok" and flash.get("status") == "ok":
            extra += f"  (bwd v1 x{flash['ms'] / b2['ms']:.2f})"
        if key[0] == "decode" and ours.get("status") == "ok":
            extra += f"  {100 * ours['gbps'] / copy_gbps:.0f}% of copy bw"
        print(f"{key[0]:8s} {key[1]:4d} {key[2]:6d} {key[3]:>12s} " + " ".join(cells) + extra)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                dict(
                    device=torch.cuda.get_device_name(),
                    torch=torch.__version__,
                    copy_gbps=copy_gbps,
                    time=time.strftime("%Y-%m-%d %H:%M:%S"),
                    rows=rows,
                ),
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
