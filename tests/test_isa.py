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
    assert set(avail) <= {"scalar", "avx2", "avx512"}
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
