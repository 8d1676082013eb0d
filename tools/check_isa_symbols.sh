#!/usr/bin/env bash
# The per-ISA SIMD objects must not define weak (vague-linkage) symbols outside their per-ISA
# namespaces: the linker could pick
# their AVX-512/AVX2 copy of a shared inline function for the portable path and crash a CPU
# without those instructions. Run after a build; fails if any such symbol appears.
set -euo pipefail
cd "$(dirname "$0")/.."
found=0
# every object of the per-ISA SIMD libraries (CMake targets fal_cpu_avx2, fal_cpu_avx512)
objs=$(find build -path "*fal_cpu_avx*" -name "*.o" 2>/dev/null || true)
[ -n "$objs" ] || { echo "check_isa_symbols: no SIMD objects under build/ (build first)"; exit 1; }
for o in $objs; do
  # weak symbols are fine only inside an ISA-specific namespace (per-ISA names, see isa_ns.h)
  weak=$(nm -C --defined-only "$o" | awk '$2 == "W" || $2 == "V" || $2 == "u"' \
         | grep -v -E "DW.ref.__gxx_personality_v0|::simd_avx(2|512)::|fal::cpu::avx(2|512)::" || true)
  if [ -n "$weak" ]; then
    echo "check_isa_symbols: $o defines weak symbols:"; echo "$weak"; found=1
  fi
done
[ $found = 0 ] && echo "check_isa_symbols: $(echo "$objs" | wc -l) SIMD objects define no shared weak symbols"
exit $found
