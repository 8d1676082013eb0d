// decode_head.h -- one (batch, query head)'s decode state and its walk over a key range
// (DecodeHead), for decode_items.h's work items. Compiled once per ISA (decode.cpp) and once more with
// the AMX tiles (decode_amx.cpp).
#pragma once
#include "cpu/isa.h"
#include "cpu/simd/common.h"
#include "cpu/simd/decode_cols.h"
#include "cpu/simd/decode_rows.h"
#include "cpu/simd/decode_rowwise.h"
#include "cpu/simd/prefetch.h"
#include "cpu/simd/score_mods.h"
#include "cpu/simd/softmax_row.h"
#if defined(FAL_SIMD_AVX512)
#include "cpu/simd/decode_pairs.h"
#endif
#if defined(FAL_DECODE_AMX)
#include "cpu/simd/decode_amx.h"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// One (batch, query head)'s decode state over a key range: run() may be called on consecutive key
// ranges (decode_items.h's all-heads items interleave the heads chunk by chunk), finish() writes the
// output (or the split's partial output and LSE). Keys go in blocks of kN, K and V rows read in
// place (nothing is packed across blocks); per block, by the number of query rows:
//   1 row            kN scores as kN FMA chains reduced together (decode_qk_rows_grouped<1> /
//                    decode_qk_rows_bf16<1>, or key by key: decode_qk_row_keys), the softmax step
//                    on that vector, O += P V with O's vectors as accumulators;
//   2..8 / 12       the row-wise multi-row products (decode_rowwise.h's block over decode_rows.h),
//                    the softmax row by row (rows_softmax); on AVX2 in blocks of 2 kN keys
//                    (block_keys);
//   more             without a score transform: S transposed, one lane per row (decode_cols_block,
//                    decode_cols.h; kColsMinRows / kColsMinRowsFma, decode_rows.h).
// bf16 on AVX-512 from 2 rows: decode_pairs.h's walk instead (decode_pairs_run: both forms on
// vdpbf16ps, blocks of up to 64 keys).
// kAmx (decode_amx.cpp, the amx ISA): bf16 K/V, from kTileMinRows rows and without a score
// transform, run on AMX tiles instead (`tiles`; decode_amx.h: blocks of kTileKeys keys, O padded to
// 16 rows).
template <typename T, bool kAmx = false>
struct DecodeHead {
  using Elem = T;
  static constexpr bool kTiles = kAmx && std::is_same_v<T, bf16_t>;
  const FwdParams* pp = nullptr;
  int bi = 0, hi = 0, rows = 0, d = 0, dv = 0, dp = 0, dvp = 0;
  // software prefetch during run(): unset, the next block's rows (per-head streams; kept for
  // contiguous rows too: without it, head-contiguous decode falls to a third (fp16) or half
  // (fp32)); set, feed_quota lines of this feed over run()'s blocks (decode_item_heads: a share of
  // the next chunk's lines)
  KeyLines* feed = nullptr;
  int64_t feed_quota = 0;
  // bf16 K/V on AVX-512: S = Q K^T runs on bf16 pairs (decode_bf16.h; one row: K rows in place,
  // H32 1x32768 D128 head-major 1 thread 34.4 -> 37.8 GB/s), and with several rows P V too; qf then
  // holds each row's q as pairs (unscaled), qT (several rows) Q^T in decode_q_slices(rows) slices
  // (one with `tiles`), and `scale` multiplies the scores
  bool pairs = false;
  // more than kColsMinRows(Fma) rows without a score transform: S transposed, one lane per row
  // (decode_rows.h) -- Q^T in qT (fp32; bf16 pairs with `pairs`), each row's visible keys
  // [vis_lo, vis_hi) per lane
  bool cols = false;
  // kTiles, kTileMinRows rows or more, dv a multiple of 32, no score transform or dropout and K rows
  // less than kTileMaxRowBytes apart: the blocks on AMX tiles (decode_amx.h; Q^T in qT as pairs, one
  // slice; O split as o_split says)
  bool tiles = false;
  float* qT = nullptr;
  alignas(64) int32_t vis_lo[kDecodeMaxRows], vis_hi[kDecodeMaxRows];
  int lo_max = 0, hi_min = 0;  // every row sees the keys [lo_max, hi_min) (any path: rows_softmax too)
  // K rows not back to back (a token-major or paged cache): several fp32 rows take passes of 4 rows
  // over K (decode_qk_rows_grouped: 1.09-1.28x there), else row by row on K in L1 (the grouped
  // passes measured 0.63-0.95x on a head-major cache; Zen 4, 2 threads, 32768 keys D128)
  bool k_rows_apart = false;
  // O's rows held split in groups of 2 kN (decode_rows.h's split_cols; bf16 V read by the fp32 P V,
  // or by the tiles' P V), put back in order by finish()
  bool o_split = false;
  // q's rows held split (bf16 S = Q K^T by decode_qk_rows_grouped: AVX2)
  bool q_split = false;
  float scale = 1.f;
  SeqInfo sq{};
  ScoreMod mod;
  float *qf = nullptr, *of = nullptr, *m = nullptr, *l = nullptr, *kb = nullptr;
  const T *k = nullptr, *v = nullptr;
  KvRows krows, vrows;
  KeyRange rr[kDecodeMaxRows];
  KeyRange kr{0, 0};

  // per-head state (Q, O, m and l -- kDecodeMaxRows each, whole lane vectors for the transposed
  // path -- and Q^T for it) and the block staging scratch (K as fp32, V pairs; with kTiles at least
  // decode_tiles_scratch_floats), which heads processed one after the other can share
  static size_t floats(const FwdParams& p) {
    const size_t o_rows = kTiles ? kDecodeMaxRows : p.s_q;  // the tiles' O: 16 rows
    size_t n = size_t(p.s_q) * round_up(p.d, kN) + o_rows * round_up(p.d_v, kN) + 2 * kDecodeMaxRows;
    bool q_t = p.s_q > kColsMinRows;  // qT: the transposed path (from 9 or 13 rows), or bf16 pairs
#if defined(FAL_SIMD_AVX512)
    q_t = q_t || (p.dtype == DType::kBFloat16 && p.s_q > 1);
#endif
    if (q_t) n += size_t(round_up(p.d, kN)) * round_up(p.s_q, kN);
    return n;
  }
  static size_t scratch_floats(const FwdParams& p) {
    size_t n = size_t(kN) * round_up(p.d, kN) + size_t(kN / 2) * round_up(p.d_v, kN);  // K staging; V pairs
#if defined(FAL_SIMD_AVX512)
    if (p.dtype == DType::kBFloat16)  // V pairs of decode_pairs_cols_block
      n = std::max(n, size_t(kPairsKeys / 2) * round_up(p.d_v, kN));
#endif
#if defined(FAL_DECODE_AMX)
    if constexpr (kTiles) n = std::max(n, decode_tiles_scratch_floats(p.d, p.d_v));
#endif
    return n;
  }

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
    qf = mem;                                               // rows x dp (scaled by c)
    of = qf + size_t(rows) * dp;                            // rows x dvp (kTiles: kDecodeMaxRows x dvp)
    m = of + size_t(kTiles ? kDecodeMaxRows : rows) * dvp;  // kDecodeMaxRows (a lane vector per kN rows)
    l = m + kDecodeMaxRows;                                 // kDecodeMaxRows
    kb = scratch;  // K of a block as fp32 rows (the transposed path), V pairs, the tiles' copies, O put in order
    k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
    v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
    krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
    vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
    const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
    kr = vis.keys_of_rows(0, rows);

    for (int r = 0; r < rows; ++r) rr[r] = vis.keys_of_row(r);
#if defined(FAL_SIMD_AVX512)
    pairs = std::is_same_v<T, bf16_t>;
#endif
    cols = rows > (pairs ? kColsMinRows : kColsMinRowsFma) && !mod.any && !mod.drop.on;
#if defined(FAL_DECODE_AMX)
    tiles = kTiles && pairs && rows >= kTileMinRows && dv % 32 == 0 && !mod.any && !mod.drop.on &&
            krows.row_stride * int64_t(sizeof(T)) < kTileMaxRowBytes && int64_t(kr.hi - kr.lo) * rows >= kTileMinWork;
#endif
    if (cols || (pairs && rows > 1)) qT = l + kDecodeMaxRows;
    lo_max = 0;
    hi_min = std::numeric_limits<int>::max();
    for (int r = 0; r < kDecodeMaxRows; ++r) {  // lanes past the rows: every key (never used)
      vis_lo[r] = r < rows ? rr[r].lo : 0;
      vis_hi[r] = r < rows ? rr[r].hi : std::numeric_limits<int>::max();
      lo_max = std::max(lo_max, vis_lo[r]);
      hi_min = std::min(hi_min, vis_hi[r]);
    }
    k_rows_apart = krows.pages != nullptr || krows.row_stride != d;
    // bf16 V through the fp32 P V (decode_pv_rows, the single-row loop): O held split; the pairs'
    // P V (several rows: decode_pairs.h's decode_pv_rows_bf16_inplace, the transposed path's
    // decode_pv_rows_bf16) keeps O in order
    q_split = std::is_same_v<T, bf16_t> && !pairs && !cols;
    o_split = std::is_same_v<T, bf16_t>;
#if defined(FAL_SIMD_AVX512)
    o_split = o_split && !(pairs && rows > 1);
#endif
    o_split = o_split || tiles;  // the tiles' P V (decode_amx.h)
    scale = float(p.scale);
    return true;
  }

  // attach + a fresh state: Q converted (times the scale), O = 0, m = -inf, l = 0.
  bool init(const FwdParams& p, int bi_, int hi_, float* mem, float* scratch) {
    if (!attach(p, bi_, hi_, mem, scratch)) return false;
    fill(mem, mem + floats(p), 0.f);
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
    const float c = float(p.scale);  // natural-unit scores; exp2 of (s - m) * log2 e
    for (int r = 0; r < rows; ++r) {
#if defined(FAL_SIMD_AVX512)
      if constexpr (std::is_same_v<T, bf16_t>)
        if (pairs) {
          decode_q_pairs(q + r * p.q_row_stride, d, reinterpret_cast<uint32_t*>(qf + size_t(r) * dp));
          continue;
        }
#endif
      convert_row(q + r * p.q_row_stride, d, c, qf + size_t(r) * dp);
      if (q_split) split_row(qf + size_t(r) * dp, qf + size_t(r) * dp, d, false);
    }
    fill(m, m + kDecodeMaxRows, -std::numeric_limits<float>::infinity());
#if defined(FAL_SIMD_AVX512)
    if (pairs && rows > 1) {
      const int S = tiles ? 1 : decode_q_slices(rows);
      if (decode_q_rot(S, d))
        decode_q_pairs_rot(reinterpret_cast<const uint32_t*>(qf), dp, rows, d, S, reinterpret_cast<uint32_t*>(qT));
      else
        decode_q_pairs_t(reinterpret_cast<const uint32_t*>(qf), dp, rows, d, S, reinterpret_cast<uint32_t*>(qT));
      return true;
    }
#endif
    if (!cols) return true;
    decode_q_cols(qf, dp, rows, d, qT);
    return true;
  }

  // Keys [j_begin, j_end) of split `split` of the visible range.
  void split_range(int split, int& j_begin, int& j_end) const {
    const int n = kr.hi - kr.lo, per = (n + pp->num_splits - 1) / pp->num_splits;
    j_begin = kr.lo + std::min(n, split * per);
    j_end = kr.lo + std::min(n, (split + 1) * per);
  }

  // Row r's N scores (a multiple of kN) of the block from jb (nk keys real): keys the row cannot see,
  // or past nk, to -inf, the score mods applied to the rest; nothing to do when every key is
  // visible as is. N and the rows' stride LDS compile-time: a runtime width cost the AVX2 4-row bf16
  // decode 4 % more instructions (callgrind).
  template <int N = kN>
  void mask_row(float* s, int r, int jb, int nk) {
    constexpr int n = N;
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const KeyRange& rk = rr[r];
    if (nk == n && jb >= rk.lo && jb + n <= rk.hi) {  // every key visible: the mods vector by vector
      if (mod.any)
        for (int c = 0; c < n; c += kN) mod_vec(mod, VF::load(s + c), r, jb + c, nullptr).store(s + c);
      return;
    }
    for (int jj = 0; jj < n; ++jj) {
      const int j = jb + jj;
      if (!(jj < nk && j >= rk.lo && j < rk.hi))
        s[jj] = neg_inf;
      else if (mod.any)
        s[jj] = mod.apply(s[jj], r, j, static_cast<float*>(nullptr));
    }
  }

  // The scores of every row over a block of N keys (a multiple of kN, nk of them real; sall: rows
  // LDS apart) -> P in place: mask, score mods, the online-softmax step (rescaling the row's O),
  // dropout. A row that sees nothing gets P = 0.
  template <int N = kN, int LDS = N>
  void rows_softmax(int jb, int nk, float* sall) {
    constexpr int n = N, lds = LDS;
    if (!mod.drop.on && nk == n && jb >= lo_max && jb + n <= hi_min) {
      // every row sees the whole block: the score mods on each row's vector (mask_row; softcap
      // decode, 4 rows, AVX-512 bf16, 2 threads, 32768 keys: 5.7 -> 17.5 GB/s, plain 15-20, the
      // scalar mods before), then the rows' steps interleaved (online_softmax_rows_step),
      // their dependency chains (max, exp, sum) overlapping: 4 rows (GQA 4/1) AVX2 bf16 1.04-1.14x,
      // fp32 1.05-1.06x, AVX-512 1.0-1.03x (D128, 2048 keys from L2, 1 thread, Zen 4, 2026-12-01)
      if (mod.any)
        for (int r = 0; r < rows; ++r) mask_row<N>(sall + r * lds, r, jb, nk);
      for_row_blocks<8>(rows, [&](int r0, auto rn) {
        bool seen[8];
        softmax_rows_step<decltype(rn)::value>(sall + r0 * lds, lds, n, m + r0, l + r0, of + size_t(r0) * dvp, dvp, dvp,
                                               seen);
      });
      return;
    }
    for (int r = 0; r < rows; ++r) {
      float* srow = sall + r * lds;
      const KeyRange& rk = rr[r];
      if (rk.hi <= jb || rk.lo >= jb + nk) {  // the row sees nothing in this block
        fill(srow, srow + n, 0.f);
        continue;
      }
      mask_row<N>(srow, r, jb, nk);
      if (softmax_row_step(srow, n, m[r], l[r], of + size_t(r) * dvp, dvp) && mod.drop.on)
        mod.drop.apply_row(r, jb, srow, nk);
    }
  }

  // The K and V rows of the block of nk keys from jb, n (kN, or the tiles' kTileKeys) of each: past
  // nk the last row again, so the products run over a compile-time n keys (their scores are masked
  // to -inf).
  void block_rows(int jb, int nk, const T** kp, const T** vp, int n = kN) const {
    for (int jj = 0; jj < n; ++jj) {
      const int j = jb + std::min(jj, nk - 1);
      kp[jj] = k + krows.at(j);
      vp[jj] = v + vrows.at(j);
    }
  }

  // The per-lane softmax step's factors (softmax_cols_step): each row's O rescaled where its max
  // moved (a factor other than 1, or NaN).
  void rescale_rows(const float* alpha) {
    for (int r = 0; r < rows; ++r)
      if (!(alpha[r] == 1.f)) {
        float* o = of + size_t(r) * dvp;
        const VF a = VF::set1(alpha[r]);
        for (int x = 0; x < dvp; x += kN) (VF::load(o + x) * a).store(o + x);
      }
  }

  // Keys ahead of the current block where a single row's software prefetch starts: ~8 KB of K + V,
  // in half blocks, from half a block to 4 blocks. Head-major H32 1x32768, 2 threads, calls
  // alternating in one process (Zen 4, 2026-12-01), against one block ahead: AVX-512 fp32 D128 (8
  // keys) 1.08x, bf16 D64 (32) 1.10x; AVX2 bf16 D128 (16) 1.13x, fp32 D64 (16) 1.05x; where the
  // rule gives one block, the other distances tried (4-48 keys) ran 0.6-0.9x. Several rows (more
  // compute per key) stay one block ahead: GQA 32/8 fp32 D128 4 rows ran 0.83x at 8 keys.
  int prefetch_ahead() const {
    const int64_t key_bytes = int64_t(d + dv) * int64_t(sizeof(T));
    const int64_t n = 8192 / std::max<int64_t>(1, key_bytes) / (kN / 2) * (kN / 2);
    return int(std::min<int64_t>(std::max<int64_t>(n, kN / 2), 4 * kN));
  }

  // The keys of run()'s blocks: kN; several rows (not transposed) on AVX2 2 kN, their softmax step,
  // O loads / stores and block set-up then spread over twice the keys, with a prefetch piece
  // before each block of O's vectors in P V (pv_pieces). AVX2, D128, 2 threads, calls alternating in
  // one process, medians of per-round ratios (Zen 4, 2026-12-04), against 8-key blocks: 32768 keys
  // streamed bf16 GQA 32/8 0.99x (both layouts; 1.02-1.04x in an earlier run), 4 rows H32
  // token-major 1.03x, fp16 GQA 1.03x, fp32 GQA token-major 1.04x, 4 rows head-major 1.03x; from L3
  // (2048 keys) 1.04-1.08x. Callgrind (1 thread, 4096 keys, decode_run): bf16 GQA 3.3 % fewer
  // instructions, 2 rows 8.2 %, fp16 / fp32 GQA 7.9 / 9.3 %. AVX-512 fp32 / fp16 at 32 keys ran
  // 0.88-0.99x streamed: kN there.
  int block_keys() const { return kN == 8 && rows > 1 && !cols ? 2 * kN : kN; }

  void run(int j_begin, int j_end) {
#if defined(FAL_DECODE_AMX)
    if constexpr (kTiles)
      if (tiles) return decode_tiles_run(*this, j_begin, j_end);
#endif
#if defined(FAL_SIMD_AVX512)
    if constexpr (std::is_same_v<T, bf16_t>)  // several rows on vdpbf16ps (decode_pairs.h)
      if (pairs && rows > 1) return decode_pairs_run(*this, j_begin, j_end);
#endif
    if (block_keys() == kN)
      run_blocks<kN>(j_begin, j_end);
    else
      run_blocks<2 * kN>(j_begin, j_end);
  }

  // The prefetch pieces counted for decode_rowwise_block's P V: one per block of 2 of O's vectors
  // (decode_pv_rows' blocks at 3-4 rows on AVX2; its 4-vector blocks -- AVX-512, fewer rows on
  // AVX2 -- issue half of them, the rest goes at the next block's start). On AVX-512 (16-key
  // blocks), against no pieces in P V (all before S and around the softmax), GQA 32/8 D128 B1 32768
  // keys head-major, calls alternating in one process (Zen 4, 2026-12-05): fp32 1.15x on 2 threads,
  // 1.27x on 1, fp16 1.21x / 1.15x; counted one per call (all lines within the block) 1.05-1.15x
  // less than that, 1.5-2x the count 0.9-1.0x.
  int pv_pieces() const { return (rows + kPvRows - 1) / kPvRows * (dv / (2 * kN)); }

  // run() in blocks of KB keys (block_keys()): KB = kN every path, else the several-row one. Not
  // inlined: inlined into run() beside the 2 kN copy, the one-row and transposed paths issued
  // 3.6-7.6 % more instructions (AVX2, callgrind); apart they issue what they did before.
  template <int KB>
  __attribute__((noinline)) void run_blocks(int j_begin, int j_end) {
    alignas(64) float sc[kN];
    // software prefetch of a block's worth of keys prefetch_ahead() ahead (the hint: decode_prefetch,
    // isa.h), issued in pieces between the block's steps (KeyLines, prefetch.h): the two streams
    // (K, V) read a block at a time defeat the hardware prefetcher (without: 15 GB/s fp16 where a
    // plain read gets 45 on a Zen 5). There NTA one block ahead beat T0 four ahead (H32 1x32768 D128 head-major, 2
    // threads, 2026-12-01): fp16 36 -> 46-50 GB/s, bf16 35 -> 47-49, fp32 37 -> 41 (read probe 45);
    // on a Zen 4 (32 KB L1) T1 beat NTA by 1.1-1.8x and no prefetch by up to 1.4x
    // (bench/results/cpu-2026-12-01-zen4.md).
    KeyLines own;
    own.setup(k, krows, int64_t(d) * int64_t(sizeof(T)), v, vrows, int64_t(dv) * int64_t(sizeof(T)),
              rows == 1 ? decode_prefetch().head : decode_prefetch().rows);
    // One row with its own prefetch stream on AVX-512 (16-key blocks), the range past the current
    // block: a prefetch piece before each vector of O in P V too, not only between the steps
    // (smaller bursts): head-major H32 1x32768 D128, 2 threads, calls alternating in one process
    // (Zen 4, 2026-12-01): fp32 1.13x, bf16 1.13x, fp16 1.0x; the AVX2 path's 8-key blocks measured
    // 0.86-1.0x that way, the token-major feed 0.95-1.03x, a range half in the current block 0.75x
    const int ahead = rows == 1 ? prefetch_ahead() : KB;
    // one row on AVX-512, a head's own stream (d, dv <= kRowKeysMaxVecs vectors; bf16: dv a multiple
    // of 2 kN), a block of K + V rows 8 KB or more: the products key by key (decode_rows.h's
    // decode_qk_row_keys / decode_pv_row_keys, decode_bf16.h's decode_qk_row_keys_bf16; P V without
    // prefetch pieces). H32 1x32768 head-major, 2 threads, in one process (Zen 4, 2026-12-02): fp32
    // D128 1.03-1.14x, D64 1.07-1.09x, fp16 D128 1.07-1.30x, bf16 D128 1.08-1.24x; fp16 D64 (4 KB
    // blocks) 0.97-0.98x, bf16 D96 1.0x and the token-major feed 0.95-1.0x keep the x-outer order
    const bool keys = kN == 16 && rows == 1 && feed == nullptr && dp <= kRowKeysMaxVecs * kN &&
                      dvp <= kRowKeysMaxVecs * kN && int64_t(kN) * (d + dv) * int64_t(sizeof(T)) >= 8192 &&
                      (!std::is_same_v<T, bf16_t> || (pairs && dv % (2 * kN) == 0));
    const bool pf_pv = kN == 16 && rows == 1 && feed == nullptr && ahead >= kN && !keys;
    // the pf() calls of a block (bf16 P V: one per 2 vectors; KeyLines::finish issues what is left)
    const int steps =
        cols ? 2 + (rows + kPvRows - 1) / kPvRows : rows + 2 + (pf_pv ? dvp / kN : 0) + (rows > 1 ? pv_pieces() : 0);
    const int64_t nb = (j_end - j_begin + KB - 1) / KB;
    for (int jb = j_begin; jb < j_end; jb += KB) {
      const int nk = std::min(KB, j_end - jb);
      KeyLines* f = feed;
      int64_t per_step;
      if (f == nullptr) {
        own.finish();  // what the previous block's steps left
        own.start(std::min(jb + ahead, j_end), std::min(jb + ahead + KB, j_end));
        f = &own;
        per_step = (own.lines + steps - 1) / steps;
      } else {
        per_step = (feed_quota + nb * steps - 1) / (nb * steps);
      }
      auto pf = [&] { f->issue(per_step); };
      if constexpr (KB == kN) {  // (several rows only with larger blocks: block_keys)
        if (cols) {
          decode_cols_block(*this, jb, nk, pf);
          continue;
        }
        if (rows == 1) {  // single query row: read K and V rows in place, no staging copies
          const KeyRange& rk = rr[0];
          if (rk.hi <= jb || rk.lo >= jb + nk) continue;
          const T* kp[kN];
          const T* vp[kN];
          block_rows(jb, nk, kp, vp);
          pf();
          bool done = false;  // (keys past nk: the last key's scores, masked below)
#if defined(FAL_SIMD_AVX512)
          if constexpr (std::is_same_v<T, bf16_t>)
            if (pairs && !keys) {
              decode_qk_rows_bf16<1>(reinterpret_cast<const uint32_t*>(qf), dp, kp, d, scale, sc);
              done = true;
            }
          if constexpr (std::is_same_v<T, bf16_t>)
            if (keys) {
              with_row_vecs((d + 2 * kN - 1) / (2 * kN), [&](auto nv) {
                decode_qk_row_keys_bf16<decltype(nv)::value>(reinterpret_cast<const uint32_t*>(qf), kp, d, scale, sc);
              });
              done = true;
            }
#endif
          if (!done && keys) {
            with_row_vecs(dp / kN, [&](auto nv) { decode_qk_row_keys<decltype(nv)::value>(qf, kp, d, sc); });
            done = true;
          }
          if (!done) decode_qk_rows_grouped<1>(qf, dp, kp, d, sc);
          mask_row(sc, 0, jb, nk);
          pf();
          // every score so far masked (attn_mask): P = 0, nothing to add -- unless one is NaN
          if (!softmax_row_step(sc, kN, m[0], l[0], of, dvp)) continue;
          if (mod.drop.on) mod.drop.apply_row(0, jb, sc, nk);
          pf();
          // O += P V. Up to 8 vectors of O (AVX-512 at D <= 128): one accumulator per vector, each a
          // chain of nk FMAs, and the out-of-order core runs the 8 chains side by side. More vectors
          // (AVX2 at D 128: 16) overflow that window: blocks of 4 accumulators instead. Interleaved
          // in one process (Zen 5, H32 1x32768 D128 fp32, 2 threads): AVX2 23 -> 31 GB/s blocked,
          // AVX-512 44 per-vector vs 33 blocked.
          if (keys) {
            with_row_vecs(dvp / kN, [&](auto nv) { decode_pv_row_keys<decltype(nv)::value>(sc, vp, dv, nk, of); });
          } else if (dvp / kN <= 8) {
            decode_pv_row_vecs(sc, vp, dv, nk, of, [&] {
              if (pf_pv) pf();
            });
          } else {
            decode_pv_rows<1>(sc, vp, dv, nk, of, dvp);
          }
          continue;
        }
      }
      if constexpr (kN != 8 || KB != kN)  // (AVX2: several rows take 2 kN keys, block_keys)
        decode_rowwise_block<KB>(*this, jb, nk, pf);
    }
  }

  // Writes the rows' outputs and LSEs. True when a row may hold a NaN value (write_row; split,
  // the merge's flag decides, fwd_combine_run): the NaN pass then scans the output.
  bool finish(int split) {
    const FwdParams& p = *pp;
    const bool partial = p.num_splits > 1;
    bool nan_value = false;
    const int64_t row0 = (int64_t(bi) * p.h + hi) * p.s_q;
    for (int r = 0; r < rows; ++r) {
      const float* src = of + size_t(r) * dvp;
      if (o_split) {  // back in order, in the block scratch
        split_row(src, kb, dv, true);
        src = kb;
      }
      if (partial) {  // the split's normalised partial output and LSE, merged by fwd_combine_run
        const int64_t w = int64_t(split) * p.b * p.h * p.s_q + row0 + r;
        p.lse_accum[w] = write_row(src, dv, m[r], l[r], p.o_accum + w * dv, nan_value);
      } else {
        T* orow =
            static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + (sq.q_row0 + r) * p.o_row_stride;
        static_cast<float*>(p.lse)[bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0 + r] =
            write_row(src, dv, m[r], l[r], orow, nan_value);
      }
    }
    return nan_value;
  }
};

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
