#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only, own build
# dir), runs the CPU test suite under it (the sanitizer runtimes preloaded into python), then
# reinstalls the normal build. Any ASan report or UBSan finding fails the run.
# Usage: bash tools/sanitize.sh [pytest args...]   (default: the CPU correctness tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
FLASHATTN_LITE_SANITIZE=ON FLASHATTN_LITE_CUDA=OFF \
  $PY -m pip install --no-build-isolation --no-deps -q . --config-settings=build-dir=build/sanitize
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/test_forward.py tests/test_backward.py tests/test_isa.py tests/test_errors.py
                                 tests/test_features.py tests/test_kvcache.py
                                 tests/test_properties.py tests/test_robustness.py)
rc=0
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
FLASHATTN_LITE_SANITIZED=1 \
  $PY -m pytest -q -x -p no:cacheprovider "${tests[@]}" || rc=$?
$PY -m pip install --no-build-isolation --no-deps -q .  # back to the normal build
echo "sanitize: pytest exit code $rc"
exit $rc
