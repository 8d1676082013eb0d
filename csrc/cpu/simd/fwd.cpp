// fwd.cpp -- SIMD forward (more than kDecodeMaxRows query rows; decode.cpp takes fewer), compiled
// once per ISA.
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h / g, :]) v[b, j, h / g, :]
//
// One work item = (batch, head, chunk of kQC query rows). One skeleton, fwd_chunk, over a panels
// policy that owns the operand layout and the two products (as FA2 runs one body over its
// Kernel_traits):
//   PanelsF32   Q (times the scale), K^T (d x kBN) and V (kBN x dvp) as fp32 panels; P stays fp32
//   PanelsBf16  (AVX-512) Q, K and V as bf16 pairs for vdpbf16ps; S scaled at the store; P rounded
//               to bf16 pairs for P V (the row sums use the fp32 P)
// For each key tile the row's keys can see: pack K and V once (reused by every row group of the
// chunk from L1/L2); per group of kRM rows:
//   S = Q K^T                      panels.qk      (kRM x kBN, register-blocked)
//   transforms, visibility mask    score_mods.h   (only rows/tiles that need them)
//   online softmax step            softmax_row.h  (m, l, O rescale; S <- P)
//   dropout on P                   score_mods.h   (l sums the undropped P)
//   O += P V                       panels.pv
// then out = O / l and lse = m + log l (finish_row).
// Measured on a Zen 5 (2 threads, H8 N2048 D64): fp32 71 % of the FMA peak, bf16 49 % of the
// vdpbf16ps peak (bench/results/cpu-2026-11-28.md).
#include "cpu/simd/micro_f32.h"
#include "cpu/simd/prefetch.h"
#include "cpu/simd/score_mods.h"
#include "cpu/simd/softmax_row.h"
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

  // Q rows [0, rows) of the chunk as fp32 times the scale (natural-unit scores), zero-padded.
  void load_q(const FwdParams& p, const T* q0, int rows, int rows_pad) {
    d = p.d, dv = p.d_v, dvp = round_up(dv, kNV * kN);
    q.assign(size_t(rows_pad) * d, 0.f);
    kt.resize(size_t(round_up(d, kN)) * kBN);  // transpose_store writes whole kN-row blocks
    v.resize(size_t(kBN) * dvp);
    for (int r = 0; r < rows; ++r) convert_row(q0 + r * p.q_row_stride, d, float(p.scale), q.data() + size_t(r) * d);
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
  // S (kRM x kBN) = Q[r0, r0 + kRM) K^T
  void qk(int r0, float* S) { micro_qk(q.data() + size_t(r0) * d, d, kt.data(), S, d); }
  static constexpr bool kFusedStep = false;  // S through memory, the step over it (fwd_chunk)
  using Lane = VecLane;                      // the softmax step's lanes (softmax_row.h)
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

  void load_q(const FwdParams& p, const T* q0, int rows, int rows_pad) {
    d = p.d, d2 = (d + 1) / 2, dv = p.d_v, dvp = round_up(dv, kNV * kN);
    scale = float(p.scale);
    q.assign(size_t(rows_pad) * d2, 0u);
    kp.resize(size_t(round_up(d2, kN)) * kBN);  // transpose_store writes whole kN-row blocks
    vp.resize(size_t(kBN / 2) * dvp);
    pb.resize(size_t(kRM) * (kBN / 2));
    for (int r = 0; r < rows; ++r) copy_pairs(q0 + r * p.q_row_stride, d, q.data() + size_t(r) * d2);
  }
  // K as pairs over d (kp: d2 x kBN, transpose_pairs: kN keys at a time), V as pairs over keys (vp:
  // kBN / 2 x dvp), zero-padded. Against a scalar pair loop for K (A/B of the binaries, 2 threads,
  // Zen 5, 2026-12-01): fwd H8 N2048 D64 15.7 -> 14.5 ms, causal H8 N4096 D128 57.2 -> 52.5
  void pack(const T* k, const KvRows& krows, const T* v, const KvRows& vrows, int j0, int cols) {
    for (int c0 = 0; c0 < kBN; c0 += kN) {
      const T* kr[kN];
      for (int c = 0; c < kN; ++c) kr[c] = c0 + c < cols ? k + krows.at(j0 + c0 + c) : nullptr;
      transpose_pairs(kr, d, kp.data() + c0, kBN);
    }
    for (int j = 0; j < kBN / 2; ++j)
      pack_row_pairs(2 * j < cols ? v + vrows.at(j0 + 2 * j) : nullptr,
                     2 * j + 1 < cols ? v + vrows.at(j0 + 2 * j + 1) : nullptr, dv, dvp, vp.data() + size_t(j) * dvp);
  }
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

// Per-chunk state besides the panels: S of a row group, O, m, l of the chunk's rows.
struct ChunkState {
  Buf<float> s, o, m, l;
};

// One work item; true when an output row may hold a NaN value (write_row).
template <class Panels>
bool fwd_chunk(const FwdParams& p, int bi, int hi, int qc, Panels& pn, ChunkState& w) {
  using T = typename Panels::T;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int dv = p.d_v, dvp = round_up(dv, kNV * kN);
  const int hk = hi / (p.h / p.h_kv);
  const SeqInfo sq = seq_info(p, bi);
  const int i0 = qc * kQC, i1 = std::min(i0 + kQC, sq.s_q), rows = i1 - i0;
  if (rows <= 0) return false;  // a chunk past this (varlen) sequence's end
  const int rows_pad = round_up(rows, kRM);
  const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  pn.load_q(p, q + i0 * p.q_row_stride, rows, rows_pad);
  w.s.resize(size_t(kRM) * kBN);
  w.o.assign(size_t(rows_pad) * dvp, 0.f);
  w.m.assign(rows_pad, neg_inf);
  w.l.assign(rows_pad, 0.f);

  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  float* S = w.s.data();
  // The next key tile's K and V lines, prefetched in pieces between the row groups' steps (KeyLines,
  // prefetch.h) with the decode's hint for several rows' next block (isa.h: T1 on a 32 KB L1 and on Intel), so pack()
  // finds them cached. Against the whole slice of a row group at once into L1 (T0), 2 threads, 5
  // rounds (Zen 4, 2026-12-01): few rows over a long cache (chunked prefill: 32-64 query rows,
  // 16384-32768 keys, D128) AVX-512 1.02-1.19x, AVX2 1.1-1.18x; fwd H8 N2048 D64 and causal N4096
  // D128 1.0-1.02x on AVX-512, 1.03-1.2x on AVX2.
  KeyLines next;
  next.setup(k, krows, int64_t(p.d) * int64_t(sizeof(T)), v, vrows, int64_t(p.d_v) * int64_t(sizeof(T)),
             decode_prefetch().rows);
  const int steps = 3 * ((rows + kRM - 1) / kRM);  // the pf() calls of a tile
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
    const int cols = std::min(kBN, kr.hi - j0);
    next.finish();
    next.start(j0 + kBN, std::min(j0 + 2 * kBN, kr.hi));
    const int64_t per_step = (next.lines + steps - 1) / steps;
    auto pf = [&] { next.issue(per_step); };
    pn.pack(k, krows, v, vrows, j0, cols);
    for (int r0 = 0; r0 < rows; r0 += kRM) {
      const int g0 = i0 + r0, g1 = std::min(g0 + kRM, i1);
      const KeyRange gr = vis.keys_of_rows(g0, g1);
      if (gr.hi <= j0 || gr.lo >= j0 + cols) continue;  // no row of the group sees this tile
      // The plain case (no transform, mask or dropout; every row of the group sees the whole tile):
      // the group's rows through one interleaved softmax step, bit-identical to the row loop below
      // and 2-8 % faster overall (fwd H8 N2048 D64 fp32 / bf16 / fp16, 1 and 2 threads, in one
      // process); the bf16 panels run it on S in registers (qk_softmax: 1.02-1.035x, 1 and 2 threads,
      // Zen 4, 2026-12-02)
      // (full and plain: before S only for panels with a fused step, after it for all)
      auto is_full = [&] { return cols == kBN && vis.tile_fully_visible(g0, g1, j0, j0 + cols); };
      auto is_plain = [&](bool full) { return full && !mod.any && !mod.drop.on && g1 - g0 == kRM; };
      pf();
      bool fused = false;
      if constexpr (Panels::kFusedStep)
        fused =
            is_plain(is_full()) && pn.qk_softmax(r0, w.m.data() + r0, w.l.data() + r0, w.o.data() + size_t(r0) * dvp);
      if (!fused) pn.qk(r0, S);
      pf();
      const bool full = is_full();
      if (is_plain(full)) {
        if (!fused) {
          bool seen[kRM];
          softmax_rows_step<kRM, typename Panels::Lane>(S, kBN, kBN, w.m.data() + r0, w.l.data() + r0,
                                                        w.o.data() + size_t(r0) * dvp, dvp, dvp, seen);
          for (int r = 0; r < kRM; ++r) pn.emit_p(r, S + r * kBN);
        }
        pf();
        pn.pv(S, cols, w.o.data() + size_t(r0) * dvp);
        continue;
      }
      for (int r = 0; r < kRM; ++r) {
        float* sr = S + r * kBN;
        const int ri = r0 + r;
        if (g0 + r >= g1) {  // padding row
          fill(sr, sr + kBN, 0.f);
        } else {
          if (mod.any) apply_mods_row(mod, g0 + r, j0, sr, cols);
          if (!full) {
            const KeyRange rk = vis.keys_of_row(g0 + r);
            const int lo = std::max(0, rk.lo - j0), hi_ = std::min(cols, rk.hi - j0);
            for (int c = 0; c < kBN; ++c)
              if (c < lo || c >= hi_) sr[c] = neg_inf;
          }
          const bool seen =
              softmax_row_step<typename Panels::Lane>(sr, kBN, w.m[ri], w.l[ri], w.o.data() + size_t(ri) * dvp, dvp);
          if (seen && mod.drop.on) dropout_row_vec(mod.drop, g0 + r, j0, sr, cols);  // P V with the dropped P
        }
        pn.emit_p(r, sr);
      }
      pf();
      pn.pv(S, cols, w.o.data() + size_t(r0) * dvp);
    }
  }

  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
  bool nan_value = false;
  for (int r = 0; r < rows; ++r)
    lse[i0 + r] = write_row(w.o.data() + size_t(r) * dvp, dv, w.m[r], w.l[r], o + (i0 + r) * p.o_row_stride, nan_value);
  return nan_value;
}

template <class Panels>
bool run_chunks(const FwdParams& p, int64_t begin, int64_t end) {
  const int nqc = (p.s_q + kQC - 1) / kQC;
  Panels pn;
  ChunkState w;
  bool nan_value = false;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t bh = it / nqc;
    nan_value |= fwd_chunk(p, int(bh / p.h), int(bh % p.h), int(it % nqc), pn, w);
  }
  return nan_value;
}

}  // namespace

int64_t fwd_chunk_items(const FwdParams& p) { return int64_t(p.b) * p.h * ((p.s_q + kQC - 1) / kQC); }

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
