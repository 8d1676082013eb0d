"""The CUDA feature tests' own code, run on the CPU: tests/test_cuda_features.py only runs where a GPU
is lent (about one session in ten, minutes of device time), so a bug in its harness -- argument
plumbing, dtype conversions, which gradients it compares -- would cost a GPU run to find. Here each of
its test functions runs once with the device set to the CPU (the "GPU" result is then the CPU's, so
this checks the harness, not the CUDA kernels)."""

from __future__ import annotations

import pytest
import test_cuda_features as feat
import torch


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(feat, "DEV", "cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_feature_harness_runs_on_cpu(on_cpu, dtype):
    feat.test_cuda_varlen_fwd_bwd(dtype, True, (-1, -1))
    feat.test_cuda_varlen_fwd_bwd(dtype, False, (7, 3))
    feat.test_cuda_attn_mask(dtype, "bool")
    feat.test_cuda_attn_mask(dtype, "float")
    feat.test_cuda_dropout_matches_cpu(dtype, True)
    feat.test_cuda_kvcache(dtype, None, {"batch_idx": True})
    feat.test_cuda_kvcache(dtype, 16, {"leftpad": True})
    feat.test_cuda_kvcache(dtype, 1, {"rotary": True})
    feat.test_cuda_softcap_alibi_simt(torch.float16 if dtype == torch.bfloat16 else dtype)
