// glue_checks.cpp -- the shared argument checks and params setters (glue_checks.h).
#include "torch/glue_checks.h"

#include <ATen/Context.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "torch/attn_glue.h"

namespace fal::glue {

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
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, kPre, name,
                   " must have dtype float32, float64, bfloat16 or float16, got ", st);
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& q, bool same_dtype) {
  TORCH_CHECK_VALUE(t.device() == q.device(), kPre, name, " must be on the same device as q (", q.device(), "), got ",
                    t.device());
  if (same_dtype)
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), kPre, name, " must have the same dtype as q (",
                     q.scalar_type(), "), got ", t.scalar_type());
}

void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, kPre, name, " must have ", rank, " dims ", layout, ", got shape ", t.sizes());
}

void check_int_range(int64_t v, const char* name) {
  TORCH_CHECK_VALUE(v < std::numeric_limits<int32_t>::max(), kPre, name, " = ", v, " is too large (must be < 2^31)");
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* k_name, const char* v_name,
               int64_t h, int64_t h_kv, int64_t d, int64_t d_v) {
  check_float_tensor(q, "q");
  check_float_tensor(k, k_name);
  check_float_tensor(v, v_name);
  check_same(k, k_name, q);
  check_same(v, v_name, q);
  TORCH_CHECK_VALUE(h_kv >= 1 && h >= 1 && h % h_kv == 0, kPre, "the number of heads of q (", h,
                    ") must be a multiple of the heads of ", k_name, "/", v_name, " (", h_kv, ")");
  TORCH_CHECK_VALUE(d >= 1, kPre, "head_dim of q/", k_name, " must be >= 1, got ", d);
  TORCH_CHECK_VALUE(d_v >= 1, kPre, "head_dim of ", v_name, " must be >= 1, got ", d_v);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{q, "q"}, {k, k_name}, {v, v_name}})
    TORCH_CHECK_VALUE(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, kPre, name,
                      " must have a contiguous last dim (stride 1), got strides ", t.strides());
}

void check_score_args(double softmax_scale, int64_t window_left, int64_t window_right, double softcap) {
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale), kPre, "softmax_scale must be finite, got ", softmax_scale);
  TORCH_CHECK_VALUE(window_left >= -1 && window_right >= -1, kPre,
                    "window_size must be (left, right) with each >= -1 (-1 = unbounded), got (", window_left, ", ",
                    window_right, ")");
  check_int_range(window_left, "window_size[0]");
  check_int_range(window_right, "window_size[1]");
  TORCH_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0, kPre, "softcap must be >= 0 and finite, got ", softcap);
}

void set_score_fields(FwdParams& p, at::ScalarType st, double softmax_scale, bool causal, bool bottom_right,
                      int64_t window_left, int64_t window_right, double softcap) {
  p.dtype = to_dtype(st);
  p.scale = softmax_scale;
  p.scale_log2 = float(softmax_scale * M_LOG2E);
  p.causal = causal;
  p.bottom_right = bottom_right;
  // fp32: torch's float32 matmul precision (torch.set_float32_matmul_precision("high") sets the
  // mkldnn matmul precision to tf32, "medium" to bf16) lets the CPU's tile products take each value
  // as two bf16 parts; "highest" / ieee (the default) keeps fp32 products
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  // the per-backend API (torch 2.9+); its legacy getter throws once both APIs were used
  const at::Float32Precision mm =
      at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
  p.fp32_split_bf16 = st == at::kFloat && (mm == at::Float32Precision::TF32 || mm == at::Float32Precision::BF16);
#else
  p.fp32_split_bf16 =
      st == at::kFloat && at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
#endif
  p.window_left = int(window_left);
  p.window_right = int(window_right);
  p.softcap = softcap;
}

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
    TORCH_CHECK_VALUE(c[i + 1] >= c[i], kPre, name, " must be non-decreasing, got ", name, "[", i, "] = ", c[i], " > ",
                      name, "[", i + 1, "] = ", c[i + 1]);
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
  TORCH_CHECK_VALUE(m_in.device() == q.device(), kPre, "attn_mask must be on the device of q (", q.device(), "), got ",
                    m_in.device());
  const auto st = m_in.scalar_type();
  TORCH_CHECK_TYPE(st == at::kBool || at::isFloatingType(st), kPre,
                   "attn_mask must be bool (True = attend) or a floating dtype (added to the scores), got ", st);
  const std::vector<int64_t> target{p.b, p.h, p.s_q, p.s_k};
  TORCH_CHECK_VALUE(m_in.dim() <= 4, kPre,
                    "attn_mask must have at most 4 dims (batch, heads, seqlen_q, seqlen_k), "
                    "got shape ",
                    m_in.sizes());
  for (int64_t i = 0; i < m_in.dim(); ++i) {
    const int64_t t = target[4 - m_in.dim() + i], s = m_in.size(i);
    TORCH_CHECK_VALUE(s == t || s == 1, kPre, "attn_mask of shape ", m_in.sizes(),
                      " is not broadcastable to (batch, heads, seqlen_q, seqlen_k) = ", at::IntArrayRef(target));
  }
  at::Tensor m = st == at::kBool ? m_in : m_in.to(lse_dtype(q.scalar_type()));
  while (m.dim() < 4) m = m.unsqueeze(0);
  if (p.s_k > 1 && (m.size(3) == 1 || m.stride(3) != 1))
    m = m.expand({m.size(0), m.size(1), m.size(2), p.s_k}).contiguous();
  m = m.expand(target);
  keep.push_back(m);
  p.mask = m.data_ptr();
  p.mask_kind = st == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
  p.mask_batch_stride = m.stride(0);
  p.mask_head_stride = m.stride(1);
  p.mask_row_stride = m.stride(2);
}

void strides_of(const at::Tensor& t, int64_t& batch, int64_t& row, int64_t& head) {
  if (t.dim() == 3) {
    batch = 0;
    row = t.stride(0);
    head = t.stride(1);
  } else {
    batch = t.stride(0);
    row = t.stride(1);
    head = t.stride(2);
  }
}

at::Tensor check_block_table(const at::Tensor& bt, const at::Tensor& q, int64_t b, std::vector<at::Tensor>& keep) {
  TORCH_CHECK_TYPE(bt.scalar_type() == at::kInt, kPre, "block_table must be int32, got ", bt.scalar_type());
  TORCH_CHECK_VALUE(bt.device() == q.device(), kPre, "block_table must be on the device of q");
  TORCH_CHECK_VALUE(bt.dim() == 2 && bt.size(0) == b, kPre,
                    "block_table must have shape (batch, max_blocks) with batch = ", b, ", got ", bt.sizes());
  keep.push_back(bt.stride(1) == 1 ? bt : bt.contiguous());
  return host_ints(keep.back());
}

void set_block_table(FwdParams& p, const at::Tensor& bt_host, const at::Tensor& bt_kernel, int64_t num_blocks,
                     int64_t page_size, const int32_t* lo, const int32_t* hi) {
  TORCH_CHECK_VALUE(page_size >= 1, kPre, "the page size (k.shape[1]) must be >= 1");
  for (int64_t i = 0; i < bt_host.size(0); ++i) {
    const int32_t* row = bt_host.data_ptr<int32_t>() + i * bt_host.size(1);
    for (int64_t pg = (lo ? lo[i] : 0) / page_size; pg < (hi[i] + page_size - 1) / page_size; ++pg)
      TORCH_CHECK_VALUE(row[pg] >= 0 && row[pg] < num_blocks, kPre, "block_table[", i, ", ", pg, "] = ", row[pg],
                        " is outside the cache's blocks [0, ", num_blocks, ")");
  }
  p.block_table = bt_kernel.data_ptr<int32_t>();
  p.block_table_batch_stride = bt_kernel.stride(0);
  p.page_size = int(page_size);
}

}  // namespace fal::glue
