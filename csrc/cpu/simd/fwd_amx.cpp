// fwd_amx.cpp -- the bf16 and fp16 forward on AMX tiles (the "amx" ISA: AVX-512 + AMX-BF16, isa.h):
// the skeleton of fwd_chunk.h over PanelsAmx, groups of 16 query rows. Compiled into the AVX-512
// objects with -mamx-tile -mamx-bf16 added (CMakeLists.txt); only called where the CPU has AMX
// and the OS granted this process the tile state (isa.cpp).
//   S = Q K^T   tdpbf16ps: A = 16 Q rows as bf16 pairs over d, B = K as pairs over d (the same
//               panel as the vdpbf16ps forward's, pack_tile_pairs), C = 4 tiles of 16 x 16 fp32
//   softmax     AVX-512 on S (online_softmax_tile_step, 4 rows at a time), P rounded to bf16
//   O += P V    tdpbf16ps: A = P (16 rows x 32 keys as pairs), B = V as pairs over keys, C = O's
//               16 x 16 blocks, loaded from and stored back to the chunk's fp32 O
// The products' arithmetic is vdpbf16ps's (pairs of bf16 products summed in fp32, bf16 subnormal
// inputs read as 0); the sums' order differs, so results match the avx512 ISA's to rounding.
// fp16 (split_bf16.h): Q, K, V and P as hi + lo bf16 parts, each product the three tile products
// hi hi + lo hi + hi lo into the same C tiles (FAL_AMX_DP_C4_SPLIT); P is the fp32 step's
// (VecLane, as the avx512 ISA's fp16 forward), not rounded to bf16. fp32 likewise where torch's
// float32 matmul precision allows two parts; at the default ("highest") three parts, hi + mid +
// lo (exact), each product the six tile products down to 2^-16 |a b| with hi hi + hi mid in C
// tiles of their own and the other four summed apart and added after (tiles_qk3, pv3): the error
// of S and O then at or below the fp32 kernel's (the sum of all six in one tile, 2.5x its). A part
// below bf16's normal range (|x| < ~2^-126 for mid / lo, i.e. x below ~2^-110) reads as 0 on the
// tiles: such tiny fp32 values keep ~8-16 bits. With three parts at d <= 64 the next two groups' S
// are computed ahead, their tile products issued between this group's softmax steps (qk_softmax): the
// tile unit and the vector units then work at once instead of one after the other.
#include "cpu/simd/amx_tiles.h"
#include "cpu/simd/fwd_chunk.h"
#include "cpu/simd/micro_bf16.h"
#include "cpu/simd/split_bf16.h"
#include "cpu/simd/stages.h"

#if !defined(FAL_SIMD_AVX512)
#error "fwd_amx.cpp belongs to the AVX-512 objects"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

static_assert(kBN == 4 * kTilePairs, "a key tile is 4 C tiles of S, 2 A tiles of P");

// Rows per work item: 512, the K / V packing of a key tile serving 32 groups instead of 16, where
// that leaves at least kAmxMinItems work items; else 256 (the threads' dynamic share of causal rows
// needs enough items). B1 bf16, 2 threads, calls alternating in one process (Xeon,
// 2026-12-02), against 256 rows: H8 N2048 D64 1.14x, D128 1.07x, causal H8 N4096 D128 1.08x; 128
// and 64 rows 0.85x and 0.66x; causal H1 N4096 D64 on 2 threads 1.80x its 1-thread speed at 512
// rows (8 items).
constexpr int kAmxChunkRows = 512, kAmxSmallChunkRows = 256;
constexpr int64_t kAmxMinItems = 16;
inline int amx_chunk_rows(const FwdParams& p) {
  return chunk_items(p, kAmxChunkRows) >= kAmxMinItems ? kAmxChunkRows : kAmxSmallChunkRows;
}

// T = bf16_t: the bf16 panels of the vdpbf16ps forward (micro_bf16.h), kParts 1; T = fp16_t or
// float: each panel in kParts parts (split_bf16.h: q / ql (/ qm), kp / kpl (/ kpm), vp / vpl (/ vpm),
// pb / pbl (/ pbm)) -- 2, or 3 for fp32 at "highest" precision.
template <int kChunk, typename T_, int kParts = std::is_same_v<T_, bf16_t> ? 1 : 2>
struct PanelsAmx {
  using T = T_;
  static constexpr bool kSplit = kParts > 1;
  static constexpr bool kSplit3 = kParts == 3;
  static_assert(!kSplit3 || std::is_same_v<T, float>, "three parts: fp32");
  static constexpr int kRows = kTileRows;
  static constexpr int kChunkRows = kChunk;
  static constexpr bool kFusedStep = true;
  static constexpr bool kRedoNanRows = kSplit;  // an infinite q or k meets a zero part (split_bf16.h)
  // bf16: P rounded to bf16 for P V, as the vdpbf16ps forward; fp16 / fp32: the fp32 P, split
  using Lane = std::conditional_t<kSplit, VecLane, VecLaneBf16P>;
  Buf<uint32_t> q, kp, vp, pb, ql, kpl, vpl, pbl, qm, kpm, vpm, pbm;
  Buf<float> s, s2;  // S of qk_softmax (kRows x kBN); three parts: S's four small products (tiles_qk3)
  // Three parts: the next two groups' S computed ahead (qk_softmax) into slots sn / s2n -- their
  // tile products issued between this group's softmax steps, so the tile unit and the vector units
  // work at once, and the K panel read for two groups at a time -- for panel rows ahead_r0 of the
  // current key tile (-1: none; pack and load_q drop them)
  Buf<float> sn[2], s2n[2];
  int ahead_r0[2] = {-1, -1};
  int slot_of(int r0) const { return ahead_r0[0] == r0 ? 0 : ahead_r0[1] == r0 ? 1 : -1; }
  static constexpr int kAheadMaxPairs = 2 * kTilePairs;  // d <= 64: D64 1.03-1.20x, D128 0.95-0.97x
  int q_rows = 0;                                        // Q panel rows
  int d = 0, dq2 = 0, dv = 0, dvp = 0;
  float scale = 1.f;

  // Q rows of nh heads (each head's padded to rows_pad) as bf16 pairs, dq2 (a whole number of A tile
  // rows) apart, zero-padded.
  void load_q(const FwdParams& p, const T* q0, int rows, int rows_pad, int nh) {
    d = p.d, dq2 = round_up((d + 1) / 2, kTilePairs), dv = p.d_v, dvp = round_up(dv, kNV * kN);
    scale = float(p.scale);
    const size_t all = size_t(nh) * rows_pad;
    q_rows = int(all);
    ahead_r0[0] = ahead_r0[1] = -1;
    q.assign(all * dq2, 0u);
    kp.resize(size_t(dq2) * kBN);  // transpose_pairs writes ceil(d / 32) * 16 = dq2 rows
    vp.resize(size_t(kBN / 2) * dvp);
    pb.resize(size_t(kRows) * (kBN / 2));
    s.resize(size_t(kRows) * kBN);
    if constexpr (kSplit) {
      ql.assign(all * dq2, 0u);
      kpl.resize(size_t(dq2) * kBN);
      vpl.resize(size_t(kBN / 2) * dvp);
      pbl.resize(size_t(kRows) * (kBN / 2));
    }
    if constexpr (kSplit3) {
      qm.assign(all * dq2, 0u);
      kpm.resize(size_t(dq2) * kBN);
      vpm.resize(size_t(kBN / 2) * dvp);
      pbm.resize(size_t(kRows) * (kBN / 2));
      s2.resize(size_t(kRows) * kBN);
      for (int i = 0; i < 2; ++i) {
        sn[i].resize(size_t(kRows) * kBN);
        s2n[i].resize(size_t(kRows) * kBN);
      }
    }
    for (int j = 0; j < nh; ++j)
      for (int r = 0; r < rows; ++r) {
        const T* src = q0 + j * p.q_head_stride + r * p.q_row_stride;
        const size_t at = (size_t(j) * rows_pad + r) * dq2;
        if constexpr (kSplit3)
          split_pairs_parts<3>(src, d, {q.data() + at, qm.data() + at, ql.data() + at});
        else if constexpr (kSplit)
          split_pairs(src, d, q.data() + at, ql.data() + at);
        else
          copy_pairs(src, d, q.data() + at);
      }
  }
  void pack(const T* k, const KvRows& krows, const T* v, const KvRows& vrows, int j0, int cols) {
    ahead_r0[0] = ahead_r0[1] = -1;  // a new K panel
    if constexpr (kSplit3)
      split_tile_pairs_parts<3>(k, krows, v, vrows, j0, cols, d, dv, dvp, {kp.data(), kpm.data(), kpl.data()},
                                {vp.data(), vpm.data(), vpl.data()});
    else if constexpr (kSplit)
      split_tile_pairs(k, krows, v, vrows, j0, cols, d, dv, dvp, kp.data(), kpl.data(), vp.data(), vpl.data());
    else
      pack_tile_pairs(k, krows, v, vrows, j0, cols, d, dv, dvp, kp.data(), vp.data());
  }
  // The group's unscaled Q K^T (kRows x kBN fp32, rows kBN apart) into out.
  void tiles_qk(int r0, float* out) {
    tiles_fence();  // Q and the K panel: stored by vector code
    zero_c4();
    const size_t q_off = size_t(r0) * dq2;
    constexpr int kb = kBN * 4;  // K panel row bytes
    for (int x = 0; x < dq2; x += kTilePairs) {
      const size_t k_off = size_t(x) * kBN;
      _tile_loadd(4, q.data() + q_off + x, dq2 * 4);
      if constexpr (kSplit) {
        _tile_loadd(5, ql.data() + q_off + x, dq2 * 4);
        FAL_AMX_DP_C4_SPLIT(4, 5, kp.data() + k_off, kpl.data() + k_off, kb);
      } else {
        FAL_AMX_DP_C4(4, kp.data() + k_off, kb);
      }
    }
    store_c4(out, kb);
  }
  // Three parts: the group's unscaled Q K^T as hi hi + hi mid (into big) and the sum of the four
  // smaller products (into small; both kRows x kBN, rows kBN apart), 32 keys at a time: C0 / C1 the
  // large sums, C2 / C3 the rest, of the keys' two column tiles; A tiles 4 (Q hi), 5 (Q lo, then
  // Q mid), B 6 / 7 (K's parts).
  // Step i of tiles_qk3 (qk3_steps() of them: per 32 keys, one per 32 values of d; the C tiles
  // zeroed before a half's first, stored after its last).
  int qk3_steps() const { return kBN / (2 * kTilePairs) * (dq2 / kTilePairs); }
  void tiles_qk3_step(int r0, int i, float* big, float* small) {
    constexpr int kb = kBN * 4;  // K panel row bytes
    const int qb = dq2 * 4;      // Q panel row bytes
    const int xs = dq2 / kTilePairs, h = i / xs * 2 * kTilePairs, x = i % xs * kTilePairs;
    const size_t q_off = size_t(r0) * dq2 + x, k_off = size_t(x) * kBN + h;
    tiles_fence();  // Q and the K panel: stored by vector code
    if (x == 0) zero_c4();
    FAL_AMX_DP_SPLIT3(q.data() + q_off, qm.data() + q_off, ql.data() + q_off, qb, kp.data() + k_off, kpm.data() + k_off,
                      kpl.data() + k_off, kb);
    if (x + kTilePairs < dq2) return;
    _tile_stored(0, big + h, kb);
    _tile_stored(1, big + h + 16, kb);
    _tile_stored(2, small + h, kb);
    _tile_stored(3, small + h + 16, kb);
  }
  void tiles_qk3(int r0, float* big, float* small) {
    for (int i = 0, n = qk3_steps(); i < n; ++i) tiles_qk3_step(r0, i, big, small);
  }
  // row-vector i of the group's scaled S from the tile products in big (and small: three parts)
  static __m512 scaled(const float* big, const float* small, size_t i, __m512 sc) {
    if constexpr (kSplit3)
      return _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(big + i), _mm512_loadu_ps(small + i)), sc);
    return _mm512_mul_ps(_mm512_loadu_ps(big + i), sc);
  }
  // S (kRows x kBN) = scale Q[r0, r0 + kRows) K^T; three parts: from sn / s2n when computed ahead
  void qk(int r0, float* S) {
    const float *big = S, *small = s2.data();
    if constexpr (kSplit3) {
      const int i = slot_of(r0);
      if (i >= 0) {
        big = sn[i].data();
        small = s2n[i].data();
      } else {
        tiles_qk3(r0, S, s2.data());
      }
      ahead_r0[0] = ahead_r0[1] = -1;
    } else {
      tiles_qk(r0, S);
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int i = 0; i < kRows * kBN; i += kN) _mm512_storeu_ps(S + i, scaled(big, small, size_t(i), sc));
  }
  // S, the softmax step and P of a plain, fully visible tile: the step on 4 rows at a time in
  // registers (online_softmax_tile_step), P straight to bf16 pairs; 4 rows of which one has seen no
  // key yet take the step over memory instead (the same arithmetic). Always done: true.
  // Three parts: S of this group from its slot when computed ahead; when the next group's is not,
  // the next two groups' (panel rows r0 + kRows, r0 + 2 kRows, where Q has them) computed ahead, their
  // tiles_qk3 steps spread over the steps of 4 rows (one group ahead: H8 N2048 D64 1.03-1.20x the
  // products after the step; two, every other group: 1.03-1.06x one).
  bool qk_softmax(int r0, float* m, float* l, float* o) {
    constexpr int kR = 4;
    int ntodo = 0;  // slots [0, ntodo) computed ahead in this call
    if constexpr (kSplit3) {
      const int i = slot_of(r0);
      if (i >= 0) {
        s.swap(sn[i]);
        s2.swap(s2n[i]);
        ahead_r0[i] = -1;
      } else {
        tiles_qk3(r0, s.data(), s2.data());
      }
      if (dq2 <= kAheadMaxPairs && slot_of(r0 + kRows) < 0) {
        ahead_r0[0] = ahead_r0[1] = -1;
        for (int k = 1; k <= 2 && r0 + k * kRows < q_rows; ++k) ahead_r0[ntodo++] = r0 + k * kRows;
      }
    } else {
      tiles_qk(r0, s.data());
    }
    const __m512 sc = _mm512_set1_ps(scale);
    const int qs = qk3_steps(), steps = ntodo * qs, per = (steps + kRows / kR - 1) / (kRows / kR);
    int step = 0;
    for (int rb = 0; rb < kRows; rb += kR) {
      if constexpr (kSplit3)
        for (int e = std::min(steps, step + per); step < e; ++step) {
          const int k = step / qs;
          tiles_qk3_step(ahead_r0[k], step % qs, sn[k].data(), s2n[k].data());
        }
      float* sr = s.data() + size_t(rb) * kBN;
      Lane t[kR][kNV];
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r)
        for (int v = 0; v < kNV; ++v) t[r][v].v.v = scaled(s.data(), s2.data(), size_t(rb + r) * kBN + v * kN, sc);
      if (online_softmax_tile_step<Lane, kR, kNV>(t, m + rb, l + rb, o + size_t(rb) * dvp, dvp, dvp)) {
#pragma GCC unroll 8
        for (int r = 0; r < kR; ++r)
          for (int v = 0; v < kNV; v += 2) {
            const size_t at = size_t(rb + r) * (kBN / 2) + v * (kN / 2);
            if constexpr (kSplit3) {
              split_p32_parts<3>(t[r][v].v.v, t[r][v + 1].v.v, {pb.data() + at, pbm.data() + at, pbl.data() + at});
            } else if constexpr (kSplit) {
              split_p32(t[r][v].v.v, t[r][v + 1].v.v, pb.data() + at, pbl.data() + at);
            } else {
              const __m512bh h = _mm512_cvtne2ps_pbh(t[r][v + 1].v.v, t[r][v].v.v);
              _mm512_storeu_si512(pb.data() + at, reinterpret_cast<const __m512i&>(h));
            }
          }
        continue;
      }
      for (int r = 0; r < kR; ++r)
        for (int v = 0; v < kNV; ++v) t[r][v].store(sr + r * kBN + v * kN);
      bool seen[kR];
      softmax_rows_step<kR, Lane>(sr, kBN, kBN, m + rb, l + rb, o + size_t(rb) * dvp, dvp, dvp, seen);
      for (int r = 0; r < kR; ++r) emit_p(rb + r, sr + r * kBN);
    }
    return true;
  }
  // row r's P (fp32, kBN) -> bf16 pairs, the A tiles' rows
  void emit_p(int r, const float* sr) {
    const size_t at = size_t(r) * (kBN / 2);
    if constexpr (kSplit3)
      split_f32_consecutive_parts<3>(sr, kBN, {pb.data() + at, pbm.data() + at, pbl.data() + at});
    else if constexpr (kSplit)
      split_f32_consecutive(sr, kBN, pb.data() + at, pbl.data() + at);
    else
      pack_f32_consecutive(sr, kBN, pb.data() + at);
  }
  // O[r0, r0 + kRows) += P V, 64 columns of O (4 C tiles) at a time; keys past cols hold P = 0 and
  // zero V rows
  void pv(const float* /*S*/, int /*cols*/, float* o) {
    const int rb = dvp * 4;  // O and V panel row bytes
    tiles_fence();           // P, the V panel and O's rescaled rows: stored by vector code
    if constexpr (kSplit3) return pv3(o);
    if constexpr (!kSplit) {
      _tile_loadd(4, pb.data(), kBN * 2);
      _tile_loadd(5, pb.data() + kTilePairs, kBN * 2);
    }
    for (int dc = 0; dc < dvp; dc += 4 * kTilePairs) {
      float* oc = o + dc;
      const size_t v0 = size_t(dc), v1 = v0 + size_t(kTilePairs) * dvp;  // key pairs [0, 16), [16, 32)
      load_c4(oc, rb);
      if constexpr (kSplit) {
        _tile_loadd(4, pb.data(), kBN * 2);
        _tile_loadd(5, pbl.data(), kBN * 2);
        FAL_AMX_DP_C4_SPLIT(4, 5, vp.data() + v0, vpl.data() + v0, rb);
        _tile_loadd(4, pb.data() + kTilePairs, kBN * 2);
        _tile_loadd(5, pbl.data() + kTilePairs, kBN * 2);
        FAL_AMX_DP_C4_SPLIT(4, 5, vp.data() + v1, vpl.data() + v1, rb);
      } else {
        FAL_AMX_DP_C4(4, vp.data() + v0, rb);
        FAL_AMX_DP_C4(5, vp.data() + v1, rb);
      }
      store_c4(oc, rb);
    }
  }
  // Three parts: O += P V, 32 columns at a time: C0 / C1 O's two column tiles += P hi (V hi + V
  // mid), C2 / C3 (from zero) the four smaller products, then added to O by vector code; A tiles 4
  // (P hi), 5 (P lo, then P mid), B 6 / 7 (V's parts). The caller fenced.
  void pv3(float* o) {
    const int rb = dvp * 4;      // O and V panel row bytes
    constexpr int pr = kBN * 2;  // P panel row bytes
    float* small = s2.data();    // 16 rows x 32 (s2 is free: S of this group is in P)
    for (int dc = 0; dc < dvp; dc += 2 * kTilePairs) {
      float* oc = o + dc;
      _tile_loadd(0, oc, rb);
      _tile_loadd(1, oc + 16, rb);
      _tile_zero(2);
      _tile_zero(3);
      for (int kh = 0; kh < 2; ++kh) {  // key pairs [16 kh, 16 kh + 16)
        const size_t vo = size_t(kh) * kTilePairs * dvp + dc, po = size_t(kh) * kTilePairs;
        const uint32_t *vh = vp.data() + vo, *vm = vpm.data() + vo, *vl = vpl.data() + vo;
        FAL_AMX_DP_SPLIT3(pb.data() + po, pbm.data() + po, pbl.data() + po, pr, vh, vm, vl, rb);
      }
      _tile_stored(0, oc, rb);
      _tile_stored(1, oc + 16, rb);
      _tile_stored(2, small, 2 * kTilePairs * 4);
      _tile_stored(3, small + 16, 2 * kTilePairs * 4);
      for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < 2 * kTilePairs; c += kN) {
          float* at = oc + size_t(r) * dvp + c;
          _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), _mm512_loadu_ps(small + r * 2 * kTilePairs + c)));
        }
    }
  }
};

template <typename T, int kParts = std::is_same_v<T, bf16_t> ? 1 : 2>
bool run_amx(const FwdParams& p, int64_t begin, int64_t end) {
  return amx_chunk_rows(p) == kAmxChunkRows ? run_chunks<PanelsAmx<kAmxChunkRows, T, kParts>>(p, begin, end)
                                            : run_chunks<PanelsAmx<kAmxSmallChunkRows, T, kParts>>(p, begin, end);
}

}  // namespace

int64_t fwd_chunk_items_amx(const FwdParams& p) { return chunk_items(p, amx_chunk_rows(p)); }

bool fwd_chunks_run_amx(const FwdParams& p, int64_t begin, int64_t end) {
  const TileScope tiles;
  switch (p.dtype) {
    case DType::kFloat16: return run_amx<fp16_t>(p, begin, end);
    case DType::kFloat32: return p.fp32_split_bf16 ? run_amx<float>(p, begin, end) : run_amx<float, 3>(p, begin, end);
    default: return run_amx<bf16_t>(p, begin, end);
  }
}

// The amx ISA's peak probe: kind 2, tdpbf16ps into 4 independent C tiles (16 x 16 x 32 products
// each); kinds 0 and 1, the AVX-512 loops (fp32 FMA, vdpbf16ps).
float peak_loop_amx(int kind, int64_t iters) {
  if (kind != 2) return peak_loop(kind, iters);
  alignas(64) uint32_t a[kTileRows * kTilePairs];
  alignas(64) float c[kTileRows * kTilePairs];
  for (uint32_t& x : a) x = 0x3a833a83u;  // bf16 pairs (1e-3, 1e-3)
  const TileScope tiles;
  zero_c4();
  _tile_loadd(4, a, 64);
  _tile_loadd(5, a, 64);
  _tile_loadd(6, a, 64);
  _tile_loadd(7, a, 64);
  for (int64_t it = 0; it < iters; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  return c[0];
}

double peak_flops_per_iter_amx(int kind) {
  return kind == 2 ? 4.0 * kTileRows * kTilePairs * 2 * kTilePairs * 2 : peak_flops_per_iter(kind);
}

}  // namespace fal::cpu::FAL_CPU_NS

#undef FAL_AMX_DP_C4
#undef FAL_AMX_DP_C4_SPLIT
#undef FAL_AMX_DP_SPLIT2
#undef FAL_AMX_DP_SPLIT3
