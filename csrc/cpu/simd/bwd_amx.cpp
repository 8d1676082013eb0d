// bwd_amx.cpp -- the bf16 backward on AMX tiles (the "amx" ISA, isa.h): bwd_head.h's skeleton over
// BwdPanelsAmx, blocks of 64 query rows against passes of 4 key tiles of 64. Compiled into the
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
// (p_ds_rows) and all sums are fp32, so results match the avx512 ISA's to rounding.
#include "cpu/simd/amx_tiles.h"
#include "cpu/simd/bwd_head.h"
#include "cpu/simd/micro_bf16.h"
#include "cpu/simd/stages.h"

#if !defined(FAL_SIMD_AVX512)
#error "bwd_amx.cpp belongs to the AVX-512 objects"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

static_assert(kBN == 4 * kTilePairs, "a key tile is 4 C tiles of S, 2 k-steps of dS K");

// n bf16 columns of rows [0, s_q) (stride `stride`) as pairs over rows, transposed: dst[x * ld + r2]
// = (row_{2 r2}[x], row_{2 r2 + 1}[x]) for x < n_pad (zero past n and past s_q), r2 < ceil(s_q / 2)
// rounded up to 16 (ld at least that). 16 row pairs at a time: pack_row_pairs, then 16 x 16 register
// transposes of the 32-bit pairs (transpose_store). blk: 16 x n_pad scratch.
void transpose_row_pairs(const bf16_t* q, int64_t stride, int s_q, int n, int n_pad, uint32_t* dst, int ld,
                         uint32_t* blk) {
  for (int r2b = 0; 2 * r2b < s_q; r2b += kTileRows) {
    for (int i = 0; i < kTileRows; ++i) {
      const int ra = 2 * (r2b + i), rb = ra + 1;
      pack_row_pairs(ra < s_q ? q + ra * stride : nullptr, rb < s_q ? q + rb * stride : nullptr, n, n_pad,
                     blk + size_t(i) * n_pad);
    }
    for (int x0 = 0; x0 < n_pad; x0 += kN) {
      VF t[kN];
      for (int i = 0; i < kN; ++i) t[i] = VF::load(reinterpret_cast<const float*>(blk + size_t(i) * n_pad + x0));
      transpose_store(t, reinterpret_cast<float*>(dst + size_t(x0) * ld + r2b), ld);
    }
  }
}

struct BwdPanelsAmx {
  using T = bf16_t;
  static constexpr int kRows = 2 * kTileRows;  // S, dP, dQ: two A tiles of rows (2 x 2 tile blocks)
  static constexpr int kQB = 64;               // rows per step: 2 k-steps (of 16 row pairs) of dV^T, dK^T
  static constexpr int kTiles = 4;             // key tiles per pass (bench/results/cpu-2026-12-02f-intel.md)
  static constexpr bool kTransposedKV = true;
  int d = 0, dv = 0, dq2 = 0, dvq2 = 0, dp = 0, dvp = 0, rows_pad = 0, ld2 = 0;
  float score_mul = 1.f, dk_scale = 1.f;
  Buf<uint32_t> KdAll, VdAll, KkAll, QsAll, dOsAll, QtAll, dOtAll, Pp, dSp, dSk, blk;
  const uint32_t *Qs = nullptr, *dOs = nullptr, *Qt = nullptr, *dOt = nullptr;  // the current block (select)
  const uint32_t *Kd = nullptr, *Vd = nullptr, *Kk = nullptr;                   // the current key tile (tile)
  int nk = 0;  // k-steps of 16 row pairs in the current block's dV^T / dK^T (accumulate)

  BwdPanelsAmx(const BwdParams& p, int g, int s_q)
      : d(p.d),
        dv(p.d_v),
        dq2(round_up((d + 1) / 2, kTilePairs)),
        dvq2(round_up((dv + 1) / 2, kTilePairs)),
        dp(round_up(d, kNV * kN)),
        dvp(round_up(dv, kNV * kN)),
        rows_pad(bwd_rows_pad(s_q, kQB)),
        ld2(rows_pad / 2),
        score_mul(float(p.scale)),
        dk_scale(float(p.scale)),
        KdAll(size_t(kTiles) * dq2 * kBN),  // transpose_pairs writes ceil(d / 32) * 16 = dq2 rows
        VdAll(size_t(kTiles) * dvq2 * kBN),
        KkAll(size_t(kTiles) * (kBN / 2) * dp),
        QsAll(size_t(g) * rows_pad * dq2),  // written whole by load_head (padding zeroed there)
        dOsAll(size_t(g) * rows_pad * dvq2),
        QtAll(size_t(g) * dp * ld2),
        dOtAll(size_t(g) * dvp * ld2),
        Pp(size_t(kQB / 2) * kBN),
        dSp(size_t(kQB / 2) * kBN),
        dSk(size_t(kQB) * (kBN / 2)),
        blk(size_t(kTileRows) * std::max(dp, dvp)) {}

  // Key tile slot t: K^T and V^T as pairs over the head dims (Kd, Vd), K as pairs over keys (Kk),
  // zero-padded
  void pack_keys(int t, const T* k, int64_t k_stride, const T* v, int64_t v_stride, int j0, int cols) {
    uint32_t* kd = KdAll.data() + size_t(t) * dq2 * kBN;
    uint32_t* vd = VdAll.data() + size_t(t) * dvq2 * kBN;
    uint32_t* kk = KkAll.data() + size_t(t) * (kBN / 2) * dp;
    for (int c0 = 0; c0 < kBN; c0 += kN) {
      const T* kr[kN];
      const T* vr[kN];
      for (int c = 0; c < kN; ++c) {
        kr[c] = c0 + c < cols ? k + (j0 + c0 + c) * k_stride : nullptr;
        vr[c] = c0 + c < cols ? v + (j0 + c0 + c) * v_stride : nullptr;
      }
      transpose_pairs(kr, d, kd + c0, kBN);
      transpose_pairs(vr, dv, vd + c0, kBN);
    }
    for (int c2 = 0; c2 < kBN / 2; ++c2) {
      const T* a = 2 * c2 < cols ? k + (j0 + 2 * c2) * k_stride : nullptr;
      const T* b = 2 * c2 + 1 < cols ? k + (j0 + 2 * c2 + 1) * k_stride : nullptr;
      pack_row_pairs(a, b, d, dp, kk + size_t(c2) * dp);
    }
  }
  // the key tile slot that scores and dq use
  void tile(int t) {
    Kd = KdAll.data() + size_t(t) * dq2 * kBN;
    Vd = VdAll.data() + size_t(t) * dvq2 * kBN;
    Kk = KkAll.data() + size_t(t) * (kBN / 2) * dp;
  }
  // Query head gi's Q and dO rows, once per work item: as pairs over the head dims (Qs, dOs; rows
  // dq2 / dvq2 pairs apart) and transposed as pairs over rows (Qt, dOt; ld2 pairs apart); rows past
  // s_q and pairs past d / dv 0 (only the padding is zeroed: the buffers are not cleared first)
  void load_head(int gi, const T* q, int64_t q_stride, const T* dout, int64_t do_stride, int s_q) {
    load_rows(q, q_stride, s_q, d, dq2, QsAll.data() + size_t(gi) * rows_pad * dq2);
    load_rows(dout, do_stride, s_q, dv, dvq2, dOsAll.data() + size_t(gi) * rows_pad * dvq2);
    load_cols(q, q_stride, s_q, d, dp, QtAll.data() + size_t(gi) * dp * ld2);
    load_cols(dout, do_stride, s_q, dv, dvp, dOtAll.data() + size_t(gi) * dvp * ld2);
  }
  // rows_pad rows of n2 pairs: s_q rows of n elements as pairs, zeros past them
  void load_rows(const T* x, int64_t stride, int s_q, int n, int n2, uint32_t* dst) {
    const int w = (n + 1) / 2;  // pairs copy_pairs writes
    for (int r = 0; r < s_q; ++r) {
      uint32_t* row = dst + size_t(r) * n2;
      copy_pairs(x + r * stride, n, row);
      fill(row + w, row + n2, 0u);
    }
    fill(dst + size_t(s_q) * n2, dst + size_t(rows_pad) * n2, 0u);
  }
  // n_pad rows of ld2 row pairs: transpose_row_pairs' columns, zeros past them
  void load_cols(const T* x, int64_t stride, int s_q, int n, int n_pad, uint32_t* dst) {
    transpose_row_pairs(x, stride, s_q, n, n_pad, dst, ld2, blk.data());
    const int written = round_up((s_q + 1) / 2, kTileRows);  // whole groups of 16 row pairs
    for (int c = 0; c < n_pad; ++c) fill(dst + size_t(c) * ld2 + written, dst + size_t(c + 1) * ld2, 0u);
  }
  // the block of kQB rows from row i0 (even: the row pairs start there) of head gi
  void select(int gi, int i0) {
    Qs = QsAll.data() + (size_t(gi) * rows_pad + i0) * dq2;
    dOs = dOsAll.data() + (size_t(gi) * rows_pad + i0) * dvq2;
    Qt = QtAll.data() + size_t(gi) * dp * ld2 + i0 / 2;
    dOt = dOtAll.data() + size_t(gi) * dvp * ld2 + i0 / 2;
  }
  // S and dP (unscaled, kRows x kBN, rows kBN apart) of the block's rows [r0, r0 + kRows): 32 keys
  // (a 2 x 2 tile block) at a time
  void scores(int r0, float* Sr, float* dPr) {
    tiles_fence();  // the panels: stored by vector code
    scores_2x2(Qs + size_t(r0) * dq2, dq2, Kd, Sr);
    scores_2x2(dOs + size_t(r0) * dvq2, dvq2, Vd, dPr);
  }
  // out (32 x kBN) = a b^T: a = 32 rows of n2 pairs (a multiple of 16), b^T = n2 rows of kBN pairs
  void scores_2x2(const uint32_t* a, int n2, const uint32_t* bt, float* out) {
    constexpr int kb = kBN * 4;  // b^T and out row bytes
    for (int kc = 0; kc < kBN; kc += 2 * kTilePairs) {
      zero_c4();
      for (int x = 0; x < n2; x += kTilePairs) {
        const uint32_t* b = bt + size_t(x) * kBN + kc;
        FAL_AMX_DP_2X2(a + x, a + size_t(kTileRows) * n2 + x, n2 * 4, b, b + kTilePairs, kb);
      }
      store_c2x2(out + kc, kb);
    }
  }
  // P and dS of the block's nr rows to bf16 pairs over rows (Pp, dSp: for dV^T, dK^T) and over keys
  // (dSk: for dQ), then dV^T += dO^T P and dK^T += Q^T dS (dp / dvp x kBN, rows kBN apart) over the
  // k-steps of 16 row pairs that hold rows below nr
  void accumulate(int nr, const float* P, const float* dS, float* dVt, float* dKt) {
    for (int r2 = 0; r2 < kQB / 2; ++r2) {
      pack_f32_row_pairs(P + size_t(2 * r2) * kBN, P + size_t(2 * r2 + 1) * kBN, kBN, Pp.data() + size_t(r2) * kBN);
      pack_f32_row_pairs(dS + size_t(2 * r2) * kBN, dS + size_t(2 * r2 + 1) * kBN, kBN, dSp.data() + size_t(r2) * kBN);
    }
    for (int r = 0; r < kQB; ++r) pack_f32_consecutive(dS + size_t(r) * kBN, kBN, dSk.data() + size_t(r) * (kBN / 2));
    nk = (nr + 2 * kTilePairs - 1) / (2 * kTilePairs);
    tiles_fence();  // Pp, dSp, dSk; the LeveledSum blocks (cleared by vector code)
    transposed_product(dOt, dvp, Pp.data(), dVt);
    transposed_product(Qt, dp, dSp.data(), dKt);
  }
  // out^T (n x kBN, rows kBN apart) += a^T b: a^T = n rows (a multiple of 32) of pairs over query
  // rows (ld2 apart), b = pairs over rows (kBN apart); nk k-steps of 16 pairs, 32 x 32 blocks of out^T
  void transposed_product(const uint32_t* at, int n, const uint32_t* b, float* out) {
    constexpr int kb = kBN * 4;
    for (int x = 0; x < n; x += 2 * kTileRows)
      for (int kc = 0; kc < kBN; kc += 2 * kTilePairs) {
        float* o = out + size_t(x) * kBN + kc;
        load_c2x2(o, kb);
        for (int ks = 0; ks < nk; ++ks) {
          const uint32_t* a0 = at + size_t(x) * ld2 + ks * kTilePairs;
          const uint32_t* bk = b + size_t(ks) * kTilePairs * kBN + kc;
          FAL_AMX_DP_2X2(a0, a0 + size_t(kTileRows) * ld2, ld2 * 4, bk, bk + kTilePairs, kb);
        }
        store_c2x2(o, kb);
      }
  }
  // dQ[r0, r0 + kRows) (dp columns, rows dp apart) += dS K, 32 x 32 blocks; keys past cols hold
  // dS = 0 and zero K rows (the second k-step of 16 key pairs skipped where cols <= 32)
  void dq(const float* /*dS*/, int r0, int cols, float* out) {
    const int rb = dp * 4;                                    // dQacc and Kk row bytes
    const int nkk = cols > kBN / 2 ? 2 : 1;                   // k-steps of 16 key pairs
    const uint32_t* a = dSk.data() + size_t(r0) * (kBN / 2);  // rows kBN / 2 pairs apart
    tiles_fence();                                            // out: dQacc or the caller's zeroed scratch
    for (int dc = 0; dc < dp; dc += 2 * kTilePairs) {
      float* oc = out + dc;
      load_c2x2(oc, rb);
      for (int ks = 0; ks < nkk; ++ks) {
        const uint32_t* bk = Kk + size_t(ks) * kTilePairs * dp + dc;
        FAL_AMX_DP_2X2(a + ks * kTilePairs, a + size_t(kTileRows) * (kBN / 2) + ks * kTilePairs, kBN * 2, bk,
                       bk + kTilePairs, rb);
      }
      store_c2x2(oc, rb);
    }
  }
};

}  // namespace

void bwd_items_run_amx(const BwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype != DType::kBFloat16) return bwd_items_run(p, begin, end);
  const TileScope tiles;
  bwd_items_loop<BwdPanelsAmx>(p, begin, end);
}

}  // namespace fal::cpu::FAL_CPU_NS

#undef FAL_AMX_DP_C4
#undef FAL_AMX_DP_2X2
