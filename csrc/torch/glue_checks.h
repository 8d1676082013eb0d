// glue_checks.h -- the argument checks and params setters every op's validator shares
// (attn_glue.cpp: fwd / bwd; kvcache_glue.cpp: fwd_kvcache). Each check raises a Python ValueError /
// TypeError naming the argument and the rule.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "flashattn_lite/params.h"

namespace fal::glue {

constexpr const char* kPre = "flashattn_lite: ";

DType to_dtype(at::ScalarType st);
void check_float_tensor(const at::Tensor& t, const char* name);
void check_same(const at::Tensor& t, const char* name, const at::Tensor& q, bool same_dtype = true);
void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout);
void check_int_range(int64_t v, const char* name);

// q, k, v: float dtypes, one dtype and device; head counts and dims (h % h_kv == 0, d, d_v >= 1);
// a contiguous last dim (stride 1). k_name / v_name name the key / value tensors ("k", "k_cache").
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* k_name, const char* v_name,
               int64_t h, int64_t h_kv, int64_t d, int64_t d_v);
// softmax_scale finite, window_size entries >= -1, softcap >= 0 and finite.
void check_score_args(double softmax_scale, int64_t window_left, int64_t window_right, double softcap);
// The dtype and score fields of the params (no checks).
void set_score_fields(FwdParams& p, at::ScalarType st, double softmax_scale, bool causal, bool bottom_right,
                      int64_t window_left, int64_t window_right, double softcap);

// Host copy of a small int32 index tensor (cu_seqlens, seqused_k, cache indices).
at::Tensor host_ints(const at::Tensor& t);
// int32, on q's device, shape (numel,), contiguous.
void check_index_tensor(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t numel);
// cu_seqlens: (b + 1,) int32, starting at 0, non-decreasing, ending within the `total` rows, every
// length <= max_seqlen. Returns the longest length.
int64_t check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q, int64_t b, int64_t total,
                         int64_t max_seqlen, const char* max_name);

// alibi_slopes fp32 (h,) or (b, h), after p.b / p.h are set.
void set_alibi(FwdParams& p, const at::Tensor& a, const at::Tensor& q, std::vector<at::Tensor>& keep);
// torch SDPA's attn_mask: bool (True = attend) or floating (added to the scores), broadcastable to
// (batch, heads, seqlen_q, seqlen_k), after p.b / p.h / p.s_q / p.s_k are set.
void set_mask(FwdParams& p, const at::Tensor& m, const at::Tensor& q, std::vector<at::Tensor>& keep);
// block_table (b, max_blocks) int32 on q's device; returns its host copy (after pushing the
// kernel's copy to keep: keep.back()).
at::Tensor check_block_table(const at::Tensor& bt, const at::Tensor& q, int64_t b, std::vector<at::Tensor>& keep);
// The pages of paged K/V: sequence i uses key rows [lo[i], hi[i]) (lo null = from 0); every page
// they touch must lie in [0, num_blocks). bt_host from check_block_table, bt_kernel its kept copy.
void set_block_table(FwdParams& p, const at::Tensor& bt_host, const at::Tensor& bt_kernel, int64_t num_blocks,
                     int64_t page_size, const int32_t* lo, const int32_t* hi);

// (batch, row, head) strides of a (b, s, h, d) tensor -- a paged cache (num_blocks, page_size, h, d)
// gives its page stride as the batch stride -- or of a packed (total, h, d) one (batch stride 0).
void strides_of(const at::Tensor& t, int64_t& batch, int64_t& row, int64_t& head);

// Output shapes: out (q's shape, v's head dim); softmax_lse (b, h, s_q), or (h, total_q) for
// packed (varlen) inputs, as flash-attn.
std::vector<int64_t> out_shape_of(const at::Tensor& q, const at::Tensor& v);
std::vector<int64_t> lse_shape_of(const at::Tensor& q);

}  // namespace fal::glue
