"""The profiler's building blocks (``python -m flashattn_lite.bench`` is the CLI, bench.py):
configurations and presets, providers, checked inputs, timing, and the roofline (peak GEMM rate
and memory bandwidth, measured once and cached)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cpu_isa, scaled_dot_product_attention
from .reference import sdpa_ref

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "bwd", "fwd+bwd", "decode")
MODE_FLOPS = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5, "decode": 1.0}


# ----------------------------------------------------------------------------------------------
# configurations
@dataclass(frozen=True)
class Config:
    mode: str
    dtype: str
    b: int
    h: int
    h_kv: int
    s_q: int
    s_k: int
    d: int
    causal: bool

    @property
    def flops(self) -> float:
        f = 4.0 * self.b * self.h * self.s_q * self.s_k * self.d
        if self.causal and self.s_q == self.s_k:
            f /= 2
        return f * MODE_FLOPS[self.mode]

    @property
    def bytes(self) -> float:
        """Fewest bytes moved: q, k, v read and out written once (x3 for the backward's extra tensors)."""
        el = torch.tensor([], dtype=DTYPES[self.dtype]).element_size()
        qo = 2 * self.b * self.h * self.s_q * self.d
        kv = 2 * self.b * self.h_kv * self.s_k * self.d
        mult = {"fwd": 1, "decode": 1, "bwd": 2, "fwd+bwd": 3}[self.mode]
        return float(el * (qo + kv) * mult)

    def label(self) -> str:
        shape = f"B{self.b} H{self.h}" + (f"/{self.h_kv}" if self.h_kv != self.h else "")
        shape += f" {self.s_q}x{self.s_k} D{self.d}" + (" causal" if self.causal else "")
        return f"{self.mode:7s} {self.dtype:4s} {shape}"


QUICK = [
    Config("fwd", "fp32", 1, 8, 8, 1024, 1024, 64, False),
    Config("fwd", "bf16", 1, 8, 8, 1024, 1024, 64, False),
    Config("fwd", "bf16", 1, 8, 8, 1024, 1024, 64, True),
    Config("fwd+bwd", "fp32", 1, 8, 8, 1024, 1024, 64, False),
    Config("fwd+bwd", "bf16", 1, 8, 8, 1024, 1024, 64, False),
]


def preset(name: str) -> list[Config]:
    if name == "quick":
        return list(QUICK)
    if name == "cpu-sweep":  # the README's table and plot
        return [
            Config(m, dt, 1, 8, 8, n, n, 64, False)
            for m in ("fwd", "fwd+bwd")
            for dt in ("fp32", "bf16")
            for n in (256, 512, 1024, 2048, 4096)
        ]
    if name == "decode":
        return [Config("decode", dt, 1, 32, 8, 1, n, 128, False) for dt in ("bf16", "fp32") for n in (4096, 32768)]
    if name == "gpu":
        return [
            Config(m, "bf16", max(1, 16384 // n), 2048 // d, 2048 // d, n, n, d, c)
            for m in ("fwd", "fwd+bwd")
            for d in (64, 128)
            for n in (1024, 4096, 16384)
            for c in (False, True)
        ]
    raise SystemExit(f"unknown preset {name!r}; choose from quick, cpu-sweep, decode, gpu")


def grid(args: argparse.Namespace) -> list[Config]:
    seqs_q = args.seqlens_q or args.seqlens
    seqs_k = args.seqlens_k or args.seqlens
    causals = {"on": [True], "off": [False], "both": [False, True]}[args.causal]
    out = []
    for mode, dt, b, h, d, c in itertools.product(
        args.mode, args.dtypes, args.batch, args.heads, args.head_dims, causals
    ):
        h_kv = args.heads_kv or h
        if h % h_kv:
            raise SystemExit(f"--heads {h} is not a multiple of --heads-kv {h_kv}")
        pairs = (
            [(1, sk) for sk in seqs_k]
            if mode == "decode"
            else (list(zip(seqs_q, seqs_k)) if (args.seqlens_q and args.seqlens_k) else [(s, s) for s in args.seqlens])
        )
        for sq, sk in pairs:
            out.append(Config(mode, dt, b, h, h_kv, sq, sk, d, c))
    return out


# ----------------------------------------------------------------------------------------------
# providers: name -> fn(q, k, v, is_causal) in SDPA layout, or None when unavailable
SdpaFn = Callable[..., torch.Tensor]


def _sdpa_backend(backend_name: str) -> SdpaFn | None:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    backend = getattr(SDPBackend, backend_name)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1])

    return run


def _flash_attn() -> SdpaFn | None:
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=is_causal).transpose(
            1, 2
        )

    return run


def _ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    return scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1])


PROVIDERS: dict[str, Callable[[], SdpaFn | None]] = {
    "flashattn_lite": lambda: _ours,
    "sdpa-flash": lambda: _sdpa_backend("FLASH_ATTENTION"),
    "sdpa-efficient": lambda: _sdpa_backend("EFFICIENT_ATTENTION"),
    "sdpa-cudnn": lambda: _sdpa_backend("CUDNN_ATTENTION"),
    "sdpa-math": lambda: _sdpa_backend("MATH"),
    "flash_attn": _flash_attn,
}
DEFAULT_PROVIDERS = {
    "cpu": ["flashattn_lite", "sdpa-flash"],
    "cuda": ["flashattn_lite", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flash_attn"],
}


# ----------------------------------------------------------------------------------------------
# inputs, checks, timing
def make_inputs(c: Config, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(0)
    dt = DTYPES[c.dtype]
    mk = lambda h, s: torch.randn((c.b, h, s, c.d), generator=g).to(device=device, dtype=dt)  # noqa: E731
    return mk(c.h, c.s_q), mk(c.h_kv, c.s_k), mk(c.h_kv, c.s_k), mk(c.h, c.s_q)


def make_runner(
    fn: SdpaFn, c: Config, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor
) -> Callable[[], object]:
    """A closure running `fn` (SDPA signature) once: forward, or forward + backward for mode
    'fwd+bwd', or the backward alone (forward done once, outside) for mode 'bwd'."""
    if c.mode not in ("fwd+bwd", "bwd"):
        return lambda: fn(q, k, v, is_causal=c.causal)
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    if c.mode == "bwd":
        out = fn(qg, kg, vg, is_causal=c.causal)
        return lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True)

    def run() -> None:
        out = fn(qg, kg, vg, is_causal=c.causal)
        torch.autograd.grad(out, (qg, kg, vg), do)

    return run


def check(fn: SdpaFn, c: Config, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[bool, float, float]:
    """Checks the forward on a slice (first batch, the first kv head's query heads) against the
    fp64 reference: ours within 2x the same-dtype naive error plus rounding noise."""
    g = c.h // c.h_kv
    qs, ks, vs = q[:1, :g], k[:1, :1], v[:1, :1]
    with torch.no_grad():
        ref = sdpa_ref(qs, ks, vs, is_causal=c.causal)
        same = sdpa_ref(qs, ks, vs, is_causal=c.causal, upcast=False)
        out = fn(q, k, v, is_causal=c.causal)[:1, :g]
    err = (out.double() - ref).abs().max().item()
    err_same = (same.double() - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    acc_eps = torch.finfo(torch.float64 if c.dtype == "fp64" else torch.float32).eps
    noise = (torch.finfo(DTYPES[c.dtype]).eps + math.sqrt(c.s_k) * acc_eps) * scale
    ok = bool(err <= 2 * err_same + noise) and not math.isnan(err)
    return ok, err, err_same


_L2_FLUSH: torch.Tensor | None = None


def time_ms(run: Callable[[], object], device: str, repeats: int, warmup: int, nvtx: str = "") -> list[float]:
    global _L2_FLUSH
    for _ in range(warmup):
        run()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        if _L2_FLUSH is None:
            _L2_FLUSH = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        for _ in range(repeats):
            _L2_FLUSH.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.nvtx.range_push(nvtx or "flashattn_lite.bench")
            a.record()
            run()
            b.record()
            torch.cuda.nvtx.range_pop()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return times
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


# ----------------------------------------------------------------------------------------------
# device peaks (measured once, cached)
def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flashattn_lite"
    root.mkdir(parents=True, exist_ok=True)
    return root / "peaks.json"


def device_key(device: str) -> str:
    if device == "cuda":
        return f"cuda:{torch.cuda.get_device_name()}"
    import platform

    return (
        f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()}:threads={torch.get_num_threads()}"
        f":isa={cpu_isa()}"
    )


def measure_peaks(device: str) -> dict:
    """Compute peaks (fp32 and bf16 FLOP/s) and a streaming-read bandwidth.

    CPU: FMA / vdpbf16ps chains of the active ISA on torch's threads (flashattn_lite._C), which a
    library GEMM does not reach on every CPU, and with the amx ISA the AMX tiles' bf16 rate;
    CUDA: a large bf16 / fp32 matmul (cuBLAS)."""
    peaks: dict = {}
    if device == "cpu":
        from . import _C

        peaks["fp32_gflops"] = _C._cpu_peak_gflops("fp32", 0.3)
        peaks["bf16_gflops"] = _C._cpu_peak_gflops("bf16", 0.3)
        if cpu_isa() == "amx":  # the bf16 forward's products run on AMX tiles
            peaks["amx_bf16_gflops"] = _C._cpu_peak_gflops("amx", 0.3)
    else:
        n = 8192
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
            ms = min(time_ms(partial(torch.matmul, a, b), device, repeats=5, warmup=2))
            peaks[f"{name}_gflops"] = 2 * n**3 / ms / 1e6
    x = torch.randn(64 * 2**20, device=device)  # 256 MB
    if device == "cpu":
        peaks["read_gbps"] = read_gbps(x, passes=5)
    else:
        ms = min(time_ms(lambda: x.sum(), device, repeats=5, warmup=1))
        peaks["read_gbps"] = x.numel() * 4 / ms / 1e6
    return peaks


def read_gbps(buf: torch.Tensor, passes: int = 3) -> float:
    """CPU read bandwidth (GB/s) on torch's threads: the best of ``passes`` streaming sums over
    ``buf`` (a contiguous float32 CPU tensor larger than the caches, e.g. 256 MB) with the active
    ISA's vector loads and software prefetch (flashattn_lite._C; bench/peak_fma.cpp's loops)."""
    if buf.device.type != "cpu" or buf.dtype != torch.float32 or not buf.is_contiguous():
        raise ValueError("read_gbps: buf must be a contiguous float32 CPU tensor")
    from . import _C

    return _C._cpu_read_gbps(buf.data_ptr(), buf.numel(), passes)


def get_peaks(device: str, refresh: bool = False) -> dict:
    path, key = _cache_path(), device_key(device)
    cache = json.loads(path.read_text()) if path.exists() else {}
    if refresh or key not in cache:
        cache[key] = dict(measure_peaks(device), device=device)
        path.write_text(json.dumps(cache, indent=1))
    return cache[key]


def roofline(c: Config, ms: float, peaks: dict) -> tuple[float, float, float]:
    """(GFLOP/s, GB/s, % of the attainable rate min(compute peak, intensity x read bandwidth)).
    fp16 on the CPU computes through fp32 (no AVX512_FP16 here), so its peak is the fp32 one; the
    amx ISA's bf16 forward and backward (more than 16 query rows) and its bf16 decode of 4 to 16 rows per kv head
    (one query token: the GQA heads sharing a kv head packed as rows, plan.cpp; else the query rows)
    over at least 768 keys x rows, with d a multiple of 32 (make_inputs' head-major K: rows d apart) run on AMX tiles: the AMX peak; its fp16
    forward and backward (more than 16 query rows) -- and fp32 where torch's float32 matmul precision is "high" or
    "medium" -- run three tile products per multiply (split_bf16.h): a third of it; its fp32 forward at the
    default "highest" precision six (three parts): a sixth (its fp32 backward runs on FMAs: the fp32 peak)."""
    gflops = c.flops / ms / 1e6
    gbps = c.bytes / ms / 1e6
    low = c.dtype == "bf16" or (c.dtype == "fp16" and peaks.get("device") == "cuda")
    compute = peaks.get("bf16_gflops" if low else "fp32_gflops", float("nan"))
    if c.dtype == "bf16" and "amx_bf16_gflops" in peaks:
        fwd_tiles = c.mode in ("fwd", "bwd", "fwd+bwd") and c.s_q > 16
        g = c.h // c.h_kv
        rows = g if c.s_q == 1 and 1 < g <= 16 else c.s_q
        decode_tiles = c.mode == "decode" and c.s_q <= 16 and 4 <= rows <= 16 and c.d % 32 == 0 and c.s_k * rows >= 768
        if fwd_tiles or decode_tiles:  # (other decodes: vectors)
            compute = peaks["amx_bf16_gflops"]
    # fp32 too where torch's float32 matmul precision lets the products take two bf16 parts (README, Semantics)
    split = c.dtype == "fp16" or (
        c.dtype == "fp32" and torch.backends.mkldnn.matmul.fp32_precision in ("tf32", "bf16")  # type: ignore[attr-defined]
    )
    if split and "amx_bf16_gflops" in peaks and c.mode in ("fwd", "bwd", "fwd+bwd") and c.s_q > 16:
        compute = peaks["amx_bf16_gflops"] / 3
    elif c.dtype == "fp32" and "amx_bf16_gflops" in peaks and c.mode == "fwd" and c.s_q > 16:
        compute = peaks["amx_bf16_gflops"] / 6  # "highest": three parts, six products (its backward: FMAs)
    attainable = min(compute, c.flops / c.bytes * peaks.get("read_gbps", float("nan")))
    return gflops, gbps, 100 * gflops / attainable if attainable > 0 else float("nan")


def cpu_model() -> str:
    """The CPU's model line (name, family, model) from /proc/cpuinfo, for benchmark machine lines."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        return "unknown CPU"
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
