// decode_amx.cpp -- the amx ISA's decode (stages.h): decode_items.h's work items for bf16 K/V with
// DecodeHead<bf16_t, true>, whose blocks of 4..16 rows run on AMX tiles (decode_amx.h). Compiled into
// the AVX-512 objects with -mamx-tile -mamx-bf16 added (CMakeLists.txt).
#define FAL_DECODE_AMX 1
#include "cpu/simd/decode_items.h"
#include "cpu/simd/stages.h"

namespace fal::cpu::FAL_CPU_NS {

bool decode_run_amx(const FwdParams& p, int64_t begin, int64_t end) {
  // the tiles configured only where a head may use them (DecodeHead::tiles: rows, dv, keys x rows)
  if (p.s_q < kTileMinRows || p.d_v % 32 != 0 || decode_keys(p) * p.s_q < kTileMinWork)
    return decode_items_run<bf16_t, true>(p, begin, end);
  const TileScope tiles;
  return decode_items_run<bf16_t, true>(p, begin, end);
}

}  // namespace fal::cpu::FAL_CPU_NS
