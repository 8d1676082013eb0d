"""In-tree dynamic-metadata provider (scikit-build-core [[tool.dynamic-metadata]]): the wheel's
torch requirement is the torch minor version it is compiled against.

A compiled extension calls torch's C++ ABI, which changes between torch minor releases, so a wheel
built against torch X.Y declares ``torch>=X.Y,<X.(Y+1)``. An sdist is rebuilt on install, so it
keeps the open range of the source tree.
"""
from __future__ import annotations

from typing import Any, Mapping

_STATE = {"build_state": "wheel"}
SOURCE_RANGE = "torch>=2.5"


def build_state(state: str) -> None:
    _STATE["build_state"] = state


def torch_requirement(version: str) -> str:
    """'2.13.0+cpu' -> 'torch>=2.13,<2.14'."""
    major, minor = version.split("+")[0].split(".")[:2]
    return f"torch>={major}.{minor},<{major}.{int(minor) + 1}"


def dynamic_metadata(settings: Mapping[str, Any], project: Mapping[str, Any]) -> dict[str, Any]:
    extra = [str(x) for x in settings.get("extra", [])]
    if _STATE["build_state"] == "sdist":
        return {"dependencies": [SOURCE_RANGE, *extra]}
    import torch  # the torch this build compiles against (--no-build-isolation)

    return {"dependencies": [torch_requirement(torch.__version__), *extra]}
