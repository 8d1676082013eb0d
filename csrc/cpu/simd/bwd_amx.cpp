// bwd_amx.cpp -- the bf16 and fp16 (and split fp32) backward on AMX tiles (the "amx" ISA, isa.h): bwd_head.h's
// skeleton over BwdPanelsAmx<T>, blocks of 64 query rows against passes of 4 key tiles of 64. Compiled into the
// AVX-512 objects with -mamx-tile -mamx-bf16 added (CMakeLists.txt); only called where the CPU has
// AMX and the OS granted this process the tile state (isa.cpp). Every product is a tdpbf16ps (A: 16
// rows x 16 bf16 pairs, B: 16 pairs x 16 columns, C: 16 x 16 fp32), in 32 x 32 blocks of 2 x 2 C
// tiles (FAL_AMX_DP_2X2: two A and two B tiles per step), with the tile configuration of amx_tiles.h:
//   S   = Q K^T     A = Q rows as pairs over d, B = K^T as pairs over d (Kd, the vdpbf16ps panels'
//                   layout); 32 rows x 32 keys per block
//   dP  = dO V^T    the same with dO and V^T
//   dV^T += dO^T P  A = dO^T as pairs over query rows (packed once per work item), B = P as pairs
//                   over rows (Pp); 32 head dims x 32 keys per block, loaded from and stored back to
//                   the LeveledSum block -- dV and dK are accumulated transposed (kTransposedKV)
//   dK^T += Q^T dS  the same with Q^T and dS
//   dQ  += dS K     A = dS rows as pairs over keys (dSk), B = K as pairs over keys (Kk); 32 rows x
//                   32 columns of dQacc per block
// P and dS are rounded to bf16 for the products, as the vdpbf16ps backward does; the softmax
// (p_ds_rows) and all sums are fp32, so results match the avx512 ISA's to rounding. fp16, and fp32
// where torch's float32 matmul precision allows it (split_bf16.h): every operand as hi + lo bf16
// parts -- exact for fp16 inputs, 2^-17 for fp32 ones and for P and dS -- and each product three
// tile products (FAL_AMX_DP_2X2_SPLIT).
#include "cpu/simd/amx_tiles.h"
#include "cpu/simd/bwd_head.h"
#include "cpu/simd/micro_bf16.h"
#include "cpu/simd/split_bf16.h"
#include "cpu/simd/stages.h"

#if !defined(FAL_SIMD_AVX512)
#error "bwd_amx.cpp belongs to the AVX-512 objects"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

static_assert(kBN == 4 * kTilePairs, "a key tile is 4 C tiles of S, 2 k-steps of dS K");

// n columns of rows [0, s_q) (stride `stride`) as pairs over rows, transposed: dst[x * ld + r2]
// = (row_{2 r2}[x], row_{2 r2 + 1}[x]) for x < n_pad (zero past n and past s_q), r2 < ceil(s_q / 2)
// rounded up to 16 (ld at least that); fp16 / fp32 rows: their hi parts to dst, lo parts to dst_lo. 16 row
// pairs at a time: pack_row_pairs (split_row_pairs), then 16 x 16 register transposes of the 32-bit
// pairs (transpose_store). blk: 16 x n_pad scratch, twice that for split rows.
template <typename T>
void transpose_row_pairs(const T* q, int64_t stride, int s_q, int n, int n_pad, uint32_t* dst, uint32_t* dst_lo, int ld,
                         uint32_t* blk) {
  constexpr bool kSplit = !std::is_same_v<T, bf16_t>;
  uint32_t* blk_lo = blk + size_t(kTileRows) * n_pad;
  for (int r2b = 0; 2 * r2b < s_q; r2b += kTileRows) {
    for (int i = 0; i < kTileRows; ++i) {
      const int ra = 2 * (r2b + i), rb = ra + 1;
      const T* a = ra < s_q ? q + ra * stride : nullptr;
      const T* b = rb < s_q ? q + rb * stride : nullptr;
      if constexpr (kSplit)
        split_row_pairs(a, b, n, n_pad, blk + size_t(i) * n_pad, blk_lo + size_t(i) * n_pad);
      else
        pack_row_pairs(a, b, n, n_pad, blk + size_t(i) * n_pad);
    }
    for (int part = 0; part < (kSplit ? 2 : 1); ++part) {
      const uint32_t* src = part ? blk_lo : blk;
      uint32_t* out = part ? dst_lo : dst;
      for (int x0 = 0; x0 < n_pad; x0 += kN) {
        VF t[kN];
        for (int i = 0; i < kN; ++i) t[i] = VF::load(reinterpret_cast<const float*>(src + size_t(i) * n_pad + x0));
        transpose_store(t, reinterpret_cast<float*>(out + size_t(x0) * ld + r2b), ld);
      }
    }
  }
}

// T = bf16_t: every operand as bf16 pairs. T = fp16_t or float: every panel twice, its hi and lo parts
// (split_bf16.h; the *Lo buffers, the *_l pointers), each product the three tile products
// hi hi + lo hi + hi lo (FAL_AMX_DP_2X2_SPLIT); P and dS split the same way instead of rounded.
template <typename T_>
struct BwdPanelsAmx {
  using T = T_;
  static constexpr bool kSplit = !std::is_same_v<T, bf16_t>;
  static constexpr int kRows = 2 * kTileRows;  // S, dP, dQ: two A tiles of rows (2 x 2 tile blocks)
  static constexpr int kQB = 64;               // rows per step: 2 k-steps (of 16 row pairs) of dV^T, dK^T
  static constexpr int kTiles = 4;             // key tiles per pass (bench/results/cpu-2026-12-02f-intel.md)
  static constexpr bool kTransposedKV = true;
  int d = 0, dv = 0, dq2 = 0, dvq2 = 0, dp = 0, dvp = 0, rows_pad = 0, ld2 = 0, g = 0;
  float score_mul = 1.f, dk_scale = 1.f;
  Buf<uint32_t> KdAll, VdAll, KkAll, QsAll, dOsAll, QtAll, dOtAll, Pp, dSp, dSk, blk;
  Buf<uint32_t> KdLo, VdLo, KkLo, QsLo, dOsLo, QtLo, dOtLo, PpLo, dSpLo, dSkLo;         // split: the lo parts
  const uint32_t *Qs = nullptr, *dOs = nullptr, *Qt = nullptr, *dOt = nullptr;          // the current block (select)
  const uint32_t *Kd = nullptr, *Vd = nullptr, *Kk = nullptr;                           // the current key tile (tile)
  const uint32_t *Qs_l = nullptr, *dOs_l = nullptr, *Qt_l = nullptr, *dOt_l = nullptr;  // their lo parts
  const uint32_t *Kd_l = nullptr, *Vd_l = nullptr, *Kk_l = nullptr;
  int nk = 0;  // k-steps of 16 row pairs in the current block's dV^T / dK^T (accumulate)

  BwdPanelsAmx(const BwdParams& p, int g_, int s_q)
      : d(p.d),
        dv(p.d_v),
        dq2(round_up((d + 1) / 2, kTilePairs)),
        dvq2(round_up((dv + 1) / 2, kTilePairs)),
        dp(round_up(d, kNV * kN)),
        dvp(round_up(dv, kNV * kN)),
        rows_pad(bwd_rows_pad(s_q, kQB)),
        ld2(rows_pad / 2),
        g(g_),
        score_mul(float(p.scale)),
        dk_scale(float(p.scale)) {
    alloc(false);
    if constexpr (kSplit) alloc(true);
    blk.resize(size_t(kSplit ? 2 : 1) * kTileRows * std::max(dp, dvp));
  }
  void alloc(bool lo) {
    (lo ? KdLo : KdAll).resize(size_t(kTiles) * dq2 * kBN);  // transpose_pairs writes ceil(d / 32) * 16 rows
    (lo ? VdLo : VdAll).resize(size_t(kTiles) * dvq2 * kBN);
    (lo ? KkLo : KkAll).resize(size_t(kTiles) * (kBN / 2) * dp);
    (lo ? QsLo : QsAll).resize(size_t(g) * rows_pad * dq2);  // written whole by load_head (padding zeroed there)
    (lo ? dOsLo : dOsAll).resize(size_t(g) * rows_pad * dvq2);
    (lo ? QtLo : QtAll).resize(size_t(g) * dp * ld2);
    (lo ? dOtLo : dOtAll).resize(size_t(g) * dvp * ld2);
    (lo ? PpLo : Pp).resize(size_t(kQB / 2) * kBN);
    (lo ? dSpLo : dSp).resize(size_t(kQB / 2) * kBN);
    (lo ? dSkLo : dSk).resize(size_t(kQB) * (kBN / 2));
  }

  // Key tile slot t: K^T and V^T as pairs over the head dims (Kd, Vd), K as pairs over keys (Kk),
  // zero-padded
  void pack_keys(int t, const T* k, int64_t k_stride, const T* v, int64_t v_stride, int j0, int cols) {
    const size_t od = size_t(t) * dq2 * kBN, ov = size_t(t) * dvq2 * kBN, ok = size_t(t) * (kBN / 2) * dp;
    for (int c0 = 0; c0 < kBN; c0 += kN) {
      const T* kr[kN];
      const T* vr[kN];
      for (int c = 0; c < kN; ++c) {
        kr[c] = c0 + c < cols ? k + (j0 + c0 + c) * k_stride : nullptr;
        vr[c] = c0 + c < cols ? v + (j0 + c0 + c) * v_stride : nullptr;
      }
      if constexpr (kSplit) {
        transpose_split<false>(kr, d, KdAll.data() + od + c0, kBN);
        transpose_split<true>(kr, d, KdLo.data() + od + c0, kBN);
        transpose_split<false>(vr, dv, VdAll.data() + ov + c0, kBN);
        transpose_split<true>(vr, dv, VdLo.data() + ov + c0, kBN);
      } else {
        transpose_pairs(kr, d, KdAll.data() + od + c0, kBN);
        transpose_pairs(vr, dv, VdAll.data() + ov + c0, kBN);
      }
    }
    for (int c2 = 0; c2 < kBN / 2; ++c2) {
      const T* a = 2 * c2 < cols ? k + (j0 + 2 * c2) * k_stride : nullptr;
      const T* b = 2 * c2 + 1 < cols ? k + (j0 + 2 * c2 + 1) * k_stride : nullptr;
      const size_t at = ok + size_t(c2) * dp;
      if constexpr (kSplit)
        split_row_pairs(a, b, d, dp, KkAll.data() + at, KkLo.data() + at);
      else
        pack_row_pairs(a, b, d, dp, KkAll.data() + at);
    }
  }
  // the key tile slot that scores and dq use
  void tile(int t) {
    const size_t od = size_t(t) * dq2 * kBN, ov = size_t(t) * dvq2 * kBN, ok = size_t(t) * (kBN / 2) * dp;
    Kd = KdAll.data() + od, Vd = VdAll.data() + ov, Kk = KkAll.data() + ok;
    if constexpr (kSplit) Kd_l = KdLo.data() + od, Vd_l = VdLo.data() + ov, Kk_l = KkLo.data() + ok;
  }
  // Query head gi's Q and dO rows, once per work item: as pairs over the head dims (Qs, dOs; rows
  // dq2 / dvq2 pairs apart) and transposed as pairs over rows (Qt, dOt; ld2 pairs apart); rows past
  // s_q and pairs past d / dv 0 (only the padding is zeroed: the buffers are not cleared first)
  void load_head(int gi, const T* q, int64_t q_stride, const T* dout, int64_t do_stride, int s_q) {
    const size_t oq = size_t(gi) * rows_pad * dq2, oo = size_t(gi) * rows_pad * dvq2;
    const size_t tq = size_t(gi) * dp * ld2, to = size_t(gi) * dvp * ld2;
    load_rows(q, q_stride, s_q, d, dq2, QsAll.data() + oq, kSplit ? QsLo.data() + oq : nullptr);
    load_rows(dout, do_stride, s_q, dv, dvq2, dOsAll.data() + oo, kSplit ? dOsLo.data() + oo : nullptr);
    load_cols(q, q_stride, s_q, d, dp, QtAll.data() + tq, kSplit ? QtLo.data() + tq : nullptr);
    load_cols(dout, do_stride, s_q, dv, dvp, dOtAll.data() + to, kSplit ? dOtLo.data() + to : nullptr);
  }
  // rows_pad rows of n2 pairs: s_q rows of n elements as pairs, zeros past them (split: lo parts to dst_lo)
  void load_rows(const T* x, int64_t stride, int s_q, int n, int n2, uint32_t* dst, uint32_t* dst_lo) {
    const int w = (n + 1) / 2;  // pairs copy_pairs writes
    for (int part = 0; part < (kSplit ? 2 : 1); ++part) {
      uint32_t* out = part ? dst_lo : dst;
      for (int r = 0; r < s_q; ++r) {
        uint32_t* row = out + size_t(r) * n2;
        if (part == 0) {
          if constexpr (kSplit)
            split_pairs(x + r * stride, n, row, dst_lo + size_t(r) * n2);
          else
            copy_pairs(x + r * stride, n, row);
        }
        fill(row + w, row + n2, 0u);
      }
      fill(out + size_t(s_q) * n2, out + size_t(rows_pad) * n2, 0u);
    }
  }
  // n_pad rows of ld2 row pairs: transpose_row_pairs' columns, zeros past them
  void load_cols(const T* x, int64_t stride, int s_q, int n, int n_pad, uint32_t* dst, uint32_t* dst_lo) {
    transpose_row_pairs(x, stride, s_q, n, n_pad, dst, dst_lo, ld2, blk.data());
    const int written = round_up((s_q + 1) / 2, kTileRows);  // whole groups of 16 row pairs
    for (int part = 0; part < (kSplit ? 2 : 1); ++part) {
      uint32_t* out = part ? dst_lo : dst;
      for (int c = 0; c < n_pad; ++c) fill(out + size_t(c) * ld2 + written, out + size_t(c + 1) * ld2, 0u);
    }
  }
  // the block of kQB rows from row i0 (even: the row pairs start there) of head gi
  void select(int gi, int i0) {
    const size_t oq = (size_t(gi) * rows_pad + i0) * dq2, oo = (size_t(gi) * rows_pad + i0) * dvq2;
    const size_t tq = size_t(gi) * dp * ld2 + i0 / 2, to = size_t(gi) * dvp * ld2 + i0 / 2;
    Qs = QsAll.data() + oq, dOs = dOsAll.data() + oo, Qt = QtAll.data() + tq, dOt = dOtAll.data() + to;
    if constexpr (kSplit)
      Qs_l = QsLo.data() + oq, dOs_l = dOsLo.data() + oo, Qt_l = QtLo.data() + tq, dOt_l = dOtLo.data() + to;
  }
  // S and dP (unscaled, kRows x kBN, rows kBN apart) of the block's rows [r0, r0 + kRows): 32 keys
  // (a 2 x 2 tile block) at a time
  void scores(int r0, float* Sr, float* dPr) {
    tiles_fence();  // the panels: stored by vector code
    scores_2x2(Qs + size_t(r0) * dq2, kSplit ? Qs_l + size_t(r0) * dq2 : nullptr, dq2, Kd, Kd_l, Sr);
    scores_2x2(dOs + size_t(r0) * dvq2, kSplit ? dOs_l + size_t(r0) * dvq2 : nullptr, dvq2, Vd, Vd_l, dPr);
  }
  // out (32 x kBN) = a b^T: a = 32 rows of n2 pairs (a multiple of 16), b^T = n2 rows of kBN pairs
  // (al, btl: their lo parts, split)
  void scores_2x2(const uint32_t* a, const uint32_t* al, int n2, const uint32_t* bt, const uint32_t* btl, float* out) {
    constexpr int kb = kBN * 4;  // b^T and out row bytes
    const size_t a1 = size_t(kTileRows) * n2;
    for (int kc = 0; kc < kBN; kc += 2 * kTilePairs) {
      zero_c4();
      for (int x = 0; x < n2; x += kTilePairs) {
        const size_t ob = size_t(x) * kBN + kc;
        if constexpr (kSplit)
          FAL_AMX_DP_2X2_SPLIT(a + x, a + a1 + x, al + x, al + a1 + x, n2 * 4, bt + ob, bt + ob + kTilePairs, btl + ob,
                               btl + ob + kTilePairs, kb);
        else
          FAL_AMX_DP_2X2(a + x, a + a1 + x, n2 * 4, bt + ob, bt + ob + kTilePairs, kb);
      }
      store_c2x2(out + kc, kb);
    }
  }
  // P and dS of the block's nr rows to bf16 pairs over rows (Pp, dSp: for dV^T, dK^T) and over keys
  // (dSk: for dQ), then dV^T += dO^T P and dK^T += Q^T dS (dp / dvp x kBN, rows kBN apart) over the
  // k-steps of 16 row pairs that hold rows below nr
  void accumulate(int nr, const float* P, const float* dS, float* dVt, float* dKt) {
    for (int r2 = 0; r2 < kQB / 2; ++r2) {
      const float *p0 = P + size_t(2 * r2) * kBN, *p1 = p0 + kBN;
      const float *s0 = dS + size_t(2 * r2) * kBN, *s1 = s0 + kBN;
      const size_t at = size_t(r2) * kBN;
      if constexpr (kSplit) {
        split_f32_row_pairs(p0, p1, kBN, Pp.data() + at, PpLo.data() + at);
        split_f32_row_pairs(s0, s1, kBN, dSp.data() + at, dSpLo.data() + at);
      } else {
        pack_f32_row_pairs(p0, p1, kBN, Pp.data() + at);
        pack_f32_row_pairs(s0, s1, kBN, dSp.data() + at);
      }
    }
    for (int r = 0; r < kQB; ++r) {
      const size_t at = size_t(r) * (kBN / 2);
      if constexpr (kSplit)
        split_f32_consecutive(dS + size_t(r) * kBN, kBN, dSk.data() + at, dSkLo.data() + at);
      else
        pack_f32_consecutive(dS + size_t(r) * kBN, kBN, dSk.data() + at);
    }
    nk = (nr + 2 * kTilePairs - 1) / (2 * kTilePairs);
    tiles_fence();  // Pp, dSp, dSk; the LeveledSum blocks (cleared by vector code)
    transposed_product(dOt, dOt_l, dvp, Pp.data(), PpLo.data(), dVt);
    transposed_product(Qt, Qt_l, dp, dSp.data(), dSpLo.data(), dKt);
  }
  // out^T (n x kBN, rows kBN apart) += a^T b: a^T = n rows (a multiple of 32) of pairs over query
  // rows (ld2 apart), b = pairs over rows (kBN apart); nk k-steps of 16 pairs, 32 x 32 blocks of out^T
  // (atl, bl: the lo parts, split)
  void transposed_product(const uint32_t* at, const uint32_t* atl, int n, const uint32_t* b, const uint32_t* bl,
                          float* out) {
    constexpr int kb = kBN * 4;
    const size_t a1 = size_t(kTileRows) * ld2;
    for (int x = 0; x < n; x += 2 * kTileRows)
      for (int kc = 0; kc < kBN; kc += 2 * kTilePairs) {
        float* o = out + size_t(x) * kBN + kc;
        load_c2x2(o, kb);
        for (int ks = 0; ks < nk; ++ks) {
          const size_t oa = size_t(x) * ld2 + ks * kTilePairs, ob = size_t(ks) * kTilePairs * kBN + kc;
          if constexpr (kSplit)
            FAL_AMX_DP_2X2_SPLIT(at + oa, at + oa + a1, atl + oa, atl + oa + a1, ld2 * 4, b + ob, b + ob + kTilePairs,
                                 bl + ob, bl + ob + kTilePairs, kb);
          else
            FAL_AMX_DP_2X2(at + oa, at + oa + a1, ld2 * 4, b + ob, b + ob + kTilePairs, kb);
        }
        store_c2x2(o, kb);
      }
  }
  // dQ[r0, r0 + kRows) (dp columns, rows dp apart) += dS K, 32 x 32 blocks; keys past cols hold
  // dS = 0 and zero K rows (the second k-step of 16 key pairs skipped where cols <= 32)
  void dq(const float* /*dS*/, int r0, int cols, float* out) {
    const int rb = dp * 4;                                                         // dQacc and Kk row bytes
    const int nkk = cols > kBN / 2 ? 2 : 1;                                        // k-steps of 16 key pairs
    const size_t oa = size_t(r0) * (kBN / 2), a1 = size_t(kTileRows) * (kBN / 2);  // dS rows kBN / 2 pairs apart
    const uint32_t* a = dSk.data() + oa;
    const uint32_t* al = kSplit ? dSkLo.data() + oa : nullptr;
    tiles_fence();  // out: dQacc or the caller's zeroed scratch
    for (int dc = 0; dc < dp; dc += 2 * kTilePairs) {
      float* oc = out + dc;
      load_c2x2(oc, rb);
      for (int ks = 0; ks < nkk; ++ks) {
        const size_t ob = size_t(ks) * kTilePairs * dp + dc, x = size_t(ks) * kTilePairs;
        if constexpr (kSplit)
          FAL_AMX_DP_2X2_SPLIT(a + x, a + a1 + x, al + x, al + a1 + x, kBN * 2, Kk + ob, Kk + ob + kTilePairs,
                               Kk_l + ob, Kk_l + ob + kTilePairs, rb);
        else
          FAL_AMX_DP_2X2(a + x, a + a1 + x, kBN * 2, Kk + ob, Kk + ob + kTilePairs, rb);
      }
      store_c2x2(oc, rb);
    }
  }
};

}  // namespace

// bf16, fp16 and -- where torch's float32 matmul precision allows two bf16 parts -- fp32 on tiles
void bwd_items_run_amx(const BwdParams& p, int64_t begin, int64_t end) {
  const bool f32 = p.dtype == DType::kFloat32 && p.fp32_split_bf16;
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16 && !f32) return bwd_items_run(p, begin, end);
  const TileScope tiles;
  if (p.dtype == DType::kFloat16)
    bwd_items_loop<BwdPanelsAmx<fp16_t>>(p, begin, end);
  else if (f32)
    bwd_items_loop<BwdPanelsAmx<float>>(p, begin, end);
  else
    bwd_items_loop<BwdPanelsAmx<bf16_t>>(p, begin, end);
}

}  // namespace fal::cpu::FAL_CPU_NS

#undef FAL_AMX_DP_C4
#undef FAL_AMX_DP_2X2
#undef FAL_AMX_DP_2X2_SPLIT
