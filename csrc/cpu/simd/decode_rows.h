// decode_rows.h -- the fp32 multi-row decode products (2..kDecodeMaxRows query rows sharing each block
// of kN keys) and the runtime-row-count dispatch. Compiled once per ISA (through decode_head.h). bf16
// K/V on AVX-512 use decode_bf16.h instead (and the amx ISA decode_amx.h from 4 rows).
#pragma once
#include "cpu/simd/common.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// bf16 K and V rows are read split (load_bf16_split: a shift and a mask per 2 kN values, where
// widening each half costs two shuffles more): a row of O -- and, for S = Q K^T, of q -- holds each
// whole group of 2 kN values (from 0 to split_cols) as its even values, then its odd ones.
// decode_pv_rows and decode_qk_rows_grouped do so for bf16 (the latter on AVX2 only: AVX-512 runs
// bf16 S on vdpbf16ps); DecodeHead splits q (split_row) and puts O back in order (finish).
inline int split_cols(int n) { return n / (2 * kN) * (2 * kN); }

// y[0, n) = x[0, n) in the split order (whole groups of 2 kN: evens, then odds; the rest as is),
// or back (inverse); y may be x. Two vector shuffles per group: a short decode's finish() spent
// ~2.7 K instructions per head of 4 rows in the scalar copy and loop (callgrind, AVX2 bf16, GQA
// 32/8 D128, 16 keys)
inline void split_row(const float* x, float* y, int n, bool inverse) {
  const int ns = split_cols(n);
  for (int g = 0; g < ns; g += 2 * kN) {
    VF a = VF::load(x + g), b = VF::load(x + g + kN);
    if (inverse)
      interleave_pairs(a, b);
    else
      deinterleave_pairs(a, b);
    a.store(y + g);
    b.store(y + g + kN);
  }
  if (x != y)
    for (int i = ns; i < n; ++i) y[i] = x[i];
}

// S = Q K^T of R query rows against a block of kN keys on the K rows in place (converted to fp32 on
// the fly for bf16 / fp16): for each key, a row's d products as d / kN FMAs, keys in groups of G
// with R G <= kN accumulators, one reduction (hsum_each) per group for its R x G scores. R = 1
// (G = kN) is the single-row decode of every dtype. With several rows each K load feeds R FMAs: row
// by row, a token-major cache re-read K per query row, and there one head's rows lie a multiple of
// 4 KB apart, in one L1 set (decode_bf16.h's decode_qk_rows_bf16, the same idea on bf16 pairs).
// q rows dp apart (fp32, scaled, zero past d); kp: kN valid row pointers (the caller repeats a row
// past the block's end and masks those scores); the scores to sall, rows LDS apart.
// Rows per pass: 4, each pass one read of the block's K from L1 (AVX2: G = 2 keys x 4 rows = 8
// accumulators, 4 K and 2 q vectors). Passes of 4 rows against passes of 8 (fp32) or K staged
// transposed and broadcast-FMAs (bf16 / fp16 beyond 4 rows), calls alternating in one process
// (Zen 4, 2 threads, D128, 4-8 rows, 16384-32768 keys, 2026-12-02): AVX2 bf16 5-8 rows
// 1.19-1.44x, fp16 1.07-1.28x; AVX-512 fp16 1.24-1.34x, fp32 (token-major) 1.01-1.34x.
constexpr int kGroupRows = 4;
// 2 where one row's vector is half a 64-byte line (fp16 on AVX-512): the one-row products then
// take both halves of each K / V row's line in one step. x-outer over a block's 16 rows, each line
// was read twice, and a token-major cache puts the rows a multiple of 4 KB apart, 16 lines in one
// 8-way L1 set: H32 1x32768 D128 token-major, calls alternating in one process (Zen 4,
// 2026-12-02) 1.05x on 2 threads, 1.09x on 1 (head-major runs key by key: no change); fp32 on AVX2
// (two vectors a line) measured 1.0x that way
template <typename T>
constexpr int kLineVecs = kN == 16 && std::is_same_v<T, fp16_t> ? 2 : 1;
template <int R, typename T, int LDS = kN>
inline void decode_qk_rows_grouped(const float* qf, int dp, const T* const* kp, int d, float* sall) {
  constexpr int G = R <= 1 ? kN : kN / R >= 8 ? 8 : kN / R >= 4 ? 4 : kN / R >= 2 ? 2 : 1;
  static_assert(R * G <= kN, "one reduction per group");
  const int dfull = d / kN * kN;
  for (int g0 = 0; g0 < kN; g0 += G) {
    VF a[kN];  // a[r * G + g]: row r, key g0 + g (the rest stay zero for the reduction); in
               // registers: copied out for the reduction (an array whose address the reduction
               // takes would be kept in memory, a store per product)
#pragma GCC unroll 16
    for (int i = 0; i < kN; ++i) a[i] = VF::zero();
    int x0 = 0;
    if constexpr (std::is_same_v<T, bf16_t>)  // whole groups of 2 kN split (q rows split alike)
      for (; x0 < split_cols(d); x0 += 2 * kN) {
        if constexpr (G <= 2) {  // K first (2 G registers), then each q vector loaded once for its G FMAs:
          // AVX2 3-4 rows 1.09-1.16x (2 threads, 32768 keys D128, both layouts, Zen 4, 2026-12-02)
          VF ke[G], ko[G];
#pragma GCC unroll 2
          for (int g = 0; g < G; ++g) load_bf16_split(kp[g0 + g] + x0, ke[g], ko[g]);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const float* qr = qf + size_t(r) * dp + x0;
            VF qe = VF::load(qr), qo = VF::load(qr + kN);
            keep_in_register(qe);
            keep_in_register(qo);
#pragma GCC unroll 2
            for (int g = 0; g < G; ++g) a[r * G + g] = fma231(qo, ko[g], fma231(qe, ke[g], a[r * G + g]));
          }
          continue;
        }
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) {
          VF ke, ko;
          load_bf16_split(kp[g0 + g] + x0, ke, ko);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const float* qr = qf + size_t(r) * dp + x0;
            a[r * G + g] = fma(VF::load(qr + kN), ko, fma(VF::load(qr), ke, a[r * G + g]));
          }
        }
      }
    if constexpr (kLineVecs<T> == 2 && R == 1)
      for (; x0 + 2 * kN <= dfull; x0 += 2 * kN) {  // a whole line of each K row at once
        const VF q0 = VF::load(qf + x0), q1 = VF::load(qf + x0 + kN);
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g)
          a[g] = fma(q1, load_f32(kp[g0 + g] + x0 + kN, kN), fma(q0, load_f32(kp[g0 + g] + x0, kN), a[g]));
      }
    for (int x = x0; x < d; x += kN) {
      VF kv[G];
      if (x < dfull) {  // a compile-time width (AVX2 loads of a runtime width branch)
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) kv[g] = load_f32(kp[g0 + g] + x, kN);
      } else {
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) kv[g] = load_f32(kp[g0 + g] + x, d - x);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const VF qv = VF::load(qf + size_t(r) * dp + x);
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) a[r * G + g] = fma(qv, kv[g], a[r * G + g]);
      }
    }
    VF acc[kN];
#pragma GCC unroll 16
    for (int i = 0; i < kN; ++i) acc[i] = a[i];
    const VF sums = hsum_each(acc);  // lane r * G + g
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) store_lanes(sums, r * G, G, sall + r * LDS + g0 - r * G);
  }
}

// ---- one row, key by key (AVX-512: kN = 16) ---------------------------------------------------
// A single-row block is kN K rows and kN V rows (16 KB at fp32 D128 on AVX-512). Read x-outer
// (decode_qk_rows_grouped<1>: vector x of every row, then x + 1) all of them are in flight at once;
// key by key instead, q's NV vectors (d <= NV kN; O's likewise for P V) stay in registers and each
// K / V row is read front to back, into its own accumulator (one hsum_each per block): 1.03-1.3x
// where a block's K + V reach 8 KB (decode_head.h: where it runs, the measurements); the AVX2
// kernel's 8-key blocks had read the same cache up to 1.2x faster than the x-outer order.
constexpr int kRowKeysMaxVecs = 8;

// sc[0, kN) = q . k_g for the block's kN key rows kp (fp32 / fp16: converted on load), q = qf
// (fp32, scaled, zero past d), d in ((NV - 1) kN, NV kN]. Chains: FMA chains per key -- 2 for one
// row; 1 sums in decode_qk_rows_grouped's order (the same scores bit for bit: several fp32 rows
// take that one pass over token-major or paged K, this one row by row over K rows back to back,
// and a paged cache's output equals the contiguous one's; two chains ran 1.01-1.04x there)
template <int NV, typename T, int Chains = 2>
inline void decode_qk_row_keys(const float* qf, const T* const* kp, int d, float* sc) {
  const int wl = d - (NV - 1) * kN;  // the last vector's width
  VF qv[NV];
#pragma GCC unroll 8
  for (int x = 0; x < NV; ++x) qv[x] = VF::load(qf + x * kN);
  VF a[kN];
#pragma GCC unroll 16
  for (int g = 0; g < kN; ++g) {
    if constexpr (Chains == 1) {
      VF acc = VF::zero();
#pragma GCC unroll 8
      for (int x = 0; x + 1 < NV; ++x) acc = fma(qv[x], load_f32(kp[g] + x * kN, kN), acc);
      a[g] = fma(qv[NV - 1], load_f32(kp[g] + (NV - 1) * kN, wl), acc);
    } else {
      VF acc[2] = {VF::zero(), VF::zero()};
#pragma GCC unroll 8
      for (int x = 0; x + 1 < NV; ++x) acc[x % 2] = fma(qv[x], load_f32(kp[g] + x * kN, kN), acc[x % 2]);
      acc[(NV - 1) % 2] = fma(qv[NV - 1], load_f32(kp[g] + (NV - 1) * kN, wl), acc[(NV - 1) % 2]);
      a[g] = acc[0] + acc[1];
    }
  }
  hsum_each(a).store(sc);
}

// o[0, dv) += sum_{jj < nk} p[jj] v_jj[0, dv), O's NV vectors in registers, dv in ((NV - 1) kN,
// NV kN] (o zero-padded to NV kN).
template <int NV, typename T>
inline void decode_pv_row_keys(const float* p, const T* const* vp, int dv, int nk, float* o) {
  const int wl = dv - (NV - 1) * kN;
  VF ov[NV];
#pragma GCC unroll 8
  for (int x = 0; x < NV; ++x) ov[x] = VF::load(o + x * kN);
  for (int jj = 0; jj < nk; ++jj) {
    const VF pj = VF::set1(p[jj]);
    if constexpr (std::is_same_v<T, bf16_t>) {  // O split (split_row): dv a multiple of 2 kN, NV even
#pragma GCC unroll 8
      for (int x = 0; x + 1 < NV; x += 2) {
        VF e, od;
        load_bf16_split(vp[jj] + x * kN, e, od);
        ov[x] = fma(pj, e, ov[x]);
        ov[x + 1] = fma(pj, od, ov[x + 1]);
      }
    } else {
#pragma GCC unroll 8
      for (int x = 0; x + 1 < NV; ++x) ov[x] = fma(pj, load_f32(vp[jj] + x * kN, kN), ov[x]);
      ov[NV - 1] = fma(pj, load_f32(vp[jj] + (NV - 1) * kN, wl), ov[NV - 1]);
    }
  }
#pragma GCC unroll 8
  for (int x = 0; x < NV; ++x) ov[x].store(o + x * kN);
}

// o[0, dv) += sum_{jj < nk} p[jj] v_jj[0, dv) for one row, x-outer: each vector of O one
// accumulator, a chain of nk FMAs (bf16: a split group, fp16 on AVX-512: a line -- two vectors --
// per step); piece() before each step (the caller's prefetch pieces).
template <typename T, typename F>
inline void decode_pv_row_vecs(const float* p, const T* const* vp, int dv, int nk, float* o, F&& piece) {
  int x = 0;
  if constexpr (std::is_same_v<T, bf16_t> || kLineVecs<T> == 2) {
    const int x2 = std::is_same_v<T, bf16_t> ? split_cols(dv) : dv / (2 * kN) * (2 * kN);
    for (; x < x2; x += 2 * kN) {
      piece();
      VF o0 = VF::load(o + x), o1 = VF::load(o + x + kN);
      for (int jj = 0; jj < nk; ++jj) {
        VF a, b;
        if constexpr (std::is_same_v<T, bf16_t>) {  // O split (split_row)
          load_bf16_split(vp[jj] + x, a, b);
        } else {
          a = load_f32(vp[jj] + x, kN);
          b = load_f32(vp[jj] + x + kN, kN);
        }
        const VF pj = VF::set1(p[jj]);
        o0 = fma(pj, a, o0);
        o1 = fma(pj, b, o1);
      }
      o0.store(o + x);
      o1.store(o + x + kN);
    }
  }
  for (; x < dv; x += kN) {
    piece();
    const int w = std::min(kN, dv - x);
    VF ov = VF::load(o + x);
    if (w == kN)  // a compile-time width (AVX2 loads of a runtime width branch)
      for (int jj = 0; jj < nk; ++jj) ov = fma(VF::set1(p[jj]), load_f32(vp[jj] + x, kN), ov);
    else
      for (int jj = 0; jj < nk; ++jj) ov = fma(VF::set1(p[jj]), load_f32(vp[jj] + x, w), ov);
    ov.store(o + x);
  }
}

// Runtime vector count (1..kRowKeysMaxVecs) -> NV.
template <typename F>
inline void with_row_vecs(int nv, F&& f) {
  switch (nv) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// Several query rows (GQA heads packed as rows, speculative decoding) share each block of kN
// keys: S by decode_qk_rows_grouped (passes of kGroupRows rows), P V below blocked R rows x C
// vectors of O, so each V load feeds R FMAs.
// Registers (zmm / ymm) of P V: R x C accumulators + C V vectors + 1 broadcast: R = 4 -> 4 x 4 +
// 5 = 21 of 32, 4 x 2 + 3 = 11 of 16 on AVX2 (4 rows there instead of 2 x 4 vectors: 1.01-1.14x,
// Zen 4, 2 threads, 32768 keys D128, 2026-12-01; 8 rows x 2 vectors on AVX-512 no better than 4 x 4).
constexpr int kPvRows = 4;
constexpr int kPvAcc = kN == 16 ? 16 : 8;  // P V accumulators (+ C V vectors + 1 broadcast)

// O[r][x0, x0 + C kN) += sum_{jj < nk} p[r][jj] v_jj[x0, x0 + C kN): R rows x C vectors of
// accumulators, each V load feeding R FMAs (bf16: C / 2 split groups); p rows LDP apart. The key
// loop unrolled (nk <= 16): rolled, its pointer steps and branch cost the AVX2 16-key blocks 3.7 %
// more instructions (bf16 GQA 32/8, callgrind). NK > 0: nk is NK (a whole block; no exit test per key;
// set here too, not only by decode_pv_rows, so the trip count stays compile-time whatever GCC inlines).
template <int R, int C, typename T, int LDP = kN, int NK = 0>
inline void decode_pv_block(const float* p, const T* const* vp, int x0, int nk, float* o, int dvp) {
  if constexpr (NK > 0) nk = NK;
  static_assert(!std::is_same_v<T, bf16_t> || C % 2 == 0, "bf16 V: whole split groups");
  VF acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = VF::load(o + size_t(r) * dvp + x0 + c * kN);
#pragma GCC unroll 16
  for (int jj = 0; jj < nk; ++jj) {
    const T* vr = vp[jj] + x0;
    VF vv[C];
    if constexpr (std::is_same_v<T, bf16_t>) {
#pragma GCC unroll 4
      for (int c = 0; c < C; c += 2) load_bf16_split(vr + c * kN, vv[c], vv[c + 1]);
    } else {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) vv[c] = load_f32(vr + c * kN, kN);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const VF pr = VF::set1(p[r * LDP + jj]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        if constexpr (NK > 0 && !std::is_same_v<T, float>)  // V converted, in a register
          fma_into(acc[r][c], pr, vv[c]);
        else
          acc[r][c] = fma(pr, vv[c], acc[r][c]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c].store(o + size_t(r) * dvp + x0 + c * kN);
}

struct NoPiece {
  void operator()() const {}
};
// o[r][0..dv) += sum_{jj < nk} p[r][jj] v_jj[0..dv), the V rows read in place (converted to fp32
// on the fly: each load feeds R FMAs); o rows dvp apart, p rows LDP apart. Blocked R rows x C
// vectors of O, R C <= kPvAcc accumulators (C = 4 up to kPvAcc / 4 rows, else 2), then a block of
// 2 vectors, then vector by vector (bf16: split up to split_cols(dv), in order beyond). piece():
// before each C-vector block (the caller's prefetch pieces; NoPiece: none). NK > 0: nk is NK.
template <int R, typename T, int LDP = kN, int NK = 0, typename F = NoPiece>
inline void decode_pv_rows(const float* p, const T* const* vp, int dv, int nk, float* o, int dvp, F&& piece = F()) {
  if constexpr (NK > 0) nk = NK;
  constexpr int C = R * 4 <= kPvAcc ? 4 : 2;
  static_assert(R * 2 <= kPvAcc, "kPvRows rows at most");
  int x0 = 0;
  for (; x0 + C * kN <= dv; x0 += C * kN) {
    piece();
    decode_pv_block<R, C, T, LDP, NK>(p, vp, x0, nk, o, dvp);
  }
  if (C > 2 && x0 + 2 * kN <= dv) {
    decode_pv_block<R, 2, T, LDP, NK>(p, vp, x0, nk, o, dvp);
    x0 += 2 * kN;
  }
  for (; x0 < dv; x0 += kN) {
    const int w = std::min(kN, dv - x0);
    VF acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = VF::load(o + size_t(r) * dvp + x0);
    for (int jj = 0; jj < nk; ++jj) {
      const VF vv = load_f32(vp[jj] + x0, w);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r] = fma(VF::set1(p[r * LDP + jj]), vv, acc[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r].store(o + size_t(r) * dvp + x0);
  }
}

// ---- the transposed path: S^T, one lane per query row ----------------------------------------
// More rows than kColsMinRows (bf16 on vdpbf16ps, AVX-512) or kColsMinRowsFma (the fp32 FMA
// products: fp32, fp16, AVX2 bf16), and no score transform: S of a block is computed transposed, key
// jj's scores of every row in one vector (rows in lanes; on AVX2 16 rows take two vectors), each K
// element broadcast against a Q^T vector -- no reduction, no K transpose -- and the online softmax
// runs per lane (softmax_cols_step): its maxima and sums are vertical. Fewer rows keep the row-wise
// products above, where a vector of rows would be mostly empty lanes (bf16 5-8 rows on AVX-512
// measured 0.86-0.94x this way). 16 rows against the row-wise kernels, H8 D128, 2 threads, in one
// process (Zen 4, 2026-12-01; the same ratio 32768 keys from memory and 1024 keys from L2: the work
// is compute-bound): AVX-512 bf16 1.24-1.5x, fp32 1.44-1.51x, fp16 1.14-1.24x; AVX2 bf16 1.13-1.29x,
// fp32 1.0-1.07x, fp16 1.04-1.2x. Since the row-wise S runs in passes of 4 rows, against it
// (2026-12-02, 16384 keys): 10-12 rows AVX2 bf16 0.88-0.9x, fp32 0.97x, AVX-512 fp16 0.83x, fp32
// 0.91-0.94x (AVX2 fp16 12 rows 1.07x, noise-level); 14 rows 0.99-1.06x, 16 rows 1.06-1.27x; AVX-512
// bf16 12 rows 1.12x.
constexpr int kColsMinRows = 8;
constexpr int kColsMinRowsFma = 12;
constexpr int kColsVecs = kDecodeMaxRows / kN;  // lane vectors per key at most: 1 on AVX-512, 2 on AVX2

// Q^T: qT[(x * rv + v) * kN + lane] = q_{v kN + lane}[x] (the scaled fp32 rows qf, dp apart), zero
// for rows >= rows; rv = ceil(rows / kN).
inline void decode_q_cols(const float* qf, int dp, int rows, int d, float* qT) {
  const int rv = (rows + kN - 1) / kN;
  for (int x = 0; x < d; ++x)
    for (int i = 0; i < rv * kN; ++i) qT[size_t(x) * rv * kN + i] = i < rows ? qf[size_t(i) * dp + x] : 0.f;
}

// S^T of the block: sT[(v * kN + jj) * kN + lane] = q_{v kN + lane} . k_jj for its kN keys (kf: fp32
// rows), RV lane vectors of rows: keys in groups of G (G x RV accumulators), each K element broadcast
// into RV FMAs against the Q^T vectors of its dimension.
template <int RV>
inline void decode_qk_cols(const float* qT, const float* const* kf, int d, float* sT) {
  constexpr int G = kN == 16 ? 8 : 4;
  for (int g0 = 0; g0 < kN; g0 += G) {
    const float* kr[G];
    VF a[G][RV];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      kr[g] = kf[g0 + g];
      for (int v = 0; v < RV; ++v) a[g][v] = VF::zero();
    }
    for (int x = 0; x < d; ++x) {
      VF qv[RV];
      for (int v = 0; v < RV; ++v) qv[v] = VF::load(qT + (size_t(x) * RV + v) * kN);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        const VF kb = VF::set1(kr[g][x]);
        for (int v = 0; v < RV; ++v) a[g][v] = fma(kb, qv[v], a[g][v]);
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < RV; ++v) a[g][v].store(sT + (size_t(v) * kN + g0 + g) * kN);
  }
}

// Keys of the block a row cannot see -> -inf in S^T (kN keys, kN lanes each, kN apart): key jb + jj
// is visible to lane r when lo[r] <= jb + jj < hi[r] and jj < nk.
inline void decode_mask_cols(const int32_t* lo, const int32_t* hi, int jb, int nk, float* sT) {
  for (int jj = 0; jj < kN; ++jj) {
    float* s = sT + size_t(jj) * kN;
    const VF x = jj < nk ? VF::load(s) : VF::set1(-std::numeric_limits<float>::infinity());
    keep_in_range(x, lo, hi, jb + jj).store(s);
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

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
