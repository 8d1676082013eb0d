// attn_glue.cpp -- validation and params construction shared by the CPU and CUDA ops.
#include "torch/attn_glue.h"

#include <cmath>
#include <limits>

namespace fal::glue {
namespace {

constexpr const char* kPre = "flashattn_lite: ";

DType to_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK_TYPE(false, kPre, "unsupported dtype ", st);
  }
  return DType::kFloat32;
}

void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), kPre, name, " must be a tensor, got an undefined tensor");
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
                   kPre, name, " must have dtype float32, float64, bfloat16 or float16, got ", st);
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& q, bool same_dtype = true) {
  TORCH_CHECK_VALUE(t.device() == q.device(), kPre, name, " must be on the same device as q (",
                    q.device(), "), got ", t.device());
  if (same_dtype)
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), kPre, name, " must have the same dtype as q (",
                     q.scalar_type(), "), got ", t.scalar_type());
}

void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, kPre, name, " must have ", rank, " dims ", layout, ", got shape ",
                    t.sizes());
}

void check_not_implemented(const c10::optional<at::Tensor>& t, const char* name) {
  TORCH_CHECK_NOT_IMPLEMENTED(!t.has_value() || !t->defined(), kPre, name,
                              " is not implemented yet (tracked by the features issue)");
}

void check_int_range(int64_t v, const char* name) {
  TORCH_CHECK_VALUE(v < std::numeric_limits<int32_t>::max(), kPre, name, " = ", v,
                    " is too large (must be < 2^31)");
}

}  // namespace

at::ScalarType lse_dtype(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  if (!t.defined() || t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) <= 1) return t;
  return t.contiguous();
}

namespace {

// softmax_lse: (b, h, s_q), or (h, total_q) for packed (varlen) inputs, as flash-attn.
std::vector<int64_t> lse_shape_of(const at::Tensor& q) {
  if (q.dim() == 3) return {q.size(1), q.size(0)};
  return {q.size(0), q.size(2), q.size(1)};
}

std::vector<int64_t> out_shape_of(const at::Tensor& q, const at::Tensor& v) {
  std::vector<int64_t> s(q.sizes().begin(), q.sizes().end());
  s.back() = v.size(-1);
  return s;
}

// Host copy of a small int32 index tensor (cu_seqlens, seqused_k, cache indices).
at::Tensor host_ints(const at::Tensor& t) { return t.to(at::kCPU).contiguous(); }

void check_index_tensor(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t numel) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, kPre, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == q.device(), kPre, name, " must be on the device of q (", q.device(), "), got ",
                    t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == numel, kPre, name, " must have shape (", numel, ",), got ", t.sizes());
  TORCH_CHECK_VALUE(t.stride(0) == 1 || numel <= 1, kPre, name, " must be contiguous");
}

// cu_seqlens: (b + 1,) int32, starting at 0, non-decreasing, ending within the `total` rows, every
// length <= max_seqlen. Returns the longest length.
int64_t check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q, int64_t b, int64_t total,
                         int64_t max_seqlen, const char* max_name) {
  check_index_tensor(cu, name, q, b + 1);
  const at::Tensor h = host_ints(cu);
  const int32_t* c = h.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(c[0] == 0, kPre, name, "[0] must be 0, got ", c[0]);
  int64_t longest = 0;
  for (int64_t i = 0; i < b; ++i) {
    TORCH_CHECK_VALUE(c[i + 1] >= c[i], kPre, name, " must be non-decreasing, got ", name, "[", i, "] = ", c[i],
                      " > ", name, "[", i + 1, "] = ", c[i + 1]);
    longest = std::max<int64_t>(longest, c[i + 1] - c[i]);
  }
  TORCH_CHECK_VALUE(c[b] <= total, kPre, name, "[-1] = ", c[b], " is beyond the ", total, " packed tokens");
  TORCH_CHECK_VALUE(max_seqlen >= longest, kPre, max_name, " = ", max_seqlen, " is smaller than the longest sequence (",
                    longest, ") in ", name);
  return longest;
}

void set_alibi(FwdParams& p, const at::Tensor& a, const at::Tensor& q, std::vector<at::Tensor>& keep) {
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat, kPre, "alibi_slopes must be float32, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.device() == q.device(), kPre, "alibi_slopes must be on the device of q (", q.device(), "), got ",
                    a.device());
  const bool per_batch = a.dim() == 2;
  TORCH_CHECK_VALUE((a.dim() == 1 && a.size(0) == p.h) || (per_batch && a.size(0) == p.b && a.size(1) == p.h), kPre,
                    "alibi_slopes must have shape (heads,) = (", p.h, ",) or (batch, heads) = (", p.b, ", ", p.h,
                    "), got ", a.sizes());
  const at::Tensor c = last_dim_contiguous(a);
  keep.push_back(c);
  p.alibi_slopes = c.data_ptr<float>();
  p.alibi_batch_stride = per_batch ? c.stride(0) : 0;
}

// torch SDPA's attn_mask: bool (True = attend) or floating (added to the scores), broadcastable to
// (batch, heads, seqlen_q, seqlen_k). Floating masks are read as the LSE dtype.
void set_mask(FwdParams& p, const at::Tensor& m_in, const at::Tensor& q, std::vector<at::Tensor>& keep) {
  TORCH_CHECK_VALUE(m_in.device() == q.device(), kPre, "attn_mask must be on the device of q (", q.device(),
                    "), got ", m_in.device());
  const auto st = m_in.scalar_type();
  TORCH_CHECK_TYPE(st == at::kBool || at::isFloatingType(st), kPre,
                   "attn_mask must be bool (True = attend) or a floating dtype (added to the scores), got ", st);
  const std::vector<int64_t> target{p.b, p.h, p.s_q, p.s_k};
  TORCH_CHECK_VALUE(m_in.dim() <= 4, kPre, "attn_mask must have at most 4 dims (batch, heads, seqlen_q, seqlen_k), "
                    "got shape ", m_in.sizes());
  for (int64_t i = 0; i < m_in.dim(); ++i) {
    const int64_t t = target[4 - m_in.dim() + i], s = m_in.size(i);
    TORCH_CHECK_VALUE(s == t || s == 1, kPre, "attn_mask of shape ", m_in.sizes(),
                      " is not broadcastable to (batch, heads, seqlen_q, seqlen_k) = ", at::IntArrayRef(target));
  }
  at::Tensor m = st == at::kBool ? m_in : m_in.to(lse_dtype(q.scalar_type()));
  while (m.dim() < 4) m = m.unsqueeze(0);
  if (p.s_k > 1 && (m.size(3) == 1 || m.stride(3) != 1)) m = m.expand({m.size(0), m.size(1), m.size(2), p.s_k}).contiguous();
  m = m.expand(target);
  keep.push_back(m);
  p.mask = m.data_ptr();
  p.mask_kind = st == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
  p.mask_batch_stride = m.stride(0);
  p.mask_head_stride = m.stride(1);
  p.mask_row_stride = m.stride(2);
}

// block_table (b, max_blocks) int32 of a paged K/V: every page a sequence uses (its cu_seqlens_k
// length) inside [0, num_blocks), the length within the table's capacity.
void set_block_table(FwdParams& p, const at::Tensor& bt, const at::Tensor& q, int64_t b, int64_t num_blocks,
                     int64_t page_size, const at::Tensor& cu_k_host, std::vector<at::Tensor>& keep) {
  TORCH_CHECK_TYPE(bt.scalar_type() == at::kInt, kPre, "block_table must be int32, got ", bt.scalar_type());
  TORCH_CHECK_VALUE(bt.device() == q.device(), kPre, "block_table must be on the device of q");
  TORCH_CHECK_VALUE(bt.dim() == 2 && bt.size(0) == b, kPre, "block_table must have shape (batch, max_blocks) with batch = ",
                    b, ", got ", bt.sizes());
  TORCH_CHECK_VALUE(page_size >= 1, kPre, "the page size (k.shape[1]) must be >= 1");
  keep.push_back(bt.stride(1) == 1 ? bt : bt.contiguous());
  const at::Tensor t = host_ints(keep.back());
  const int32_t* c = cu_k_host.data_ptr<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t n = c[i + 1] - c[i];
    TORCH_CHECK_VALUE(n <= bt.size(1) * page_size, kPre, "sequence ", i, " has ", n, " keys, more than its block_table row holds (",
                      bt.size(1), " pages of ", page_size, ")");
    const int32_t* row = t.data_ptr<int32_t>() + i * t.size(1);
    for (int64_t pg = 0; pg < (n + page_size - 1) / page_size; ++pg)
      TORCH_CHECK_VALUE(row[pg] >= 0 && row[pg] < num_blocks, kPre, "block_table[", i, ", ", pg, "] = ", row[pg],
                        " is outside the cache's blocks [0, ", num_blocks, ")");
  }
  p.block_table = keep.back().data_ptr<int32_t>();
  p.block_table_batch_stride = keep.back().stride(0);
  p.page_size = int(page_size);
}

}  // namespace

void set_dropout_params(FwdParams& p, double dropout_p, const c10::optional<at::Tensor>& rng) {
  if (dropout_p == 0) return;
  TORCH_CHECK_VALUE(rng.has_value() && rng->defined(), kPre,
                    "rng_state (int64 [seed, offset]) is required when dropout_p > 0");
  const at::Tensor& r = *rng;
  TORCH_CHECK_TYPE(r.scalar_type() == at::kLong, kPre, "rng_state must be int64, got ", r.scalar_type());
  TORCH_CHECK_VALUE(r.numel() == 2, kPre, "rng_state must hold 2 values [seed, offset], got shape ", r.sizes());
  const at::Tensor h = r.to(at::kCPU).contiguous();
  p.seed = uint64_t(h.data_ptr<int64_t>()[0]);
  p.offset = uint64_t(h.data_ptr<int64_t>()[1]);
  p.dropout_threshold = uint32_t(std::lround(dropout_p * 16777216.0));
  p.dropout_keep_scale = 1.0 / (1.0 - dropout_p);
}

FwdParams make_fwd_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptArgs& a,
                          std::vector<at::Tensor>& keep) {
  check_float_tensor(q, "q");
  check_float_tensor(k, "k");
  check_float_tensor(v, "v");
  check_same(k, "k", q);
  check_same(v, "v", q);
  const bool varlen = a.cu_seqlens_q.has_value() || a.cu_seqlens_k.has_value();
  TORCH_CHECK_VALUE(!varlen || (a.cu_seqlens_q.has_value() && a.cu_seqlens_k.has_value()), kPre,
                    "cu_seqlens_q and cu_seqlens_k must be given together");
  // varlen with a paged K/V (flash-attn's block_table): k/v (num_blocks, page_size, h_kv, d)
  const bool paged = a.block_table.has_value() && a.block_table->defined();
  TORCH_CHECK_VALUE(!paged || varlen, kPre,
                    "block_table needs cu_seqlens (flash_attn_varlen_func); or use flash_attn_with_kvcache");
  if (varlen) {
    check_rank(q, "q", 3, "(total_q, heads, head_dim) with cu_seqlens");
    if (paged) {
      check_rank(k, "k", 4, "(num_blocks, page_size, heads_kv, head_dim) with block_table");
      check_rank(v, "v", 4, "(num_blocks, page_size, heads_kv, head_dim_v) with block_table");
    } else {
      check_rank(k, "k", 3, "(total_k, heads_kv, head_dim) with cu_seqlens");
      check_rank(v, "v", 3, "(total_k, heads_kv, head_dim_v) with cu_seqlens");
    }
  } else {
    check_rank(q, "q", 4, "(batch, seqlen_q, heads, head_dim)");
    check_rank(k, "k", 4, "(batch, seqlen_k, heads_kv, head_dim)");
    check_rank(v, "v", 4, "(batch, seqlen_k, heads_kv, head_dim_v)");
  }
  // Views as (batch, seqlen, heads, dim); packed inputs are one "batch row" per token.
  const int o = varlen ? 1 : 0, ok = varlen && !paged ? 1 : 0;
  const int64_t s_q_all = q.size(1 - o), h = q.size(2 - o), d = q.size(3 - o);
  const int64_t s_k_all = k.size(1 - ok), h_kv = k.size(2 - ok), d_v = v.size(3 - ok);
  if (paged)
    TORCH_CHECK_VALUE(v.size(0) == k.size(0), kPre, "v must have the blocks of k (", k.size(0), "), got ", v.size(0));
  if (!varlen)
    TORCH_CHECK_VALUE(k.size(0) == q.size(0) && v.size(0) == q.size(0), kPre, "k and v must have the batch size of q (",
                      q.size(0), "), got k ", k.sizes(), " and v ", v.sizes());
  TORCH_CHECK_VALUE(v.size(1 - ok) == s_k_all, kPre, "v must have the ", varlen ? "tokens" : "seqlen", " of k (",
                    s_k_all, "), got ", v.size(1 - ok));
  TORCH_CHECK_VALUE(v.size(2 - ok) == h_kv, kPre, "v must have the heads of k (", h_kv, "), got ", v.size(2 - ok));
  TORCH_CHECK_VALUE(k.size(3 - ok) == d, kPre, "k must have the head_dim of q (", d, "), got ", k.size(3 - ok));
  TORCH_CHECK_VALUE(h_kv >= 1 && h >= 1 && h % h_kv == 0, kPre,
                    "the number of heads of q (", h, ") must be a multiple of the heads of k/v (", h_kv, ")");
  TORCH_CHECK_VALUE(d >= 1, kPre, "head_dim of q/k must be >= 1, got ", d);
  TORCH_CHECK_VALUE(d_v >= 1, kPre, "head_dim of v must be >= 1, got ", d_v);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{q, "q"}, {k, "k"}, {v, "v"}})
    TORCH_CHECK_VALUE(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, kPre, name,
                      " must have a contiguous last dim (stride 1), got strides ", t.strides());
  check_int_range(s_q_all, varlen ? "total_q" : "seqlen_q");
  check_int_range(s_k_all, varlen ? "total_k" : "seqlen_k");

  TORCH_CHECK_VALUE(std::isfinite(a.softmax_scale), kPre, "softmax_scale must be finite, got ", a.softmax_scale);
  TORCH_CHECK_VALUE(a.window_left >= -1 && a.window_right >= -1, kPre,
                    "window_size must be (left, right) with each >= -1 (-1 = unbounded), got (",
                    a.window_left, ", ", a.window_right, ")");
  check_int_range(a.window_left, "window_size[0]");
  check_int_range(a.window_right, "window_size[1]");
  TORCH_CHECK_VALUE(std::isfinite(a.softcap) && a.softcap >= 0, kPre, "softcap must be >= 0 and finite, got ",
                    a.softcap);
  TORCH_CHECK_VALUE(a.dropout_p >= 0 && a.dropout_p < 1, kPre, "dropout_p must be in [0, 1), got ", a.dropout_p);
  TORCH_CHECK_VALUE(a.num_splits >= 0, kPre, "num_splits must be >= 0, got ", a.num_splits);

  FwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  if (varlen) {
    p.q_batch_stride = 0; p.q_row_stride = q.stride(0); p.q_head_stride = q.stride(1);
    if (paged) {  // batch stride = the page stride
      p.k_batch_stride = k.stride(0); p.k_row_stride = k.stride(1); p.k_head_stride = k.stride(2);
      p.v_batch_stride = v.stride(0); p.v_row_stride = v.stride(1); p.v_head_stride = v.stride(2);
    } else {
      p.k_batch_stride = 0; p.k_row_stride = k.stride(0); p.k_head_stride = k.stride(1);
      p.v_batch_stride = 0; p.v_row_stride = v.stride(0); p.v_head_stride = v.stride(1);
    }
  } else {
    p.q_batch_stride = q.stride(0); p.q_row_stride = q.stride(1); p.q_head_stride = q.stride(2);
    p.k_batch_stride = k.stride(0); p.k_row_stride = k.stride(1); p.k_head_stride = k.stride(2);
    p.v_batch_stride = v.stride(0); p.v_row_stride = v.stride(1); p.v_head_stride = v.stride(2);
  }
  int64_t b = varlen ? 0 : q.size(0), s_q = s_q_all, s_k = s_k_all;
  if (varlen) {
    const at::Tensor& cq = *a.cu_seqlens_q;
    const at::Tensor& ck = *a.cu_seqlens_k;
    TORCH_CHECK_VALUE(cq.dim() == 1 && cq.size(0) >= 1, kPre, "cu_seqlens_q must have shape (batch + 1,), got ",
                      cq.sizes());
    b = cq.size(0) - 1;
    check_cu_seqlens(cq, "cu_seqlens_q", q, b, s_q_all, a.max_seqlen_q, "max_seqlen_q");
    check_cu_seqlens(ck, "cu_seqlens_k", q, b, paged ? std::numeric_limits<int32_t>::max() : s_k_all, a.max_seqlen_k,
                     "max_seqlen_k");
    s_q = a.max_seqlen_q;
    s_k = a.max_seqlen_k;
    check_int_range(s_q, "max_seqlen_q");
    check_int_range(s_k, "max_seqlen_k");
    keep.push_back(cq.contiguous());
    keep.push_back(ck.contiguous());
    p.cu_seqlens_q = keep[keep.size() - 2].data_ptr<int32_t>();
    p.cu_seqlens_k = keep.back().data_ptr<int32_t>();
    if (paged) set_block_table(p, *a.block_table, q, b, k.size(0), k.size(1), host_ints(ck), keep);
  }
  check_int_range(b * h, "batch * heads");
  p.b = int(b); p.h = int(h); p.h_kv = int(h_kv);
  p.s_q = int(s_q); p.s_k = int(s_k);
  p.d = int(d); p.d_v = int(d_v);
  p.dtype = to_dtype(q.scalar_type());
  p.scale = a.softmax_scale;
  p.scale_log2 = float(a.softmax_scale * M_LOG2E);
  p.causal = a.causal;
  p.bottom_right = a.bottom_right;
  p.window_left = int(a.window_left);
  p.window_right = int(a.window_right);
  p.softcap = a.softcap;
  p.dropout_p = float(a.dropout_p);
  p.num_splits = int(a.num_splits);  // 0 = the device chooses

  if (a.seqused_k.has_value() && a.seqused_k->defined()) {
    const at::Tensor& su = *a.seqused_k;
    check_index_tensor(su, "seqused_k", q, b);
    const at::Tensor hs = host_ints(su);
    const at::Tensor hk = varlen ? host_ints(*a.cu_seqlens_k) : at::Tensor();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t cap = varlen ? hk.data_ptr<int32_t>()[i + 1] - hk.data_ptr<int32_t>()[i] : s_k;
      const int32_t u = hs.data_ptr<int32_t>()[i];
      TORCH_CHECK_VALUE(u >= 0 && u <= cap, kPre, "seqused_k[", i, "] = ", u, " must be in [0, ", cap,
                        "] (the keys of that sequence)");
    }
    keep.push_back(su.contiguous());
    p.seqused_k = keep.back().data_ptr<int32_t>();
  }
  if (a.alibi_slopes.has_value() && a.alibi_slopes->defined()) set_alibi(p, *a.alibi_slopes, q, keep);
  if (a.attn_mask.has_value() && a.attn_mask->defined()) {
    TORCH_CHECK_VALUE(!varlen, kPre, "attn_mask cannot be combined with cu_seqlens (varlen)");
    set_mask(p, *a.attn_mask, q, keep);
  }
  set_dropout_params(p, a.dropout_p, a.rng_state);
  return p;
}

FwdParams make_kvcache_params(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& cache_seqlens, const OptT& cache_batch_idx, const OptT& cache_leftpad,
                              const OptT& block_table, const OptT& alibi_slopes, double softmax_scale, bool causal,
                              int64_t window_left, int64_t window_right, double softcap,
                              std::vector<at::Tensor>& keep) {
  check_float_tensor(q, "q");
  check_float_tensor(k_cache, "k_cache");
  check_float_tensor(v_cache, "v_cache");
  check_same(k_cache, "k_cache", q);
  check_same(v_cache, "v_cache", q);
  check_rank(q, "q", 4, "(batch, seqlen_q, heads, head_dim)");
  const bool paged = block_table.has_value() && block_table->defined();
  const char* layout = paged ? "(num_blocks, page_size, heads_kv, head_dim)" : "(batch_cache, seqlen_cache, heads_kv, head_dim)";
  check_rank(k_cache, "k_cache", 4, layout);
  check_rank(v_cache, "v_cache", 4, layout);
  const int64_t b = q.size(0), s_q = q.size(1), h = q.size(2), d = q.size(3);
  const int64_t h_kv = k_cache.size(2), d_v = v_cache.size(3);
  TORCH_CHECK_VALUE(v_cache.size(0) == k_cache.size(0) && v_cache.size(1) == k_cache.size(1) && v_cache.size(2) == h_kv,
                    kPre, "v_cache must match k_cache in its first three dims, got k_cache ", k_cache.sizes(),
                    " and v_cache ", v_cache.sizes());
  TORCH_CHECK_VALUE(k_cache.size(3) == d, kPre, "k_cache must have the head_dim of q (", d, "), got ", k_cache.size(3));
  TORCH_CHECK_VALUE(h_kv >= 1 && h % h_kv == 0, kPre, "the number of heads of q (", h,
                    ") must be a multiple of the heads of k_cache/v_cache (", h_kv, ")");
  TORCH_CHECK_VALUE(d >= 1 && d_v >= 1, kPre, "head dims must be >= 1");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{q, "q"}, {k_cache, "k_cache"}, {v_cache, "v_cache"}})
    TORCH_CHECK_VALUE(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, kPre, name,
                      " must have a contiguous last dim (stride 1), got strides ", t.strides());
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale), kPre, "softmax_scale must be finite, got ", softmax_scale);
  TORCH_CHECK_VALUE(window_left >= -1 && window_right >= -1, kPre,
                    "window_size must be (left, right) with each >= -1 (-1 = unbounded), got (", window_left, ", ",
                    window_right, ")");
  TORCH_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0, kPre, "softcap must be >= 0 and finite, got ", softcap);

  int64_t capacity = k_cache.size(1), page_size = 0, num_blocks = 0;
  size_t bt_index = 0;
  at::Tensor bt_host;
  if (paged) {
    const at::Tensor& bt = *block_table;
    TORCH_CHECK_TYPE(bt.scalar_type() == at::kInt, kPre, "block_table must be int32, got ", bt.scalar_type());
    TORCH_CHECK_VALUE(bt.device() == q.device(), kPre, "block_table must be on the device of q");
    TORCH_CHECK_VALUE(bt.dim() == 2 && bt.size(0) == b, kPre, "block_table must have shape (batch, max_blocks) with batch = ",
                      b, ", got ", bt.sizes());
    TORCH_CHECK_VALUE(!cache_batch_idx.has_value() || !cache_batch_idx->defined(), kPre,
                      "cache_batch_idx cannot be combined with a paged cache (block_table)");
    page_size = k_cache.size(1);
    num_blocks = k_cache.size(0);
    TORCH_CHECK_VALUE(page_size >= 1, kPre, "the page size (k_cache.shape[1]) must be >= 1");
    capacity = bt.size(1) * page_size;
    bt_index = keep.size();
    keep.push_back(bt.stride(1) == 1 ? bt : bt.contiguous());
    bt_host = host_ints(keep.back());
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
    if (paged) {
      const int32_t* row = bt_host.data_ptr<int32_t>() + i * bt_host.size(1);
      for (int64_t pg = lpad / page_size; pg < (n + page_size - 1) / page_size; ++pg)
        TORCH_CHECK_VALUE(row[pg] >= 0 && row[pg] < num_blocks, kPre, "block_table[", i, ", ", pg, "] = ", row[pg],
                          " is outside the cache's blocks [0, ", num_blocks, ")");
    }
  }
  check_int_range(capacity, "cache capacity");
  check_int_range(s_q, "seqlen_q");
  check_int_range(b * h, "batch * heads");

  FwdParams p;
  p.q = q.data_ptr();
  p.k = k_cache.data_ptr();
  p.v = v_cache.data_ptr();
  p.q_batch_stride = q.stride(0); p.q_row_stride = q.stride(1); p.q_head_stride = q.stride(2);
  p.k_batch_stride = k_cache.stride(0); p.k_row_stride = k_cache.stride(1); p.k_head_stride = k_cache.stride(2);
  p.v_batch_stride = v_cache.stride(0); p.v_row_stride = v_cache.stride(1); p.v_head_stride = v_cache.stride(2);
  p.b = int(b); p.h = int(h); p.h_kv = int(h_kv);
  p.s_q = int(s_q); p.s_k = int(capacity);
  p.d = int(d); p.d_v = int(d_v);
  p.dtype = to_dtype(q.scalar_type());
  p.scale = softmax_scale;
  p.scale_log2 = float(softmax_scale * M_LOG2E);
  p.causal = causal;
  p.bottom_right = true;
  p.window_left = int(window_left);
  p.window_right = int(window_right);
  p.softcap = softcap;
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
  if (paged) {
    const at::Tensor& bt = keep[bt_index];
    p.block_table = bt.data_ptr<int32_t>();
    p.block_table_batch_stride = bt.stride(0);
    p.page_size = int(page_size);
  }
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

std::tuple<at::Tensor, at::Tensor> alloc_fwd_outputs(const at::Tensor& q, const at::Tensor& v) {
  auto out = at::empty(out_shape_of(q, v), q.options());
  auto lse = at::empty(lse_shape_of(q), q.options().dtype(lse_dtype(q.scalar_type())));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> alloc_split_accum(FwdParams& p, const at::Tensor& q) {
  if (p.num_splits <= 1) return {};
  const auto f32 = q.options().dtype(at::kFloat);
  auto o_accum = at::empty({p.num_splits, p.b, p.h, p.s_q, p.d_v}, f32);
  auto lse_accum = at::empty({p.num_splits, p.b, p.h, p.s_q}, f32);
  p.o_accum = o_accum.data_ptr<float>();
  p.lse_accum = lse_accum.data_ptr<float>();
  return {o_accum, lse_accum};
}

namespace {
// (batch, row, head) strides of a (b, s, h, d) or packed (total, h, d) tensor.
void strides3(const at::Tensor& t, int64_t& batch, int64_t& row, int64_t& head) {
  if (t.dim() == 3) {
    batch = 0; row = t.stride(0); head = t.stride(1);
  } else {
    batch = t.stride(0); row = t.stride(1); head = t.stride(2);
  }
}
// (batch, head) strides of a (b, h, s_q) or packed (h, total_q) LSE-shaped tensor.
void lse_strides(const at::Tensor& t, int64_t& batch, int64_t& head) {
  if (t.dim() == 2) {
    batch = 0; head = t.stride(0);
  } else {
    batch = t.stride(0); head = t.stride(1);
  }
}
}  // namespace

void set_fwd_outputs(FwdParams& p, const at::Tensor& out, const at::Tensor& lse) {
  p.o = out.data_ptr();
  strides3(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = lse.data_ptr();
  lse_strides(lse, p.lse_batch_stride, p.lse_head_stride);
}

BwdParams make_bwd_params(const FwdParams& fp, const at::Tensor& dout,
                          const c10::optional<at::Tensor>& dlse, const at::Tensor& out,
                          const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                          const at::Tensor& dv, bool deterministic) {
  const std::vector<int64_t> out_shape = out_shape_of(dq, dv);
  const std::vector<int64_t> lse_shape = lse_shape_of(dq);
  check_float_tensor(dout, "dout");
  check_float_tensor(out, "out");
  check_same(dout, "dout", dq);
  check_same(out, "out", dq);
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(out_shape), kPre, "out must have shape ", out_shape,
                    ", got ", out.sizes());
  TORCH_CHECK_VALUE(dout.sizes() == at::IntArrayRef(out_shape), kPre, "dout must have shape ", out_shape,
                    ", got ", dout.sizes());
  TORCH_CHECK_VALUE(dout.numel() == 0 || (dout.stride(-1) == 1 && out.stride(-1) == 1), kPre,
                    "dout and out must have a contiguous last dim");
  const auto lse_st = lse_dtype(dq.scalar_type());
  TORCH_CHECK_TYPE(lse.scalar_type() == lse_st, kPre, "softmax_lse must be ", lse_st, ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.device() == dq.device(), kPre, "softmax_lse must be on the device of q");
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef(lse_shape), kPre, "softmax_lse must have shape ", lse_shape,
                    ", got ", lse.sizes());
  TORCH_CHECK_VALUE(lse.stride(-1) == 1 || fp.s_q <= 1, kPre, "softmax_lse must have a contiguous last dim");

  BwdParams p;
  static_cast<FwdParams&>(p) = fp;
  p.o = const_cast<void*>(out.data_ptr());
  strides3(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = const_cast<void*>(lse.data_ptr());
  lse_strides(lse, p.lse_batch_stride, p.lse_head_stride);
  p.dout = dout.data_ptr();
  strides3(dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  if (dlse.has_value() && dlse->defined()) {
    const auto& g = *dlse;
    TORCH_CHECK_TYPE(g.scalar_type() == lse_st, kPre, "dlse must be ", lse_st, ", got ", g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == dq.device(), kPre, "dlse must be on the device of q");
    TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(lse_shape), kPre, "dlse must have shape ", lse_shape,
                      ", got ", g.sizes());
    TORCH_CHECK_VALUE(g.stride(-1) == 1 || fp.s_q <= 1, kPre, "dlse must have a contiguous last dim");
    p.dlse = g.data_ptr();
    lse_strides(g, p.dlse_batch_stride, p.dlse_head_stride);
  }
  p.dq = dq.data_ptr();
  strides3(dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  p.dk = dk.data_ptr();
  strides3(dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  p.dv = dv.data_ptr();
  strides3(dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  p.deterministic = deterministic;
  return p;
}

}  // namespace fal::glue

namespace fal::glue {

OptArgs make_fwd_opt_args(FAL_FWD_ARGS) {
  (void)q; (void)k; (void)v; (void)deterministic;
  OptArgs a;
  a.attn_mask = attn_mask; a.alibi_slopes = alibi_slopes;
  a.cu_seqlens_q = cu_seqlens_q; a.cu_seqlens_k = cu_seqlens_k; a.seqused_k = seqused_k;
  a.block_table = block_table; a.rng_state = rng_state;
  a.max_seqlen_q = max_seqlen_q; a.max_seqlen_k = max_seqlen_k;
  a.softmax_scale = softmax_scale; a.causal = causal; a.bottom_right = bottom_right;
  a.window_left = window_left; a.window_right = window_right;
  a.softcap = softcap; a.dropout_p = dropout_p; a.num_splits = num_splits;
  return a;
}

OptArgs make_bwd_opt_args(FAL_BWD_ARGS) {
  (void)dout; (void)dlse; (void)out; (void)softmax_lse; (void)mask_grad;
  return make_fwd_opt_args(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k,
                           c10::nullopt, rng_state, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                           bottom_right, window_left, window_right, softcap, dropout_p, 1, deterministic);
}

std::tuple<at::Tensor, at::Tensor> fwd_impl(FwdRunner run, const at::Tensor& q_in, const at::Tensor& k_in,
                                            const at::Tensor& v_in, const OptArgs& a) {
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  std::vector<at::Tensor> keep;  // converted optional tensors the params point into
  FwdParams p = make_fwd_params(q, k, v, a, keep);
  auto [out, lse] = alloc_fwd_outputs(q, v);
  if (out.numel() == 0) return {out, lse};
  set_fwd_outputs(p, out, lse);
  if (p.cu_seqlens_q) {  // packed rows no sequence owns
    out.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
  }
  run(p, q);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_impl(
    BwdRunner run, const at::Tensor& dout_in, const OptT& dlse_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in, const OptArgs& a, bool deterministic,
    bool mask_grad) {
  const at::Tensor lse = lse_in.contiguous();  // scratch buffers of the kernels share its strides
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  std::vector<at::Tensor> keep;
  FwdParams fp = make_fwd_params(q, k, v, a, keep);
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  const at::Tensor dout = last_dim_contiguous(dout_in), out = last_dim_contiguous(out_in);
  OptT dlse = dlse_in;
  if (dlse.has_value() && dlse->defined()) dlse = last_dim_contiguous(*dlse);
  BwdParams p = make_bwd_params(fp, dout, dlse, out, lse, dq, dk, dv, deterministic);
  // Gradient of a floating attn_mask: dS at every (batch, head, row, key), summed to the mask's shape.
  at::Tensor dmask_full, dmask = at::empty({0}, q.options());
  if (mask_grad) {
    TORCH_CHECK_VALUE(a.attn_mask.has_value() && a.attn_mask->defined() &&
                          at::isFloatingType(a.attn_mask->scalar_type()),
                      kPre, "mask_grad needs a floating attn_mask");
    dmask_full = at::zeros({p.b, p.h, p.s_q, p.s_k}, q.options().dtype(lse_dtype(q.scalar_type())));
    p.dmask = dmask_full.data_ptr();
    p.dmask_batch_stride = dmask_full.stride(0);
    p.dmask_head_stride = dmask_full.stride(1);
    p.dmask_row_stride = dmask_full.stride(2);
  }
  auto finish_mask = [&] {
    if (mask_grad) dmask = at::sum_to(dmask_full, a.attn_mask->sizes()).to(a.attn_mask->scalar_type());
  };
  if (dk.numel() > 0 && dq.numel() == 0) dk.zero_(), dv.zero_();
  if (dq.numel() == 0 || dk.numel() == 0) {
    dq.zero_();
    finish_mask();
    return {dq, dk, dv, dmask};
  }
  if (p.cu_seqlens_k || p.seqused_k) {  // keys no sequence uses get zero gradients
    dk.zero_();
    dv.zero_();
  }
  if (p.cu_seqlens_q) dq.zero_();
  run(p, q);
  finish_mask();
  return {dq, dk, dv, dmask};
}

}  // namespace fal::glue
