# Type stub of flashattn_lite/_build_config.py, which CMake generates at build time from
# cmake/_build_config.py.in (what the build was compiled against).
TORCH_VERSION: str
TORCH_CUDA: str
CUDA: bool
CUDA_ARCHS: str
CPU_ISAS: str
