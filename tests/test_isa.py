"""CPU ISA selection: detection, the FLASHATTN_LITE_CPU_ISA override and its errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import flashattn_lite
from flashattn_lite.reference import attention_ref

from conftest import assert_rule, randn


def _run(code: str, isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLASHATTN_LITE_CPU_ISA=isa)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_available_and_active():
    avail = flashattn_lite.available_isas()
    assert avail[0] == "scalar"
    assert set(avail) <= {"scalar", "avx2", "avx512", "amx"}
    assert "amx" not in avail or "avx512" in avail  # the amx ISA is the avx512 kernels plus AMX tiles
    assert flashattn_lite.cpu_isa() in avail
    assert set(avail) <= set(flashattn_lite.build_info()["cpu_isas"])


@pytest.mark.slow
@pytest.mark.parametrize("isa", flashattn_lite.available_isas())
def test_env_override(isa):
    code = (
        "import torch, flashattn_lite as f; print(f.cpu_isa());"
        "q = torch.randn(1, 70, 2, 40); o = f.flash_attn_func(q, q, q, causal=True); print(float(o.abs().sum()) > 0)"
    )
    r = _run(code, isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [isa, "True"]


@pytest.mark.slow
def test_env_override_unknown_is_a_clear_error():
    code = (
        "import torch, flashattn_lite as f; print(f.cpu_isa());"
        "q = torch.randn(1, 8, 2, 16)\ntry:\n f.flash_attn_func(q, q, q)\nexcept ValueError as e:\n print('ERR', e)"
    )
    r = _run(code, "sse9")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("invalid")
    assert "FLASHATTN_LITE_CPU_ISA" in r.stdout and "available: scalar" in r.stdout


def test_set_unknown_isa_raises():
    with pytest.raises(ValueError, match=r"unknown or unavailable CPU ISA 'mmx'"):
        flashattn_lite._C._set_cpu_isa("mmx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_isas_agree(dtype):
    q, k, v = randn((2, 150, 4, 72), dtype), randn((2, 170, 2, 72), dtype), randn((2, 170, 2, 72), dtype)
    ref, _ = attention_ref(q, k, v, causal=True)
    same, _ = attention_ref(q, k, v, causal=True, upcast=False)
    before = flashattn_lite.cpu_isa()
    try:
        for isa in flashattn_lite.available_isas():
            flashattn_lite._C._set_cpu_isa(isa)
            assert_rule(flashattn_lite.flash_attn_func(q, k, v, causal=True), ref, same, what=isa)
    finally:
        flashattn_lite._C._set_cpu_isa(before)


@pytest.mark.skipif("amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16 (and Linux 5.16+)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [40, 64, 72, 128, 256])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (100, 30))])
def test_amx_forward_matches_reference(d, causal, window, dtype):
    # The amx ISA runs the bf16 and fp16 forward on AMX tiles (README, CPU kernels): 16-row groups, 512-row work
    # items, K / V tiles of 64 keys; fp16 as hi + lo bf16 parts, three tile products per product. Awkward sizes
    # cross each: 530 query rows (a second, partial work item and a partial group), 601 keys (a partial key tile),
    # head dims that are no multiple of the tiles' 32, GQA 4:2.
    # flash_attn_func: "window_size: (left, right). If not (-1, -1), implements sliding window local attention."
    q, k, v = (
        randn((2, 530, 4, d), dtype),
        randn((2, 601, 2, d), dtype),
        randn((2, 601, 2, d), dtype),
    )
    ref, ref_lse = attention_ref(q, k, v, causal=causal, window_size=window)
    same, _ = attention_ref(q, k, v, causal=causal, window_size=window, upcast=False)
    before = flashattn_lite.cpu_isa()
    try:
        flashattn_lite._C._set_cpu_isa("amx")
        out, lse, _ = flashattn_lite.flash_attn_func(q, k, v, causal=causal, window_size=window, return_attn_probs=True)
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    assert_rule(out, ref, same, what=f"amx d={d}")
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-3, rtol=0)  # fp32 sums of exact products
    if dtype == torch.float16:  # hi + lo parts: scores near fp32 products of the fp16 values (bf16 operands: ~1e-2)
        torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-4, rtol=0)


@pytest.mark.skipif("amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16 (and Linux 5.16+)")
def test_amx_fp16_forward_keeps_fp16_precision():
    # fp16 has an 11-bit significand and bf16 8: the amx ISA's fp16 forward must not round its operands to bf16
    # (split_bf16.h: each value is hi + lo, exactly). Values that bf16 cannot hold -- 1 + 2^-10 and friends -- give
    # scores and outputs that a bf16 rounding would move by ~2^-9; the result must match the fp64 reference as the
    # avx512 ISA's fp32 arithmetic does, and infinite values must stay infinite (lo = 0, not inf - inf).
    g = torch.Generator().manual_seed(7)
    base = 1 + torch.randint(1, 8, (1, 200, 2, 64), generator=g).double() * 2**-10  # no bf16 value among them
    q = (base * torch.randn(1, 200, 2, 64, generator=g).sign().double()).half()
    k, v = q.flip(1) * 0.25, (base * 3).half()
    ref, _ = attention_ref(q, k, v)
    before = flashattn_lite.cpu_isa()
    try:
        outs = {}
        for isa in ("avx512", "amx"):
            flashattn_lite._C._set_cpu_isa(isa)
            outs[isa] = flashattn_lite.flash_attn_func(q, k, v)
        v_inf = v.clone()
        v_inf[0, 5, 1, 3] = float("inf")
        out_inf = flashattn_lite.flash_attn_func(q, k, v_inf)  # still amx
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    err = {isa: (o.double() - ref.double()).abs().max().item() for isa, o in outs.items()}
    assert err["amx"] <= 1.5 * err["avx512"] + 1e-6, err
    assert torch.isposinf(out_inf[0, :, 1, 3]).all()
    assert torch.isfinite(out_inf[0, :, 1, :3]).all() and torch.isfinite(out_inf[0, :, 0]).all()


_PREFETCH_CODE = """
import sys, torch, flashattn_lite as f
torch.manual_seed(0)
out = {"describe": f._C._decode_prefetch()}
for dt in (torch.float32, torch.bfloat16, torch.float16):
    q = torch.randn(2, 1, 8, 72, dtype=dt)
    k_tok = torch.randn(2, 333, 2, 72, dtype=dt)  # token-major GQA 8/2 (packed rows)
    k_head = torch.randn(2, 2, 333, 72, dtype=dt).transpose(1, 2)  # head-contiguous
    for name, k in (("tok", k_tok), ("head", k_head)):
        out[f"{dt}-{name}"] = f.flash_attn_func(q, k, k * 0.5)
        out[f"{dt}-{name}-fwd"] = f.flash_attn_func(torch.randn(2, 40, 8, 72, dtype=dt), k, k * 0.5)  # the forward
torch.save(out, sys.argv[1])
"""


@pytest.mark.slow
def test_decode_prefetch_hint_never_changes_results(tmp_path):
    # FLASHATTN_LITE_DECODE_PREFETCH picks the decode's (and the forward's next-tile) software-prefetch hint (README,
    # "Environment variables"): a speed knob, so every value must give bit-identical outputs.
    results = {}
    for hint in ("t0", "t1", "nta", "none", "nta,t1,none,t0", ""):
        path = tmp_path / f"{hint or 'auto'}.pt"
        env = dict(os.environ, FLASHATTN_LITE_DECODE_PREFETCH=hint)
        r = subprocess.run(
            [sys.executable, "-c", _PREFETCH_CODE, str(path)], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        results[hint] = torch.load(path)
        assert results[hint]["describe"].startswith(hint or "")
    for hint, res in results.items():
        for key, o in res.items():
            if key != "describe":
                assert torch.equal(o, results["t0"][key]), (hint, key)


@pytest.mark.slow
def test_decode_prefetch_unknown_is_a_clear_error():
    code = (
        "import torch, flashattn_lite as f\nq = torch.randn(1, 1, 2, 16)\n"
        "try:\n f.flash_attn_func(q, q, q)\nexcept ValueError as e:\n print('ERR', e)"
    )
    env = dict(os.environ, FLASHATTN_LITE_DECODE_PREFETCH="L1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR") and "FLASHATTN_LITE_DECODE_PREFETCH must be one of t0, t1, nta, none" in r.stdout
    assert "(head,rows,chunk16,chunk32)" in r.stdout  # the four-hint form it also takes


def test_set_decode_prefetch_in_process():
    # The benchmark knob: one hint for every stream, four (head, rows, chunk16, chunk32), or "" for the machine's own
    # choice; anything else names the rule. Outputs never change (the hints only move cache lines earlier).
    before = flashattn_lite._C._decode_prefetch()
    q, k = randn((1, 1, 8, 64), torch.bfloat16), randn((1, 700, 2, 64), torch.bfloat16)
    outs = []
    try:
        for hint in ("none", "nta,t0,t1,none", "t0"):
            flashattn_lite._C._set_decode_prefetch(hint)
            assert flashattn_lite._C._decode_prefetch().startswith(hint)
            outs.append(flashattn_lite.flash_attn_func(q, k, k))
        for bad in ("t2", "t0,t1", "t0,t1,t1,t1,t1", "t0,,t1,t1"):
            with pytest.raises(ValueError, match="decode prefetch must be one of t0, t1, nta, none"):
                flashattn_lite._C._set_decode_prefetch(bad)
    finally:
        flashattn_lite._C._set_decode_prefetch("")
    assert flashattn_lite._C._decode_prefetch() == before or "FLASHATTN_LITE_DECODE_PREFETCH" in before
    assert all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.skipif("amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16 (and Linux 5.16+)")
@pytest.mark.parametrize(
    "setting",
    [
        ("legacy", "highest"),
        ("legacy", "high"),
        ("legacy", "medium"),
        ("mkldnn", "ieee"),
        ("mkldnn", "tf32"),
        ("mkldnn", "bf16"),
    ],
    ids=lambda s: f"{s[0]}-{s[1]}",
)
def test_amx_fp32_follows_float32_matmul_precision(setting):
    # torch.set_float32_matmul_precision: "'highest', float32 matrix multiplications use the float32 datatype
    # (24 mantissa bits with 23 bits explicitly stored) for internal computations. 'high', float32 matrix
    # multiplications either use the TensorFloat32 datatype (10 mantissa bits explicitly stored) or treat each
    # float32 number as the sum of two bfloat16 numbers (approximately 16 mantissa bits with 14 bits explicitly
    # stored), if the appropriate fast matrix multiplication algorithms are available. [...] 'medium', float32
    # matrix multiplications use the bfloat16 datatype [...] if a fast matrix multiplication algorithm using that
    # datatype internally is available." The amx ISA takes the two-bfloat16 form for 'high' and 'medium' (and the
    # mkldnn matmul precision tf32 / bf16 they set). 'highest' / ieee, the default, must keep "the float32 datatype
    # (24 mantissa bits)": there the forward runs on three bfloat16 parts (8 + 8 + 8 bits, exact) and keeps the
    # products down to 2^-16 -- within the numerical rule of the avx512 ISA's fp32 kernels, not bit-identical to
    # them; the backward is the avx512 one (on the forward's output and LSE). Forward and backward.
    api, value = setting
    q, k, v, dout = (
        randn((1, 300, 4, 64), torch.float32),
        randn((1, 333, 2, 64), torch.float32),
        randn((1, 333, 2, 64), torch.float32),
        randn((1, 300, 4, 64), torch.float32),
    )

    def run():
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = flashattn_lite.flash_attn_func(qq, kk, vv, causal=True)
        out.backward(dout)
        return [out.detach(), qq.grad, kk.grad, vv.grad]

    qd, kd, vd = (t.double().requires_grad_(True) for t in (q, k, v))
    ref = attention_ref(qd, kd, vd, causal=True)[0]
    ref.backward(dout.double())
    refs = [ref.detach(), qd.grad, kd.grad, vd.grad]
    qb, kb, vb = (t.bfloat16().requires_grad_(True) for t in (q, k, v))
    in_bf16 = attention_ref(qb, kb, vb, causal=True, upcast=False)[0]  # the computation in bfloat16
    in_bf16.backward(dout.bfloat16())
    bf16_err = [(a.double() - r).abs().max().item() for a, r in zip([in_bf16, qb.grad, kb.grad, vb.grad], refs)]

    before_isa, before_legacy = flashattn_lite.cpu_isa(), torch.get_float32_matmul_precision()
    before_mkldnn = torch.backends.mkldnn.matmul.fp32_precision
    try:
        flashattn_lite._C._set_cpu_isa("avx512")
        plain = run()
        if api == "legacy":
            torch.set_float32_matmul_precision(value)
        else:
            torch.backends.mkldnn.matmul.fp32_precision = value
        flashattn_lite._C._set_cpu_isa("amx")
        ours = run()
    finally:
        flashattn_lite._C._set_cpu_isa(before_isa)
        torch.backends.mkldnn.matmul.fp32_precision = before_mkldnn
        torch.set_float32_matmul_precision(before_legacy)
    if value in ("highest", "ieee"):
        assert not torch.equal(ours[0], plain[0])  # the tiles ran
        for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, plain, refs):
            err, err_fp32 = (a.double() - r).abs().max().item(), (b.double() - r).abs().max().item()
            assert err <= 2 * err_fp32 + 1e-6, (name, err, err_fp32)  # the fp32 kernels' rule
        return
    for name, a, b, r, e in zip(("out", "dq", "dk", "dv"), ours, plain, refs, bf16_err):
        err = (a.double() - r).abs().max().item()
        assert not torch.equal(a, b), name  # the tiles ran
        assert err <= e / 32, (name, err, e)  # ~16 bits: far inside the bfloat16 computation's error


@pytest.mark.skipif("amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16 (and Linux 5.16+)")
@pytest.mark.parametrize("d", [64, 40, 96])
@pytest.mark.parametrize("causal", [False, True])
def test_amx_fp32_rows_do_not_depend_on_their_neighbours(d, causal):
    # flash_attn_func: "q: (batch_size, seqlen, nheads, headdim)" -- each query row's output is softmax(q_i K^T
    # scale) V over the keys it sees, whatever the other rows are ("causal: bool. Whether to apply causal
    # attention mask"; the mask aligned to the bottom right). The fp32 forward on tiles computes the next two groups
    # of 16 rows' scores ahead, during this group's softmax (fwd_amx.cpp qk_softmax; across the heads of a work item
    # too): the first 130 of 200 rows must come out bit-identical when run alone -- rows 128-129 then a partial group
    # (the row-by-row path reading the scores computed ahead), and within the numerical rule of the avx512 kernel.
    # Causal, alone against 263 keys: row i of 200 sees keys <= i + 133, row i of 130 the same keys.
    q = randn((2, 200, 4, d), torch.float32)
    k, v = randn((2, 333, 1, d), torch.float32), randn((2, 333, 1, d), torch.float32)
    before = flashattn_lite.cpu_isa()
    try:
        flashattn_lite._C._set_cpu_isa("amx")
        whole = flashattn_lite.flash_attn_func(q, k, v, causal=causal)
        n_k = 263 if causal else 333
        alone = flashattn_lite.flash_attn_func(
            q[:, :130].contiguous(), k[:, :n_k].contiguous(), v[:, :n_k].contiguous(), causal=causal
        )
        flashattn_lite._C._set_cpu_isa("avx512")
        plain = flashattn_lite.flash_attn_func(q, k, v, causal=causal)
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    assert torch.equal(alone, whole[:, :130])
    ref = attention_ref(q.double(), k.double(), v.double(), causal=causal)[0]
    err, err_fp32 = (whole.double() - ref).abs().max().item(), (plain.double() - ref).abs().max().item()
    assert err <= 2 * err_fp32 + 1e-6, (err, err_fp32)
