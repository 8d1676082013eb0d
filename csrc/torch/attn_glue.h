// attn_glue.h -- the one input validator for every device and the tensors -> params
// conversion. Only files under csrc/torch include torch headers.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "flashattn_lite/params.h"

namespace fal::glue {

// Arguments shared by the forward and backward ops besides q, k, v (see the schema in module.cpp).
struct OptArgs {
  c10::optional<at::Tensor> attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, rng_state;
  int64_t max_seqlen_q = -1, max_seqlen_k = -1;
  double softmax_scale = 1.0;
  bool causal = false, bottom_right = true;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0, dropout_p = 0.0;
  int64_t num_splits = 0;
};

// dtype of softmax_lse for inputs of dtype st: float32, float64 for float64 inputs.
at::ScalarType lse_dtype(at::ScalarType st);

// Returns t itself when its last dim is contiguous, else a contiguous copy.
at::Tensor last_dim_contiguous(const at::Tensor& t);

// Validates q/k/v and the optional arguments (raises ValueError / TypeError /
// NotImplementedError naming the argument) and fills the shape, stride and option fields.
// q/k/v are (batch, seqlen, heads, dim), or packed (total, heads, dim) with cu_seqlens_q/k.
// Tensors the params point into that had to be converted (masks, index copies) are appended to
// `keep`, which must outlive the kernels.
FwdParams make_fwd_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptArgs& a,
                          std::vector<at::Tensor>& keep);

// Dropout fields of the params from dropout_p and rng_state (int64 [seed, offset]); validates both.
void set_dropout_params(FwdParams& p, double dropout_p, const c10::optional<at::Tensor>& rng_state);

// Output allocations of the forward: (out, lse).
std::tuple<at::Tensor, at::Tensor> alloc_fwd_outputs(const at::Tensor& q, const at::Tensor& v);

// Split-KV scratch: fp32 partial outputs and LSEs for p.num_splits > 1 (see params.h); points the
// params at them and returns the owning tensors (empty when num_splits <= 1).
std::tuple<at::Tensor, at::Tensor> alloc_split_accum(FwdParams& p, const at::Tensor& q);

// Points the params at out / lse.
void set_fwd_outputs(FwdParams& p, const at::Tensor& out, const at::Tensor& lse);

// Validates the backward-only tensors (dout, dlse, out, lse) against the forward params and
// fills the backward params, dq/dk/dv included.
BwdParams make_bwd_params(const FwdParams& fp, const at::Tensor& dout, const c10::optional<at::Tensor>& dlse,
                          const at::Tensor& out, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                          const at::Tensor& dv, bool deterministic);

}  // namespace fal::glue

namespace fal::glue {

using OptT = c10::optional<at::Tensor>;

// Device-independent bodies of the two ops: validate, allocate, then call the device runner.
using FwdRunner = void (*)(FwdParams&, const at::Tensor& q);
using BwdRunner = void (*)(BwdParams&, const at::Tensor& q);

std::tuple<at::Tensor, at::Tensor> fwd_impl(FwdRunner run, const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const OptArgs& a);

// Returns (dq, dk, dv, dmask); dmask has the attn_mask's shape and dtype when mask_grad, else is empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_impl(BwdRunner run, const at::Tensor& dout,
                                                                    const OptT& dlse, const at::Tensor& q,
                                                                    const at::Tensor& k, const at::Tensor& v,
                                                                    const at::Tensor& out, const at::Tensor& lse,
                                                                    const OptArgs& a, bool deterministic,
                                                                    bool mask_grad);

// flash_attn_with_kvcache's attention (inference): q against k/v caches, contiguous
// (batch_cache, seqlen_cache, h_kv, d) or paged (num_blocks, page_size, h_kv, d) with block_table;
// cache_seqlens = keys in use per sequence (after any append), from cache_leftpad on. Validates
// every index against the cache before a kernel runs.
FwdParams make_kvcache_params(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& cache_seqlens, const OptT& cache_batch_idx, const OptT& cache_leftpad,
                              const OptT& block_table, const OptT& alibi_slopes, double softmax_scale, bool causal,
                              int64_t window_left, int64_t window_right, double softcap, std::vector<at::Tensor>& keep);
std::tuple<at::Tensor, at::Tensor> fwd_kvcache_impl(FwdRunner run, const at::Tensor& q, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                    const OptT& cache_batch_idx, const OptT& cache_leftpad,
                                                    const OptT& block_table, const OptT& alibi_slopes,
                                                    double softmax_scale, bool causal, int64_t window_left,
                                                    int64_t window_right, double softcap, int64_t num_splits);
// flash_attn_with_kvcache's append on the CPU (kvcache_append.cpp): k (rotated, with rotary) / v
// written into the caches in place; returns (q rotated or an empty tensor, cache_seqlens + seqlen_new).
std::tuple<at::Tensor, at::Tensor> kvcache_append_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                      const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& cache_seqlens, const OptT& cache_batch_idx,
                                                      const OptT& block_table, const at::Tensor& q,
                                                      const OptT& rotary_cos, const OptT& rotary_sin,
                                                      bool rotary_interleaved, bool rotary_q_rows);

// Op signatures (must match the schema strings in module.cpp).
#define FAL_FWD_ARGS                                                                                                 \
  const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const fal::glue::OptT &attn_mask,                   \
      const fal::glue::OptT &alibi_slopes, const fal::glue::OptT &cu_seqlens_q, const fal::glue::OptT &cu_seqlens_k, \
      const fal::glue::OptT &seqused_k, const fal::glue::OptT &block_table, const fal::glue::OptT &rng_state,        \
      int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool causal, bool bottom_right,              \
      int64_t window_left, int64_t window_right, double softcap, double dropout_p, int64_t num_splits,               \
      bool deterministic
#define FAL_BWD_ARGS                                                                                                   \
  const at::Tensor &dout, const fal::glue::OptT &dlse, const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,  \
      const at::Tensor &out, const at::Tensor &softmax_lse, const fal::glue::OptT &attn_mask,                          \
      const fal::glue::OptT &alibi_slopes, const fal::glue::OptT &cu_seqlens_q, const fal::glue::OptT &cu_seqlens_k,   \
      const fal::glue::OptT &seqused_k, const fal::glue::OptT &rng_state, int64_t max_seqlen_q, int64_t max_seqlen_k,  \
      double softmax_scale, bool causal, bool bottom_right, int64_t window_left, int64_t window_right, double softcap, \
      double dropout_p, bool deterministic, bool mask_grad

OptArgs make_fwd_opt_args(FAL_FWD_ARGS);

}  // namespace fal::glue
namespace fal::cpu {
struct KernelTable;
}
namespace fal::glue {
// The active CPU ISA's kernel table (cpu_ops.cpp), for the peak probe of module.cpp.
const cpu::KernelTable& active_kernels_for_probe();
OptArgs make_bwd_opt_args(FAL_BWD_ARGS);

// Calls made by every device's op functions.
#define FAL_FWD_FORWARD_ARGS                                                                                        \
  q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, rng_state, max_seqlen_q,    \
      max_seqlen_k, softmax_scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, num_splits, \
      deterministic
#define FAL_BWD_FORWARD_ARGS                                                                                          \
  dout, dlse, q, k, v, out, softmax_lse, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, rng_state,   \
      max_seqlen_q, max_seqlen_k, softmax_scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, \
      deterministic, mask_grad

}  // namespace fal::glue
