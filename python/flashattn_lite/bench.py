"""Minimal throughput check: ``python -m flashattn_lite.bench --quick``.

Each case is first checked against the fp64 reference under the numerical rule (ours must be
within 2x torch's own same-dtype error), then timed (median of repeats) against
``torch.nn.functional.scaled_dot_product_attention`` on the same inputs in the same process.
FLOPs: fwd 4*B*H*s_q*s_k*D (halved for causal with s_q == s_k); fwd+bwd 3.5x that.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import build_info, scaled_dot_product_attention
from .reference import sdpa_ref


@dataclass
class Case:
    mode: str  # "fwd" or "fwd+bwd"
    dtype: torch.dtype
    b: int
    h: int
    n: int
    d: int
    causal: bool = False

    @property
    def flops(self) -> float:
        f = 4.0 * self.b * self.h * self.n * self.n * self.d * (0.5 if self.causal else 1.0)
        return f * (3.5 if self.mode == "fwd+bwd" else 1.0)

    def label(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return f"{self.mode:7s} {dt:8s} B{self.b} H{self.h} N{self.n} D{self.d}{' causal' if self.causal else ''}"


QUICK_CASES = [
    Case("fwd", torch.float32, 1, 8, 1024, 64),
    Case("fwd", torch.bfloat16, 1, 8, 1024, 64),
    Case("fwd", torch.bfloat16, 1, 8, 1024, 64, causal=True),
    Case("fwd+bwd", torch.float32, 1, 8, 1024, 64),
    Case("fwd+bwd", torch.bfloat16, 1, 8, 1024, 64),
]


def _inputs(c: Case, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda: torch.randn((c.b, c.h, c.n, c.d), generator=g).to(device=device, dtype=c.dtype)  # noqa: E731
    q, k, v = mk(), mk(), mk()
    do = mk()
    return q, k, v, do


def make_runner(fn: Callable, c, q, k, v, do) -> Callable[[], None]:
    """A closure running `fn` (SDPA signature) once: forward, or forward + backward for mode 'fwd+bwd'."""
    if c.mode != "fwd+bwd":
        return lambda: fn(q, k, v, is_causal=c.causal)
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

    def run() -> None:
        out = fn(qg, kg, vg, is_causal=c.causal)
        torch.autograd.grad(out, (qg, kg, vg), do)
    return run


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(run: Callable[[], None], device: str, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def check(c: Case, q, k, v) -> tuple[bool, float, float]:
    """Returns (ok, our max error, torch's max error) against the fp64 reference."""
    with torch.no_grad():
        ref = sdpa_ref(q, k, v, is_causal=c.causal)
        ours = scaled_dot_product_attention(q, k, v, is_causal=c.causal)
        theirs = F.scaled_dot_product_attention(q, k, v, is_causal=c.causal)
    err = (ours.double() - ref).abs().max().item()
    err_t = (theirs.double() - ref).abs().max().item()
    noise = torch.finfo(c.dtype).eps * max(1.0, ref.abs().max().item()) + 32 * torch.finfo(torch.float32).eps
    return err <= 2 * err_t + noise, err, err_t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flashattn_lite.bench",
                                 description="Correctness-checked throughput of flashattn_lite vs torch SDPA.")
    ap.add_argument("--quick", action="store_true", help="a few B1 H8 N1024 D64 cases (the README's main job)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per provider (median reported)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    info = build_info()
    print(f"flashattn_lite {info['version']}  torch {torch.__version__}  device {args.device}  "
          f"threads {torch.get_num_threads()}  cpu_isas {','.join(info['cpu_isas'])}  cuda {info['cuda']}")
    hdr = f"{'case':40s} {'check':>6s} {'ours ms':>9s} {'torch ms':>9s} {'ours GF/s':>10s} {'torch GF/s':>10s} {'speedup':>8s}"
    print(hdr)
    print("-" * len(hdr))
    failed = 0
    for c in QUICK_CASES:
        q, k, v, do = _inputs(c, args.device)
        ok, err, err_t = check(c, q, k, v)
        if not ok:
            failed += 1
            print(f"{c.label():40s} {'WRONG':>6s}  max err {err:.2e} vs torch {err_t:.2e}: not timed")
            continue
        t_ours = statistics.median(time_ms(make_runner(scaled_dot_product_attention, c, q, k, v, do), args.device, args.repeats))
        t_torch = statistics.median(time_ms(make_runner(F.scaled_dot_product_attention, c, q, k, v, do), args.device, args.repeats))
        gf = lambda ms: c.flops / (ms * 1e-3) / 1e9  # noqa: E731
        print(f"{c.label():40s} {'ok':>6s} {t_ours:9.2f} {t_torch:9.2f} {gf(t_ours):10.1f} {gf(t_torch):10.1f} "
              f"{t_torch / t_ours:7.2f}x")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
