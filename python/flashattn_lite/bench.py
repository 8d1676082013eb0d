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
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import available_isas, build_info, cpu_isa
from ._bench_core import (  # the building blocks (re-exported: tests and bench/cpu_bench.py use some)
    DEFAULT_PROVIDERS,
    DTYPES,
    MODES,
    PROVIDERS,
    Config,
    check,
    get_peaks,
    grid,
    make_inputs,
    make_runner,
    preset,
    roofline,
    time_ms,
)


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
                t = time_ms(
                    make_runner(fn, c, q, k, v, do), args.device, args.repeats, args.warmup, nvtx=f"{p} {c.label()}"
                )
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
        lines.append(
            f"{r.provider:15s} {r.config.label():44s} {r.ms_median:9.2f} {r.ms_min:8.2f} {r.ms_max:8.2f} "
            f"{r.gflops:9.1f} {r.gbps:7.1f} {r.pct_roofline:5.0f}% {sp}"
        )
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
            pts = sorted(
                (r.config.s_k, r.gflops)
                for r in rows
                if r.provider == prov and (r.config.mode, r.config.dtype) == (mode, dt) and r.status == "ok"
            )
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
    if fn is None:
        raise SystemExit(f"flashattn_lite.bench: provider {providers[0]} is not installed")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m flashattn_lite.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="five B1 H8 N1024 D64 cases, checked and timed (under 60 s on 2 CPU cores)"
    )
    ap.add_argument(
        "--preset", choices=["quick", "cpu-sweep", "decode", "gpu"], help="a named grid instead of the grid options"
    )
    g = ap.add_argument_group("grid (every combination is one configuration)")
    g.add_argument("--mode", type=_csv(str), default=["fwd"], help=f"comma list of {','.join(MODES)} (default fwd)")
    g.add_argument(
        "--dtypes", type=_csv(str), default=["bf16"], help="comma list of fp32,fp64,bf16,fp16 (default bf16)"
    )
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
    r.add_argument(
        "--providers",
        type=_csv(str),
        default=None,
        help=f"comma list of {','.join(PROVIDERS)} (default: cpu {DEFAULT_PROVIDERS['cpu']}, cuda all)",
    )
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


def main(argv: list[str] | None = None) -> int:
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
    machine = (
        f"flashattn_lite {info['version']}  torch {torch.__version__}  device {args.device}"
        + (
            f"  threads {torch.get_num_threads()}  isa {cpu_isa()}"
            if args.device == "cpu"
            else f"  {torch.cuda.get_device_name()}"
        )
        + f"  peaks: fp32 {peaks['fp32_gflops']:.0f} / bf16 {peaks['bf16_gflops']:.0f} GFLOP/s,"
        + (f" AMX bf16 {peaks['amx_bf16_gflops']:.0f} GFLOP/s," if "amx_bf16_gflops" in peaks else "")
        + f" read {peaks['read_gbps']:.0f} GB/s"
    )
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
