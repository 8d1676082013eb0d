#!/usr/bin/env python3
"""Instructions issued per tensor-core MMA in each CUDA kernel's main loop, from the SASS of the
objects tools/check_cuda_compile.sh leaves in build/cuda_check (no GPU needed).

    python tools/sass_stats.py [build/cuda_check] [--arch sm_90a] [--ptxas build/ptxas.log] [--check]

For every kernel with HMMA instructions: its loops are the backward branches of the SASS (a BRA to
a lower address: the loop body is [target, branch]); the main loop is the one holding the most
HMMAs (an outer loop holds its inner loops), except for the kernels in INNER_MAIN_LOOP, which run
their boundary tiles in a second copy of the step: those are measured on their innermost HMMA loop. Reported per kernel: the main loop's instructions,
its HMMAs and instructions per HMMA (every SASS instruction counts, NOPs excluded), with the
registers and spill bytes from the ptxas report. At H100/H200 rates a scheduler issues an HMMA
every ~4 cycles, so above ~4 instructions per HMMA the issue slots, not the tensor cores, set the
pace (issue 14's targets: forward <= 4.5, backward <= 4, zero spills). --check exits 1 when a
tensor-core kernel spills (the instruction targets are reported, not enforced, until the kernels
that meet them land). cuobjdump and nvdisasm come with the CUDA toolkit or as the PyPI wheels
nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm (their bin/ must be on PATH).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
BRA = re.compile(r"\bBRA\s+(?:`?\(?\.?L?_?x?_?\w*\)?`?\s*)?(0x[0-9a-f]+)")


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def functions(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    """Function name -> [(address, opcode, operands)] of its SASS."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    cur: list[tuple[int, str, str]] | None = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = INSTR.search(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


# Kernels whose outer loop holds two copies of the step (the boundary tiles' masked copy and the
# tight loop over the other tiles): measured on their innermost HMMA loop instead of the outer one.
INNER_MAIN_LOOP = ("attn_fwd_tc2_kernel", "attn_bwd_tc2_kernel")


def main_loop(ins: list[tuple[int, str, str]], innermost: bool = False) -> tuple[int, int] | None:
    """(instructions, HMMAs) of the loop holding the most HMMAs (an outer loop holds its inner
    loops), or None without a loop. innermost: only loops with no other HMMA loop inside count."""
    loops = []  # (first index, last index, instructions, HMMAs)
    addr_index = {a: i for i, (a, _, _) in enumerate(ins)}
    for i, (_, op, rest) in enumerate(ins):
        if not op.startswith("BRA"):
            continue
        m = re.search(r"0x([0-9a-f]+)", rest)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= ins[i][0] or target not in addr_index:
            continue
        body = ins[addr_index[target] : i + 1]
        n = sum(1 for _, o, _ in body if not o.startswith("NOP"))
        h = sum(1 for _, o, _ in body if o.startswith("HMMA"))
        if h:
            loops.append((addr_index[target], i, n, h))
    if innermost:
        loops = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    best = None
    for _, _, n, h in loops:
        if best is None or h > best[1] or (h == best[1] and n < best[0]):
            best = (n, h)
    return best


def ptxas_usage(path: Path | None) -> dict[tuple[str, str], tuple[int, int]]:
    """(mangled kernel, arch) -> (registers, spill bytes) from the ptxas report."""
    usage: dict[tuple[str, str], tuple[int, int]] = {}
    if not path or not path.exists():
        return usage
    cur = None
    spill = 0
    for line in path.read_text().splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            cur, spill = (m.group(1), m.group(2)), 0
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            spill = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            usage[cur] = (int(m.group(1)), spill)
            cur = None
    return usage


def find_tools() -> bool:
    """cuobjdump and nvdisasm on PATH, else from the nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm
    wheels of this Python (added to PATH)."""
    if shutil.which("cuobjdump") and shutil.which("nvdisasm"):
        return True
    import os
    import site

    for sp in [*site.getsitepackages(), site.getusersitepackages()]:
        for bindir in sorted(Path(sp).glob("nvidia/cu*/bin")):
            if (bindir / "cuobjdump").exists() and (bindir / "nvdisasm").exists():
                os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("objects", nargs="?", default="build/cuda_check")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--ptxas", default="build/ptxas.log")
    ap.add_argument("--check", action="store_true", help="exit 1 when a tensor-core kernel spills")
    args = ap.parse_args(argv)
    if not find_tools():
        print(
            "sass_stats: cuobjdump / nvdisasm not on PATH (CUDA toolkit or the nvidia-cuda-cuobjdump and "
            "nvidia-cuda-nvdisasm wheels); skipping"
        )
        return 0
    objs = sorted(Path(args.objects).glob("*.o"))
    if not objs:
        print(f"sass_stats: no objects in {args.objects} (run tools/check_cuda_compile.sh first)")
        return 1
    usage = ptxas_usage(Path(args.ptxas))
    rows = []
    for o in objs:
        sass = subprocess.run(["cuobjdump", "-sass", "-arch", args.arch, str(o)], capture_output=True, text=True).stdout
        for name, ins in functions(sass).items():
            hmma = sum(1 for _, op, _ in ins if op.startswith("HMMA"))
            if not hmma:
                continue
            loop = main_loop(ins, innermost=any(k in name for k in INNER_MAIN_LOOP))
            regs, spill = usage.get((name, args.arch), (-1, -1))
            rows.append((name, len(ins), hmma, loop, regs, spill))
    names = demangle([r[0] for r in rows])
    print(
        f"| kernel ({args.arch}) | registers | spill bytes | SASS instructions | HMMA | main loop: instructions "
        "/ HMMA | per HMMA |"
    )
    print("|---|---|---|---|---|---|---|")
    seen, spills = set(), []
    for (_mangled, total, hmma, loop, regs, spill), name in sorted(zip(rows, names), key=lambda x: x[1]):
        if name in seen:
            continue
        seen.add(name)
        short = name.replace("fal::cuda::", "").replace("(fal::FwdParams)", "").replace("(fal::BwdParams)", "")
        per = f"{loop[0] / loop[1]:.2f}" if loop else "n/a"
        body = f"{loop[0]} / {loop[1]}" if loop else "no loop"
        print(f"| `{short}` | {regs} | {spill} | {total} | {hmma} | {body} | {per} |")
        if spill > 0:
            spills.append(short)
    if args.check and spills:
        print(f"sass_stats: tensor-core kernels spill: {spills}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
