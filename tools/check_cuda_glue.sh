#!/usr/bin/env bash
# Syntax- and warning-checks the CUDA glue (csrc/torch/cuda_ops.cpp) without a CUDA build of torch:
# a CPU torch ships the ATen/c10 CUDA headers; the CUDA toolkit that nvcc comes with gives the
# runtime headers; the few library headers a CPU machine lacks (cuBLAS, cuSPARSE, cuSOLVER and
# torch's generated cuda_cmake_macros.h) are declared by minimal stubs written here. Catches the
# glue's compile errors and warnings before a GPU session does. Skips (exit 0, with a message)
# without nvcc or torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! command -v nvcc >/dev/null 2>&1; then
  echo "check_cuda_glue: nvcc not found, skipping"
  exit 0
fi
cuda_inc=""
for c in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include" /usr/local/cuda/include /usr/local/cuda-*/include; do
  if [ -f "$c/cuda_runtime_api.h" ]; then cuda_inc=$c; break; fi
done
torch_dir=$($PY -c "import torch, os; print(os.path.dirname(torch.__file__))" 2>/dev/null || true)
py_inc=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
if [ -z "$cuda_inc" ] || [ -z "$torch_dir" ]; then
  echo "check_cuda_glue: CUDA runtime headers or torch not found, skipping"
  exit 0
fi
stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
mkdir -p "$stubs/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$stubs/c10/cuda/impl/cuda_cmake_macros.h"
cat > "$stubs/cublas_v2.h" <<'EOF'
#pragma once
typedef struct cublasContext* cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
const char* cublasGetStatusString(cublasStatus_t);
EOF
cat > "$stubs/cublasLt.h" <<'EOF'
#pragma once
#include "cublas_v2.h"
typedef struct cublasLtContext* cublasLtHandle_t;
EOF
cat > "$stubs/cusparse.h" <<'EOF'
#pragma once
typedef struct cusparseContext* cusparseHandle_t;
typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;
const char* cusparseGetErrorString(cusparseStatus_t);
EOF
cat > "$stubs/cusolver_common.h" <<'EOF'
#pragma once
typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;
EOF
cat > "$stubs/cusolverDn.h" <<'EOF'
#pragma once
#include "cusolver_common.h"
typedef struct cusolverDnContext* cusolverDnHandle_t;
EOF
g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror \
  -isystem "$torch_dir/include" -isystem "$torch_dir/include/torch/csrc/api/include" \
  -isystem "$cuda_inc" -isystem "$stubs" -isystem "$py_inc" -Icsrc/include -Icsrc csrc/torch/cuda_ops.cpp
echo "check_cuda_glue: csrc/torch/cuda_ops.cpp compiles (-Wall -Wextra -Werror) against torch's CUDA headers"
