// kvcache_glue.cpp -- flash_attn_with_kvcache's attention op (fwd_kvcache): validation of the
// cache, its indices and pages, and the params the forward kernels read the cache in place with.
// The rotary and the append happen before it (kvcache.py; the CPU append: kvcache_append.cpp).
#include <cmath>

#include "torch/attn_glue.h"
#include "torch/glue_checks.h"

namespace fal::glue {

FwdParams make_kvcache_params(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& cache_seqlens, const OptT& cache_batch_idx, const OptT& cache_leftpad,
                              const OptT& block_table, const OptT& alibi_slopes, double softmax_scale, bool causal,
                              int64_t window_left, int64_t window_right, double softcap,
                              std::vector<at::Tensor>& keep) {
  check_float_tensor(q, "q");  // before the shapes: an integer q names its dtype first
  check_rank(q, "q", 4, "(batch, seqlen_q, heads, head_dim)");
  const bool paged = block_table.has_value() && block_table->defined();
  const char* layout =
      paged ? "(num_blocks, page_size, heads_kv, head_dim)" : "(batch_cache, seqlen_cache, heads_kv, head_dim)";
  check_rank(k_cache, "k_cache", 4, layout);
  check_rank(v_cache, "v_cache", 4, layout);
  const int64_t b = q.size(0), s_q = q.size(1), h = q.size(2), d = q.size(3);
  const int64_t h_kv = k_cache.size(2), d_v = v_cache.size(3);
  TORCH_CHECK_VALUE(v_cache.size(0) == k_cache.size(0) && v_cache.size(1) == k_cache.size(1) && v_cache.size(2) == h_kv,
                    kPre, "v_cache must match k_cache in its first three dims, got k_cache ", k_cache.sizes(),
                    " and v_cache ", v_cache.sizes());
  TORCH_CHECK_VALUE(k_cache.size(3) == d, kPre, "k_cache must have the head_dim of q (", d, "), got ", k_cache.size(3));
  check_qkv(q, k_cache, v_cache, "k_cache", "v_cache", h, h_kv, d, d_v);
  check_score_args(softmax_scale, window_left, window_right, softcap);

  int64_t capacity = k_cache.size(1);
  at::Tensor bt_host, bt_kernel;
  if (paged) {
    TORCH_CHECK_VALUE(!cache_batch_idx.has_value() || !cache_batch_idx->defined(), kPre,
                      "cache_batch_idx cannot be combined with a paged cache (block_table)");
    bt_host = check_block_table(*block_table, q, b, keep);
    bt_kernel = keep.back();
    capacity = bt_host.size(1) * k_cache.size(1);  // max_num_blocks_per_seq * page_size
  }
  check_index_tensor(cache_seqlens, "cache_seqlens", q, b);
  const at::Tensor sl = host_ints(cache_seqlens);
  at::Tensor lp;
  if (cache_leftpad.has_value() && cache_leftpad->defined()) {
    check_index_tensor(*cache_leftpad, "cache_leftpad", q, b);
    lp = host_ints(*cache_leftpad);
  }
  at::Tensor bi_host;
  if (cache_batch_idx.has_value() && cache_batch_idx->defined()) {
    check_index_tensor(*cache_batch_idx, "cache_batch_idx", q, b);
    bi_host = host_ints(*cache_batch_idx);
  } else if (!paged) {
    TORCH_CHECK_VALUE(k_cache.size(0) == b, kPre, "k_cache must have the batch size of q (", b,
                      ") without cache_batch_idx, got ", k_cache.size(0));
  }
  for (int64_t i = 0; i < b; ++i) {
    const int32_t n = sl.data_ptr<int32_t>()[i];
    const int32_t lpad = lp.defined() ? lp.data_ptr<int32_t>()[i] : 0;
    TORCH_CHECK_VALUE(lpad >= 0, kPre, "cache_leftpad[", i, "] = ", lpad, " must be >= 0");
    TORCH_CHECK_VALUE(n >= lpad, kPre, "cache_seqlens[", i, "] = ", n, " must be >= cache_leftpad[", i, "] = ", lpad);
    TORCH_CHECK_VALUE(n <= capacity, kPre, "KV cache overflow: cache_seqlens[", i, "] = ", n, " exceeds ",
                      paged ? "the capacity addressable by block_table (max_num_blocks_per_seq * page_size = "
                            : "the capacity of k_cache (seqlen_cache = ",
                      capacity, ")");
    if (bi_host.defined()) {
      const int32_t cb = bi_host.data_ptr<int32_t>()[i];
      TORCH_CHECK_VALUE(cb >= 0 && cb < k_cache.size(0), kPre, "cache_batch_idx[", i, "] = ", cb,
                        " is outside the cache's batch [0, ", k_cache.size(0), ")");
    }
  }
  check_int_range(capacity, "cache capacity");
  check_int_range(s_q, "seqlen_q");
  check_int_range(b * h, "batch * heads");

  FwdParams p;
  p.q = q.data_ptr();
  p.k = k_cache.data_ptr();
  p.v = v_cache.data_ptr();
  strides_of(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  strides_of(k_cache, p.k_batch_stride, p.k_row_stride, p.k_head_stride);  // paged: the page stride
  strides_of(v_cache, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  p.b = int(b);
  p.h = int(h);
  p.h_kv = int(h_kv);
  p.s_q = int(s_q);
  p.s_k = int(capacity);
  p.d = int(d);
  p.d_v = int(d_v);
  set_score_fields(p, q.scalar_type(), softmax_scale, causal, /*bottom_right=*/true, window_left, window_right,
                   softcap);
  keep.push_back(cache_seqlens.contiguous());
  p.seqused_k = keep.back().data_ptr<int32_t>();
  if (lp.defined()) {
    keep.push_back(cache_leftpad->contiguous());
    p.leftpad_k = keep.back().data_ptr<int32_t>();
  }
  if (bi_host.defined()) {
    keep.push_back(cache_batch_idx->contiguous());
    p.kv_batch_idx = keep.back().data_ptr<int32_t>();
  }
  // every page of the keys [cache_leftpad, cache_seqlens) inside [0, num_blocks)
  if (paged)
    set_block_table(p, bt_host, bt_kernel, k_cache.size(0), k_cache.size(1),
                    lp.defined() ? lp.data_ptr<int32_t>() : nullptr, sl.data_ptr<int32_t>());
  if (alibi_slopes.has_value() && alibi_slopes->defined()) set_alibi(p, *alibi_slopes, q, keep);
  return p;
}

std::tuple<at::Tensor, at::Tensor> fwd_kvcache_impl(FwdRunner run, const at::Tensor& q_in, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                    const OptT& cache_batch_idx, const OptT& cache_leftpad,
                                                    const OptT& block_table, const OptT& alibi_slopes,
                                                    double softmax_scale, bool causal, int64_t window_left,
                                                    int64_t window_right, double softcap, int64_t num_splits) {
  const at::Tensor q = last_dim_contiguous(q_in);
  TORCH_CHECK_VALUE(num_splits >= 0, kPre, "num_splits must be >= 0 (0 = the kernel chooses), got ", num_splits);
  std::vector<at::Tensor> keep;
  FwdParams p = make_kvcache_params(q, k_cache, v_cache, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
                                    alibi_slopes, softmax_scale, causal, window_left, window_right, softcap, keep);
  p.num_splits = int(std::min<int64_t>(num_splits, 1 << 20));
  auto out = at::empty({q.size(0), q.size(1), q.size(2), v_cache.size(3)}, q.options());
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  set_fwd_outputs(p, out, lse);
  run(p, q);
  return {out, lse};
}

}  // namespace fal::glue
