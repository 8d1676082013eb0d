// bwd.cpp -- SIMD backward, compiled once per ISA: bwd_head.h's skeleton over vector panels. bf16 on
// AVX-512 feeds every product bf16 pairs (vdpbf16ps, micro_bf16.h); the other dtypes run the fp32
// microkernels (micro_f32.h). The amx ISA's bf16 backward: bwd_amx.cpp.
#include "cpu/simd/bwd_head.h"
#include "cpu/simd/stages.h"
#if defined(FAL_SIMD_AVX512)
#include "cpu/simd/micro_bf16.h"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// The panels (bwd_head.h's policy). PanelsF32 scales Q by `scale` on load (natural-unit S, mul = 1,
// dK needs no scale); PanelsBf16 feeds vdpbf16ps bf16 pairs (mul = scale on S, dK scaled at the
// end; P and dS rounded to bf16 for the products, as FA2 does on GPUs).
template <typename T_>
struct BwdPanelsF32 {
  using T = T_;
  static constexpr int kRows = kRM, kQB = 4 * kRM;  // 24 rows per step: the inner dim of dK / dV
  static constexpr int kTiles = 1;                  // key tiles per pass
  static constexpr bool kTransposedKV = false;
  int d = 0, dv = 0, dp = 0, dvp = 0, rows_pad = 0;
  float score_mul = 1.f, dk_scale = 1.f, qmul = 1.f;
  Buf<float> Kp, Kt, Vt, Qall, dOall;
  const float *Qb = nullptr, *dOb = nullptr;  // the current block's rows (select)

  BwdPanelsF32(const BwdParams& p, int g, int s_q)
      : d(p.d),
        dv(p.d_v),
        dp(round_up(d, kNV * kN)),
        dvp(round_up(dv, kNV * kN)),
        rows_pad(bwd_rows_pad(s_q, kQB)),
        qmul(float(p.scale)),
        Kp(size_t(kBN) * dp),
        Kt(size_t(d) * kBN),
        Vt(size_t(dv) * kBN),
        Qall(size_t(g) * rows_pad * dp, 0.f),
        dOall(size_t(g) * rows_pad * dvp, 0.f) {}

  // K (kBN x dp), K^T (d x kBN), V^T (dv x kBN) of keys [j0, j0 + cols), zero-padded
  void pack_keys(int /*t*/, const T* k, int64_t k_stride, const T* v, int64_t v_stride, int j0, int cols) {
    fill(Kp.begin(), Kp.end(), 0.f);
    fill(Kt.begin(), Kt.end(), 0.f);
    fill(Vt.begin(), Vt.end(), 0.f);
    for (int cc = 0; cc < cols; ++cc) {
      convert_row(k + (j0 + cc) * k_stride, d, 1.f, Kp.data() + size_t(cc) * dp);
      for (int x = 0; x < d; ++x) Kt[x * kBN + cc] = Kp[size_t(cc) * dp + x];
      const T* vr = v + (j0 + cc) * v_stride;
      for (int x = 0; x < dv; ++x) Vt[x * kBN + cc] = load_as_float(vr + x);
    }
  }
  // Q (times the scale) and dO of query head gi's s_q rows, once per work item (rows past s_q 0)
  void load_head(int gi, const T* q, int64_t q_stride, const T* dout, int64_t do_stride, int s_q) {
    for (int r = 0; r < s_q; ++r) {
      convert_row(q + r * q_stride, d, qmul, Qall.data() + (size_t(gi) * rows_pad + r) * dp);
      convert_row(dout + r * do_stride, dv, 1.f, dOall.data() + (size_t(gi) * rows_pad + r) * dvp);
    }
  }
  void tile(int /*t*/) {}  // one key tile per pass
  // the block of kQB rows from row i0 (even) of head gi
  void select(int gi, int i0) {
    Qb = Qall.data() + (size_t(gi) * rows_pad + i0) * dp;
    dOb = dOall.data() + (size_t(gi) * rows_pad + i0) * dvp;
  }
  // S and dP of the block's rows [r0, r0 + kRM)
  void scores(int r0, float* Sr, float* dPr) {
    micro_qk(Qb + size_t(r0) * dp, d, Kt.data(), Sr, dp);
    micro_qk(dOb + size_t(r0) * dvp, dv, Vt.data(), dPr, dvp);
  }
  // dV += P^T dO, dK += dS^T Q over the block's nr rows
  void accumulate(int nr, const float* P, const float* dS, float* dV, float* dK) {
    micro_tn(P, dOb, nr, dvp, dV);
    micro_tn(dS, Qb, nr, dp, dK);
  }
  // dQ[r0, r0 + kRM) += dS K
  void dq(const float* dS, int r0, int cols, float* out) { micro_pv(dS + size_t(r0) * kBN, Kp.data(), cols, dp, out); }
};

#if defined(FAL_SIMD_AVX512)
struct BwdPanelsBf16 {
  using T = bf16_t;
  static constexpr int kRows = kRM, kQB = 4 * kRM;
  static constexpr int kTiles = 1;
  static constexpr bool kTransposedKV = false;
  int d = 0, dv = 0, d2 = 0, dv2 = 0, dp = 0, dvp = 0, cols2 = 0, rows_pad = 0;
  float score_mul = 1.f, dk_scale = 1.f;
  Buf<uint32_t> Kd, Vd, Kk, QsAll, dOsAll, QrAll, dOrAll, Pp, dSp, dSk;
  const uint32_t *Qs = nullptr, *dOs = nullptr, *Qr = nullptr, *dOr = nullptr;  // the current block (select)

  BwdPanelsBf16(const BwdParams& p, int g, int s_q)
      : d(p.d),
        dv(p.d_v),
        d2((d + 1) / 2),
        dv2((dv + 1) / 2),
        dp(round_up(d, kNV * kN)),
        dvp(round_up(dv, kNV * kN)),
        rows_pad(bwd_rows_pad(s_q, kQB)),
        score_mul(float(p.scale)),
        dk_scale(float(p.scale)),
        Kd(size_t(round_up(d2, kN)) * kBN),  // transpose_pairs writes whole kN-row blocks
        Vd(size_t(round_up(dv2, kN)) * kBN),
        Kk(size_t(kBN / 2) * dp),
        QsAll(size_t(g) * rows_pad * d2, 0u),
        dOsAll(size_t(g) * rows_pad * dv2, 0u),
        QrAll(size_t(g) * rows_pad / 2 * dp, 0u),
        dOrAll(size_t(g) * rows_pad / 2 * dvp, 0u),
        Pp(size_t(kQB / 2) * kBN),
        dSp(size_t(kQB / 2) * kBN),
        dSk(size_t(kQB) * (kBN / 2)) {}

  // K^T and V^T as pairs over the head dims (Kd, Vd), K as pairs over keys (Kk), zero-padded
  void pack_keys(int /*t*/, const T* k, int64_t k_stride, const T* v, int64_t v_stride, int j0, int cols) {
    cols2 = (cols + 1) / 2;
    for (int c0 = 0; c0 < kBN; c0 += kN) {
      const T* kr[kN];
      const T* vr[kN];
      for (int c = 0; c < kN; ++c) {
        kr[c] = c0 + c < cols ? k + (j0 + c0 + c) * k_stride : nullptr;
        vr[c] = c0 + c < cols ? v + (j0 + c0 + c) * v_stride : nullptr;
      }
      transpose_pairs(kr, d, Kd.data() + c0, kBN);
      transpose_pairs(vr, dv, Vd.data() + c0, kBN);
    }
    for (int c2 = 0; c2 < kBN / 2; ++c2) {
      const T* a = 2 * c2 < cols ? k + (j0 + 2 * c2) * k_stride : nullptr;
      const T* b = 2 * c2 + 1 < cols ? k + (j0 + 2 * c2 + 1) * k_stride : nullptr;
      pack_row_pairs(a, b, d, dp, Kk.data() + size_t(c2) * dp);
    }
  }
  // Query head gi's Q and dO rows, once per work item: as pairs over the head dims (Qs, dOs) and as
  // pairs over rows (2 r2, 2 r2 + 1) (Qr, dOr); rows past s_q 0
  void load_head(int gi, const T* q, int64_t q_stride, const T* dout, int64_t do_stride, int s_q) {
    for (int r = 0; r < s_q; ++r) {
      copy_pairs(q + r * q_stride, d, QsAll.data() + (size_t(gi) * rows_pad + r) * d2);
      copy_pairs(dout + r * do_stride, dv, dOsAll.data() + (size_t(gi) * rows_pad + r) * dv2);
    }
    for (int r2 = 0; 2 * r2 < s_q; ++r2) {
      const int ra = 2 * r2, rb = 2 * r2 + 1;
      const size_t at = size_t(gi) * rows_pad / 2 + r2;
      pack_row_pairs(q + ra * q_stride, rb < s_q ? q + rb * q_stride : nullptr, d, dp, QrAll.data() + at * dp);
      pack_row_pairs(dout + ra * do_stride, rb < s_q ? dout + rb * do_stride : nullptr, dv, dvp,
                     dOrAll.data() + at * dvp);
    }
  }
  void tile(int /*t*/) {}  // one key tile per pass
  // the block of kQB rows from row i0 (even: the row pairs start there) of head gi
  void select(int gi, int i0) {
    Qs = QsAll.data() + (size_t(gi) * rows_pad + i0) * d2;
    dOs = dOsAll.data() + (size_t(gi) * rows_pad + i0) * dv2;
    Qr = QrAll.data() + (size_t(gi) * rows_pad + i0) / 2 * dp;
    dOr = dOrAll.data() + (size_t(gi) * rows_pad + i0) / 2 * dvp;
  }
  void scores(int r0, float* Sr, float* dPr) {
    micro_qk_bf16(Qs + size_t(r0) * d2, d2, d2, Kd.data(), Sr, 1.f);
    micro_qk_bf16(dOs + size_t(r0) * dv2, dv2, dv2, Vd.data(), dPr, 1.f);
  }
  // P and dS to bf16 pairs over rows (for dV, dK) and over keys (for dQ), then the two products
  void accumulate(int nr, const float* P, const float* dS, float* dV, float* dK) {
    for (int r2 = 0; r2 < kQB / 2; ++r2) {
      pack_f32_row_pairs(P + size_t(2 * r2) * kBN, P + size_t(2 * r2 + 1) * kBN, kBN, Pp.data() + size_t(r2) * kBN);
      pack_f32_row_pairs(dS + size_t(2 * r2) * kBN, dS + size_t(2 * r2 + 1) * kBN, kBN, dSp.data() + size_t(r2) * kBN);
    }
    for (int r = 0; r < kQB; ++r) pack_f32_consecutive(dS + size_t(r) * kBN, kBN, dSk.data() + size_t(r) * (kBN / 2));
    const int nr2 = (nr + 1) / 2;
    micro_tn_bf16(Pp.data(), dOr, nr2, dvp, dV);
    micro_tn_bf16(dSp.data(), Qr, nr2, dp, dK);
  }
  void dq(const float* /*dS*/, int r0, int /*cols*/, float* out) {
    micro_pv_bf16(dSk.data() + size_t(r0) * (kBN / 2), Kk.data(), cols2, dp, out);
  }
};
#endif

}  // namespace

int64_t bwd_items(const BwdParams& p) { return int64_t(p.b) * p.h_kv * std::max(1, p.key_splits); }

void bwd_items_run(const BwdParams& p, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::kFloat32: return bwd_items_loop<BwdPanelsF32<float>>(p, begin, end);
    case DType::kFloat16: return bwd_items_loop<BwdPanelsF32<fp16_t>>(p, begin, end);
#if defined(FAL_SIMD_AVX512)
    case DType::kBFloat16: return bwd_items_loop<BwdPanelsBf16>(p, begin, end);
#elif defined(FAL_SIMD_AVX2)
    case DType::kBFloat16: return bwd_items_loop<BwdPanelsF32<bf16_t>>(p, begin, end);
#else
#error "bwd.cpp: no bf16 panels for this ISA"
#endif
    case DType::kFloat64: break;  // the portable kernel (kernels.cpp)
  }
}

}  // namespace fal::cpu::FAL_CPU_NS
