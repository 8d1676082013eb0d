// cpu_kernels.h -- entry points of the CPU attention kernels (torch-free).
// The glue splits [0, num_work_items) over threads (ATen's parallel_for) and calls *_run on
// each chunk; the kernels own no threads and allocate only per-chunk scratch of O(tile * d).
#pragma once
#include <cstdint>
#include "flashattn_lite/params.h"

namespace fal::cpu {

// Forward: one work item = (batch, head, query tile).
int64_t fwd_num_work_items(const FwdParams& p);
void fwd_run(const FwdParams& p, int64_t begin, int64_t end);

// Backward: one work item = (batch, kv head); it owns dK/dV of that head and dQ of the query
// heads that share it (GQA), so threads never write the same memory and need no atomics.
int64_t bwd_num_work_items(const BwdParams& p);
void bwd_run(const BwdParams& p, int64_t begin, int64_t end);

// Decode (SIMD kernels): with at most kDecodeMaxRows query rows the forward streams K and V
// directly (no packing) and may split the keys of one (batch, head) over p.num_splits work items,
// each writing a normalised fp32 partial output and LSE to p.o_accum / p.lse_accum; then
// fwd_combine_run merges them (one work item per (batch, head, row)).
constexpr int kDecodeMaxRows = 16;
void fwd_combine_run(const FwdParams& p, int64_t begin, int64_t end);

// Tile sizes (rows of Q, columns of K) of the portable kernels; exposed for tests/bench.
constexpr int kFwdBlockM = 32;
constexpr int kFwdBlockN = 64;
constexpr int kBwdBlockM = 32;
constexpr int kBwdBlockN = 64;

}  // namespace fal::cpu
