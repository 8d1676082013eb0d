#!/usr/bin/env bash
# Compiles every CUDA translation unit under csrc/cuda with nvcc alone (no torch headers) for
# sm_80 and sm_90a, with -Xptxas -v and host-code warnings as errors; fails on any error. Writes the ptxas report to
# ${PTXAS_LOG:-build/ptxas.log}. Skips (exit 0, with a message) where nvcc is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found, skipping the CUDA compile check"
  exit 0
fi
shopt -s nullglob
srcs=(csrc/cuda/*.cu)
if [ ${#srcs[@]} -eq 0 ]; then
  echo "check_cuda_compile: no CUDA sources yet"
  exit 0
fi
out=${PTXAS_LOG:-build/ptxas.log}
mkdir -p "$(dirname "$out")" build/cuda_check
: > "$out"
jobs=${CUDA_CHECK_JOBS:-$(nproc)}
t0=$(date +%s)
printf '%s\n' "${srcs[@]}" | xargs -P "$jobs" -I{} sh -c '
  f="{}"; b=$(basename "$f" .cu)
  nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Icsrc/include -Icsrc -Xcompiler=-Wall,-Wextra,-Werror \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
    -Xptxas -v -c "$f" -o "build/cuda_check/$b.o" > "build/cuda_check/$b.log" 2>&1 \
    || { cat "build/cuda_check/$b.log"; echo "FAILED: $f"; exit 255; }'
for f in "${srcs[@]}"; do
  b=$(basename "$f" .cu)
  { echo "== $f"; cat "build/cuda_check/$b.log"; } >> "$out"
done
echo "check_cuda_compile: ${#srcs[@]} CUDA sources compiled for sm_80 + sm_90a in $(( $(date +%s) - t0 )) s; ptxas report in $out"
if grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$out" >/dev/null; then
  echo "check_cuda_compile: note: some kernels spill registers:"
  grep -B3 -E "[1-9][0-9]* bytes spill (stores|loads)" "$out" | grep -E "Compiling entry|spill" | head -20
fi
