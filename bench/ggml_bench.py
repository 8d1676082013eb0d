"""flashattn_lite against llama.cpp's CPU attention (ggml's ``ggml_flash_attn_ext``), same shapes,
threads and data, both checked against the fp64 reference first.

    GGML_DIR=/path/to/your/ggml python bench/ggml_bench.py [--threads 2] [--repeats 7] [--rounds 3] [--out FILE.md]

GGML_DIR is a ggml source tree you built yourself (include/ and build/src/libggml*.so, e.g.
``cmake -B build -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON && cmake --build build``); the project
never vendors, downloads or builds ggml. To compare the AVX2 paths on an AVX-512 machine, point
GGML_DIR at a second tree built with ``-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
-DGGML_F16C=ON -DGGML_AVX512=OFF`` and run with ``FLASHATTN_LITE_CPU_ISA=avx2``; the header line names
the build's ISA switches (from its CMakeCache). This script compiles bench/ggml_attn.cpp against it
(g++) and runs it as a subprocess. Q is fp32 (as llama.cpp's), K/V fp16 (llama.cpp's cache type) or fp32;
flashattn_lite gets the same values: Q rounded to K/V's dtype (its q, k and v share a dtype).
Layouts: "hm" head-major K/V (B, H, S, D), "tm" token-major (B, S, H, D) -- llama.cpp's cache and
flash-attn's layout. Errors are max |out - ref| against the fp64 reference of the same inputs.
Timing: --rounds rounds per case, each ggml's process (the median of its --repeats calls) then ours
(likewise); the speedup is the median of the rounds' ratios, printed with their range (a shared
host's speed swings within seconds: unalternated, a Zen 3's f32 decode ratio read 0.77x and 1.70x).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import flashattn_lite as fal
from flashattn_lite._bench_core import cpu_model
from flashattn_lite.reference import attention_ref

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    name: str
    s_q: int
    s_k: int
    h: int
    h_kv: int
    d: int
    kv: str  # f16 | f32
    layout: str  # hm | tm
    causal: bool
    goal: float

    def dtype(self) -> torch.dtype:
        return torch.float16 if self.kv == "f16" else torch.float32

    def flops(self) -> float:
        return 4.0 * self.h * self.s_q * self.s_k * self.d * (0.5 if self.causal and self.s_q == self.s_k else 1.0)

    def kv_bytes(self) -> float:
        return 2.0 * self.h_kv * self.s_k * self.d * (2 if self.kv == "f16" else 4)


CASES = [
    Case(f"prefill H8 N2048 D64 {kv} {lay}", 2048, 2048, 8, 8, 64, kv, lay, False, 1.5)
    for kv in ("f16", "f32")
    for lay in ("tm", "hm")
] + [Case(f"prefill causal H8 N2048 D128 {kv} tm", 2048, 2048, 8, 8, 128, kv, "tm", True, 1.5) for kv in ("f16", "f32")]
CASES += [
    Case(f"decode H32 1x32768 D128 {kv} {lay}", 1, 32768, 32, 32, 128, kv, lay, False, 1.0)
    for kv in ("f16", "f32")
    for lay in ("tm", "hm")
]


def build_harness(ggml_dir: Path) -> Path:
    src = HERE / "ggml_attn.cpp"
    lib = ggml_dir / "build" / "src"
    tag = hashlib.sha1(src.read_bytes() + str(ggml_dir.resolve()).encode()).hexdigest()[:12]
    exe = Path(tempfile.gettempdir()) / f"flashattn_lite_ggml_attn_{tag}"
    if not exe.exists():
        cmd = ["g++", "-O2", "-std=c++17", str(src), f"-I{ggml_dir / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}"]
        subprocess.run([*cmd, "-lggml", "-lggml-base", "-lggml-cpu", "-o", str(exe)], check=True)
    return exe


def ggml_commit(ggml_dir: Path) -> str:
    r = subprocess.run(["git", "-C", str(ggml_dir), "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown commit"


def ggml_build_flags(ggml_dir: Path) -> str:
    """The ISA switches of the ggml build (its CMakeCache): GGML_NATIVE=ON, or the AVX2 / AVX-512 set it was
    given -- an AVX2 build is the fair partner of our ``FLASHATTN_LITE_CPU_ISA=avx2`` on an AVX-512 machine."""
    cache = ggml_dir / "build" / "CMakeCache.txt"
    if not cache.exists():
        return "build flags unknown"
    on = []
    for line in cache.read_text().splitlines():
        key, _, value = line.partition("=")
        name = key.split(":")[0]
        if name in ("GGML_NATIVE", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_AVX512", "GGML_AVX512_BF16"):
            if value.upper() in ("ON", "TRUE", "1"):
                on.append(name.removeprefix("GGML_"))
    return "build " + ("+".join(on) if on else "without ISA switches")


def run_case(c: Case, exe: Path, threads: int, repeats: int, rounds: int) -> str:
    g = torch.Generator().manual_seed(0)
    q32 = torch.randn(1, c.s_q, c.h, c.d, generator=g)  # (b, s, h, d) values shared by both
    k = torch.randn(1, c.s_k, c.h_kv, c.d, generator=g).to(c.dtype())
    v = torch.randn(1, c.s_k, c.h_kv, c.d, generator=g).to(c.dtype())
    ref, _ = attention_ref(q32.double(), k.double(), v.double(), causal=c.causal)  # (b, s_q, h, d)
    # ours: the same values, Q rounded to K/V's dtype; the layout ggml reads
    qo = q32.to(c.dtype())
    if c.layout == "tm":
        run = lambda: fal.flash_attn_func(qo, k, v, causal=c.causal)  # noqa: E731
        out_o = run()[0]
    else:
        qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (qo, k, v))
        run = lambda: fal.scaled_dot_product_attention(  # noqa: E731
            qh, kh, vh, is_causal=c.causal and c.s_q == c.s_k, enable_gqa=c.h != c.h_kv
        )
        out_o = run()[0].transpose(0, 1)
    err_o = (out_o.double() - ref[0]).abs().max().item()
    # rounds alternate ggml's process (the median of its `repeats` calls) and ours (likewise): a
    # shared host's speed swings within seconds, so each round's ratio compares like with like
    t_g, t_o = [], []
    with tempfile.TemporaryDirectory() as tmp:
        q32[0].transpose(0, 1).contiguous().numpy().tofile(f"{tmp}/q.bin")  # [h][s_q][d]
        for name, t in (("k", k), ("v", v)):
            t0 = t[0] if c.layout == "tm" else t[0].transpose(0, 1)  # tm: [s_k][h][d], hm: [h][s_k][d]
            t0.contiguous().view(torch.int16 if c.kv == "f16" else torch.float32).numpy().tofile(f"{tmp}/{name}.bin")
        args = [str(exe), tmp, str(threads), str(repeats), *map(str, (c.s_q, c.s_k, c.h, c.h_kv, c.d))]
        for i in range(rounds):
            r = subprocess.run([*args, c.kv, c.layout, str(int(c.causal))], capture_output=True, text=True, check=True)
            t_g.append(float(r.stdout.strip().splitlines()[-1]))
            if i == 0:
                out_g = torch.from_numpy(__import__("numpy").fromfile(f"{tmp}/out.bin", dtype="float32"))
                err_g = (out_g.view(c.s_q, c.h, c.d).double() - ref[0]).abs().max().item()
            run()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
            t_o.append(statistics.median(ts))
    ratios = [a / b for a, b in zip(t_g, t_o)]
    ratio, t_ggml, t_ours = statistics.median(ratios), statistics.median(t_g), statistics.median(t_o)
    if c.s_q == 1:
        rate = f"{c.kv_bytes() / t_ours / 1e9:.1f} / {c.kv_bytes() / t_ggml / 1e9:.1f} GB/s"
    else:
        rate = f"{c.flops() / t_ours / 1e9:.0f} / {c.flops() / t_ggml / 1e9:.0f} GFLOP/s"
    met = "yes" if ratio >= c.goal else "no"
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if rounds > 1 else ""
    return (
        f"| {c.name} | {err_o:.1e} | {err_g:.1e} | {t_ours * 1e3:.2f} | {t_ggml * 1e3:.2f} | {rate} | "
        f"{ratio:.2f}x{spread} | >= {c.goal}x | {met} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", default=None, help="substring filter on case names")
    ap.add_argument("--rounds", type=int, default=3, help="ggml / ours alternations per case (median ratio)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if "GGML_DIR" not in os.environ:
        print("ggml_bench: set GGML_DIR to a ggml tree you built (see the docstring)", file=sys.stderr)
        return 2
    ggml_dir = Path(os.environ["GGML_DIR"])
    exe = build_harness(ggml_dir)
    torch.set_num_threads(args.threads)
    lines = [
        f"flashattn_lite {fal.__version__} ISA {fal.cpu_isa()} vs ggml {ggml_commit(ggml_dir)} "
        f"({ggml_build_flags(ggml_dir)}; ggml_flash_attn_ext, "
        f"CPU backend), {args.threads} threads, median of {args.repeats} per round, {args.rounds} rounds alternating "
        f"(speedup: the median of the rounds' ratios, their range); CPU: {cpu_model()}",
        "",
        "| case | ours err | ggml err | ours ms | ggml ms | ours / ggml | speedup | goal | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print(lines[0])
    for c in CASES:
        if args.only and args.only not in c.name:
            continue
        lines.append(run_case(c, exe, args.threads, args.repeats, args.rounds))
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
