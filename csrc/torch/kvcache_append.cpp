// kvcache_append.cpp -- flash_attn_with_kvcache's in-place append on the CPU (the kvcache_append
// op): the new k / v rows (batch, seqlen_new, heads_kv, head_dim) written into the cache at the
// positions cache_seqlens[b] + t, through cache_batch_idx or the block table. One op instead of the
// ~12 small torch ops of the Python append (a short decode step: ~60 us of overhead per call);
// kvcache.py keeps the torch-op append for other devices. Every destination is checked before the
// first row is written, so a bad index leaves the cache as it was.
#include <algorithm>
#include <cstring>
#include <vector>

#include "torch/attn_glue.h"
#include "torch/glue_checks.h"

namespace fal::glue {
namespace {

// Rows of `src` (b, n, h_kv, d) at (bi, t) to `dst` (blocks, rows, h_kv, d) at (blk, row).
void copy_row(const at::Tensor& dst, int64_t blk, int64_t row, const at::Tensor& src, int64_t bi, int64_t t) {
  const int64_t es = int64_t(src.element_size()), h_kv = src.size(2), d = src.size(3);
  char* to = static_cast<char*>(dst.data_ptr()) + (blk * dst.stride(0) + row * dst.stride(1)) * es;
  const char* from = static_cast<const char*>(src.data_ptr()) + (bi * src.stride(0) + t * src.stride(1)) * es;
  for (int64_t hh = 0; hh < h_kv; ++hh) {
    char* a = to + hh * dst.stride(2) * es;
    const char* b = from + hh * src.stride(2) * es;
    if (dst.stride(3) == 1 && src.stride(3) == 1) {
      std::memcpy(a, b, size_t(d * es));
    } else {
      for (int64_t x = 0; x < d; ++x) std::memcpy(a + x * dst.stride(3) * es, b + x * src.stride(3) * es, size_t(es));
    }
  }
}

}  // namespace

// Returns cache_seqlens + seqlen_new (int32), the lengths the attention then reads.
at::Tensor kvcache_append_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& cache_seqlens, const OptT& cache_batch_idx,
                              const OptT& block_table) {
  // the shapes and dtypes of k / v against the caches are checked by kvcache.py; what the copy
  // relies on is checked again here
  TORCH_CHECK_VALUE(k.dim() == 4 && v.dim() == 4 && k_cache.dim() == 4 && v_cache.dim() == 4, kPre,
                    "kvcache_append: k, v, k_cache and v_cache must have 4 dims");
  const int64_t b = k.size(0), n = k.size(1);
  TORCH_CHECK_VALUE(v.size(0) == b && v.size(1) == n && k.sizes().slice(2) == k_cache.sizes().slice(2) &&
                        v.sizes().slice(2) == v_cache.sizes().slice(2) && v_cache.size(0) == k_cache.size(0) &&
                        v_cache.size(1) == k_cache.size(1),
                    kPre, "kvcache_append: k ", k.sizes(), " / v ", v.sizes(), " do not fit k_cache ", k_cache.sizes(),
                    " / v_cache ", v_cache.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type(), kPre,
                   "kvcache_append: k and v must have the dtype of their cache");
  TORCH_CHECK_TYPE(cache_seqlens.scalar_type() == at::kInt, kPre, "cache_seqlens must be int32");
  TORCH_CHECK_VALUE(cache_seqlens.numel() == b, kPre, "cache_seqlens must have shape (", b, ",)");
  const bool paged = block_table.has_value() && block_table->defined();
  const at::Tensor sl = cache_seqlens.contiguous();
  const int32_t* s = sl.data_ptr<int32_t>();
  const int64_t page = k_cache.size(1), blocks = k_cache.size(0);
  at::Tensor bt, bidx;
  if (paged) {
    TORCH_CHECK_TYPE(block_table->scalar_type() == at::kInt, kPre, "block_table must be int32, got ",
                     block_table->scalar_type());
    TORCH_CHECK_VALUE(block_table->dim() == 2 && block_table->size(0) == b, kPre,
                      "block_table must have shape (batch, max_blocks) with batch = ", b, ", got ",
                      block_table->sizes());
    bt = block_table->contiguous();
  } else if (cache_batch_idx.has_value() && cache_batch_idx->defined()) {
    TORCH_CHECK_TYPE(cache_batch_idx->scalar_type() == at::kInt, kPre, "cache_batch_idx must be int32, got ",
                     cache_batch_idx->scalar_type());
    TORCH_CHECK_VALUE(cache_batch_idx->numel() == b, kPre, "cache_batch_idx must have shape (", b, ",)");
    bidx = cache_batch_idx->contiguous();
  }
  const int64_t capacity = paged ? bt.size(1) * page : page;
  int64_t top = 0;
  for (int64_t i = 0; i < b; ++i) {
    TORCH_CHECK_VALUE(s[i] >= 0, kPre, "cache_seqlens must be >= 0, got ", s[i]);
    top = std::max<int64_t>(top, int64_t(s[i]) + n);
  }
  TORCH_CHECK_VALUE(top <= capacity, kPre, "KV cache overflow: max(cache_seqlens) + seqlen_new = ", top, " exceeds ",
                    paged ? "the capacity addressable by block_table (max_num_blocks_per_seq * page_size = "
                          : "the capacity of k_cache (seqlen_cache = ",
                    capacity, ")");
  // every destination (cache entry, row) first: nothing is written unless all are inside the cache
  std::vector<int64_t> dst(size_t(2 * b * n));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = int64_t(s[i]) + t;
      int64_t blk = i, row = pos;
      if (paged) {
        blk = bt.data_ptr<int32_t>()[i * bt.size(1) + pos / page];
        row = pos % page;
      } else if (bidx.defined()) {
        blk = bidx.data_ptr<int32_t>()[i];
      }
      TORCH_CHECK_VALUE(blk >= 0 && blk < blocks, kPre, paged ? "block_table" : "cache_batch_idx",
                        " points outside the cache (its first dim has ", blocks, " entries) where the new tokens go");
      dst[size_t(2 * (i * n + t))] = blk;
      dst[size_t(2 * (i * n + t) + 1)] = row;
    }
  for (int64_t i = 0; i < b; ++i)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t blk = dst[size_t(2 * (i * n + t))], row = dst[size_t(2 * (i * n + t) + 1)];
      copy_row(k_cache, blk, row, k, i, t);
      copy_row(v_cache, blk, row, v, i, t);
    }
  at::Tensor used = at::empty({b}, sl.options());
  int32_t* u = used.data_ptr<int32_t>();
  for (int64_t i = 0; i < b; ++i) u[i] = int32_t(s[i] + n);
  return used;
}

}  // namespace fal::glue
