#!/usr/bin/env bash
# One-shot GPU check (H100/H200, torch 2.11+cu130, nvcc 13.0, no internet):
#   build with CUDA for sm_90 -> CUDA tests -> compute-sanitizer memcheck + racecheck -> benchmark.
# Usage: bash bench/gpu_check.sh OUTDIR      (full logs in OUTDIR, a short summary printed last)
# OUTDIR receives 8 files (the device tool brings back at most 8): env.log, build.log,
# pytest_cuda.log, sanitizers.log, bench.log, bench.json, profiler.log, profiler.json.
# Each step is time-boxed so the whole script stays under ~8 minutes; FLASHATTN_LITE_GPU_QUICK=1 shortens
# the benchmark, FLASHATTN_LITE_GPU_SKIP_PROFILER=1 skips the profiler step.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
declare -A STATUS
step() {  # step NAME TIMEOUT CMD...
  local name=$1 to=$2; shift 2
  local t0=$(date +%s)
  timeout "$to" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc $(( $(date +%s) - t0 ))s"
  echo "== $name: ${STATUS[$name]}"
  return $rc
}
{ nvidia-smi; $PY -c "import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; nvcc --version; } > "$OUT/env.log" 2>&1
# The build needs scikit-build-core >= 1.0 ([[tool.dynamic-metadata]] computes the torch pin). If
# the image has an older one, carry a wheel of it (device README: .whl + PYTHONPATH) first.
$PY - <<'PYEOF' || echo "gpu_check: WARNING scikit-build-core < 1.0 here: the build below will fail; carry scikit_build_core>=1.0 as a wheel"
import importlib.metadata as m, sys
v = m.version("scikit-build-core"); print("scikit-build-core", v)
sys.exit(0 if int(v.split(".")[0]) >= 1 else 1)
PYEOF
export FLASHATTN_LITE_CUDA=ON FLASHATTN_LITE_CUDA_ARCHS=${FLASHATTN_LITE_CUDA_ARCHS:-90}
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
step build 400 $PY -m pip install --no-build-isolation --no-deps -v . || { tail -50 "$OUT/build.log"; }
( cd /tmp && $PY -c "import flashattn_lite as f, json; print(json.dumps(f.build_info()))" ) >> "$OUT/env.log" 2>&1
# the CUDA tests (every file to the end: a failing group must not hide the files after it), then all
# of test_cuda.py again under forward variant 1 and backward variant 1 (same log); the sanitizer
# cases (every kernel family, the feature SIMT kernels and softcap / ALiBi too) under the default
# and under each of those
step pytest_cuda 300 sh -c "$PY -m pytest -q --maxfail=300 -rf tests/test_cuda.py tests/test_cuda_variants.py tests/test_cuda_features.py -p no:cacheprovider; r=\$?; \
  for cfg in FLASHATTN_LITE_CUDA_FWD=v1 FLASHATTN_LITE_CUDA_BWD=v1; do echo \"== again with \$cfg\"; \
  env \$cfg $PY -m pytest -q --maxfail=30 -rf tests/test_cuda.py -p no:cacheprovider || r=1; done; exit \$r"
step sanitizers 300 sh -c "for cfg in FLASHATTN_LITE_CUDA_FWD= FLASHATTN_LITE_CUDA_FWD=v1 FLASHATTN_LITE_CUDA_BWD=v1; do echo == \$cfg; \
  env \$cfg compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/sanitize_cases.py && \
  env \$cfg compute-sanitizer --tool racecheck --error-exitcode 9 $PY bench/sanitize_cases.py || exit 9; done"
BENCH_ARGS=(--bwd-max-n ${FLASHATTN_LITE_BWD_MAX_N:-16384})
[ "${FLASHATTN_LITE_GPU_QUICK:-0}" = 1 ] && BENCH_ARGS+=(--quick)
step bench 300 $PY bench/gpu_bench.py --out "$OUT/bench.json" "${BENCH_ARGS[@]}"
# the profiler CLI's CUDA path (events, L2 flush, NVTX, every SDPA backend); raw rows kept
# (FLASHATTN_LITE_GPU_SKIP_PROFILER=1 skips it when the lease is short and the profiler unchanged)
prof_dir=$(mktemp -d)
[ "${FLASHATTN_LITE_GPU_SKIP_PROFILER:-0}" = 1 ] || \
  step profiler 200 $PY -m flashattn_lite.bench --preset gpu --device cuda --no-progress --out "$prof_dir"
cp "$prof_dir/results.json" "$OUT/profiler.json" 2>/dev/null || true
echo
echo "================ summary ================"
tail -1 "$OUT/env.log"
for s in build pytest_cuda sanitizers bench profiler; do echo "$s: ${STATUS[$s]:-not run}"; done
grep -E "passed|failed|== again" "$OUT/pytest_cuda.log" | tail -4
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizers.log"
cat "$OUT/bench.log" | tail -40
