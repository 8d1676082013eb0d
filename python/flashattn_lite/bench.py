"""Kernel throughput profiler: ``python -m flashattn_lite.bench``.

Every provider is checked against the fp64 reference (on a slice of the inputs) before it is
timed; a wrong result is reported, never timed. Timing: warm-up, then the median, min and max of
repeats (CPU: wall clock; CUDA: CUDA events with an L2 flush before each repeat). FLOPs: fwd
4*B*H*s_q*s_k*D (halved for causal with s_q == s_k), bwd 2.5x fwd, fwd+bwd 3.5x; decode rows
also report the bytes of K and V read. Each row gets its position on the device's roofline:
peak GEMM rate and memory bandwidth measured once by this tool and cached.

    python -m flashattn_lite.bench --quick                         # the README's main job
    python -m flashattn_lite.bench --preset cpu-sweep --out DIR    # table + results.json/csv + plot
    python -m flashattn_lite.bench --mode fwd,fwd+bwd --seqlens 1024,4096 --head-dims 64,128 \\
        --dtypes bf16 --causal both --device cuda --providers flashattn_lite,sdpa-flash,sdpa-cudnn
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import available_isas, build_info, cpu_isa, scaled_dot_product_attention
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
        return [Config(m, dt, 1, 8, 8, n, n, 64, False)
                for m in ("fwd", "fwd+bwd") for dt in ("fp32", "bf16") for n in (256, 512, 1024, 2048, 4096)]
    if name == "decode":
        return [Config("decode", dt, 1, 32, 8, 1, n, 128, False) for dt in ("bf16", "fp32") for n in (4096, 32768)]
    if name == "gpu":
        return [Config(m, "bf16", max(1, 16384 // n), 2048 // d, 2048 // d, n, n, d, c)
                for m in ("fwd", "fwd+bwd") for d in (64, 128) for n in (1024, 4096, 16384) for c in (False, True)]
    raise SystemExit(f"unknown preset {name!r}; choose from quick, cpu-sweep, decode, gpu")


def grid(args: argparse.Namespace) -> list[Config]:
    seqs_q = args.seqlens_q or args.seqlens
    seqs_k = args.seqlens_k or args.seqlens
    causals = {"on": [True], "off": [False], "both": [False, True]}[args.causal]
    out = []
    for mode, dt, b, h, d, c in itertools.product(args.mode, args.dtypes, args.batch, args.heads, args.head_dims, causals):
        h_kv = args.heads_kv or h
        if h % h_kv:
            raise SystemExit(f"--heads {h} is not a multiple of --heads-kv {h_kv}")
        pairs = [(1, sk) for sk in seqs_k] if mode == "decode" else (
            list(zip(seqs_q, seqs_k)) if (args.seqlens_q and args.seqlens_k) else [(s, s) for s in args.seqlens])
        for sq, sk in pairs:
            out.append(Config(mode, dt, b, h, h_kv, sq, sk, d, c))
    return out


# ----------------------------------------------------------------------------------------------
# providers: name -> fn(q, k, v, is_causal) in SDPA layout, or None when unavailable
def _sdpa_backend(backend_name: str) -> Optional[Callable]:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v, is_causal=False):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1])
    return run


def _flash_attn() -> Optional[Callable]:
    try:
        from flash_attn import flash_attn_func  # type: ignore
    except ImportError:
        return None

    def run(q, k, v, is_causal=False):
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=is_causal).transpose(1, 2)
    return run


def _ours(q, k, v, is_causal=False):
    return scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1])


PROVIDERS: dict[str, Callable[[], Optional[Callable]]] = {
    "flashattn_lite": lambda: _ours,
    "sdpa-flash": lambda: _sdpa_backend("FLASH_ATTENTION"),
    "sdpa-efficient": lambda: _sdpa_backend("EFFICIENT_ATTENTION"),
    "sdpa-cudnn": lambda: _sdpa_backend("CUDNN_ATTENTION"),
    "sdpa-math": lambda: _sdpa_backend("MATH"),
    "flash_attn": _flash_attn,
}
DEFAULT_PROVIDERS = {"cpu": ["flashattn_lite", "sdpa-flash"],
                     "cuda": ["flashattn_lite", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flash_attn"]}


# ----------------------------------------------------------------------------------------------
# inputs, checks, timing
def make_inputs(c: Config, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(0)
    dt = DTYPES[c.dtype]
    mk = lambda h, s: torch.randn((c.b, h, s, c.d), generator=g).to(device=device, dtype=dt)  # noqa: E731
    return mk(c.h, c.s_q), mk(c.h_kv, c.s_k), mk(c.h_kv, c.s_k), mk(c.h, c.s_q)


def make_runner(fn: Callable, c, q, k, v, do) -> Callable[[], None]:
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


def check(fn: Callable, c: Config, q, k, v) -> tuple[bool, float, float]:
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


_L2_FLUSH: Optional[torch.Tensor] = None


def time_ms(run: Callable[[], None], device: str, repeats: int, warmup: int, nvtx: str = "") -> list[float]:
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
    return (f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()}:threads={torch.get_num_threads()}"
            f":isa={cpu_isa()}")


def measure_peaks(device: str) -> dict:
    """Compute peaks (fp32 and bf16 FLOP/s) and a streaming-read bandwidth.

    CPU: FMA / vdpbf16ps chains of the active ISA on torch's threads (flashattn_lite._C), which a
    library GEMM does not reach on every CPU; CUDA: a large bf16 / fp32 matmul (cuBLAS)."""
    peaks: dict = {}
    if device == "cpu":
        from . import _C
        peaks["fp32_gflops"] = _C._cpu_peak_gflops("fp32", 0.3)
        peaks["bf16_gflops"] = _C._cpu_peak_gflops("bf16", 0.3)
    else:
        n = 8192
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
            ms = min(time_ms(lambda: a @ b, device, repeats=5, warmup=2))
            peaks[f"{name}_gflops"] = 2 * n**3 / ms / 1e6
    x = torch.randn(64 * 2**20, device=device)  # 256 MB
    ms = min(time_ms(lambda: x.sum(), device, repeats=5, warmup=1))
    peaks["read_gbps"] = x.numel() * 4 / ms / 1e6
    return peaks


def get_peaks(device: str, refresh: bool = False) -> dict:
    path, key = _cache_path(), device_key(device)
    cache = json.loads(path.read_text()) if path.exists() else {}
    if refresh or key not in cache:
        cache[key] = dict(measure_peaks(device), device=device)
        path.write_text(json.dumps(cache, indent=1))
    return cache[key]


def roofline(c: Config, ms: float, peaks: dict) -> tuple[float, float, float]:
    """(GFLOP/s, GB/s, % of the attainable rate min(compute peak, intensity x read bandwidth)).
    fp16 on the CPU computes through fp32 (no AVX512_FP16 here), so its peak is the fp32 one."""
    gflops = c.flops / ms / 1e6
    gbps = c.bytes / ms / 1e6
    low = c.dtype == "bf16" or (c.dtype == "fp16" and peaks.get("device") == "cuda")
    compute = peaks.get("bf16_gflops" if low else "fp32_gflops", float("nan"))
    attainable = min(compute, c.flops / c.bytes * peaks.get("read_gbps", float("nan")))
    return gflops, gbps, 100 * gflops / attainable if attainable > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# rows and output
@dataclass
class Row:
    provider: str
    config: Config
    device: str
    threads_or_isa: str
    status: str = "ok"
    ms_median: float = float("nan")
    ms_min: float = float("nan")
    ms_max: float = float("nan")
    gflops: float = float("nan")
    gbps: float = float("nan")
    pct_roofline: float = float("nan")
    speedup: float = float("nan")
    max_err: float = float("nan")
    extra: dict = field(default_factory=dict)

    def flat(self) -> dict:
        d = asdict(self)
        d.update(d.pop("config"))
        d.pop("extra")
        return d


def progress(i: int, n: int, label: str, enabled: bool) -> None:
    if not enabled:
        return
    width = 30
    done = int(width * i / max(n, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {label[:50]:50s}")
    if i == n:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run_rows(configs: list[Config], providers: list[str], args: argparse.Namespace, peaks: dict) -> list[Row]:
    fns = {p: PROVIDERS[p]() for p in providers}
    where = f"{torch.get_num_threads()} threads, {cpu_isa()}" if args.device == "cpu" else torch.cuda.get_device_name()
    rows: list[Row] = []
    total = len(configs) * len(providers)
    step = 0
    for c in configs:
        q, k, v, do = make_inputs(c, args.device)
        for p in providers:
            step += 1
            progress(step, total, f"{p} {c.label()}", args.progress)
            row = Row(p, c, args.device, where)
            fn = fns[p]
            if fn is None:
                row.status = "not installed"
                rows.append(row)
                continue
            try:
                ok, err, _ = check(fn, c, q, k, v)
                row.max_err = err
                if not ok:
                    row.status = "WRONG"
                    rows.append(row)
                    continue
                t = time_ms(make_runner(fn, c, q, k, v, do), args.device, args.repeats, args.warmup,
                            nvtx=f"{p} {c.label()}")
            except (RuntimeError, ValueError, NotImplementedError) as e:  # unsupported by that backend
                row.status = f"n/a: {type(e).__name__}"
                rows.append(row)
                continue
            row.ms_median, row.ms_min, row.ms_max = statistics.median(t), min(t), max(t)
            row.gflops, row.gbps, row.pct_roofline = roofline(c, row.ms_median, peaks)
            rows.append(row)
    baseline = next((p for p in providers if p != "flashattn_lite"), None)
    for r in rows:
        base = next((x for x in rows if x.provider == baseline and x.config == r.config and x.status == "ok"), None)
        if base and r.status == "ok":
            r.speedup = base.ms_median / r.ms_median
    return rows


def table(rows: list[Row]) -> str:
    hdr = f"{'provider':15s} {'case':44s} {'ms (med)':>9s} {'min':>8s} {'max':>8s} {'GFLOP/s':>9s} {'GB/s':>7s} {'%roof':>6s} {'speedup':>8s}"
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.provider:15s} {r.config.label():44s} {r.status}")
            continue
        sp = f"{r.speedup:7.2f}x" if not math.isnan(r.speedup) else "       -"
        lines.append(f"{r.provider:15s} {r.config.label():44s} {r.ms_median:9.2f} {r.ms_min:8.2f} {r.ms_max:8.2f} "
                     f"{r.gflops:9.1f} {r.gbps:7.1f} {r.pct_roofline:5.0f}% {sp}")
    return "\n".join(lines)


def write_outputs(rows: list[Row], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    flat = [r.flat() for r in rows]
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": flat}, indent=1, default=str))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0].keys()))
        w.writeheader()
        w.writerows(flat)
    plot(rows, out / "throughput.png", meta)


def plot(rows: list[Row], path: Path, meta: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return
    panels = sorted({(r.config.mode, r.config.dtype) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (mode, dt) in zip(axes[0], panels):
        for prov in sorted({r.provider for r in rows}):
            pts = sorted((r.config.s_k, r.gflops) for r in rows
                         if r.provider == prov and (r.config.mode, r.config.dtype) == (mode, dt) and r.status == "ok")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{mode} {dt}")
        ax.set_xlabel("seqlen")
        ax.set_ylabel("GFLOP/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(meta.get("machine", ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_one(configs: list[Config], providers: list[str], args: argparse.Namespace) -> None:
    c = configs[0]
    q, k, v, do = make_inputs(c, args.device)
    fn = PROVIDERS[providers[0]]()
    run = make_runner(fn, c, q, k, v, do)
    run()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
        if args.device == "cuda":
            torch.cuda.synchronize()
    prof.export_chrome_trace(args.profile)
    print(f"chrome trace of one {providers[0]} run of '{c.label()}' written to {args.profile}")


# ----------------------------------------------------------------------------------------------
def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda s: [kind(x) for x in s.split(",") if x]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m flashattn_lite.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="five B1 H8 N1024 D64 cases, checked and timed (under 60 s on 2 CPU cores)")
    ap.add_argument("--preset", choices=["quick", "cpu-sweep", "decode", "gpu"], help="a named grid instead of the grid options")
    g = ap.add_argument_group("grid (every combination is one configuration)")
    g.add_argument("--mode", type=_csv(str), default=["fwd"], help=f"comma list of {','.join(MODES)} (default fwd)")
    g.add_argument("--dtypes", type=_csv(str), default=["bf16"], help="comma list of fp32,fp64,bf16,fp16 (default bf16)")
    g.add_argument("--batch", type=_csv(int), default=[1], help="comma list of batch sizes (default 1)")
    g.add_argument("--heads", type=_csv(int), default=[8], help="comma list of query heads (default 8)")
    g.add_argument("--heads-kv", type=int, default=None, help="key/value heads (GQA/MQA; default = heads)")
    g.add_argument("--seqlens", type=_csv(int), default=[1024], help="comma list of seqlens, s_q = s_k (default 1024)")
    g.add_argument("--seqlens-q", type=_csv(int), default=None, help="comma list of s_q, paired with --seqlens-k")
    g.add_argument("--seqlens-k", type=_csv(int), default=None, help="comma list of s_k (decode: the cache lengths)")
    g.add_argument("--head-dims", type=_csv(int), default=[64], help="comma list of head dims (default 64)")
    g.add_argument("--causal", choices=["off", "on", "both"], default="off", help="causal masking (default off)")
    r = ap.add_argument_group("run")
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    r.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    r.add_argument("--isa", default=None, help=f"CPU ISA of flashattn_lite (available: {','.join(available_isas())})")
    r.add_argument("--providers", type=_csv(str), default=None,
                   help=f"comma list of {','.join(PROVIDERS)} (default: cpu {DEFAULT_PROVIDERS['cpu']}, cuda all)")
    r.add_argument("--repeats", type=int, default=7, help="timed repeats per row (median reported)")
    r.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    r.add_argument("--refresh-peaks", action="store_true", help="re-measure the device peaks (cached otherwise)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    o = ap.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="write results.json, results.csv and throughput.png here")
    o.add_argument("--profile", default=None, help="write a Chrome trace (torch.profiler) of one run of the first row")
    args = ap.parse_args(argv)
    for m in args.mode:
        if m not in MODES:
            ap.error(f"--mode: unknown mode {m!r}; choose from {', '.join(MODES)}")
    for d in args.dtypes:
        if d not in DTYPES:
            ap.error(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if args.providers:
        for p in args.providers:
            if p not in PROVIDERS:
                ap.error(f"--providers: unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
    if bool(args.seqlens_q) != bool(args.seqlens_k) and "decode" not in args.mode:
        ap.error("--seqlens-q and --seqlens-k go together")
    if args.seqlens_q and args.seqlens_k and len(args.seqlens_q) != len(args.seqlens_k):
        ap.error("--seqlens-q and --seqlens-k need the same number of entries")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa:
        from . import _C
        _C._set_cpu_isa(args.isa)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    configs = preset("quick" if args.quick else args.preset) if (args.quick or args.preset) else grid(args)
    providers = args.providers or DEFAULT_PROVIDERS[args.device]
    info = build_info()
    peaks = get_peaks(args.device, args.refresh_peaks)
    machine = (f"flashattn_lite {info['version']}  torch {torch.__version__}  device {args.device}"
               + (f"  threads {torch.get_num_threads()}  isa {cpu_isa()}" if args.device == "cpu"
                  else f"  {torch.cuda.get_device_name()}")
               + f"  peaks: fp32 {peaks['fp32_gflops']:.0f} / bf16 {peaks['bf16_gflops']:.0f} GFLOP/s,"
               f" read {peaks['read_gbps']:.0f} GB/s")
    print(machine)
    if args.profile:
        profile_one(configs, providers, args)
    rows = run_rows(configs, providers, args, peaks)
    print(table(rows))
    if args.out:
        write_outputs(rows, args.out, {"machine": machine, "peaks": peaks, "argv": sys.argv[1:]})
        print(f"results written to {args.out}/results.json, results.csv, throughput.png")
    wrong = [r for r in rows if r.status == "WRONG" and r.provider == "flashattn_lite"]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
