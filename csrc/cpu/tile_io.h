// tile_io.h -- strided tile loads/stores between storage types and the accumulator type.
#pragma once
#include "flashattn_lite/isa_ns.h"
#include <cstdint>
#include <type_traits>
#include "flashattn_lite/attn_math.h"
#include "flashattn_lite/numeric.h"
#include "flashattn_lite/params.h"

namespace fal::cpu {
FAL_ISA_NS_BEGIN

// Accumulator type and the type of softmax_lse for a storage type: fp32, fp64 for fp64.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename Acc>
inline Acc load_acc(const float* p) {
  return Acc(*p);
}
template <typename Acc>
inline Acc load_acc(const double* p) {
  return Acc(*p);
}
template <typename Acc>
inline Acc load_acc(const bf16_t* p) {
  return Acc(to_float(*p));
}
template <typename Acc>
inline Acc load_acc(const fp16_t* p) {
  return Acc(to_float(*p));
}

template <typename T, typename Acc>
inline T store_as(Acc x) {
  if constexpr (sizeof(T) == 2)
    return StoreFrom<T>::cvt(float(x));
  else
    return T(x);
}

// dst[r * ld + c] = src[r * row_stride + c] * mul   for r < rows, c < cols
template <typename T, typename Acc>
inline void load_rows(const T* src, int64_t row_stride, int rows, int cols, Acc mul, Acc* dst, int ld) {
  for (int r = 0; r < rows; ++r) {
    const T* s = src + r * row_stride;
    Acc* d = dst + int64_t(r) * ld;
    for (int c = 0; c < cols; ++c) d[c] = load_acc<Acc>(s + c) * mul;
  }
}

// dst[c * ld + r] = src[r * row_stride + c]   (transposed load)
template <typename T, typename Acc>
inline void load_rows_transposed(const T* src, int64_t row_stride, int rows, int cols, Acc* dst, int ld) {
  for (int r = 0; r < rows; ++r) {
    const T* s = src + r * row_stride;
    for (int c = 0; c < cols; ++c) dst[int64_t(c) * ld + r] = load_acc<Acc>(s + c);
  }
}

// Dispatch a callable on the storage type of p.dtype.
template <typename F>
inline void dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kBFloat16: f(bf16_t{}); break;
    case DType::kFloat16: f(fp16_t{}); break;
  }
}

// The combine passes' work items: w = (batch bi, head hi, query row i) of a (b, h, s_q) row grid;
// calls f(w, bi, hi, i, seq) for the rows of [begin, end) that exist (varlen: i < its s_q), with
// T the storage type (fp64 never splits).
template <typename F>
inline void for_each_split_row(const FwdParams& p, int64_t begin, int64_t end, F&& f) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    if constexpr (!std::is_same_v<decltype(tag), double>) {
      for (int64_t w = begin; w < end; ++w) {
        const int i = int(w % p.s_q);
        const int64_t bh = w / p.s_q;
        const int bi = int(bh / p.h), hi = int(bh % p.h);
        const SeqInfo sq = seq_info(p, bi);
        if (i < sq.s_q) f(tag, w, bi, hi, i, sq);
      }
    }
  });
}

FAL_ISA_NS_END
}  // namespace fal::cpu
