// decode_cols.h -- the decode's transposed path, one block: more than kColsMinRows(Fma) query rows and no
// score transform (DecodeHead::cols). Compiled once per ISA (included by decode_head.h only).
#pragma once
#include "cpu/simd/common.h"
#include "cpu/simd/decode_rows.h"
#include "cpu/simd/softmax_row.h"
#if defined(FAL_SIMD_AVX512)
#include "cpu/simd/decode_bf16.h"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// One block of the transposed path for the head h (a DecodeHead): S^T = K Q^T (bf16 pairs on
// vdpbf16ps, else fp32: K rows in place or staged as fp32 rows in h.kb), the keys no row sees
// masked, the softmax step per lane, the rows whose max moved rescaled, then O += P V (on pairs
// from P^T; else in fp32 on P transposed back to rows). pf: the prefetch pieces.
template <typename H, typename F>
inline void decode_cols_block(H& h, int jb, int nk, F&& pf) {
  using T = typename H::Elem;
  const T* kp[kN];
  const T* vp[kN];
  h.block_rows(jb, nk, kp, vp);
  const int rv = (h.rows + kN - 1) / kN;
  alignas(64) float sT[kColsVecs * kN * kN];  // [lane vector][key][lane]
  pf();
  if (h.pairs) {
#if defined(FAL_SIMD_AVX512)
    if constexpr (std::is_same_v<T, bf16_t>)
      decode_qk_cols_bf16(reinterpret_cast<const uint32_t*>(h.qT), kp, h.d, h.scale, sT);
#endif
  } else {
    const float* kf[kN];
    for (int jj = 0; jj < kN; ++jj) {
      if constexpr (std::is_same_v<T, float>) {
        kf[jj] = kp[jj];
      } else {
        convert_row(kp[jj], h.d, 1.f, h.kb + size_t(jj) * h.dp);
        kf[jj] = h.kb + size_t(jj) * h.dp;
      }
    }
    if (kColsVecs > 1 && rv > 1)
      decode_qk_cols<kColsVecs>(h.qT, kf, h.d, sT);
    else
      decode_qk_cols<1>(h.qT, kf, h.d, sT);
  }
  if (nk < kN || jb < h.lo_max || jb + kN > h.hi_min)
    for (int v = 0; v < rv; ++v) decode_mask_cols(h.vis_lo + v * kN, h.vis_hi + v * kN, jb, nk, sT + v * kN * kN);
  pf();
  alignas(64) float alpha[kDecodeMaxRows];
  for (int v = 0; v < rv; ++v) {
    float* s = sT + v * kN * kN;
    VF st[kN];
    for (int jj = 0; jj < kN; ++jj) st[jj] = VF::load(s + jj * kN);
    VF mv = VF::load(h.m + v * kN), lv = VF::load(h.l + v * kN);  // lanes past the rows: never read
    softmax_cols_step(st, kN, mv, lv).store(alpha + v * kN);
    mv.store(h.m + v * kN);
    lv.store(h.l + v * kN);
    if (h.pairs) {
      for (int jj = 0; jj < kN; ++jj) st[jj].store(s + jj * kN);
    } else {
      transpose_store(st, s, kN);  // P rows (row v kN + r at s + r kN) for P V
    }
  }
  h.rescale_rows(alpha);
#if defined(FAL_SIMD_AVX512)
  if constexpr (std::is_same_v<T, bf16_t>) {
    if (h.pairs) {
      alignas(64) uint32_t pt[kN / 2 * kN];
      decode_p_pairs_cols(sT, pt);
      uint32_t* vpk = reinterpret_cast<uint32_t*>(h.kb + size_t(kN) * h.dp);
      decode_pack_v_pairs(vp, nk, h.dv, h.dvp, vpk);
      for_row_blocks<4>(h.rows, [&](int r0, auto rn) {
        pf();
        decode_pv_rows_bf16<decltype(rn)::value>(pt + r0, 1, kN, vpk, (nk + 1) / 2, h.dvp, h.of + size_t(r0) * h.dvp);
      });
      return;
    }
  }
#endif
  for_row_blocks<kPvRows>(h.rows, [&](int r0, auto rn) {
    pf();
    decode_pv_rows<decltype(rn)::value>(sT + r0 * kN, vp, h.dv, nk, h.of + size_t(r0) * h.dvp, h.dvp);
  });
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
