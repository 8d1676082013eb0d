// decode_amx.cpp -- the amx ISA's decode (stages.h): decode.cpp's work items for bf16 K/V with the
// several-row blocks on AMX tiles (decode_amx.h, DecodeHead<bf16_t, true>). Compiled into the
// AVX-512 objects with -mamx-tile -mamx-bf16 added (CMakeLists.txt).
#define FAL_DECODE_AMX 1
#include "cpu/simd/decode_items.h"
#include "cpu/simd/stages.h"

namespace fal::cpu::FAL_CPU_NS {

bool decode_run_amx(const FwdParams& p, int64_t begin, int64_t end) {
  configure_tiles();  // per thread: each work range configures its own
  const bool nan_value = decode_items_run<bf16_t, true>(p, begin, end);
  _tile_release();  // the tile state no longer needs saving at a context switch
  return nan_value;
}

}  // namespace fal::cpu::FAL_CPU_NS
