"""Build metadata and the import-time torch compatibility guard."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import flashattn_lite
from flashattn_lite import _build_config
from flashattn_lite._compat import incompatibility


def test_build_config_records_torch():
    assert _build_config.TORCH_VERSION == flashattn_lite.build_info()["torch_version"]
    assert _build_config.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]
    assert set(_build_config.CPU_ISAS.split(",")) == set(flashattn_lite.build_info()["cpu_isas"])
    assert _build_config.CUDA == flashattn_lite.build_info()["cuda"]


def test_metadata_pins_the_torch_minor_it_was_built_against():
    reqs = importlib.metadata.requires("flashattn_lite") or []
    major, minor = _build_config.TORCH_VERSION.split(".")[:2]
    assert f"torch<{major}.{int(minor) + 1},>={major}.{minor}" in [
        r.replace(" ", "") for r in reqs
    ] or f"torch>={major}.{minor},<{major}.{int(minor) + 1}" in [r.replace(" ", "") for r in reqs], reqs


@pytest.mark.parametrize(
    "built,built_cuda,running,running_cuda,ok",
    [
        ("2.13.0+cpu", "", "2.13.1", None, True),
        ("2.13.0+cpu", "", "2.13.0+cu130", "13.0", True),
        ("2.13.0+cpu", "", "2.14.0+cpu", None, False),
        ("2.11.0+cu130", "13.0", "2.12.0+cu130", "13.0", False),
        ("2.11.0+cu130", "13.0", "2.11.0+cpu", None, False),
    ],
)
def test_incompatibility_rules(built, built_cuda, running, running_cuda, ok):
    why = incompatibility(built, built_cuda, running, running_cuda)
    assert (why is None) == ok
    if not ok:
        assert "flashattn_lite was compiled" in why and "pip install" in why
