"""Import-time guard: refuse to load the C++ extension under a torch it was not compiled against.

A torch C++ extension is tied to torch's C++ ABI, which changes between minor releases; loading
one under another torch ends in an "undefined symbol" error deep inside the dynamic loader. This
check runs before the extension is imported and says what to do instead.
"""

from __future__ import annotations


def _minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def incompatibility(built: str, built_cuda: str, running: str, running_cuda: str | None) -> str | None:
    """Why a build against torch `built` (CUDA `built_cuda`, '' for CPU) cannot load under torch
    `running` (CUDA `running_cuda`, None for CPU), or None when it can."""
    if _minor(built) != _minor(running):
        major, minor = _minor(built)
        return (
            f"flashattn_lite was compiled against torch {built}, but this environment has torch {running}; "
            f"its C++ extension cannot load across torch minor versions. Either install the torch it was "
            f"built for (pip install 'torch=={major}.{minor}.*') or rebuild flashattn_lite against this "
            f"torch (pip install --no-build-isolation --no-deps --force-reinstall <flashattn_lite source or sdist>)."
        )
    if built_cuda and not running_cuda:
        return (
            f"flashattn_lite was compiled with CUDA {built_cuda} against a CUDA build of torch, but this "
            f"environment has a CPU-only torch ({running}). Install a CUDA build of torch {running}, or rebuild "
            f"flashattn_lite here (FLASHATTN_LITE_CUDA=OFF pip install --no-build-isolation --no-deps "
            f"--force-reinstall <source>)."
        )
    return None


def check_torch_compatible() -> None:
    """Raises ImportError with instructions when the installed torch does not match the build."""
    import torch

    try:
        from . import _build_config
    except ImportError:  # a source checkout without a build: the extension import reports that
        return
    why = incompatibility(_build_config.TORCH_VERSION, _build_config.TORCH_CUDA, torch.__version__, torch.version.cuda)
    if why:
        raise ImportError(why)
