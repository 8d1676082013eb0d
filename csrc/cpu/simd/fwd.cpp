// fwd.cpp -- SIMD forward (more than kDecodeMaxRows query rows; decode.cpp takes fewer), compiled
// once per ISA.
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h / g, :]) v[b, j, h / g, :]
//
// One work item = (batch, head, chunk of kQC query rows). One skeleton, fwd_chunk (fwd_chunk.h),
// over a panels policy that owns the operand layout and the two products (as FA2 runs one body
// over its Kernel_traits):
//   PanelsF32   Q (times the scale), K^T (d x kBN) and V (kBN x dvp) as fp32 panels; P stays fp32
//   PanelsBf16  (AVX-512) Q, K and V as bf16 pairs for vdpbf16ps; S scaled at the store; P rounded
//               to bf16 pairs for P V (the row sums use the fp32 P)
//   PanelsAmx   (fwd_amx.cpp, the "amx" ISA) PanelsBf16's layouts, the products on AMX tiles
// Per group of kRM rows: S = Q K^T (panels.qk, register-blocked), the score mods and mask, the
// online softmax step (softmax_row.h), dropout, O += P V (panels.pv).
// Measured on a Zen 5 (2 threads, H8 N2048 D64): fp32 71 % of the FMA peak, bf16 49 % of the
// vdpbf16ps peak (bench/results/cpu-2026-11-28.md).
#include "cpu/simd/fwd_chunk.h"
#include "cpu/simd/micro_f32.h"
#include "cpu/simd/stages.h"
#if defined(FAL_SIMD_AVX512)
#include "cpu/simd/micro_bf16.h"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// fp32 panels (fp32 inputs, and fp16 / bf16 inputs converted on load).
template <typename T_>
struct PanelsF32 {
  using T = T_;
  Buf<float> q, kt, v;
  int d = 0, dv = 0, dvp = 0;

  // Q rows [0, rows) of the chunk's nh heads as fp32 times the scale (natural-unit scores), each
  // head's zero-padded to rows_pad.
  void load_q(const FwdParams& p, const T* q0, int rows, int rows_pad, int nh) {
    d = p.d, dv = p.d_v, dvp = round_up(dv, kNV * kN);
    q.assign(size_t(nh) * rows_pad * d, 0.f);
    kt.resize(size_t(round_up(d, kN)) * kBN);  // transpose_store writes whole kN-row blocks
    v.resize(size_t(kBN) * dvp);
    for (int j = 0; j < nh; ++j)
      for (int r = 0; r < rows; ++r)
        convert_row(q0 + j * p.q_head_stride + r * p.q_row_stride, d, float(p.scale),
                    q.data() + (size_t(j) * rows_pad + r) * d);
  }
  // K^T (d x kBN) and V (kBN x dvp) of keys [j0, j0 + cols), zero-padded. K^T by kN x kN blocks:
  // kN rows loaded (converted to fp32) and transposed in registers (transpose_store); against a
  // scalar transpose (A/B of the binaries, 2 threads, Zen 5, 2026-12-01): fwd H8 N2048 D64 fp32
  // 23.8 -> 23.3 ms, fp16 24.2 -> 23.3
  void pack(const T* k, const KvRows& krows, const T* vsrc, const KvRows& vrows, int j0, int cols) {
    float* ktp = kt.data();
    for (int c0 = 0; c0 < kBN; c0 += kN) {
      const T* kr[kN];
      for (int c = 0; c < kN; ++c) kr[c] = c0 + c < cols ? k + krows.at(j0 + c0 + c) : nullptr;
      transpose_rows(kr, d, ktp + c0, kBN);
    }
    float* vp = v.data();
    for (int c = 0; c < cols; ++c) {
      convert_row(vsrc + vrows.at(j0 + c), dv, 1.f, vp + size_t(c) * dvp);
      fill(vp + size_t(c) * dvp + dv, vp + size_t(c + 1) * dvp, 0.f);
    }
  }
  static constexpr int kRows = kRM;            // rows per group (fwd_chunk.h)
  static constexpr int kChunkRows = kQC;       // rows per work item
  static constexpr bool kRedoNanRows = false;  // fp32 products: a NaN score is the reference's
  // S (kRM x kBN) = Q[r0, r0 + kRM) K^T
  void qk(int r0, float* S) { micro_qk(q.data() + size_t(r0) * d, d, kt.data(), S, d); }
  static constexpr bool kFusedStep = false;  // S through memory, the step over it (fwd_chunk)
  // the softmax step's lanes (softmax_row.h): fp32 inputs the degree-5 exp; fp16 / bf16 inputs,
  // whose output is rounded to 2^-11 / 2^-9, the degree-3 exp of VecLaneBf16P (1e-4 relative; P stays
  // fp32 here). AVX2, H8 N2048 D64, .so files alternating (Zen 3, 2026-12-03): bf16 1 thread 75.0 ->
  // 76.7 % of the FMA peak, fp16 1 / 2 threads +1.7 / +1.5 points; the largest error against fp64
  // over the fp16 output of torch's own fp16 SDPA 1.0 -> 1.03 (the rule allows 2)
  using Lane = std::conditional_t<std::is_same_v<T_, float>, VecLane, VecLaneBf16P>;
  bool qk_softmax(int /*r0*/, float* /*m*/, float* /*l*/, float* /*o*/) { return false; }
  void emit_p(int /*r*/, const float* /*sr*/) {}  // P V reads the fp32 P in S
  // O[r0, r0 + kRM) += P V
  void pv(const float* S, int cols, float* o) { micro_pv(S, v.data(), cols, dvp, o); }
};

#if defined(FAL_SIMD_AVX512)
struct PanelsBf16 {
  using T = bf16_t;
  Buf<uint32_t> q, kp, vp, pb;
  int d = 0, d2 = 0, dv = 0, dvp = 0;
  float scale = 1.f;

  void load_q(const FwdParams& p, const T* q0, int rows, int rows_pad, int nh) {
    d = p.d, d2 = (d + 1) / 2, dv = p.d_v, dvp = round_up(dv, kNV * kN);
    scale = float(p.scale);
    q.assign(size_t(nh) * rows_pad * d2, 0u);
    kp.resize(size_t(round_up(d2, kN)) * kBN);  // transpose_store writes whole kN-row blocks
    vp.resize(size_t(kBN / 2) * dvp);
    pb.resize(size_t(kRM) * (kBN / 2));
    for (int j = 0; j < nh; ++j)
      for (int r = 0; r < rows; ++r)
        copy_pairs(q0 + j * p.q_head_stride + r * p.q_row_stride, d, q.data() + (size_t(j) * rows_pad + r) * d2);
  }
  // K as pairs over d, V as pairs over keys (pack_tile_pairs, micro_bf16.h)
  void pack(const T* k, const KvRows& krows, const T* v, const KvRows& vrows, int j0, int cols) {
    pack_tile_pairs(k, krows, v, vrows, j0, cols, d, dv, dvp, kp.data(), vp.data());
  }
  static constexpr int kRows = kRM;
  static constexpr int kChunkRows = kQC;
  static constexpr bool kRedoNanRows = false;  // bf16 products: a NaN score is the reference's
  void qk(int r0, float* S) { micro_qk_bf16(q.data() + size_t(r0) * d2, d2, d2, kp.data(), S, scale); }
  // S, the softmax step and P's bf16 pairs of a plain, fully visible tile in registers
  // (micro_qk_softmax_bf16); false, nothing done, when a row's max is -inf
  static constexpr bool kFusedStep = true;
  using Lane = VecLaneBf16P;  // P rounded to bf16 for P V
  bool qk_softmax(int r0, float* m, float* l, float* o) {
    return micro_qk_softmax_bf16(q.data() + size_t(r0) * d2, d2, d2, kp.data(), scale, m, l, o, dvp, pb.data());
  }
  // row r's P (fp32, kBN) -> bf16 pairs for P V
  void emit_p(int r, const float* sr) { pack_f32_consecutive(sr, kBN, pb.data() + r * (kBN / 2)); }
  void pv(const float* /*S*/, int cols, float* o) { micro_pv_bf16(pb.data(), vp.data(), (cols + 1) / 2, dvp, o); }
};
#endif

}  // namespace

int64_t fwd_chunk_items(const FwdParams& p) { return chunk_items(p, kQC); }

bool fwd_chunks_run(const FwdParams& p, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::kFloat32: return run_chunks<PanelsF32<float>>(p, begin, end);
    case DType::kFloat16: return run_chunks<PanelsF32<fp16_t>>(p, begin, end);
#if defined(FAL_SIMD_AVX512)
    case DType::kBFloat16: return run_chunks<PanelsBf16>(p, begin, end);
#elif defined(FAL_SIMD_AVX2)
    case DType::kBFloat16: return run_chunks<PanelsF32<bf16_t>>(p, begin, end);
#else
#error "fwd.cpp: no bf16 panels for this ISA"
#endif
    case DType::kFloat64: break;  // the portable kernel (kernels.cpp)
  }
  return true;
}

}  // namespace fal::cpu::FAL_CPU_NS
