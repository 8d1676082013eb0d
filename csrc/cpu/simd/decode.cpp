// decode.cpp -- the SIMD decode's entry points (stages.h): work items (batch, group of heads,
// split) run by decode_items.h. Compiled once per ISA.
#include "cpu/simd/decode_items.h"
#include "cpu/simd/stages.h"

namespace fal::cpu::FAL_CPU_NS {

int64_t decode_items(const FwdParams& p) { return int64_t(p.b) * decode_head_groups(p) * std::max(1, p.num_splits); }

bool decode_run(const FwdParams& p, int64_t begin, int64_t end) {
  bool nan_value = false;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, double>)  // fp64 runs the portable kernel (kernels.cpp)
      nan_value = decode_items_run<T, false>(p, begin, end);
  });
  return nan_value;
}

}  // namespace fal::cpu::FAL_CPU_NS
