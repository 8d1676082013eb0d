#!/usr/bin/env python3
"""Turns the ptxas report of tools/check_cuda_compile.sh into a markdown table
(kernel, arch, registers, spill bytes, stack). Usage: python tools/ptxas_summary.py build/ptxas.log"""

from __future__ import annotations

import re
import subprocess
import sys


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def main(path: str) -> None:
    rows = []
    cur = None
    for line in open(path):
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            cur = {"name": m.group(1), "arch": m.group(2)}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            rows.append(cur)
            cur = None
    names = demangle([r["name"] for r in rows])
    print("| kernel | arch | registers | spill stores / loads (bytes) | stack (bytes) |")
    print("|---|---|---|---|---|")
    seen = set()
    for r, n in sorted(zip(rows, names), key=lambda x: (x[1], x[0]["arch"])):
        if (n, r["arch"]) in seen:  # the same kernel instantiated in several translation units
            continue
        seen.add((n, r["arch"]))
        n = n.replace("fal::cuda::", "").replace("(fal::FwdParams)", "").replace("(fal::BwdParams)", "")
        print(
            f"| `{n}` | {r['arch']} | {r['regs']} | {r.get('spill_st', 0)} / {r.get('spill_ld', 0)} | {r.get('stack', 0)} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/ptxas.log")
