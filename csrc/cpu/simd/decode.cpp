// decode.cpp -- SIMD decode: at most kDecodeMaxRows query rows (one token, GQA heads packed as
// rows, speculative decoding) against a long KV range, K and V streamed from memory once,
// optionally split over work items (split-KV, merged by fwd_combine_run). Compiled once per ISA.
// Memory-bound: the measure is GB/s of K + V against the machine's read bandwidth
// (bench/cpu_bench.py).
#include "cpu/simd/common.h"
#include "cpu/simd/softmax_row.h"
#include "cpu/simd/stages.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// Several query rows (GQA heads packed as rows, speculative decoding) share each block of kN
// keys: K is staged transposed (dp x kN, one vector = kN keys of one dim), so a row's kN scores
// are one vector built by d broadcast-FMAs -- no horizontal sums -- and R rows share each K load;
// P V is blocked R rows x 4 vectors of O, so each V load feeds R FMAs.
// Registers (zmm / ymm): QK 2R accumulators (two dims in flight) + 2 K vectors: R = 8 -> 18 of
// 32 on AVX-512, R = 4 -> 10 of 16 on AVX2; PV R x 4 accumulators + 4 V vectors + 1 broadcast:
// R = 4 -> 21 of 32, R = 2 -> 13 of 16.
constexpr int kQkRows = kN == 16 ? 8 : 4;
constexpr int kPvRows = kN == 16 ? 4 : 2;

// sc[r][0..kN) = q_r . k_j for the block's keys; q rows dp apart (zero past d), kT = dp x kN.
template <int R>
inline void decode_qk_rows(const float* qf, int dp, const float* kT, int d, float* sc) {
  VF a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = VF::zero();
  int x = 0;
  for (; x + 1 < d; x += 2) {
    const VF k0 = VF::load(kT + size_t(x) * kN), k1 = VF::load(kT + size_t(x + 1) * kN);
    for (int r = 0; r < R; ++r) {
      a0[r] = fma(VF::set1(qf[size_t(r) * dp + x]), k0, a0[r]);
      a1[r] = fma(VF::set1(qf[size_t(r) * dp + x + 1]), k1, a1[r]);
    }
  }
  if (x < d) {
    const VF k0 = VF::load(kT + size_t(x) * kN);
    for (int r = 0; r < R; ++r) a0[r] = fma(VF::set1(qf[size_t(r) * dp + x]), k0, a0[r]);
  }
  for (int r = 0; r < R; ++r) (a0[r] + a1[r]).store(sc + r * kN);
}

// o[r][0..dv) += sum_{jj < nk} p[r][jj] v_jj[0..dv), the V rows read in place (converted to fp32
// on the fly: each load feeds R FMAs); o rows dvp apart, p rows kN apart.
template <int R, typename T>
inline void decode_pv_rows(const float* p, const T* const* vp, int dv, int nk, float* o, int dvp) {
  int x0 = 0;
  for (; x0 + 4 * kN <= dv; x0 += 4 * kN) {
    VF acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = VF::load(o + size_t(r) * dvp + x0 + c * kN);
    for (int jj = 0; jj < nk; ++jj) {
      const T* vr = vp[jj] + x0;
      const VF v0 = load_f32(vr, kN), v1 = load_f32(vr + kN, kN), v2 = load_f32(vr + 2 * kN, kN),
               v3 = load_f32(vr + 3 * kN, kN);
      for (int r = 0; r < R; ++r) {
        const VF pr = VF::set1(p[r * kN + jj]);
        acc[r][0] = fma(pr, v0, acc[r][0]);
        acc[r][1] = fma(pr, v1, acc[r][1]);
        acc[r][2] = fma(pr, v2, acc[r][2]);
        acc[r][3] = fma(pr, v3, acc[r][3]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c].store(o + size_t(r) * dvp + x0 + c * kN);
  }
  for (; x0 < dv; x0 += kN) {
    const int w = std::min(kN, dv - x0);
    VF acc[R];
    for (int r = 0; r < R; ++r) acc[r] = VF::load(o + size_t(r) * dvp + x0);
    for (int jj = 0; jj < nk; ++jj) {
      const VF vv = load_f32(vp[jj] + x0, w);
      for (int r = 0; r < R; ++r) acc[r] = fma(VF::set1(p[r * kN + jj]), vv, acc[r]);
    }
    for (int r = 0; r < R; ++r) acc[r].store(o + size_t(r) * dvp + x0);
  }
}

// Runtime row count -> the templates above (rows 1..R_max in blocks of R_max).
template <int RMax, typename F>
inline void for_row_blocks(int rows, F&& f) {
  for (int r0 = 0; r0 < rows; r0 += RMax) {
    const int n = std::min(RMax, rows - r0);
    switch (n) {
      case 1: f(r0, std::integral_constant<int, 1>{}); break;
      case 2: f(r0, std::integral_constant<int, 2>{}); break;
      case 3:
        if constexpr (RMax >= 3) f(r0, std::integral_constant<int, 3>{});
        break;
      case 4:
        if constexpr (RMax >= 4) f(r0, std::integral_constant<int, 4>{});
        break;
      case 5:
        if constexpr (RMax >= 5) f(r0, std::integral_constant<int, 5>{});
        break;
      case 6:
        if constexpr (RMax >= 6) f(r0, std::integral_constant<int, 6>{});
        break;
      case 7:
        if constexpr (RMax >= 7) f(r0, std::integral_constant<int, 7>{});
        break;
      default:
        if constexpr (RMax >= 8) f(r0, std::integral_constant<int, 8>{});
        break;
    }
  }
}

// One work item = (batch, head, split of the keys). Keys go in blocks of kN: the block's K and V
// rows are converted to fp32 once (L1), the kN scores of a row are kN independent FMA chains,
// reduced to one vector; max / exp2 / sum run on that vector; O += P V walks the block with the
// O row chunks as accumulators. Memory-bound: nothing is packed across blocks.
// One (batch, query head)'s decode state over a key range: run() may be called on consecutive key
// ranges (the all-heads items below interleave the heads chunk by chunk), finish() writes the
// output (or the split's partial output and LSE).
template <typename T>
struct DecodeHead {
  const FwdParams* pp = nullptr;
  int bi = 0, hi = 0, rows = 0, d = 0, dv = 0, dp = 0, dvp = 0;
  // software prefetch of the rows 4 blocks ahead (per-head streams). Kept for contiguous rows too:
  // without it, head-contiguous decode fell from 56 to 28 GB/s (fp32, AVX-512) and from 23 to
  // 15 GB/s (fp32, AVX2 path) on a Zen 5 (2026-11-30, H32 1x32768 D128, 2 threads)
  bool prefetch = true;
  SeqInfo sq{};
  ScoreMod mod;
  float *qf = nullptr, *of = nullptr, *m = nullptr, *l = nullptr, *kb = nullptr;
  const T *k = nullptr, *v = nullptr;
  KvRows krows, vrows;
  KeyRange rr[kDecodeMaxRows];
  KeyRange kr{0, 0};

  // per-head state (Q, O, m, l, P of a block) and the block staging scratch (K, V rows as fp32),
  // which heads processed one after the other can share
  static size_t floats(const FwdParams& p) { return size_t(p.s_q) * (round_up(p.d, kN) + round_up(p.d_v, kN) + 2); }
  static size_t scratch_floats(const FwdParams& p) { return size_t(kN) * round_up(p.d, kN); }

  // Points the state at mem (its layout: floats(p)) without touching it; false when the sequence
  // has no query row.
  bool attach(const FwdParams& p, int bi_, int hi_, float* mem, float* scratch) {
    pp = &p;
    bi = bi_;
    hi = hi_;
    sq = seq_info(p, bi);
    d = p.d, dv = p.d_v, dp = round_up(d, kN), dvp = round_up(dv, kN), rows = sq.s_q;
    if (rows <= 0) return false;
    const int hk = hi / (p.h / p.h_kv);
    mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
    qf = mem;                     // rows x dp (scaled by c)
    of = qf + size_t(rows) * dp;  // rows x dvp
    m = of + size_t(rows) * dvp;  // rows
    l = m + rows;                 // rows
    kb = scratch;                 // K of a block, transposed: dp x kN
    k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
    v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
    krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
    vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
    const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
    kr = vis.keys_of_rows(0, rows);

    for (int r = 0; r < rows; ++r) rr[r] = vis.keys_of_row(r);
    return true;
  }

  // attach + a fresh state: Q converted (times the scale), O = 0, m = -inf, l = 0.
  bool init(const FwdParams& p, int bi_, int hi_, float* mem, float* scratch) {
    if (!attach(p, bi_, hi_, mem, scratch)) return false;
    fill(mem, mem + floats(p), 0.f);
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
    const float c = float(p.scale);  // natural-unit scores; exp2 of (s - m) * log2 e
    for (int r = 0; r < rows; ++r) {
      convert_row(q + r * p.q_row_stride, d, c, qf + size_t(r) * dp);
      m[r] = -std::numeric_limits<float>::infinity();
    }
    return true;
  }

  // Keys [j_begin, j_end) of split `split` of the visible range.
  void split_range(int split, int& j_begin, int& j_end) const {
    const int n = kr.hi - kr.lo, per = (n + pp->num_splits - 1) / pp->num_splits;
    j_begin = kr.lo + std::min(n, split * per);
    j_end = kr.lo + std::min(n, (split + 1) * per);
  }

  void run(int j_begin, int j_end) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    alignas(64) float sc[kN];
    const int krow_bytes = d * int(sizeof(T)), vrow_bytes = dv * int(sizeof(T));
    for (int jb = j_begin; jb < j_end; jb += kN) {
      const int nk = std::min(kN, j_end - jb);
      // software prefetch of the block after next: the two interleaved streams (K, V) with a row
      // stride of heads * d elements defeat the hardware prefetcher's distance (measured: 6-9 GB/s
      // per core without, against ~40 GB/s for a plain read)
      for (int jj = 0; prefetch && jj < kN && jb + 4 * kN + jj < j_end; ++jj) {
        const char* kn = reinterpret_cast<const char*>(k + krows.at(jb + 4 * kN + jj));
        const char* vn = reinterpret_cast<const char*>(v + vrows.at(jb + 4 * kN + jj));
        for (int off = 0; off < krow_bytes; off += 64) _mm_prefetch(kn + off, _MM_HINT_T0);
        for (int off = 0; off < vrow_bytes; off += 64) _mm_prefetch(vn + off, _MM_HINT_T0);
      }
      if (rows == 1) {  // single query row: read K and V rows in place, no staging copies
        const KeyRange& rk = rr[0];
        if (rk.hi <= jb || rk.lo >= jb + nk) continue;
        const T* kp[kN];
        const T* vp[kN];
        for (int jj = 0; jj < nk; ++jj) {
          kp[jj] = k + krows.at(jb + jj);
          vp[jj] = v + vrows.at(jb + jj);
        }
        VF acc[kN];
        for (int jj = 0; jj < kN; ++jj) acc[jj] = VF::zero();
        for (int x = 0; x < d; x += kN) {
          const int w = std::min(kN, d - x);
          const VF qv = VF::load(qf + x);
          for (int jj = 0; jj < nk; ++jj) acc[jj] = fma(qv, load_f32(kp[jj] + x, w), acc[jj]);
        }
        hsum_each(acc).store(sc);                                 // (keys past nk: zero accumulators, masked below)
        if (mod.any || nk < kN || jb < rk.lo || jb + kN > rk.hi)  // else: every key of the block visible as is
          for (int jj = 0; jj < kN; ++jj) {
            const int j = jb + jj;
            if (!(jj < nk && j >= rk.lo && j < rk.hi))
              sc[jj] = neg_inf;
            else if (mod.any)
              sc[jj] = mod.apply(sc[jj], 0, j, static_cast<float*>(nullptr));
          }
        // every score so far masked (attn_mask): P = 0, nothing to add -- unless one is NaN
        if (!softmax_row_step(sc, kN, m[0], l[0], of, dvp)) continue;
        if (mod.drop.on) mod.drop.apply_row(0, jb, sc, nk);
        // O += P V. Up to 8 vectors of O (AVX-512 at D <= 128): one accumulator per vector, each a
        // chain of nk FMAs, and the out-of-order core runs the 8 chains side by side. More vectors
        // (AVX2 at D 128: 16) overflow that window: blocks of 4 accumulators instead. Interleaved
        // in one process (Zen 5, H32 1x32768 D128 fp32, 2 threads): AVX2 23 -> 31 GB/s blocked,
        // AVX-512 44 per-vector vs 33 blocked.
        if (dvp / kN <= 8) {
          for (int x = 0; x < dv; x += kN) {
            const int w = std::min(kN, dv - x);
            VF o = VF::load(of + x);
            for (int jj = 0; jj < nk; ++jj) o = fma(VF::set1(sc[jj]), load_f32(vp[jj] + x, w), o);
            o.store(of + x);
          }
        } else {
          decode_pv_rows<1>(sc, vp, dv, nk, of, dvp);
        }
        continue;
      }
      // K transposed (kT = kb: dp x kN, keys past nk zero); V read in place by the P V below
      const T* vp[kN];
      {
        const T* kp[kN];
        for (int jj = 0; jj < nk; ++jj) {
          kp[jj] = k + krows.at(jb + jj);
          vp[jj] = v + vrows.at(jb + jj);
        }
        float* const kT = kb;
        const int dd = d;
        VF blk[kN];
        for (int x = 0; x < dp; x += kN) {
          const int w = std::max(0, std::min(kN, dd - x));
          for (int jj = 0; jj < kN; ++jj) blk[jj] = jj < nk ? load_f32(kp[jj] + x, w) : VF::zero();
          transpose_store(blk, kT + size_t(x) * kN, kN);
        }
      }
      alignas(64) float sall[kDecodeMaxRows * kN];
      for_row_blocks<kQkRows>(rows, [&](int r0, auto rn) {
        decode_qk_rows<decltype(rn)::value>(qf + size_t(r0) * dp, dp, kb, d, sall + r0 * kN);
      });
      for (int r = 0; r < rows; ++r) {
        float* srow = sall + r * kN;
        const KeyRange& rk = rr[r];
        if (rk.hi <= jb || rk.lo >= jb + nk) {  // the row sees nothing in this block
          fill(srow, srow + kN, 0.f);
          continue;
        }
        if (mod.any || nk < kN || jb < rk.lo || jb + kN > rk.hi)  // else: every key of the block visible as is
          for (int jj = 0; jj < kN; ++jj) {
            const int j = jb + jj;
            if (!(jj < nk && j >= rk.lo && j < rk.hi))
              srow[jj] = neg_inf;
            else if (mod.any)
              srow[jj] = mod.apply(srow[jj], r, j, static_cast<float*>(nullptr));
          }
        if (softmax_row_step(srow, kN, m[r], l[r], of + size_t(r) * dvp, dvp) && mod.drop.on)
          mod.drop.apply_row(r, jb, srow, nk);
      }
      for_row_blocks<kPvRows>(rows, [&](int r0, auto rn) {
        decode_pv_rows<decltype(rn)::value>(sall + r0 * kN, vp, dv, nk, of + size_t(r0) * dvp, dvp);
      });
    }
  }

  void finish(int split) {
    const FwdParams& p = *pp;
    const bool partial = p.num_splits > 1;
    const int64_t row0 = (int64_t(bi) * p.h + hi) * p.s_q;
    for (int r = 0; r < rows; ++r) {
      const float* src = of + size_t(r) * dvp;
      if (partial) {  // the split's normalised partial output and LSE, merged by fwd_combine_run
        const int64_t w = int64_t(split) * p.b * p.h * p.s_q + row0 + r;
        p.lse_accum[w] = write_row(src, dv, m[r], l[r], p.o_accum + w * dv);
      } else {
        T* orow =
            static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + (sq.q_row0 + r) * p.o_row_stride;
        static_cast<float*>(p.lse)[bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0 + r] =
            write_row(src, dv, m[r], l[r], orow);
      }
    }
  }
};

template <typename T>
void decode_item(const FwdParams& p, int bi, int hi, int split, Buf<float>& buf) {
  buf.resize(DecodeHead<T>::floats(p) + DecodeHead<T>::scratch_floats(p));
  DecodeHead<T> h;
  if (!h.init(p, bi, hi, buf.data(), buf.data() + DecodeHead<T>::floats(p))) return;
  int j0, j1;
  h.split_range(split, j0, j1);
  h.run(j0, j1);
  h.finish(split);
}

// Prefetch of the next decode chunk: into L2 only for fp32 (its 16-key chunk of H32 D128 is 512 KB,
// which L1 cannot hold: 37 -> 40 GB/s), into L1 for bf16 (half the bytes per key, and the
// conversion makes the compute heavier: 30 -> 36 GB/s). Measured interleaved in one process,
// 12 alternating calls per hint, B1 H32 1 x 32768 D128, 2 threads.
template <typename T>
inline void prefetch_chunk(const char* a) {
  if constexpr (sizeof(T) == 4)
    _mm_prefetch(a, _MM_HINT_T1);
  else
    _mm_prefetch(a, _MM_HINT_T0);
}

// Decode over K/V whose heads are interleaved in a row ((batch, seqlen, heads, dim), the flash-attn
// and KV-cache layout): one work item = (batch, split of the keys) for *every* head, walking the
// keys in chunks that fit in L2 and, per chunk, every head over it. Each K/V row is then read
// from memory once, as a contiguous h_kv * d span (prefetched a chunk ahead), instead of as h_kv
// strided streams, one per head item (measured: 12.5 GB/s that way at H32 D128 bf16).
template <typename T>
void decode_item_heads(const FwdParams& p, int bi, int h0, int h1, int split, Buf<float>& buf) {
  const size_t per_head = DecodeHead<T>::floats(p);
  buf.resize(per_head * (h1 - h0) + DecodeHead<T>::scratch_floats(p));
  float* scratch = buf.data() + per_head * (h1 - h0);
  DecodeHead<T> first;  // every head's state lives in buf; the structs are re-attached per use
  if (!first.init(p, bi, h0, buf.data(), scratch)) return;
  int j_begin, j_end;
  first.split_range(split, j_begin, j_end);
  for (int hi = h0 + 1; hi < h1; ++hi) {
    DecodeHead<T> h;
    h.init(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
  }
  // chunks of ~64 KB of K + V (L2-resident while the group's heads pass over them); the next
  // chunk is prefetched a slice per head, interleaved with the compute
  const int g = p.h / p.h_kv, hk0 = h0 / g, hk1 = (h1 - 1) / g + 1;
  const int64_t span_k = (int64_t(hk1 - hk0 - 1) * p.k_head_stride + p.d) * int64_t(sizeof(T));
  const int64_t span_v = (int64_t(hk1 - hk0 - 1) * p.v_head_stride + p.d_v) * int64_t(sizeof(T));
  const int chunk = std::max(kN, int((64 * 1024) / (span_k + span_v)) / kN * kN);
  const T* k0 = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, first.sq, hk0);
  const T* v0 = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, first.sq, hk0);
  const int nh = h1 - h0;
  for (int jc = j_begin; jc < j_end; jc += chunk) {
    const int jn = std::min(jc + chunk, j_end), next_n = std::min(jn + chunk, j_end) - jn;
    for (int hi = h0; hi < h1; ++hi) {
      const int s0 = int(int64_t(next_n) * (hi - h0) / nh), s1 = int(int64_t(next_n) * (hi - h0 + 1) / nh);
      for (int j = jn + s0; j < jn + s1; ++j) {
        const char* kr_ = reinterpret_cast<const char*>(k0 + first.krows.at(j));
        const char* vr_ = reinterpret_cast<const char*>(v0 + first.vrows.at(j));
        for (int64_t off = 0; off < span_k; off += 64) prefetch_chunk<T>(kr_ + off);
        for (int64_t off = 0; off < span_v; off += 64) prefetch_chunk<T>(vr_ + off);
      }
      DecodeHead<T> h;
      h.attach(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
      h.prefetch = false;
      h.run(jc, jn);
    }
  }
  for (int hi = h0; hi < h1; ++hi) {
    DecodeHead<T> h;
    h.attach(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
    h.finish(split);
  }
}

}  // namespace

int64_t decode_items(const FwdParams& p) { return int64_t(p.b) * decode_head_groups(p) * std::max(1, p.num_splits); }

void decode_run(const FwdParams& p, int64_t begin, int64_t end) {
  const int ns = std::max(1, p.num_splits);
  Buf<float> buf;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, double>) {  // fp64 runs the portable kernel (kernels.cpp)
      const int groups = decode_head_groups(p), per = decode_group_heads(p);
      for (int64_t it = begin; it < end; ++it) {
        const int64_t bg = it / ns;
        const int bi = int(bg / groups), h0 = int(bg % groups) * per;
        if (per == 1)
          decode_item<T>(p, bi, h0, int(it % ns), buf);
        else
          decode_item_heads<T>(p, bi, h0, std::min(p.h, h0 + per), int(it % ns), buf);
      }
    }
  });
}

}  // namespace fal::cpu::FAL_CPU_NS
