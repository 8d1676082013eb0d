"""CPU benchmark: flashattn_lite against torch's own CPU SDPA (flash backend), same process, same
inputs, as % of this machine's peak measured in the same run (issue 15's goals).

    python bench/cpu_bench.py [--threads 2] [--repeats 7] [--isa avx2|avx512|amx] [--out FILE.md] [--memory]

Every case is checked first (flashattn_lite against the fp64 reference under the numerical rule:
at most 2x torch's own error in that dtype, plus rounding noise), then timed: ours and torch
alternately, median of the repeats. FLOPs: fwd 4*B*H*s_q*s_k*D (halved for causal), fwd+bwd 3.5x
fwd; decode reports GB/s of K and V read. "% peak" is against the peak of the ISA ours uses: the
fp32 FMA peak for fp32/fp16 compute and for bf16 where the ISA has no bf16 dot product (AVX2), the
vdpbf16ps peak for bf16 on AVX-512, probed in this process just before each of our calls
(flashattn_lite._C._cpu_peak_gflops, peak_fma.cpp's FMA chains, 30 ms): a row's % is the median
over the repeats of its rate in that round over that round's probe, the unit column showing the
probe's median and range (a shared host's neighbours take cores' time for seconds: on a 2-vCPU Zen 3
the probe read 90 and 175 GFLOP/s a minute apart); the machine line's peaks are bench/peak_fma.cpp's,
run once at the start. For decode the read
bandwidth probed in this process just before each of our calls (flashattn_lite._bench_core.read_gbps:
peak_fma.cpp's read loops on the active ISA over 256 MB; a shared host's bandwidth swings, 42-80
GB/s on a Zen 5 and 30-50 on a Zen 4, within seconds), the unit column showing its median and range.
A decode row's % is the median over the repeats of its roofline time in that round -- the longer of
reading K and V at that round's probe and of its FLOPs (4 * H * rows * s_k * D) at the compute
peak -- over its time: with 16 query
rows per K/V row, bf16 decode needs more time at the vdpbf16ps peak than for its bytes on a
2-core Zen 4 (the unit column says which bound applies).
Scaling rows time ours alone on 1 thread and on --threads threads (the goal is the speedup).

--isa avx2 measures the AVX2 path on an AVX-512 machine: the script re-runs itself with
FLASHATTN_LITE_CPU_ISA=avx2 for ours and ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2,
ONEDNN_MAX_CPU_ISA=AVX2 for torch, against the AVX2 peak; the machine line says so. On a CPU with
AMX the default ISA is amx (its bf16 forward and fwd+bwd rows against the AMX peak, its fp16 ones against a
third of it -- three tile products per multiply --, its fp32 forward rows against a sixth -- six --, no goal: the goals name the vdpbf16ps / fp32 FMA peak; its bf16 decode of 4 or more rows per kv head against the roofline with the AMX
peak -- memory-bound -- under the decode goals); --isa avx512 measures the AVX-512 kernels, torch
without AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16).
--memory also runs fwd+bwd at N=65536 (H8, D64, bf16) in a subprocess and reports its peak RSS
beyond inputs, outputs and gradients, after a small warm-up fwd+bwd (the process's first
tensor.backward(grad) imports sympy through torch.autograd's _make_grads: ~36 MB of Python
modules, once per process, torch's and not the kernels'); the cold number is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashattn_lite as fal
from flashattn_lite._bench_core import cpu_model, read_gbps
from flashattn_lite.reference import sdpa_ref

HERE = Path(__file__).resolve().parent
ISA_ENV = {
    "avx2": {
        "FLASHATTN_LITE_CPU_ISA": "avx2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
    "avx512": {"FLASHATTN_LITE_CPU_ISA": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "amx": {"FLASHATTN_LITE_CPU_ISA": "amx"},
}


@dataclass
class Case:
    """One benchmark row. layout: "bhsd" (torch SDPA's, head-major K/V) or "bshd" (flash-attn's and
    the KV cache's, token-major). Goals per ISA: pct = % of the peak named by `peak`
    ("compute" = the dtype's compute peak, "read" = read bandwidth), ratio = x torch, scaling = x
    its own 1-thread speed; None = no goal."""

    name: str
    mode: str  # fwd, fwd+bwd, decode
    dtype: torch.dtype
    h: int
    h_kv: int
    n_q: int
    n_k: int
    d: int
    causal: bool = False
    layout: str = "bhsd"
    pct: tuple[float | None, float | None] = (None, None)  # (avx512, avx2)
    ratio: tuple[float | None, float | None] = (None, None)
    scaling: float | None = None

    def flops(self) -> float:
        f = 4.0 * self.h * self.n_q * self.n_k * self.d * (0.5 if self.causal and self.n_q == self.n_k else 1.0)
        return f * (3.5 if self.mode == "fwd+bwd" else 1.0)

    def kv_bytes(self) -> int:
        return 2 * self.h_kv * self.n_k * self.d * torch.tensor([], dtype=self.dtype).element_size()


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
CASES = [
    Case("fwd fp32 H8 N2048 D64", "fwd", F32, 8, 8, 2048, 2048, 64, pct=(80, 80), ratio=(None, 1.5)),
    Case("fwd bf16 H8 N2048 D64", "fwd", BF16, 8, 8, 2048, 2048, 64, pct=(70, 75), ratio=(None, 2.0)),
    Case("fwd fp16 H8 N2048 D64", "fwd", F16, 8, 8, 2048, 2048, 64, pct=(75, 75)),
    Case("fwd bf16 causal H8 N4096 D128", "fwd", BF16, 8, 8, 4096, 4096, 128, True, pct=(70, 75)),
    Case("fwd+bwd fp32 H8 N2048 D64", "fwd+bwd", F32, 8, 8, 2048, 2048, 64, pct=(70, 70), ratio=(None, 1.4)),
    Case("fwd+bwd bf16 H8 N2048 D64", "fwd+bwd", BF16, 8, 8, 2048, 2048, 64, pct=(60, 65)),
    Case("fwd+bwd MQA H8/1 B1 N4096 D64 (scaling)", "fwd+bwd", BF16, 8, 1, 4096, 4096, 64, scaling=1.8),
    Case("fwd causal H1 N4096 D64 (scaling)", "fwd", BF16, 1, 1, 4096, 4096, 64, True, scaling=1.9),
]
for _dt, _n in ((F32, "fp32"), (BF16, "bf16"), (F16, "fp16")):
    for _lay in ("bhsd", "bshd"):
        CASES.append(
            Case(
                f"decode {_n} H32 1x32768 D128 {_lay}",
                "decode",
                _dt,
                32,
                32,
                1,
                32768,
                128,
                layout=_lay,
                pct=(85, 85),
                ratio=(None, 1.5) if _dt == F32 else (None, None),
            )
        )
CASES += [
    Case("decode bf16 GQA 32/8 1x32768 D128 bshd", "decode", BF16, 32, 8, 1, 32768, 128, layout="bshd", pct=(85, 85)),
    Case("decode bf16 GQA 32/8 1x32768 D128 bhsd", "decode", BF16, 32, 8, 1, 32768, 128, pct=(85, 85)),
    Case("decode bf16 4 rows H32 32768 D128 bshd", "decode", BF16, 32, 32, 4, 32768, 128, layout="bshd", pct=(85, 85)),
    Case("decode bf16 16 rows H8 32768 D128 bhsd", "decode", BF16, 8, 8, 16, 32768, 128, pct=(85, 85)),
]


def peak_gflops(threads: int, isa: str) -> dict:
    src = HERE / "peak_fma.cpp"
    tag = zlib.crc32(src.read_bytes())  # a changed source gets a fresh binary
    exe = Path(tempfile.gettempdir()) / f"flashattn_lite_peak_fma_{tag:08x}"
    try:
        if not exe.exists():
            subprocess.run(
                ["g++", "-O3", "-std=c++17", "-pthread", str(src), "-o", str(exe)], check=True, capture_output=True
            )
        cmd = [str(exe), str(threads), isa]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return {}


def sdpa_layout(c: Case, fn: Callable) -> Callable:
    """fn(q, k, v, is_causal) on SDPA-layout views; bshd inputs are viewed as (b, h, s, d)."""
    if c.layout == "bhsd":
        return fn
    return lambda q, k, v, is_causal=False: fn(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=is_causal
    ).transpose(1, 2)


def torch_flash(q, k, v, is_causal=False):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[-3] != k.shape[-3])


def ours(q, k, v, is_causal=False):
    return fal.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[-3] != k.shape[-3])


def make_inputs(c: Case):
    g = torch.Generator().manual_seed(0)

    def mk(n: int, h: int) -> torch.Tensor:
        shape = (1, h, n, c.d) if c.layout == "bhsd" else (1, n, h, c.d)
        return torch.randn(shape, generator=g).to(c.dtype)

    return mk(c.n_q, c.h), mk(c.n_k, c.h_kv), mk(c.n_k, c.h_kv), mk(c.n_q, c.h)


def check(c: Case, q, k, v) -> tuple[bool, float, float]:
    """The first kv head's query heads against the fp64 reference, in SDPA layout."""
    to_sdpa = (lambda t: t) if c.layout == "bhsd" else (lambda t: t.transpose(1, 2))
    g = c.h // c.h_kv
    qs, ks, vs = to_sdpa(q)[:, :g], to_sdpa(k)[:, :1], to_sdpa(v)[:, :1]
    with torch.no_grad():
        ref = sdpa_ref(qs, ks.expand(-1, g, -1, -1), vs.expand(-1, g, -1, -1), is_causal=c.causal)
        mine = ours(qs, ks, vs, is_causal=c.causal)
        theirs = torch_flash(qs, ks, vs, is_causal=c.causal)
    err = (mine.double() - ref).abs().max().item()
    err_t = (theirs.double() - ref).abs().max().item()
    noise = (torch.finfo(c.dtype).eps + c.n_k**0.5 * torch.finfo(torch.float32).eps) * max(1.0, ref.abs().max().item())
    return err <= 2 * err_t + noise, err, err_t


def runner(fn: Callable, c: Case, q, k, v, do) -> Callable[[], object]:
    f = sdpa_layout(c, fn)
    if c.mode != "fwd+bwd":
        return lambda: f(q, k, v, is_causal=c.causal)
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

    def run() -> None:
        torch.autograd.grad(f(qg, kg, vg, is_causal=c.causal), (qg, kg, vg), do)

    return run


def time_pair(
    a: Callable, b: Callable, repeats: int, probe: Callable[[], float] | None = None
) -> tuple[list[float], list[float], list[float]]:
    """Times of a and b, alternating, and (with probe) a probe (read bandwidth or compute peak) run just
    before each a."""
    a(), b()  # warm-up
    ta, tb, tp = [], [], []
    for _ in range(repeats):
        if probe is not None:
            tp.append(probe())
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return ta, tb, tp


MEMORY_SCRIPT = r"""
import torch, flashattn_lite as fal

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

def extra_mb(n):
    h, d = 8, 64
    q, k, v = (torch.randn(1, n, h, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(1, n, h, d, dtype=torch.bfloat16)
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    o, lse, _ = fal.flash_attn_func(q, k, v, return_attn_probs=True)
    o.backward(do)
    peak = status("VmHWM:")
    needed = o.nbytes + lse.nbytes + q.grad.nbytes + k.grad.nbytes + v.grad.nbytes
    return (peak - base - needed) / 2**20

torch.set_num_threads({threads})
cold = extra_mb(128)  # the first fwd+bwd of the process (torch's lazy imports happen here)
print(cold, extra_mb({n}))
"""


def memory_check(threads: int, n: int = 65536) -> tuple[float, float] | None:
    """(first fwd+bwd of the process at N=128, fwd+bwd at N after it) in MB beyond inputs/outputs/grads."""
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT.format(threads=threads, n=n)], capture_output=True, text=True
    )
    try:
        cold, warm = (float(x) for x in r.stdout.strip().splitlines()[-1].split())
        return cold, warm
    except (IndexError, ValueError):
        return None


def on_amx(c: Case, isa: str) -> bool:
    """The case's products run on AMX tiles: the amx ISA's bf16 and fp16 forward (more than 16 query rows) and
    backward (fp16: three tile products per multiply, split_bf16.h), its fp32 forward (six: three parts)."""
    if isa != "amx" or c.n_q <= 16:
        return False
    return (
        c.mode in ("fwd", "fwd+bwd")
        and c.dtype in (torch.bfloat16, torch.float16)
        or (c.mode == "fwd" and c.dtype == torch.float32)
    )


def decode_on_amx(c: Case, isa: str) -> bool:
    """The amx ISA's bf16 decode of 4 to 16 rows per kv head (one token: the GQA heads packed as rows, plan.cpp;
    else the query rows) on tiles, over at least 768 keys x rows, where d is a multiple of 32 and K rows lie less
    than 4 KB apart (decode_amx.h: kTileMinRows, kTileMinWork, kTileMaxRowBytes): its compute peak is the AMX one."""
    g = c.h // c.h_kv
    rows = g if c.n_q == 1 and 1 < g <= 16 else c.n_q
    row_bytes = (c.h_kv if c.layout == "bshd" else 1) * c.d * 2
    return (
        isa == "amx"
        and c.mode == "decode"
        and c.dtype == torch.bfloat16
        and 4 <= rows <= 16
        and c.n_k * rows >= 768
        and c.d % 32 == 0
        and row_bytes < 4096
    )


def compute_probe(c: Case, isa: str) -> tuple[str, float]:
    """The in-process compute probe (flashattn_lite._C._cpu_peak_gflops kind) whose rate, times the
    share, is the case's compute peak: the vdpbf16ps peak for bf16 on AVX-512, the AMX one (a third
    for fp16, a sixth for fp32: split operands) where its products run on tiles, else fp32 FMA."""
    if on_amx(c, isa):
        return "amx", {torch.float16: 1 / 3, torch.float32: 1 / 6}.get(c.dtype, 1.0)
    if c.dtype == torch.bfloat16 and isa in ("avx512", "amx"):
        return "bf16", 1.0
    return "fp32", 1.0


def goal_cells(c: Case, isa_idx: int, pct: float | None, speed: float | None) -> tuple[str, str]:
    """(goal text, met?) for the ISA column isa_idx (0 = avx512, 1 = avx2)."""
    parts, met = [], True
    if c.scaling is not None:
        parts.append(f">= {c.scaling}x 1 thread")
        met = speed is not None and speed >= c.scaling
    pg, rg = c.pct[isa_idx], c.ratio[isa_idx]
    if pg is not None:
        parts.append(f">= {pg:.0f}% peak")
        met = met and pct is not None and pct >= pg
    if rg is not None:
        parts.append(f">= {rg}x torch")
        met = met and speed is not None and speed >= rg
    return ", ".join(parts) or "-", ("yes" if met else "no") if parts else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default=None, help="measure this ISA's path (see above)")
    ap.add_argument("--out", default=None, help="write the table (markdown) here")
    ap.add_argument("--memory", action="store_true", help="also measure fwd+bwd memory at N=65536")
    ap.add_argument("--only", default=None, help="substring filter on case names")
    args = ap.parse_args()
    if args.isa and any(os.environ.get(k) != v for k, v in ISA_ENV[args.isa].items()):
        # torch reads ATEN_CPU_CAPABILITY / MKL_ENABLE_INSTRUCTIONS at start-up: run again with them set
        env = {**os.environ, **ISA_ENV[args.isa]}
        return subprocess.run([sys.executable, *sys.argv], env=env).returncode
    torch.set_num_threads(args.threads)
    isa = fal.cpu_isa()
    isa_idx = 0 if isa in ("avx512", "amx") else 1
    peak = peak_gflops(args.threads, isa)
    fp32_peak = peak.get("fp32_fma_gflops")
    bf16_peak = peak.get("bf16_dot_gflops") or fp32_peak  # AVX2 has no bf16 dot product: fp32 is its peak
    amx_peak = peak.get("amx_bf16_gflops")  # the amx ISA's bf16 forward runs its products on AMX tiles
    probe_buf = torch.ones(64 * 2**20)  # 256 MB for the in-process read probe beside each decode call
    forced = f" (forced: --isa {args.isa})" if args.isa else ""
    machine = (
        f"{cpu_model()}, {os.cpu_count()} CPUs; flashattn_lite {fal.__version__} ISA {isa}{forced}, torch "
        f"{torch.__version__} capability {torch.backends.cpu.get_cpu_capability()}; threads {args.threads}; "
        f"peaks on {peak.get('isa', 'n/a')}: fp32 FMA {fp32_peak or 'n/a'} GFLOP/s, bf16 dot "
        f"{peak.get('bf16_dot_gflops') or 'none (fp32 peak used)'} GFLOP/s, "
        f"{f'AMX bf16 {amx_peak} GFLOP/s, ' if amx_peak else ''}read {peak.get('read_gbs', 'n/a')} GB/s "
        f"(bench/peak_fma.cpp); decode prefetch {fal._C._decode_prefetch()}"
    )
    lines = [
        f"Machine: {machine}",
        "",
        "| case | check | ours ms | torch ms | ours | torch | unit | ours % peak | speedup | goal | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(lines[0])
    for c in CASES:
        if args.only and args.only not in c.name:
            continue
        q, k, v, do = make_inputs(c)
        ok, err, err_t = check(c, q, k, v)
        if not ok:
            goal, _ = goal_cells(c, isa_idx, None, None)
            lines.append(f"| {c.name} | WRONG (err {err:.2e} vs torch {err_t:.2e}) | | | | | | | | {goal} | no |")
            print(lines[-1])
            continue
        mine = runner(ours, c, q, k, v, do)
        # decode: the read bandwidth probed in this process just before each of our calls (the
        # shared host's bandwidth swings 30-50 GB/s within seconds): % per round, the median;
        # fwd / fwd+bwd: the compute peak likewise (a 2-core VM's neighbours took 0.5x of its FMA
        # rate for seconds at a time on a Zen 3, 2026-12-03)
        kind, share = compute_probe(c, isa)
        if c.mode == "decode":
            probe = lambda: read_gbps(probe_buf, passes=2)  # noqa: E731
        elif c.scaling is None:
            probe = lambda kind=kind, share=share: fal._C._cpu_peak_gflops(kind, 0.03) * share  # noqa: E731
        else:
            probe = None
        tp: list[float] = []
        if c.scaling is not None:  # ours on 1 thread against ours on --threads
            torch.set_num_threads(1)
            t1, _, _ = time_pair(mine, lambda: None, args.repeats)
            torch.set_num_threads(args.threads)
            ta, _, _ = time_pair(mine, lambda: None, args.repeats)
            ma, mb = statistics.median(ta), statistics.median(t1)
            label_b = "1 thread"
        else:
            try:
                ta, tb, tp = time_pair(mine, runner(torch_flash, c, q, k, v, do), args.repeats, probe)
                ma, mb = statistics.median(ta), statistics.median(tb)
            except RuntimeError:  # torch's flash CPU kernel refuses the case
                ta, _, tp = time_pair(mine, lambda: None, args.repeats, probe)
                ma, mb = statistics.median(ta), float("nan")
            label_b = "torch"
        if c.mode == "decode":
            unit, rate, other = "GB/s", c.kv_bytes() / ma / 1e9, c.kv_bytes() / mb / 1e9
            pk = statistics.median(tp)
            # several query rows per K/V row can make the call compute-bound: the roofline time is
            # the longer of reading K and V at the round's probe and the FLOPs at the compute peak
            cpk = bf16_peak if c.dtype == torch.bfloat16 else fp32_peak
            if decode_on_amx(c, isa):
                cpk = amx_peak
            bound = "compute" if cpk and c.flops() / (cpk * 1e9) > c.kv_bytes() / (pk * 1e9) else "memory"
            unit = f"GB/s (read {pk:.1f}, {min(tp):.0f}-{max(tp):.0f}; {bound}-bound)"
        else:
            unit, rate, other = "GFLOP/s", c.flops() / ma / 1e9, c.flops() / mb / 1e9
            pk = bf16_peak if c.dtype == torch.bfloat16 else fp32_peak
            if on_amx(c, isa) and c.dtype == torch.float16:
                pk, unit = amx_peak / 3 if amx_peak else None, "GFLOP/s (AMX / 3)"
            elif on_amx(c, isa) and c.dtype == torch.float32:
                pk, unit = amx_peak / 6 if amx_peak else None, "GFLOP/s (AMX / 6)"
            elif on_amx(c, isa):
                pk, unit = amx_peak, "GFLOP/s (AMX)"
        pct = 100 * rate / pk if pk else None
        if c.mode != "decode" and tp:  # % of the compute peak probed just before it, per round
            pct = statistics.median(100 * c.flops() / t / 1e9 / p for p, t in zip(tp, ta))
            unit += f" (peak {statistics.median(tp):.0f}, {min(tp):.0f}-{max(tp):.0f})"
        if c.mode == "decode" and cpk:  # % of the roofline time (memory or compute), per round
            pct = statistics.median(
                100 * max(c.kv_bytes() / (p * 1e9), c.flops() / (cpk * 1e9)) / t for p, t in zip(tp, ta)
            )
        speed = mb / ma if mb == mb else None
        goal, met = goal_cells(c, isa_idx, pct, speed)
        if on_amx(c, isa) and c.scaling is None:  # the % goals name the vdpbf16ps peak (--isa avx512)
            goal, met = "(AMX: none; --isa avx512)", "-"
        lines.append(
            f"| {c.name} | ok | {ma * 1e3:.2f} | {mb * 1e3:.2f} ({label_b}) | {rate:.1f} | {other:.1f} | {unit} | "
            f"{f'{pct:.0f}%' if pct is not None else 'n/a'} | {f'{speed:.2f}x' if speed else 'n/a'} | {goal} | {met} |"
        )
        print(lines[-1], flush=True)
    if args.memory:
        res = memory_check(args.threads)
        if res is None:
            lines += ["", "fwd+bwd bf16 N=65536 H8 D64: memory measurement failed"]
        else:
            cold, mb = res
            lines += [
                "",
                f"fwd+bwd bf16 N=65536 H8 D64: peak RSS beyond inputs/outputs/grads = {mb:.0f} MB "
                f"(goal <= 64 MB; {'met' if mb <= 64 else 'NOT met'}), measured after one small fwd+bwd "
                f"(N=128), whose own cost was {cold:.0f} MB: the process's first tensor.backward(grad) "
                f"imports sympy via torch.autograd (once per process, torch's, not the kernels'). "
                f"What remains grows with N: the fp32 dQ accumulator, 16 MB per thread at this size.",
            ]
        print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
