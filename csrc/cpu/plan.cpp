// plan.cpp -- how a call is decomposed before its scratch is allocated (the kernel tables' fwd_plan
// and bwd_plan, isa.h): GQA decode packing, decode head groups, the split-KV count, the forward's
// heads per work item, the backward's key splits.
// Portable code: compiled once.
#include <algorithm>

#include "cpu/cpu_kernels.h"

namespace fal::cpu {
namespace {

constexpr int kSplitMinKeys = 512;  // keys of a decode split, at least

// Decode with GQA: one query row per head -> the g query heads sharing a kv head become g rows of
// one sequence (the same memory, other strides), so the decode kernel streams each K/V row once
// per kv head instead of once per query head. Only where that is the same computation: one query
// row, every key visible to it (bottom-right causal / right window are then no-ops), no per-head
// transform (ALiBi, attn_mask, dropout) and a contiguous LSE row (its row stride is 1).
void pack_gqa_decode(FwdParams& p) {
  const int g = p.h / p.h_kv;
  if (g <= 1 || g > kDecodeMaxRows || p.s_q != 1 || p.cu_seqlens_q || p.alibi_slopes || p.mask || p.dropout_p > 0.f ||
      p.window_left >= 0 || p.lse_head_stride != 1)
    return;
  if (!p.bottom_right && (p.causal || p.window_right >= 0)) return;
  // K/V heads interleaved in a row (token-major): the decode kernel walks a group of heads over
  // each K/V chunk either way (decode_group_heads); packed, each kv head's g rows share one pass
  // over its K / V. B1 32768 keys D128, 2 threads, packed against one row per query head, in one
  // process (Zen 4, T1 prefetch, 2026-12-01): 32/8 bf16 1.32x, fp32 1.34x, fp16 1.2x; 32/4
  // 1.3-1.75x; g = 2: bf16 1.1x, fp32 1.04x; fp16 g = 2 and 3 (token-major; since its rows' S runs
  // in passes of 4 rows, decode_rows.h) 1.2-1.25x AVX2, 1.48-1.5x AVX-512 (2026-12-02)
  p.causal = false;
  p.window_right = -1;
  p.s_q = g;
  p.h = p.h_kv;
  p.q_row_stride = p.q_head_stride;
  p.q_head_stride *= g;
  p.o_row_stride = p.o_head_stride;
  p.o_head_stride *= g;
  p.lse_head_stride *= g;  // rows of a packed head are consecutive in the (b, h, 1) LSE
}

// Decode head groups (cpu_kernels.h): on a token-major cache with too few items for every thread
// even after key splits (decode_splits: >= kSplitMinKeys keys each; a short cache at batch 1),
// smaller head groups -- no combine pass, each item still reading its heads' span of every K / V
// row contiguously, at least 512 bytes of it. Only then: where keys suffice, splits of whole rows
// stream better. B1, 2 threads, bf16, in one process, calls alternating (Zen 4, 2026-12-01):
// H32 D128 256 keys 1.79x, H8 D64 512 / 256 keys 1.45x / 1.36x; 2 groups + 2 key splits instead of
// 2 key splits at 1024 keys 0.97x, 4 groups of 8 heads instead of 4 key splits at 32768 keys 0.79x.
void decode_heads_plan(FwdParams& p, int threads) {
  const int per = decode_group_heads_max(p);
  p.decode_heads = per;
  if (!decode_heads_interleaved(p)) return;
  const int g = p.h / p.h_kv;
  const int64_t key_splits = std::max<int64_t>(1, decode_keys(p) / kSplitMinKeys);
  const int64_t want_groups = (threads + p.b * key_splits - 1) / (p.b * key_splits);
  if ((p.h + per - 1) / per >= want_groups) return;
  const int64_t row_bytes = int64_t(p.d) * (p.dtype == DType::kFloat32 ? 4 : 2);  // one kv head's K row
  const int64_t kv_min = (512 + row_bytes - 1) / row_bytes;
  int64_t kv_per = (p.h_kv + want_groups - 1) / want_groups;
  kv_per = std::min<int64_t>(std::max(kv_per, kv_min), per / g);
  p.decode_heads = int(std::max<int64_t>(1, kv_per) * g);
}

// Decode split: p.num_splits > 0 is the caller's count (flash-attn's num_splits: 1 = no split), at
// most one split per key; 0 = enough (batch, head group, split) items for every thread to stream
// memory, each split keeping >= kSplitMinKeys keys.
int decode_splits(const FwdParams& p, int threads) {
  if (p.num_splits > 0) return std::max(1, std::min(p.num_splits, p.s_k));
  const int64_t items = int64_t(p.b) * decode_head_groups(p);  // per split
  if (items >= 2 * int64_t(threads)) return 1;
  return int(std::max<int64_t>(
      1, std::min<int64_t>((2 * int64_t(threads) + items - 1) / items, decode_keys(p) / kSplitMinKeys)));
}

// Query heads per forward work item (cpu_kernels.h fwd_item_heads): the largest divisor of the
// GQA group g whose heads' rows (16-row groups) fit kFwdItemRows while the items still number at
// least 2 per thread -- a short chunk of rows against a long cache packs each K / V tile once per kv
// head instead of once per query head. B1 64 rows x 16384 keys H32/8 D128, 2 threads (Xeon,
// 2026-12-02): see bench/results/cpu-2026-12-02g-intel.md.
int fwd_item_heads_plan(const FwdParams& p, int threads) {
  const int g = p.h / p.h_kv, rows = (p.s_q + 15) / 16 * 16;
  int best = 1;
  for (int n = 2; n <= std::min(g, kFwdMaxItemHeads); ++n)
    if (g % n == 0 && n * rows <= kFwdItemRows && int64_t(p.b) * (p.h / n) >= 2 * int64_t(threads)) best = n;
  return best;
}

}  // namespace

void fwd_plan_portable(FwdParams& p, int /*threads*/) { p.num_splits = 1; }

void fwd_plan_simd(FwdParams& p, int threads) {
  if (p.dtype == DType::kFloat64) return fwd_plan_portable(p, threads);  // the portable kernel
  pack_gqa_decode(p);
  if (p.s_q <= kDecodeMaxRows) {
    decode_heads_plan(p, threads);
    p.num_splits = decode_splits(p, threads);
  } else {
    p.decode_heads = fwd_item_heads_plan(p, threads);
    p.num_splits = 1;
  }
}

NanPass fwd_nan_pass_simd(const FwdParams& p) { return p.dtype != DType::kFloat64 ? NanPass::kValues : NanPass::kNone; }
// the amx ISA: fp16 and fp32 forwards of more than kDecodeMaxRows rows run on split operands
// (kernels.cpp amx_chunks)
NanPass fwd_nan_pass_amx(const FwdParams& p) {
  const bool split = (p.dtype == DType::kFloat16 || p.dtype == DType::kFloat32) && p.s_q > kDecodeMaxRows;
  return split ? NanPass::kRows : fwd_nan_pass_simd(p);
}

void bwd_plan_portable(BwdParams& p, int /*threads*/) {
  p.key_splits = 1;
  p.split_heads = false;
}

// Fewer (batch, kv head) items than 2 per thread (MQA / GQA at batch 1, a lone head): split each
// item's keys (at most one split per 4 key tiles of 64) into the fewest splits that make items x
// splits a multiple of the threads -- one split per thread for a lone item -- unless that takes more
// than the about 2 items per thread it takes without the multiple. The kernel cuts the splits at
// equal shares of the work (bwd_head.h split_tiles: causal keys cost unequally). Each split repeats
// the item's setup (Q / dO packing of every query row, its own fp32 dQ partial (b x h x s_q x d,
// zeroed) and a share of the combine pass): as few splits as balance allows. MQA H8/1 B1 N4096 D64 bf16 fwd+bwd on 2
// threads against 1 (Xeon, 2026-12-02, same process): amx 1.73-1.74x plain, 1.62-1.63x causal
// (2 splits per thread: 1.44x, 1.25x); avx512 1.85x and 1.93x (1.87x,
// 1.70x).
//
// Where the query heads of the group divide into that many equal parts, they split instead of the
// keys (split_heads): a split packs Q / dO and computes D of its own heads only and writes their dQ
// itself (a key split repeats all of that per split and adds dQ partials of h x s_q rows); the
// combine pass adds the splits' fp32 dK / dV (h_kv x s_k rows), and causal work is equal across
// heads. MQA H8/1 B1 N4096 D64, backward alone, 2 threads against 1 (Xeon, 2026-12-03, processes
// alternating): amx bf16 1.73-1.77x -> 1.92-1.94x, causal 1.57x -> 1.86x; avx512 fp32 1.75x ->
// 1.99x; avx2 fp32 1.88x -> 2.0x.
void bwd_plan_simd(BwdParams& p, int threads) {
  p.key_splits = 1;
  p.split_heads = false;
  if (p.dtype == DType::kFloat64 || threads <= 1) return;  // fp64: the portable kernel
  const int64_t items = int64_t(p.b) * p.h_kv;
  if (items >= 2 * int64_t(threads)) return;
  const int64_t max_splits = std::max<int64_t>(1, (int64_t(p.s_k) + 4 * 64 - 1) / (4 * 64));
  const int64_t fallback = (2 * int64_t(threads) + items - 1) / items;  // about 2 items per thread
  int64_t ns = (threads + items - 1) / items;
  while (ns < fallback && (items * ns) % threads != 0) ++ns;
  const int g = p.h / p.h_kv;
  if (ns > 1 && ns <= g && g % ns == 0) {
    p.key_splits = int(ns);
    p.split_heads = true;
    return;
  }
  p.key_splits = int(std::min<int64_t>(max_splits, ns));
}
NanPass fwd_nan_pass_portable(const FwdParams& /*p*/) { return NanPass::kNone; }

}  // namespace fal::cpu
