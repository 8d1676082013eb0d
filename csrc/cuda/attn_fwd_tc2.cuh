// attn_fwd_tc2.cuh -- tensor-core forward, variant 2 (issue 14): FlashAttention-2's loop structure
// in our own code, aimed at the instructions issued per MMA. The default for D 64 and 128 since the
// 2026-11-30 H200 run (bench/results/gpu-2026-11-30-h200.md); FLASHATTN_LITE_CUDA_FWD=v1 selects
// variant 1 (attn_fwd_tc.cuh), which runs every other head dim (dispatch.cu).
// Same math, tiles and fragment layouts as variant 1; what differs:
//  - tiles of 128 query rows x 64 keys at D 64, x 32 keys at D 128 (64 keys spill registers there);
//  - K/V tiles loaded by a fixed per-thread chunk map (KvTileLoader): each thread copies kIters
//    16-byte chunks of one column, rows r0 + i * kStep, from a pointer bumped by one tile per
//    step; row guards only where a tile crosses s_k; columns >= d (when d < D) are zeroed once
//    and never loaded;
//  - the key tiles are walked as [masked front | unmasked middle | masked back]: only tiles that
//    some row sees partly (the causal diagonal, window edges, the s_k edge) run the element mask;
//  - the softmax scale is folded into the exp2 FFMA: the running max is kept in raw score units,
//    so the scale must be > 0 (dispatch.cu sends other scales to variant 1);
//  - the O rescale is warp-uniform: skipped only when no row of the warp raised its max.
// Requirements met by the glue: as variant 1 (d % 8 == 0, d <= D, d_v == d, 16-byte alignment).
#pragma once
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/attn_fwd_tc.cuh"  // load_tile_async (the Q tile), attn_fwd_combine_kernel
#include "cuda/kernel_common.cuh"
#include "flashattn_lite/attn_math.h"

namespace fal::cuda {

// kStages: K/V tiles in flight (a ring of shared stages); every launch uses 2 (the double buffer).
// A 4-stage decode configuration (3 tiles loading while one is used) passed the H200 tests but
// read no faster (2026-12-04: 45-84 % of copy bandwidth, as the 2-stage kernel), so no launch
// selects it; the ring stays generic for a later deeper pipeline (Hopper's TMA).
template <int D, int kStages = 2>
struct FwdTc2Config {
  static_assert(D == 64 || D == 128, "variant 2 is built for head dims 64 and 128");
  static_assert(kStages == 2 || kStages == 4, "stages: a power of two (the ring index is a mask)");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMT = 2;                                           // m16 tiles per warp
  static constexpr int kBM = kWarps * 16 * kMT;                           // 128 query rows per block
  static constexpr int kBN = D <= 64 ? 64 : 32;                           // keys per tile (64 at D 128 spills)
  static constexpr int kLd = D + 8;                                       // padded shared row, elements
  static constexpr int kSmemBytes = (kBM + 2 * kStages * kBN) * kLd * 2;  // Q + kStages stages of K and V
};

// One thread's share of loading ROWS x D tiles of K and V into shared stages (row pitch D + 8):
// chunk c = threadIdx.x + i * NT of a tile is row c / (D / 8), column (c % (D / 8)) * 8, so the
// thread always copies the same column, rows r0 + i * kStep. Stateless: the addresses are
// recomputed from the params (constant bank) per tile, which costs a few integer instructions per
// tile and keeps no pointer live across the main loop (the registers go to the accumulators).
template <typename T, int D, int ROWS, int NT>
struct KvTileLoader {
  static constexpr int kChunks = D / 8, kStep = NT / kChunks, kIters = ROWS / kStep;
  static_assert(NT % kChunks == 0 && ROWS % kStep == 0, "chunk map needs NT % (D / 8) == 0");

  // Loads rows [row0, row0 + ROWS) of head (bi, hk) of K and V into shared stages ks / vs. kGuard:
  // rows >= s_k read as zeros (their source is the tensor's base, a valid address). Unguarded:
  // every row is in bounds. Columns >= d are never written (the kernel zeroes them once).
  template <bool kGuard>
  __device__ __forceinline__ static void load(const FwdParams& p, T* ks, T* vs, int row0, int bi, int hk) {
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    one<kGuard>(ks, k + bi * p.k_batch_stride + hk * p.k_head_stride, p.k_row_stride, row0, p, k);
    one<kGuard>(vs, v + bi * p.v_batch_stride + hk * p.v_head_stride, p.v_row_stride, row0, p, v);
  }
  template <bool kGuard>
  __device__ __forceinline__ static void one(T* stage, const T* head, int64_t row_stride, int row0, const FwdParams& p,
                                             const T* safe) {
    const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
    if (!kGuard && col >= p.d) return;
    const T* g = head + (int64_t(row0) + r0) * row_stride + col;
    T* dst = stage + r0 * (D + 8) + col;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (kGuard) {
        const bool ok = col < p.d && row0 + r0 + i * kStep < p.s_k;
        cp_async_16(dst + i * kStep * (D + 8), ok ? g + i * kStep * row_stride : safe, ok ? 16 : 0);
      } else {
        cp_async_16_full(dst + i * kStep * (D + 8), g + i * kStep * row_stride);
      }
    }
  }
};

// The running state of one thread's 2 * MT query rows and the per-tile step.
template <typename T, int D>
struct Fwd2Rows {
  using Cfg = FwdTc2Config<D>;
  static constexpr int BN = Cfg::kBN, LD = Cfg::kLd, MT = Cfg::kMT;
  float o[MT][D / 8][4];
  float m[2 * MT];  // running max of the raw scores (scale not applied)
  float l[2 * MT];  // this thread's part of the softmax denominator

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int x = 0; x < D / 8; ++x) o[mt][x][0] = o[mt][x][1] = o[mt][x][2] = o[mt][x][3] = 0.f;
#pragma unroll
    for (int x = 0; x < 2 * MT; ++x) m[x] = -INFINITY, l[x] = 0.f;
  }

  // S = Q K^T, the online-softmax step and O += P V for NB keys at j0. qa / ka / va: this lane's
  // ldmatrix addresses (shared state space) of its Q rows, of the K tile and of the V tile; the
  // fragment offsets below are compile-time constants added to them.
  // kMask: hide the keys each row must not see (row_base = this thread's first row).
  // kMod: apply the score transforms (softcap, ALiBi: softcap_alibi of attn_math.h, the CPU's
  // math) in natural units, then return to raw units (divide by the scale) for the folded exp2.
  template <bool kMask, int NB, bool kMod = false>
  __device__ __forceinline__ void tile(const FwdParams& p, uint32_t qa, uint32_t ka, uint32_t va, int j0, int row_base,
                                       ScoreModLite mod = {}) {
    const int t4 = threadIdx.x % 4;
    float s[MT][NB / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NB / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], qa + (mt * 16 * LD + kk * 16) * 2);
#pragma unroll
      for (int nb = 0; nb < NB / 16; ++nb) {
        uint32_t b[4];
        ldmatrix_x4(b, ka + (nb * 16 * LD + kk * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(s[mt][2 * nb], a[mt], b[0], b[1]);
          mma_16816<T>(s[mt][2 * nb + 1], a[mt], b[2], b[3]);
        }
      }
    }

    if constexpr (kMod) {
      const float sc = float(p.scale), inv = 1.f / sc;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < NB / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = row_base + mt * 16 + (e >> 1) * 8, col = j0 + n * 8 + t4 * 2 + (e & 1);
            s[mt][n][e] = mod.apply(s[mt][n][e] * sc, row, col, nullptr) * inv;
          }
    }

    if (kMask) {  // this thread's rows are row_base + mt * 16 + r * 8
      const Visibility vis = make_visibility(p, p.s_q, p.s_k);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const KeyRange kr = vis.keys_of_row(row_base + mt * 16 + r * 8);
          const int lo = kr.lo - j0 - t4 * 2, hi = kr.hi - j0 - t4 * 2;  // in this lane's column offsets
#pragma unroll
          for (int n = 0; n < NB / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              if (n * 8 + e < lo || n * 8 + e >= hi) s[mt][n][2 * r + e] = -INFINITY;
        }
    }

    // Online softmax per row on raw scores: m_new = max(m, rowmax(S)), P = exp2(S * sl2 - m_new * sl2)
    // (one FFMA + EX2 per score), l = l * alpha + rowsum(P) with alpha = exp2((m - m_new) * sl2).
    const float sl2 = p.scale_log2;
    uint32_t pk[MT][NB / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float alpha[2];
      bool moved = false;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int x = 2 * mt + r;
        float mx = m[x];
#pragma unroll
        for (int n = 0; n < NB / 8; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
        mx = quad_max(mx);
        const float m_use = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet keeps P = 0
        const float ms = m_use * sl2;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < NB / 8; ++n) {
          s[mt][n][2 * r] = exp2f(fmaf(s[mt][n][2 * r], sl2, -ms));
          s[mt][n][2 * r + 1] = exp2f(fmaf(s[mt][n][2 * r + 1], sl2, -ms));
          sum += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
        }
        alpha[r] = exp2f(fmaf(m[x], sl2, -ms));
        moved |= mx != m[x];
        l[x] = fmaf(l[x], alpha[r], sum);
        m[x] = mx;
      }
      // P of this m-tile packed to 16-bit right away (halves its registers before the next m-tile):
      // the S accumulators of key blocks (2kk, 2kk+1) are the A fragment of k-step kk of O += P V.
#pragma unroll
      for (int kk = 0; kk < NB / 16; ++kk) {
        pk[mt][kk][0] = Pack<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pk[mt][kk][1] = Pack<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pk[mt][kk][2] = Pack<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pk[mt][kk][3] = Pack<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
      if (__any_sync(0xffffffffu, moved)) {  // warp-uniform: no divergence around the rescale
#pragma unroll
        for (int y = 0; y < D / 8; ++y) {
          o[mt][y][0] *= alpha[0];
          o[mt][y][1] *= alpha[0];
          o[mt][y][2] *= alpha[1];
          o[mt][y][3] *= alpha[1];
        }
      }
    }

    // O += P V; each V fragment feeds MT MMAs.
#pragma unroll
    for (int kk = 0; kk < NB / 16; ++kk) {
#pragma unroll
      for (int db = 0; db < D / 16; ++db) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, va + (kk * 16 * LD + db * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * db], pk[mt][kk], b[0], b[1]);
          mma_16816<T>(o[mt][2 * db + 1], pk[mt][kk], b[2], b[3]);
        }
      }
    }
  }
};

template <typename T, int D, int kStages = 2, bool kMod = false>
__global__ void __launch_bounds__(FwdTc2Config<D>::kThreads) attn_fwd_tc2_kernel(const FwdParams p) {
  using Cfg = FwdTc2Config<D, kStages>;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, LD = Cfg::kLd, NT = Cfg::kThreads, MT = Cfg::kMT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // BM x LD
  T* Ks = Qs + BM * LD;                    // kStages x BN x LD
  T* Vs = Ks + kStages * BN * LD;          // kStages x BN x LD

  const int hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int split = blockIdx.x % p.num_splits;
  const int i0 = (blockIdx.x / p.num_splits) * BM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride;

  const Visibility vis = make_visibility(p, p.s_q, p.s_k);
  const int i1 = min(i0 + BM, p.s_q);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  const int n_tiles_all = kr.hi > kr.lo ? (kr.hi - kr.lo + BN - 1) / BN : 0;
  // this split's key tiles: [t_begin, t_end)
  const int per_split = (n_tiles_all + p.num_splits - 1) / p.num_splits;
  const int t_begin = min(split * per_split, n_tiles_all), t_end = min(t_begin + per_split, n_tiles_all);
  // Tiles every row of the block sees whole: j0 >= raw_lo(i1 - 1) and j0 + BN <= min(raw_hi(i0), s_k),
  // an interval [u0, u1) of tile indices (j0 = kr.lo + t * BN).
  const int64_t need = vis.raw_lo(i1 - 1) - kr.lo;
  const int64_t room = (vis.raw_hi(i0) < p.s_k ? vis.raw_hi(i0) : int64_t(p.s_k)) - kr.lo - BN;
  const int64_t first_full = need <= 0 ? 0 : (need + BN - 1) / BN, end_full = room < 0 ? 0 : room / BN + 1;
  const int u0 = first_full < t_begin ? t_begin : first_full > t_end ? t_end : int(first_full);
  const int u1 = end_full < u0 ? u0 : end_full > t_end ? t_end : int(end_full);

  using Loader = KvTileLoader<T, D, BN, NT>;
  if (p.d < D)  // columns [d, D) of both K and V stages: zero once, never loaded
    for (int c = threadIdx.x; c < 2 * kStages * BN * (D / 8); c += NT)
      if ((c % (D / 8)) * 8 >= p.d) *reinterpret_cast<uint4*>(Ks + (c / (D / 8)) * LD + (c % (D / 8)) * 8) = uint4{};
  load_tile_async<T, D, BM, NT>(Qs, q, p.q_row_stride, i0, p.s_q, p.d);
  if (t_begin < t_end) Loader::template load<true>(p, Ks, Vs, kr.lo + t_begin * BN, bi, hk);
  cp_async_commit();
#pragma unroll
  for (int s = 1; s < kStages - 1; ++s) {  // a deeper ring: its first tiles too, a commit group each
    if (t_begin + s < t_end)
      Loader::template load<true>(p, Ks + s * BN * LD, Vs + s * BN * LD, kr.lo + (t_begin + s) * BN, bi, hk);
    cp_async_commit();
  }

  const int row_base = i0 + warp * MT * 16 + g;  // this thread's rows: row_base + mt * 16 + r * 8
  const bool warp_active = i0 + warp * MT * 16 < p.s_q;
  // This lane's ldmatrix addresses: A fragments of its warp's Q rows (x4: rows lane % 8 + 8 * bit 3
  // of lane, columns 8 * bit 4), B fragments of K (rows lane % 8 + 8 * bit 4, columns 8 * bit 3)
  // and, transposed, of V (rows lane % 8 + 8 * bit 3, columns 8 * bit 4), in stage 0.
  const uint32_t q_lane = smem_u32(Qs + (warp * MT * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8);
  const uint32_t k_lane = smem_u32(Ks + ((lane % 8) + (lane / 16) * 8) * LD + ((lane / 8) % 2) * 8);
  const uint32_t v_lane = smem_u32(Vs + ((lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8);
  Fwd2Rows<T, D> rows;
  rows.init();
  ScoreModLite mod;  // the score transforms of this (batch, head): kMod kernels only
  if constexpr (kMod) mod = make_score_mod_lite(p, bi, hi, p.s_q, p.s_k);

  // One key tile t: prefetch tile t + kStages - 1 into the stage freed by tile t - 1, wait for tile
  // t, compute it.
  auto step = [&](int t, auto mask, auto guard_next) {
    constexpr bool kMask = decltype(mask)::value, kGuardNext = decltype(guard_next)::value;
    const int j0 = kr.lo + t * BN, stage = (t - t_begin) & (kStages - 1);
    int next;  // the stage of tile t + kStages - 1
    if constexpr (kStages == 2)
      next = stage ^ 1;
    else
      next = (stage + kStages - 1) & (kStages - 1);
    if (t + kStages - 1 < t_end)
      Loader::template load<kGuardNext>(p, Ks + next * BN * LD, Vs + next * BN * LD, j0 + (kStages - 1) * BN, bi, hk);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    // Warps whose rows all lie past s_q (decode, last query tile) only help load tiles.
    // A masked tile runs as two 32-key halves: fewer live scores leave registers for the mask.
    if (warp_active) {
      const uint32_t ka = k_lane + stage * (BN * LD * 2), va = v_lane + stage * (BN * LD * 2);
      if (kMask) {
#pragma unroll
        for (int h = 0; h < BN / 32; ++h)
          rows.template tile<true, 32, kMod>(p, q_lane, ka + h * 32 * LD * 2, va + h * 32 * LD * 2, j0 + h * 32,
                                             row_base, mod);
      } else {
        rows.template tile<false, BN, kMod>(p, q_lane, ka, va, j0, row_base, mod);
      }
    }
    __syncthreads();  // this stage is overwritten by the load issued in the next step
  };
  using Yes = std::true_type;
  using No = std::false_type;
  // Two copies of the step: the unmasked one runs the tight inner loop over [u0, u1 - kStages + 1)
  // (the tile it prefetches is whole too, so its loads are unguarded); every other tile (window's
  // left edge, the diagonal, the s_k edge, and the last whole tiles, whose prefetch may cross s_k)
  // runs the masked step with guarded loads (masking a whole tile changes nothing).
  for (int t = t_begin; t < t_end;) {
    if (t >= u0 && t < u1 - (kStages - 1)) {
      for (; t < u1 - (kStages - 1); ++t) step(t, No{}, No{});
    } else {
      step(t++, Yes{}, Yes{});
    }
  }
  cp_async_wait<0>();

  // Epilogue: O / l, LSE = (m * sl2 + log2 l) * ln 2; a row that saw no key writes 0 and -inf.
  T* out = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int x = 2 * mt + r;
      const float lt = quad_sum(rows.l[x]);
      const int row = row_base + mt * 16 + r * 8;
      if (row >= p.s_q) continue;
      // row_has_mass: l > 0 saw keys, 0 saw none (out 0, lse -inf), NaN had a NaN score (both NaN)
      const float inv = row_has_mass(lt) ? 1.f / lt : 0.f;
      const float row_lse =
          row_has_mass(lt) ? (rows.m[x] * p.scale_log2 + __log2f(lt)) * 0.69314718055994531f : -INFINITY;
      if (p.num_splits > 1) {  // normalised fp32 partial output + its LSE, merged by the combine pass
        const int64_t prow = ((int64_t(split) * p.b + bi) * p.h + hi) * p.s_q + row;
        float* po = p.o_accum + prow * p.d_v;
#pragma unroll
        for (int y = 0; y < D / 8; ++y) {
          const int col = y * 8 + t4 * 2;
          if (col < p.d_v)
            *reinterpret_cast<float2*>(po + col) =
                make_float2(rows.o[mt][y][2 * r] * inv, rows.o[mt][y][2 * r + 1] * inv);
        }
        if (t4 == 0) p.lse_accum[prow] = row_lse;
        continue;
      }
      T* orow = out + int64_t(row) * p.o_row_stride;
#pragma unroll
      for (int y = 0; y < D / 8; ++y) {
        const int col = y * 8 + t4 * 2;
        if (col < p.d_v)
          *reinterpret_cast<uint32_t*>(orow + col) =
              Pack<T>::pack(rows.o[mt][y][2 * r] * inv, rows.o[mt][y][2 * r + 1] * inv);
      }
      if (t4 == 0) lse[row] = row_lse;
    }
}

template <typename T, int D, int kStages, bool kMod = false>
int launch_fwd_tc2_stages(const FwdParams& p, cudaStream_t stream) {
  using Cfg = FwdTc2Config<D, kStages>;
  auto kernel = attn_fwd_tc2_kernel<T, D, kStages, kMod>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return int(e);
  }
  const dim3 grid((p.s_q + Cfg::kBM - 1) / Cfg::kBM * p.num_splits, p.h, p.b);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.num_splits <= 1) return int(e);
  attn_fwd_combine_kernel<T><<<dim3(p.s_q, p.h, p.b), 128, 0, stream>>>(p);
  return int(cudaGetLastError());
}

// softcap / ALiBi run the kMod instantiation.
template <typename T, int D>
int launch_fwd_tc2(const FwdParams& p, cudaStream_t stream) {
  if (p.softcap > 0.0 || p.alibi_slopes != nullptr) return launch_fwd_tc2_stages<T, D, 2, true>(p, stream);
  return launch_fwd_tc2_stages<T, D, 2>(p, stream);
}

}  // namespace fal::cuda
