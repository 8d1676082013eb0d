#!/usr/bin/env python3
"""The GPU-verification gate, checkable without a GPU: every CUDA kernel that a GPU run verified is
recorded with a hash of its SASS (bench/results/verified-sass.txt); CI fails when a source change
alters one of them, because an edited verified kernel is an unverified kernel (it must ship as a
variant behind an opt-in, or be verified again on a GPU).

    python tools/verified_sass.py [build/cuda_check] [--file bench/results/verified-sass.txt]
        check: every recorded kernel still compiles to the same SASS; lists kernels not yet verified
    python tools/verified_sass.py --write "2026-11-30 H200, bench/results/gpu-2026-11-30-h200.md" \
        [--unverified SUBSTRING ...]
        (a GPU session, after bench/gpu_check.sh passed) record every kernel of these objects except
        those matching --unverified

The hash covers the instruction text of one arch (sm_90a, the GPU machines') from the objects that
tools/check_cuda_compile.sh builds, so it is the same in CI as in the session that recorded it
(same nvcc; a new nvcc means new hashes, recorded by a GPU session).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_stats import find_tools, functions  # noqa: E402


def kernel_hashes(objects: Path, arch: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for o in sorted(objects.glob("*.o")):
        sass = subprocess.run(["cuobjdump", "-sass", "-arch", arch, str(o)], capture_output=True, text=True).stdout
        for name, ins in functions(sass).items():
            text = "\n".join(f"{a:x} {op}{rest}" for a, op, rest in ins)
            out[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("objects", nargs="?", default="build/cuda_check")
    ap.add_argument("--file", default="bench/results/verified-sass.txt")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--write", metavar="WHERE", help="record the kernels, noting the run that verified them")
    ap.add_argument("--unverified", action="append", default=[], help="substring of kernels not to record")
    args = ap.parse_args(argv)
    if not find_tools():
        print("verified_sass: cuobjdump / nvdisasm not found; skipping")
        return 0
    objs = Path(args.objects)
    if not any(objs.glob("*.o")):
        print(f"verified_sass: no objects in {objs} (run tools/check_cuda_compile.sh first)")
        return 1
    now = kernel_hashes(objs, args.arch)
    path = Path(args.file)
    if args.write:
        keep = {n: h for n, h in now.items() if not any(u in n for u in args.unverified)}
        lines = [
            f"# SASS hashes ({args.arch}) of the CUDA kernels verified on a GPU: {args.write}",
            "# Written by tools/verified_sass.py --write; checked by CI (tools/verified_sass.py).",
        ]
        lines += [f"{n} {h}" for n, h in sorted(keep.items())]
        path.write_text("\n".join(lines) + "\n")
        print(f"verified_sass: recorded {len(keep)} kernels in {path} ({len(now) - len(keep)} left unverified)")
        return 0
    recorded = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, h = line.split()
            recorded[name] = h
    # a kernel is its code: a recorded hash found under another name is a rename (a new template
    # parameter whose default instantiation compiles to the same SASS), not a change
    current = set(now.values())
    changed = [n for n, h in recorded.items() if h not in current]
    renamed = [n for n, h in recorded.items() if h in current and now.get(n) != h]
    known = set(recorded.values())
    new = sorted(n for n, h in now.items() if h not in known)
    print(
        f"verified_sass: {len(recorded) - len(changed)} of {len(recorded)} verified kernels unchanged"
        + (f" ({len(renamed)} under a new name)" if renamed else "")
    )
    if new:
        print(f"verified_sass: not yet verified on a GPU (opt-in paths only): {len(new)}")
        for n in new:
            print(f"  {n}")
    if changed:
        print(
            "verified_sass: these GPU-verified kernels changed (or vanished) -- ship the change as a variant "
            "behind an opt-in, or verify it on a GPU and rewrite the file with --write:",
            file=sys.stderr,
        )
        for n in changed:
            print(f"  {n}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
