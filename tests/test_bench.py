"""The profiling CLI: checks before timing, outputs, profiler trace, argument errors."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flashattn_lite
from flashattn_lite import bench
from flashattn_lite._bench_core import read_gbps


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--mode", "--providers", "--out", "--profile", "--quick", "decode", "sdpa-cudnn"):
        assert word in out


@pytest.mark.slow
def test_grid_outputs(tmp_path, capsys):
    out = tmp_path / "res"
    rc = bench.main(
        [
            "--mode",
            "fwd,bwd,fwd+bwd,decode",
            "--dtypes",
            "fp32,bf16",
            "--seqlens",
            "64,128",
            "--head-dims",
            "16",
            "--heads",
            "4",
            "--heads-kv",
            "2",
            "--causal",
            "both",
            "--providers",
            "flashattn_lite,sdpa-math",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 * 2 * 2 * 2 * 2  # modes x dtypes x seqlens x causal x providers
    ours = [r for r in rows if r["provider"] == "flashattn_lite"]
    assert all(r["status"] == "ok" for r in ours)
    for r in ours:
        assert r["ms_min"] <= r["ms_median"] <= r["ms_max"]
        assert r["gflops"] > 0 and r["pct_roofline"] > 0 and r["speedup"] > 0
    decode = [r for r in ours if r["mode"] == "decode"]
    assert decode and all(r["s_q"] == 1 for r in decode)
    assert {
        "provider",
        "mode",
        "dtype",
        "s_q",
        "s_k",
        "d",
        "ms_median",
        "gflops",
        "gbps",
        "pct_roofline",
        "speedup",
        "threads_or_isa",
        "device",
    } <= set(rows[0])
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "throughput.png").stat().st_size > 1000
    assert "speedup" in capsys.readouterr().out


def test_wrong_provider_is_reported_not_timed(monkeypatch, capsys):
    def wrong(q, k, v, is_causal=False):
        return v[:, :, : q.shape[2]] * 1.5

    monkeypatch.setitem(bench.PROVIDERS, "sdpa-math", lambda: wrong)
    bench.main(
        [
            "--seqlens",
            "64",
            "--head-dims",
            "16",
            "--dtypes",
            "fp32",
            "--providers",
            "flashattn_lite,sdpa-math",
            "--repeats",
            "2",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("sdpa-math"))
    assert "WRONG" in line


def test_profile_trace_names_the_op(tmp_path):
    trace = tmp_path / "trace.json"
    bench.main(
        [
            "--seqlens",
            "64",
            "--head-dims",
            "16",
            "--dtypes",
            "fp32",
            "--providers",
            "flashattn_lite",
            "--repeats",
            "1",
            "--no-progress",
            "--profile",
            str(trace),
        ]
    )
    assert "flashattn_lite::fwd" in trace.read_text()


def test_peaks_are_cached(tmp_path):
    a = bench.get_peaks("cpu")
    b = bench.get_peaks("cpu")
    assert a == b and a["fp32_gflops"] > 0 and a["read_gbps"] > 0


def test_read_probe(isa):
    # the in-process read-bandwidth probe (the profiler's peak; beside each decode call in
    # bench/cpu_bench.py) runs the active ISA's loop: a rate on every ISA; a wrong buffer is refused
    x = torch.ones(4 * 2**20 + 5)
    assert read_gbps(x, passes=1) > 0
    with pytest.raises(ValueError, match="contiguous float32 CPU tensor"):
        read_gbps(x.double())
    with pytest.raises(ValueError, match="contiguous float32 CPU tensor"):
        read_gbps(x[::2])


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--mode", "sideways"], "unknown mode"),
        (["--dtypes", "int8"], "unknown dtype"),
        (["--providers", "xformers"], "unknown provider"),
        (["--seqlens-q", "1,2", "--seqlens-k", "3"], "same number"),
    ],
)
def test_bad_arguments(argv, msg, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert msg in capsys.readouterr().err


def test_flops_formula():
    c = bench.Config("fwd", "bf16", 2, 3, 3, 10, 20, 8, False)
    assert c.flops == 4 * 2 * 3 * 10 * 20 * 8
    assert bench.Config("fwd+bwd", "bf16", 1, 1, 1, 16, 16, 8, True).flops == 4 * 16 * 16 * 8 / 2 * 3.5
    assert bench.Config("bwd", "fp32", 1, 1, 1, 16, 16, 8, False).flops == 4 * 16 * 16 * 8 * 2.5


def test_roofline_peak_follows_the_units_that_run_the_call():
    # The amx ISA runs the bf16 and fp16 forward and backward and the fp32 forward (more than 16 query rows) and the
    # bf16 decode of 4+ rows per kv head on AMX tiles, everything else on vectors: the roofline's compute peak is the AMX one only there
    # (_bench_core.roofline).
    from flashattn_lite._bench_core import roofline

    peaks = {"fp32_gflops": 100.0, "bf16_gflops": 200.0, "amx_bf16_gflops": 4000.0, "read_gbps": 1e9}
    fwd = bench.Config("fwd", "bf16", 1, 8, 8, 1024, 1024, 64, False)
    ms = fwd.flops / 1e9  # 1000 GFLOP/s
    assert roofline(fwd, ms, peaks)[2] == pytest.approx(25.0)
    both = bench.Config("fwd+bwd", "bf16", 1, 8, 8, 1024, 1024, 64, False)
    assert roofline(both, both.flops / 0.2e9, peaks)[2] == pytest.approx(5.0)  # 200 of the tiles' 4000
    fp32 = bench.Config("fwd+bwd", "fp32", 1, 8, 8, 1024, 1024, 64, False)
    assert roofline(fp32, fp32.flops / 0.05e9, peaks)[2] == pytest.approx(50.0)  # vectors: the fp32 peak
    decode = bench.Config("decode", "bf16", 1, 8, 8, 1, 1024, 64, False)
    assert roofline(decode, decode.flops / 0.1e9, peaks)[2] == pytest.approx(50.0)
    assert roofline(fwd, ms, {k: v for k, v in peaks.items() if k != "amx_bf16_gflops"})[2] == pytest.approx(500.0)
    # ... and the bf16 decode of 4 to 16 rows per kv head (one token: GQA heads packed as rows; else the query rows)
    gqa = bench.Config("decode", "bf16", 1, 32, 8, 1, 1024, 128, False)
    assert roofline(gqa, gqa.flops / 0.1e9, peaks)[2] == pytest.approx(2.5)
    two = bench.Config("decode", "bf16", 1, 32, 8, 2, 1024, 128, False)  # 2 query rows, not packed: vectors
    assert roofline(two, two.flops / 0.1e9, peaks)[2] == pytest.approx(50.0)
    # ... and its fp16 forward and backward, three tile products per multiply (a third of the AMX peak); the fp16
    # decode: vectors
    f16 = bench.Config("fwd", "fp16", 1, 8, 8, 1024, 1024, 64, False)
    assert roofline(f16, f16.flops / 0.4e9, peaks)[2] == pytest.approx(30.0)  # 400 of 4000 / 3
    f16b = bench.Config("fwd+bwd", "fp16", 1, 8, 8, 1024, 1024, 64, False)
    assert roofline(f16b, f16b.flops / 0.4e9, peaks)[2] == pytest.approx(30.0)
    f16d = bench.Config("decode", "fp16", 1, 32, 8, 1, 1024, 128, False)
    assert roofline(f16d, f16d.flops / 0.05e9, peaks)[2] == pytest.approx(50.0)
    # fp32 as fp16 where torch's float32 matmul precision allows two bf16 parts ("high"); at "highest" its forward
    # on three parts, six tile products per multiply (a sixth), its fwd+bwd the fp32 peak (above)
    f32 = bench.Config("fwd", "fp32", 1, 8, 8, 1024, 1024, 64, False)
    assert roofline(f32, f32.flops / 0.2e9, peaks)[2] == pytest.approx(30.0)  # 200 of 4000 / 6
    assert roofline(f32, f32.flops / 0.05e9, {k: v for k, v in peaks.items() if k != "amx_bf16_gflops"})[
        2
    ] == pytest.approx(50.0)  # without AMX: the fp32 peak
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert roofline(f32, f32.flops / 0.4e9, peaks)[2] == pytest.approx(30.0)
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif("amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16")
def test_amx_peak_probe():
    # _cpu_peak_gflops("amx"): the tile unit's bf16 rate, above the vector dot product's; only with the amx ISA active.
    before = flashattn_lite.cpu_isa()
    try:
        flashattn_lite._C._set_cpu_isa("amx")
        assert flashattn_lite._C._cpu_peak_gflops("amx", 0.05) > flashattn_lite._C._cpu_peak_gflops("bf16", 0.05)
        flashattn_lite._C._set_cpu_isa("avx512")
        with pytest.raises(ValueError, match="needs the amx ISA"):
            flashattn_lite._C._cpu_peak_gflops("amx", 0.05)
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    with pytest.raises(ValueError, match="kind must be"):
        flashattn_lite._C._cpu_peak_gflops("fp64", 0.05)


REPO = Path(__file__).resolve().parent.parent


def test_ggml_bench_needs_a_user_build():
    # the project never builds ggml: without GGML_DIR the comparison says what to do and stops
    env = {k: v for k, v in os.environ.items() if k != "GGML_DIR"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "ggml_bench.py")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "set GGML_DIR" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif("avx2" not in flashattn_lite.available_isas(), reason="needs an AVX2 CPU")
def test_cpu_bench_isa_avx2(tmp_path):
    # --isa avx2 re-runs the benchmark with ours and torch limited to AVX2, against the AVX2 peak
    out = tmp_path / "t.md"
    cmd = [sys.executable, str(REPO / "bench" / "cpu_bench.py"), "--isa", "avx2", "--repeats", "1"]
    r = subprocess.run([*cmd, "--only", "causal H1", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "ISA avx2 (forced: --isa avx2)" in text and "capability AVX2" in text
    assert "peaks on avx2: fp32 FMA" in text
    assert "| fwd causal H1 N4096 D64 (scaling) | ok |" in text


@pytest.mark.slow
def test_cpu_bench_probes_the_compute_peak_each_round(tmp_path):
    # a compute row's % is against the compute peak probed just before each of our calls (a shared
    # host's neighbours take cores' time for seconds): the unit column shows the probes' median and
    # range, and the % agrees with them
    out = tmp_path / "t.md"
    cmd = [sys.executable, str(REPO / "bench" / "cpu_bench.py"), "--repeats", "2", "--threads", "1"]
    r = subprocess.run([*cmd, "--only", "fwd fp32", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| fwd fp32")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "ok"
    m = re.fullmatch(r"GFLOP/s( \(AMX / 6\))? \(peak (\d+), (\d+)-(\d+)\)", cells[6])
    assert m, cells[6]
    med, lo, hi = (float(x) for x in m.groups()[1:])
    assert 0 < lo <= med <= hi
    pct = float(cells[7].rstrip("%"))
    rate = float(cells[4])  # GFLOP/s at the median time; the % is the median of per-round ratios
    assert 0 < pct <= 100 * rate / lo * 1.5 and pct >= 100 * rate / hi / 1.5


def test_decode_step_bench_checks_then_times(tmp_path):
    # every step is checked against fp64 (ours within 2x the torch step's error) before it is timed
    out = tmp_path / "steps.md"
    cmd = [sys.executable, str(REPO / "bench" / "decode_step_bench.py"), "--repeats", "2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith("Machine: ") and "WRONG" not in text
    rows = [line for line in text.splitlines() if line.startswith("| B")]
    assert len(rows) >= 5 and all(line.rstrip().endswith("x |") for line in rows)
