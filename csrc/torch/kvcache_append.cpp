// kvcache_append.cpp -- flash_attn_with_kvcache's in-place append on the CPU (the kvcache_append
// op): the new k / v rows (batch, seqlen_new, heads_kv, head_dim) written into the cache at the
// positions cache_seqlens[b] + t, through cache_batch_idx or the block table, k rotated on the way
// when rotary_cos / rotary_sin are given (and q rotated into a new tensor). One op instead of the
// small torch ops of the Python path (a short decode step: ~60 us of overhead per call, ~160 more
// with rotary); kvcache.py keeps the torch-op path for other devices. Every destination and
// rotary position is checked before the first row is written, so bad input leaves the cache as it
// was.
#include <algorithm>
#include <cstring>
#include <vector>

#include "torch/attn_glue.h"
#include "torch/glue_checks.h"

namespace fal::glue {
namespace {

// The rotary embedding at one position: rotary_dim = 2 * cos.size(1) leading dims rotate (fp32),
// pairs (2i, 2i + 1) when interleaved (GPT-J), else (i, i + rotary_dim / 2) (GPT-NeoX); the rest
// pass through. The same arithmetic as kvcache.py's apply_rotary (fp32 products, no fused
// multiply-add, one rounding to the row's dtype as Tensor.to).
template <typename T, typename C>
void rotate_row(char* dst_, int64_t ds, const char* src_, int64_t ss, int64_t d, const char* c_, int64_t cs,
                const char* s_, int64_t sns, int64_t half, bool interleaved) {
  T* dst = reinterpret_cast<T*>(dst_);
  const T* src = reinterpret_cast<const T*>(src_);
  const C* c = reinterpret_cast<const C*>(c_);
  const C* sn = reinterpret_cast<const C*>(s_);
  for (int64_t i = 0; i < half; ++i) {
    const float ci = float(c[i * cs]), si = float(sn[i * sns]);
    const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float x1 = float(src[a * ss]), x2 = float(src[b * ss]);
    const float p1 = x1 * ci, p2 = x2 * si, p3 = x1 * si, p4 = x2 * ci;
    dst[a * ds] = T(p1 - p2);
    dst[b * ds] = T(p3 + p4);
  }
  for (int64_t x = 2 * half; x < d; ++x) dst[x * ds] = src[x * ss];
}

template <typename F>
void dispatch_float(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(at::BFloat16{});
    case at::kHalf: return f(at::Half{});
    default: TORCH_CHECK_TYPE(false, kPre, "rotary: unsupported dtype ", st);
  }
}

struct Rotary {
  const at::Tensor* cos = nullptr;  // (seqlen_ro, rotary_dim / 2)
  const at::Tensor* sin = nullptr;
  bool interleaved = true;

  // one head's row of d elements at position pos: src (element stride ss) -> dst (element stride
  // ds), both of dtype st
  void row(char* dst, int64_t ds, const char* src, int64_t ss, int64_t d, at::ScalarType st, int64_t pos) const {
    const int64_t ce = int64_t(cos->element_size());
    const char* c = static_cast<const char*>(cos->data_ptr()) + pos * cos->stride(0) * ce;
    const char* sn = static_cast<const char*>(sin->data_ptr()) + pos * sin->stride(0) * ce;
    dispatch_float(st, [&](auto t) {
      dispatch_float(cos->scalar_type(), [&](auto ct) {
        rotate_row<decltype(t), decltype(ct)>(dst, ds, src, ss, d, c, cos->stride(1), sn, sin->stride(1), cos->size(1),
                                              interleaved);
      });
    });
  }
};

// Rows of `src` (b, n, h, d) at (bi, t) to `dst` (blocks, rows, h, d) at (blk, row), rotated at
// position `pos` when `rot` is given.
void copy_row(const at::Tensor& dst, int64_t blk, int64_t row, const at::Tensor& src, int64_t bi, int64_t t,
              const Rotary* rot = nullptr, int64_t pos = 0) {
  const int64_t es = int64_t(src.element_size()), h = src.size(2), d = src.size(3);
  char* to = static_cast<char*>(dst.data_ptr()) + (blk * dst.stride(0) + row * dst.stride(1)) * es;
  const char* from = static_cast<const char*>(src.data_ptr()) + (bi * src.stride(0) + t * src.stride(1)) * es;
  for (int64_t hh = 0; hh < h; ++hh) {
    char* a = to + hh * dst.stride(2) * es;
    const char* b = from + hh * src.stride(2) * es;
    if (rot) {
      rot->row(a, dst.stride(3), b, src.stride(3), d, src.scalar_type(), pos);
    } else if (dst.stride(3) == 1 && src.stride(3) == 1) {
      std::memcpy(a, b, size_t(d * es));
    } else {
      for (int64_t x = 0; x < d; ++x) std::memcpy(a + x * dst.stride(3) * es, b + x * src.stride(3) * es, size_t(es));
    }
  }
}

}  // namespace

// Returns (q rotated -- an empty tensor without rotary --, cache_seqlens + seqlen_new (int32), the
// lengths the attention then reads).
std::tuple<at::Tensor, at::Tensor> kvcache_append_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                      const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& cache_seqlens, const OptT& cache_batch_idx,
                                                      const OptT& block_table, const at::Tensor& q,
                                                      const OptT& rotary_cos, const OptT& rotary_sin,
                                                      bool rotary_interleaved, bool rotary_q_rows) {
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
  // flash-attn: "The key @k will be rotated by rotary_cos and rotary_sin at indices cache_seqlens,
  // cache_seqlens + 1, etc." q: at the same indices when causal or windowed (rotary_q_rows), else
  // every row at cache_seqlens
  const bool rotary = rotary_cos.has_value() && rotary_cos->defined();
  Rotary rot;
  at::Tensor cos_f, sin_f;
  if (rotary) {
    TORCH_CHECK_VALUE(rotary_sin.has_value() && rotary_sin->defined() && rotary_cos->dim() == 2 &&
                          rotary_sin->sizes() == rotary_cos->sizes() && 2 * rotary_cos->size(1) <= k.size(3) &&
                          q.dim() == 4 && q.size(0) == b && 2 * rotary_cos->size(1) <= q.size(3),
                      kPre, "kvcache_append: rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2) do not fit q / k");
    int64_t need = 0;
    for (int64_t i = 0; i < b; ++i)
      need = std::max(need, int64_t(s[i]) + std::max<int64_t>(n - 1, rotary_q_rows ? q.size(1) - 1 : 0));
    TORCH_CHECK_VALUE(need < rotary_cos->size(0), kPre, "rotary_cos/rotary_sin have ", rotary_cos->size(0),
                      " positions, position ", need, " is needed");
    // cos and sin of different dtypes: both read as fp32, converted whole (rare)
    const bool mixed = rotary_sin->scalar_type() != rotary_cos->scalar_type();
    if (mixed) {
      cos_f = rotary_cos->to(at::kFloat);
      sin_f = rotary_sin->to(at::kFloat);
    }
    rot = Rotary{mixed ? &cos_f : &*rotary_cos, mixed ? &sin_f : &*rotary_sin, rotary_interleaved};
  }
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
      copy_row(k_cache, blk, row, k, i, t, rotary ? &rot : nullptr, int64_t(s[i]) + t);
      copy_row(v_cache, blk, row, v, i, t);
    }
  at::Tensor q_rot;
  if (rotary) {  // (b, s_q, h, d) contiguous, row r of sequence i at cache_seqlens[i] (+ r)
    q_rot = at::empty(q.sizes(), q.options());
    for (int64_t i = 0; i < b; ++i)
      for (int64_t r = 0; r < q.size(1); ++r)
        copy_row(q_rot, i, r, q, i, r, &rot, int64_t(s[i]) + (rotary_q_rows ? r : 0));
  } else {
    q_rot = at::empty({0}, q.options());
  }
  at::Tensor used = at::empty({b}, sl.options());
  int32_t* u = used.data_ptr<int32_t>();
  for (int64_t i = 0; i < b; ++i) u[i] = int32_t(s[i] + n);
  return {q_rot, used};
}

}  // namespace fal::glue
