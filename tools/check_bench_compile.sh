#!/usr/bin/env bash
# The standalone kernel microbenchmarks (bench/micro_*.cpp) include the package's kernel headers:
# compile them (syntax and types only, no run: the CI machine may lack the ISA) so a change of a
# kernel's signature cannot leave them broken.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
common=(-O1 -std=gnu++17 -fsyntax-only -Wall -Wextra -Werror -Icsrc/include -Icsrc)
avx2=(-mavx2 -mfma -mf16c -DFAL_SIMD_AVX2=1)
avx512=(-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -DFAL_SIMD_AVX512=1)
"$CXX" "${common[@]}" "${avx2[@]}" bench/micro_f32.cpp
"$CXX" "${common[@]}" "${avx512[@]}" bench/micro_f32.cpp
"$CXX" "${common[@]}" "${avx512[@]}" bench/micro_decode_bf16.cpp
"$CXX" "${common[@]}" "${avx2[@]}" bench/micro_decode_walk.cpp
"$CXX" "${common[@]}" "${avx512[@]}" bench/micro_decode_walk.cpp
"$CXX" "${common[@]}" -mavx2 -mfma bench/micro_load_order.cpp
echo "check_bench_compile: bench/micro_f32.cpp, bench/micro_decode_walk.cpp (avx2, avx512), bench/micro_decode_bf16.cpp (avx512), bench/micro_load_order.cpp compile"
