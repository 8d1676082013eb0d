// decode_cols.h -- the decode's transposed path, one block: more than kColsMinRows(Fma) query rows and no
// score transform (DecodeHead::cols). Compiled once per ISA (included by decode_head.h only).
#pragma once
#include "cpu/simd/common.h"
#include "cpu/simd/decode_rows.h"
#include "cpu/simd/softmax_row.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// One block of the transposed path for the head h (a DecodeHead): S^T = K Q^T in fp32 (K rows in
// place or staged as fp32 rows in h.kb), the keys no row sees masked, the softmax step per lane,
// the rows whose max moved rescaled, then O += P V in fp32 on P transposed back to rows. pf: the
// prefetch pieces. (bf16 on AVX-512: decode_pairs.h's decode_pairs_cols_block, 64-key blocks.)
template <typename H, typename F>
inline void decode_cols_block(H& h, int jb, int nk, F&& pf) {
  using T = typename H::Elem;
  const T* kp[kN];
  const T* vp[kN];
  h.block_rows(jb, nk, kp, vp);
  const int rv = (h.rows + kN - 1) / kN;
  alignas(64) float sT[kColsVecs * kN * kN];  // [lane vector][key][lane]
  pf();
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
    transpose_store(st, s, kN);  // P rows (row v kN + r at s + r kN) for P V
  }
  h.rescale_rows(alpha);
  for_row_blocks<kPvRows>(h.rows, [&](int r0, auto rn) {
    pf();
    decode_pv_rows<decltype(rn)::value>(sT + r0 * kN, vp, h.dv, nk, h.of + size_t(r0) * h.dvp, h.dvp);
  });
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
