// cpu_kernels.h -- entry points of the CPU attention kernels (torch-free).
// The glue splits [0, num_work_items) over threads (ATen's parallel_for) and calls *_run on
// each chunk; the kernels own no threads and allocate only per-chunk scratch of O(tile * d).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include "flashattn_lite/params.h"

namespace fal::cpu {

// Scratch memory (scratch.cpp): buffers of 2 MB and more 2 MB-aligned and advised as transparent
// huge pages (Linux), smaller ones 64-byte aligned; release with free_scratch. A first-touch 4 KB
// page fault costs ~5 us in a VM: a backward work item's panels of an MQA group (24 MB at H8 N4096
// D64) took 6,000 of them per item -- 30 % of the time of a 4-way key split (Xeon, 2026-12-02).
// Throws std::bad_alloc.
void* alloc_scratch(size_t bytes);
void free_scratch(void* p);

// Decomposition of a forward call (the kernel tables' fwd_plan, plan.cpp), before its scratch
// is allocated: the SIMD plan packs GQA decode rows and sets p.num_splits (split-KV); the portable
// plan never splits. fwd_nan_pass_*: whether the forward needs fwd_redo_nan_tiles after it, and
// which rows that redoes: kValues, rows with a NaN value (below); kRows, rows with a NaN score
// too -- the amx ISA's split operands (split_bf16.h) meet an infinite q or k with a zero part of
// the other operand (0 x inf = NaN where IEEE fp32 products give +-inf), so such a row is computed
// again by the portable kernel (it is NaN there too where the reference has it NaN).
enum class NanPass { kNone, kValues, kRows };
void fwd_plan_portable(FwdParams& p, int threads);
void fwd_plan_simd(FwdParams& p, int threads);
NanPass fwd_nan_pass_portable(const FwdParams& p);
NanPass fwd_nan_pass_simd(const FwdParams& p);
NanPass fwd_nan_pass_amx(const FwdParams& p);

// Forward (portable kernel): one work item = (batch, head, query tile). fwd_run returns true, the
// kernel tables' "may hold a NaN value" (isa.h) without looking: this kernel needs no NaN pass.
int64_t fwd_num_work_items(const FwdParams& p);
bool fwd_run(const FwdParams& p, int64_t begin, int64_t end);
// NaN fix-up after a SIMD forward (same work items as fwd_run): a tile whose output has a NaN in
// a row whose LSE is not NaN (a NaN value, not a NaN score) is computed again here, where a key
// masked for a row never reaches it -- the SIMD kernels multiply the 0 probability of a masked
// key inside a visible tile by its value, so a NaN there would spread to neighbouring rows.
// Reads the output once, and only when a kernel flagged a row with a NaN value (run_fwd_cpu).
// nan_rows (NanPass::kRows): a tile with a row whose LSE is NaN is computed again too.
void fwd_redo_nan_tiles(const FwdParams& p, int64_t begin, int64_t end, bool nan_rows);

// Backward: one work item = (batch, kv head) -- with the SIMD plan, (batch, kv head, split); it
// owns dK/dV of its keys and dQ (or its dQ partial) of the query heads that share them (GQA), or
// split over those heads, dQ of its heads and its dK/dV partial: threads never write the same
// memory and need no atomics.
int64_t bwd_num_work_items(const BwdParams& p);
void bwd_run(const BwdParams& p, int64_t begin, int64_t end);
// Backward decomposition (the kernel tables' bwd_plan): the SIMD plan splits the query heads or
// the keys of each (batch, kv head) when there are fewer of those than 2 per thread (plan.cpp);
// the portable one never does.
void bwd_plan_portable(BwdParams& p, int threads);
void bwd_plan_simd(BwdParams& p, int threads);
// Key splits: dQ = scale * sum over splits of dq_partial, one work item per (batch, head, query
// row); head splits (p.split_heads): dK, dV = the sums of the splits' rows, one work item per
// (batch, kv head, key row).
inline int64_t bwd_combine_num_work_items(const BwdParams& p) {
  return p.split_heads ? int64_t(p.b) * p.h_kv * p.s_k : int64_t(p.b) * p.h * p.s_q;
}
void bwd_combine_run(const BwdParams& p, int64_t begin, int64_t end);

// Decode (SIMD kernels): with at most kDecodeMaxRows query rows the forward streams K and V
// directly (no packing) and may split the keys of one (batch, head) over p.num_splits work items,
// each writing a normalised fp32 partial output and LSE to p.o_accum / p.lse_accum; then
// fwd_combine_run merges them (one work item per (batch, head, row)).
constexpr int kDecodeMaxRows = 16;
// The most keys a sequence of the batch reads: s_k, or with per-sequence lengths (seqused_k: a KV
// cache's cache_seqlens after the append) their largest, less its left padding -- a preallocated
// cache's unused rows are no work (plan.cpp's split-KV, decode_amx.cpp's tiles). Splits planned from the capacity
// instead cut a short cache into slivers: B1 GQA 32/8 D128 bf16 in a cache of 8192 rows, 2 threads (Xeon, 2026-12-03):
// 16 keys 82 us per call against 35 without a split, 256 keys 87 us against 38 in a cache of 256 rows.
static inline int64_t decode_keys(const FwdParams& p) {
  if (p.seqused_k == nullptr) return p.s_k;
  int64_t most = 0;
  for (int bi = 0; bi < p.b; ++bi)
    most = std::max<int64_t>(most, int64_t(p.seqused_k[bi]) - (p.leftpad_k ? p.leftpad_k[bi] : 0));
  return std::min<int64_t>(std::max<int64_t>(most, 0), p.s_k);
}

// Decode work items are (batch, group of query heads, split). When K/V heads are interleaved in a
// row ((batch, seqlen, heads, dim), the flash-attn / KV-cache layout), a group of heads walks the
// keys together, so each K/V row is read as one contiguous span of the group's heads rather than
// as one strided stream per head; the group is at most as large as keeps its per-head state (Q, O
// rows) within ~32 KB of L1 (decode_group_heads_max), and the plan (plan.cpp) may make it smaller
// to give every thread work (p.decode_heads). Head-contiguous layouts use groups of one. (static:
// no shared symbol between the per-ISA objects)
static inline bool decode_heads_interleaved(const FwdParams& p) {
  return p.h_kv > 1 && p.k_head_stride < p.k_row_stride && p.v_head_stride < p.v_row_stride;
}
static inline int decode_group_heads_max(const FwdParams& p) {
  // several query rows group too since their products read K / V in place (decode_bf16.h): B1 32768
  // keys D128, 2 threads, grouped against one item per head, in one process (Zen 5, 2026-12-01):
  // bf16 4 rows H32 12.4 -> 21.9 GB/s, 2 rows 16.2 -> 26.9, 8 rows H8 14.2 -> 17.5, 16 rows 12.1 ->
  // 12.9; fp32 1.2-1.4x
  if (!decode_heads_interleaved(p)) return 1;
  const int64_t per_head = int64_t(p.d + p.d_v) * 4;
  const int g = p.h / p.h_kv;  // keep the query heads of a kv head together
  int64_t heads = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(1, per_head));
  heads = std::max<int64_t>(g, heads / g * g);
  return int(std::min<int64_t>(heads, p.h));
}
static inline int decode_group_heads(const FwdParams& p) {
  return p.decode_heads > 0 ? p.decode_heads : decode_group_heads_max(p);
}
static inline int decode_head_groups(const FwdParams& p) {
  const int per = decode_group_heads(p);
  return (p.h + per - 1) / per;
}
// The forward of more than kDecodeMaxRows rows: a work item is (batch, group of query heads, chunk
// of rows). With GQA and few rows the plan (plan.cpp fwd_item_heads_plan) puts up to
// kFwdMaxItemHeads query heads of one kv head into an item, their rows within kFwdItemRows (16-row
// groups), so each key tile's K / V is packed once for all of them; p.decode_heads carries the
// count (1 otherwise, and without a plan).
constexpr int kFwdMaxItemHeads = 16, kFwdItemRows = 256;
static inline int fwd_item_heads(const FwdParams& p) {
  const int n = p.decode_heads, g = p.h / p.h_kv;
  return p.s_q > kDecodeMaxRows && n > 1 && n <= kFwdMaxItemHeads && g % n == 0 ? n : 1;  // else one head
}
// Split-KV merge: one work item per (batch, head, query row).
inline int64_t fwd_combine_num_work_items(const FwdParams& p) { return int64_t(p.b) * p.h * p.s_q; }
// True when a row it wrote may hold a NaN value (a NaN or infinite value, the LSE not NaN): the
// NaN pass of a split call scans the output only then.
bool fwd_combine_run(const FwdParams& p, int64_t begin, int64_t end);

// Tile sizes (rows of Q, columns of K) of the portable kernels; exposed for tests/bench.
constexpr int kFwdBlockM = 32;
constexpr int kFwdBlockN = 64;
constexpr int kBwdBlockM = 32;
constexpr int kBwdBlockN = 64;

}  // namespace fal::cpu
