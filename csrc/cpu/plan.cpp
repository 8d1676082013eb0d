// plan.cpp -- how a call is decomposed before its scratch is allocated (the kernel tables' fwd_plan
// and bwd_plan, isa.h): GQA decode packing, the split-KV count, the backward's key splits.
// Portable code: compiled once.
#include <algorithm>

#include "cpu/cpu_kernels.h"

namespace fal::cpu {
namespace {

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
  // 1.3-1.75x; g = 2: bf16 1.1x, fp32 1.04x, but fp16 0.76x (its rows stage K transposed,
  // decode_rows.h: not worth it for 2 rows), so fp16 with g < 4 stays unpacked
  if (p.k_head_stride < p.k_row_stride && p.v_head_stride < p.v_row_stride && p.dtype == DType::kFloat16 && g < 4)
    return;
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

// Decode split: p.num_splits > 0 is the caller's count (flash-attn's num_splits: 1 = no split), at
// most one split per key; 0 = enough (batch, head group, split) items for every thread to stream
// memory, each split keeping >= 512 keys.
int decode_splits(const FwdParams& p, int threads) {
  if (p.num_splits > 0) return std::max(1, std::min(p.num_splits, p.s_k));
  const int64_t items = int64_t(p.b) * decode_head_groups(p);  // per split
  if (items >= 2 * int64_t(threads)) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>((2 * int64_t(threads) + items - 1) / items, p.s_k / 512)));
}

}  // namespace

void fwd_plan_portable(FwdParams& p, int /*threads*/) { p.num_splits = 1; }

void fwd_plan_simd(FwdParams& p, int threads) {
  if (p.dtype == DType::kFloat64) return fwd_plan_portable(p, threads);  // the portable kernel
  pack_gqa_decode(p);
  p.num_splits = p.s_q <= kDecodeMaxRows ? decode_splits(p, threads) : 1;
}

bool fwd_nan_pass_simd(const FwdParams& p) { return p.dtype != DType::kFloat64; }

void bwd_plan_portable(BwdParams& p, int /*threads*/) { p.key_splits = 1; }

// Fewer (batch, kv head) items than 2 per thread (MQA / GQA at batch 1, a lone head): split each
// item's keys into chunks of >= 4 key tiles of 64, about 2 items per thread, for the dynamic
// scheduler (cpu_ops.cpp) to balance (causal keys cost unequally). Each split costs a zeroed fp32
// dQ partial (b x h x s_q x d) and its share of the combine pass: MQA H8/1 N4096 D64 fwd+bwd on
// 2 threads ran 1.83-1.88x its 1-thread speed with 2 splits per thread, 1.78x with 4, 1.10x
// unsplit (Zen 5, 2026-11-30).
void bwd_plan_simd(BwdParams& p, int threads) {
  p.key_splits = 1;
  if (p.dtype == DType::kFloat64 || threads <= 1) return;  // fp64: the portable kernel
  const int64_t items = int64_t(p.b) * p.h_kv, want = 2 * int64_t(threads);
  if (items >= want) return;
  const int64_t max_splits = std::max<int64_t>(1, (int64_t(p.s_k) + 4 * 64 - 1) / (4 * 64));
  p.key_splits = int(std::min<int64_t>(max_splits, (want + items - 1) / items));
}
bool fwd_nan_pass_portable(const FwdParams& /*p*/) { return false; }

}  // namespace fal::cpu
