// decode_rowwise.h -- the decode's several-row path, one block: 2..kDecodeMaxRows query rows that are
// not transposed (DecodeHead::cols false; bf16 on AVX-512 runs decode_pairs.h instead). Compiled once
// per ISA (included by decode_head.h only).
#pragma once
#include "cpu/simd/common.h"
#include "cpu/simd/decode_rows.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// One block of KB keys (a multiple of kN: DecodeHead::block_keys) from jb, nk of them real, for the
// head h (a DecodeHead). S = Q K^T on the K rows in place: in passes of kGroupRows rows over K
// (converted on the fly for bf16 / fp16; decode_qk_rows_grouped), fp32 K rows back to back row by
// row; the rows' softmax step (DecodeHead::rows_softmax); P V on the V rows in place. pf: the
// prefetch pieces (one more before each block of O's vectors in P V: DecodeHead::pv_pieces).
template <int KB, typename H, typename F>
inline void decode_rowwise_block(H& h, int jb, int nk, F&& pf) {
  using T = typename H::Elem;
  nk = std::min(nk, KB);  // (a bound the products' loops over nk can unroll to)
  const T* kp[KB];
  const T* vp[KB];
  h.block_rows(jb, nk, kp, vp, KB);
  alignas(64) float sall[kDecodeMaxRows * KB];
  const int dp = h.dp, d = h.d;
  bool grouped = true;
  if constexpr (std::is_same_v<T, float>) grouped = h.k_rows_apart;
  if (grouped) {
    for_row_blocks<kGroupRows>(h.rows, [&](int r0, auto rn) {
      for (int r = 0; r < decltype(rn)::value; ++r) pf();
      for (int g = 0; g < KB; g += kN)
        decode_qk_rows_grouped<decltype(rn)::value, T, KB>(h.qf + size_t(r0) * dp, dp, kp + g, d, sall + r0 * KB + g);
    });
  } else if constexpr (std::is_same_v<T, float>) {
    // row by row; on AVX-512 (d <= kRowKeysMaxVecs vectors) key by key, one chain per key (the
    // grouped pass's sums): GQA fp32 D128 head-major, 2 threads, in one process (Zen 4,
    // 2026-12-02), two chains: 3 rows 1.02x, 4 rows 1.02-1.04x, 8 rows 1.11x; one: 0.96x that.
    // The grouped passes of 4 rows ran 0.92-0.95x this (4 and 8 rows, both ISAs).
    const bool row_keys = kN == 16 && dp <= kRowKeysMaxVecs * kN;
    for (int r = 0; r < h.rows; ++r) {
      pf();
      for (int g = 0; g < KB; g += kN) {
        if (row_keys)
          with_row_vecs(dp / kN, [&](auto nv) {
            decode_qk_row_keys<decltype(nv)::value, T, 1>(h.qf + size_t(r) * dp, kp + g, d, sall + r * KB + g);
          });
        else
          decode_qk_rows_grouped<1>(h.qf + size_t(r) * dp, dp, kp + g, d, sall + r * KB + g);
      }
    }
  }
  pf();
  h.template rows_softmax<KB, KB>(jb, nk, sall);
  pf();
  // P V: on AVX2 a whole block of bf16 / fp16 V (nk == KB) with the key count compile-time, else nk
  // keys (fp32 V: the compile-time count issued 1.5 % more instructions, AVX2 4 rows, callgrind;
  // AVX-512 fp16 GQA / 4 rows ran 0.96-0.98x with it, from L3)
  auto pv = [&](auto nkc) {
    constexpr int NK = decltype(nkc)::value;
    for_row_blocks<kPvRows>(h.rows, [&](int r0, auto rn) {  // a prefetch piece before each block of O's vectors
      float* o = h.of + size_t(r0) * h.dvp;
      decode_pv_rows<decltype(rn)::value, T, KB, NK>(sall + r0 * KB, vp, h.dv, nk, o, h.dvp, pf);
    });
  };
  constexpr bool whole = kN == 8 && !std::is_same_v<T, float>;
  if (whole && nk == KB)
    pv(std::integral_constant<int, whole ? KB : 0>{});
  else
    pv(std::integral_constant<int, 0>{});
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
