// decode_amx.h -- the decode's several-row path on AMX tiles (the amx ISA; compiled into
// decode_amx.cpp only): bf16 K/V, kTileMinRows..kDecodeMaxRows query rows, dv a multiple of 32, no
// score transform or dropout, K rows less than kTileMaxRowBytes apart (DecodeHead::tiles). Keys in
// blocks of kTileKeys = 64; per block:
//   S^T = K Q^T   tdpbf16ps into 4 C tiles (16 keys x 16 rows fp32 each): A = 16 K rows, 32 values a
//                 tile, B = Q^T as pairs, one column per row (decode_q_pairs_t with one slice; zero
//                 past the rows)
//   softmax       AVX-512, one lane per row (softmax_cols_step over the 64 keys), P^T transposed
//                 back to rows
//   O += P V      tdpbf16ps: B = 16 V rows, 32 values a tile -- as pairs of adjacent columns --
//                 and A = P with each value alone in a pair, in the low half (the even columns) or
//                 the high half (the odd ones): C = O's 16 even and 16 odd columns of each group of
//                 32 (decode_rows.h's split order), O padded to 16 rows, loaded from and stored back
//                 to the head's fp32 O
// K and V rows are read in place where a group of 16 keys is evenly spaced, else (in the last,
// partial block, across a page boundary, d no multiple of 32) that group's rows are copied
// zero-padded first: nothing is packed. Every tile is a full 16 x 64 bytes (amx_tiles.h's
// kTileConfig): a product costs the same for 4 rows as for 16, and 4 independent accumulators.
// The arithmetic is vdpbf16ps's (pairs of bf16 products summed in fp32, subnormal bf16 inputs read
// as 0), the sums in another order; a NaN or infinite value of V meets the 0 beside P in its pair
// and makes its neighbour column NaN too -- the NaN pass (cpu_kernels.h) redoes such rows.
// Where the time goes (B1 GQA 32/8 D128 bf16, 2 threads, Xeon, uncommitted instrumentation): a
// block's work alone (K and V replaced by L1-resident stand-ins, no prefetch) ~3300 TSC, streaming
// its 32 KB at a thread's share of the read bandwidth ~6300, and the two add up rather than overlap
// -- with the stand-ins and only the prefetch stream reaching memory the rate stayed the same:
// ~15-18 GB/s of the read probe's 25-27 at every row count from 4 (the tile work ~2/3 of the 3300:
// each product waits on its tile loads, 8 tile registers leave none to load ahead).
// Tried, not kept: 16-key blocks with one accumulator (each product waited for the last: ~1450 TSC
// a block of 16 at 4 rows), V packed as pairs (16 KB of stores a block, then tile loads waiting for
// them), software pipelining P V of one block behind S^T of the next (0.9x), the prefetch a block
// further ahead or in smaller pieces (no change).
#pragma once
#include "cpu/simd/amx_tiles.h"
#include "cpu/simd/decode_bf16.h"
#include "cpu/simd/decode_rows.h"
#include "cpu/simd/micro_bf16.h"
#include "cpu/simd/prefetch.h"
#include "cpu/simd/softmax_row.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

constexpr int kTileKeys = 4 * kTileRows;  // keys of a block: S^T in 4 C tiles of 16 keys
static_assert(kDecodeMaxRows <= kTileRows, "every query row in one tile");
// Where the tiles replace the vdpbf16ps products (DecodeHead::tiles). B1 32768 keys D128 bf16, 2
// threads, calls alternating in one process (Xeon, 2026-12-02), GQA h / 8 packed rows against the
// avx512 decode, head-major / token-major: 2 rows 0.87-0.95x, 3 rows 0.95x / 1.05x, 4 rows
// 1.0-1.09x / 1.04-1.2x, 6-8 rows 1.26-1.41x, 12-16 rows 1.63-1.9x.
constexpr int kTileMinRows = 4;
// ... and from kTileMinWork keys x rows: a call on the tiles costs ~4-19 us more up front (tile
// config, P and O through memory for the tile loads), so a short key range stays on vectors. B1 GQA
// 32/8 D128 bf16, 2 threads, a cache of 8192 rows (Xeon, 2026-12-03), tiles against vectors: 4
// rows 16 / 64 / 128 / 192 / 256 keys 24.8 / 24.9 / 30.4 / 34.3 / 38.4 us against 13.4 / 18.8 /
// 27.1 / 34.5 / 42.5; 8 rows 64 / 128 keys 26.5 / 31.8 against 28.0 / 40.4.
constexpr int64_t kTileMinWork = 768;
// 4 rows of H32 on a token-major cache (K rows 8 KB apart: a 64-key block spans 128 pages) ran
// 0.56-0.65x on tiles: such rows stay on vectors.
constexpr int64_t kTileMaxRowBytes = 4096;

// Scratch of a head's blocks (DecodeHead::scratch_floats): K and V rows copied (kTileKeys rows of
// round_up(d, 32) and dv bf16), P by rows (16 x kTileKeys fp32), P's A tiles (2 per 16 keys).
inline size_t decode_tiles_scratch_floats(int d, int dv) {
  return size_t(kTileKeys / 2) * (round_up(d, 32) + dv) + size_t(kTileRows) * kTileKeys * 3;
}

// The block's kTileKeys rows of n values (n a multiple of 32 in place) as 4 groups of 16 tile
// rows: a group's rows in place when evenly spaced (base[g], ld[g] its stride in elements), else
// copied zero-padded to st (rows round_up(n, 32) apart from st + 16 g rows).
struct TileRows {
  const bf16_t* base[kTileKeys / kTileRows];
  int64_t ld[kTileKeys / kTileRows];
};
inline TileRows decode_tile_rows(const bf16_t* const* rp, int n, bf16_t* st, int ng) {
  TileRows t{};  // groups from ng: unused (a last block's keys past its end)
  const int np = round_up(n, 32);
  for (int g = 0; g < ng; ++g) {
    const bf16_t* const* r = rp + g * kTileRows;
    const int64_t step = r[1] - r[0];
    bool even = n % 32 == 0 && step >= 0;
    for (int j = 2; j < kTileRows && even; ++j) even = r[j] - r[j - 1] == step;
    if (even) {
      t.base[g] = r[0];
      t.ld[g] = step;
      continue;
    }
    bf16_t* dst = st + size_t(g) * kTileRows * np;
    for (int j = 0; j < kTileRows; ++j)
      for (int x = 0; x < np; x += 32)
        _mm512_storeu_si512(dst + size_t(j) * np + x, _mm512_maskz_loadu_epi16(first32(std::max(0, n - x)), r[j] + x));
    t.base[g] = dst;
    t.ld[g] = np;
  }
  tiles_fence();  // the copies, read by tile loads
  return t;
}

// S^T of the block's first ng groups of 16 keys, unscaled: sT[j * 16 + r] = q_r . k_j for j < 16
// ng (rows in lanes; Q^T pairs qT, zero past d and past the rows); k: the K rows as tile rows
// (decode_tile_rows). pf: a prefetch piece per 32 values of d.
template <typename F>
inline void decode_tiles_qk(const uint32_t* qT, const TileRows& k, int d, int ng, float* sT, F&& pf) {
  int64_t ld[4];  // bytes
  for (int g = 0; g < 4; ++g) ld[g] = k.ld[g] * int64_t(sizeof(bf16_t));
  zero_c4();
  for (int x = 0; x < d; x += 32) {  // each Q^T slice against the groups, K alternating in tiles 4, 5
    _tile_loadd(6, qT + x / 2 * kN, kN * 4);
    _tile_loadd(4, k.base[0] + x, ld[0]);
    _tile_dpbf16ps(0, 4, 6);
    if (ng > 1) {
      _tile_loadd(5, k.base[1] + x, ld[1]);
      _tile_dpbf16ps(1, 5, 6);
    }
    if (ng > 2) {
      _tile_loadd(4, k.base[2] + x, ld[2]);
      _tile_dpbf16ps(2, 4, 6);
    }
    if (ng > 3) {
      _tile_loadd(5, k.base[3] + x, ld[3]);
      _tile_dpbf16ps(3, 5, 6);
    }
    pf();
  }
  _tile_stored(0, sT, kN * 4);
  if (ng > 1) _tile_stored(1, sT + kTileRows * kN, kN * 4);
  if (ng > 2) _tile_stored(2, sT + 2 * kTileRows * kN, kN * 4);
  if (ng > 3) _tile_stored(3, sT + 3 * kTileRows * kN, kN * 4);
}

// P by rows (prow: 16 rows of kTileKeys fp32) -> the A tiles of P V, two per group of 16 keys:
// pa[(2 g + e) * 256 + r * 16 + k] = P[r][16 g + k] as bf16 in the low (e = 0) or the high (e = 1)
// half of a 32-bit pair whose other half is 0 -- against V rows read in place as B (pairs of
// adjacent columns), the low half picks each pair's even column, the high half its odd one.
// pf: a prefetch piece per 8 rows. The caller fences before the tile loads (tiles_fence).
template <typename F>
inline void decode_p_tiles(const float* prow, int ng, uint32_t* pa, F&& pf) {
  for (int r = 0; r < kTileRows; ++r) {  // rows past the query rows too: O's padding
    for (int g = 0; g < ng; ++g) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(prow + r * kTileKeys + g * kN));
      const __m512i lo = _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(h));
      _mm512_storeu_si512(pa + (2 * g) * 256 + r * kN, lo);
      _mm512_storeu_si512(pa + (2 * g + 1) * 256 + r * kN, _mm512_slli_epi32(lo, 16));
    }
    if (r % 8 == 7) pf();
  }
}

// O (16 rows, dv apart, each group of 32 columns held as its 16 even columns, then its 16 odd
// ones: decode_rows.h's split order) += P V: pa, P's A tiles (decode_p_tiles); v, the V rows as
// tile rows (decode_tile_rows); dv a multiple of 32. 64 columns of O at a time (C tiles 0-3: the
// even and odd halves of two groups), a last group of 32 alone. pf: a prefetch piece per 16 keys of
// each pass.
template <typename F>
inline void decode_tiles_pv(const uint32_t* pa, const TileRows& v, int dv, int ng, float* o, F&& pf) {
  const int ld = dv * 4;
  int64_t lb[4];  // bytes
  for (int g = 0; g < 4; ++g) lb[g] = v.ld[g] * int64_t(sizeof(bf16_t));
  tiles_fence();  // P's tiles and O's rescaled rows, read by tile loads
  int x = 0;
  for (; x + 64 <= dv; x += 64) {
    load_c4(o + x, ld);
    for (int g = 0; g < ng; ++g) {
      const bf16_t* bg = v.base[g] + x;
      _tile_loadd(4, pa + (2 * g) * 256, 64);
      _tile_loadd(6, bg, lb[g]);
      _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(5, pa + (2 * g + 1) * 256, 64);
      _tile_dpbf16ps(1, 5, 6);
      _tile_loadd(7, bg + 32, lb[g]);
      _tile_dpbf16ps(2, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
      pf();
    }
    store_c4(o + x, ld);
  }
  if (x < dv) {
    _tile_loadd(0, o + x, ld);
    _tile_loadd(1, o + x + 16, ld);
    for (int g = 0; g < ng; ++g) {
      _tile_loadd(4, pa + (2 * g) * 256, 64);
      _tile_loadd(6, v.base[g] + x, lb[g]);
      _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(5, pa + (2 * g + 1) * 256, 64);
      _tile_dpbf16ps(1, 5, 6);
      pf();
    }
    _tile_stored(0, o + x, ld);
    _tile_stored(1, o + x + 16, ld);
  }
}

// One block (keys [jb, jb + nk), nk <= kTileKeys) for the head h: S^T on tiles, the scale, the keys
// a row cannot see masked, the softmax step per lane, the rows whose max moved rescaled, P^T back to
// rows as A tiles, O += P V on tiles. pf: the prefetch pieces (decode_tiles_steps per block).
template <typename H, typename F>
inline void decode_tiles_block(H& h, int jb, int nk, F&& pf) {
  const bf16_t* kp[kTileKeys];
  const bf16_t* vp[kTileKeys];
  h.block_rows(jb, nk, kp, vp, kTileKeys);
  const int dk = round_up(h.d, 32);
  bf16_t* kst = reinterpret_cast<bf16_t*>(h.kb);
  bf16_t* vst = kst + size_t(kTileKeys) * dk;
  float* prow = h.kb + size_t(kTileKeys / 2) * (dk + h.dv);  // P: 16 rows of kTileKeys
  uint32_t* pa = reinterpret_cast<uint32_t*>(prow + kTileRows * kTileKeys);
  alignas(64) float sT[kTileKeys * kN];  // S^T, then P^T: key j's lanes at j kN
  VF* st = reinterpret_cast<VF*>(sT);
  // a last block of nk < kTileKeys keys: its ng groups of 16 only (the rest would be masked)
  const int ng = (nk + kN - 1) / kN, nj = ng * kN;
  decode_tiles_qk(reinterpret_cast<const uint32_t*>(h.qT), decode_tile_rows(kp, h.d, kst, ng), h.d, ng, sT, pf);
  const VF c = VF::set1(h.scale);
  for (int j = 0; j < nj; ++j) st[j] = st[j] * c;
  if (nk < kTileKeys || jb < h.lo_max || jb + kTileKeys > h.hi_min)  // per 16 keys (past nk: none)
    for (int g = 0; g < nj; g += kN) decode_mask_cols(h.vis_lo, h.vis_hi, jb + g, nk - g, sT + g * kN);
  pf();
  VF mv = VF::load(h.m), lv = VF::load(h.l);  // lanes past the rows: never read
  alignas(64) float alpha[kN];
  softmax_cols_step(st, nj, mv, lv).store(alpha);
  pf();
  mv.store(h.m);
  lv.store(h.l);
  h.rescale_rows(alpha);
  for (int g = 0; g < kTileKeys; g += kN) {  // P by rows
    if (g < nj) transpose_store(st + g, prow + g, kTileKeys);
    pf();
  }
  decode_p_tiles(prow, ng, pa, pf);
  decode_tiles_pv(pa, decode_tile_rows(vp, h.dv, vst, ng), h.dv, ng, h.of, pf);
}

// The pf() calls of decode_tiles_block: S^T 1 per 32 values of d, 2 around the softmax, 4 in the
// transposes, 2 for P's tiles, P V 4 per pass of 64 (or a last 32) columns.
inline int decode_tiles_steps(int d, int dv) { return (d + 31) / 32 + 8 + 4 * ((dv + 63) / 64); }

// DecodeHead::run for a head on the tiles: blocks of kTileKeys keys, each block's lines prefetched
// a block ahead in pieces between its steps (KeyLines, decode_prefetch().rows), or the caller's
// feed (feed_quota lines over the range's blocks: decode_item_heads).
template <typename H>
inline void decode_tiles_run(H& h, int j_begin, int j_end) {
  KeyLines own;
  own.setup(h.k, h.krows, int64_t(h.d) * 2, h.v, h.vrows, int64_t(h.dv) * 2, decode_prefetch().rows);
  const int steps = decode_tiles_steps(h.d, h.dv);
  const int64_t nb = (j_end - j_begin + kTileKeys - 1) / kTileKeys;
  for (int jb = j_begin; jb < j_end; jb += kTileKeys) {
    const int nk = std::min(kTileKeys, j_end - jb);
    KeyLines* f = h.feed;
    int64_t per_step;
    if (f == nullptr) {
      own.finish();  // what the previous block's steps left
      own.start(std::min(jb + kTileKeys, j_end), std::min(jb + 2 * kTileKeys, j_end));
      f = &own;
      per_step = (own.lines + steps - 1) / steps;
    } else {
      per_step = (h.feed_quota + nb * steps - 1) / (nb * steps);
    }
    decode_tiles_block(h, jb, nk, [&] { f->issue(per_step); });
  }
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
