// params.h -- the only data that crosses from the torch glue into the kernels (CPU and CUDA).
// Plain pointers, element strides, sizes and host-precomputed constants: no torch, no CUDA.
//
// Layouts (strides in elements; the last dim is always contiguous):
//   q    : batch x seqlen_q x heads    x head_dim
//   k    : batch x seqlen_k x heads_kv x head_dim
//   v    : batch x seqlen_k x heads_kv x head_dim_v
//   out  : batch x seqlen_q x heads    x head_dim_v
//   lse  : batch x heads x seqlen_q, fp32 (fp64 for fp64 inputs), natural-log logsumexp of the scaled scores
//          (-inf for a query row that sees no key)
#pragma once
#include <cstddef>
#include <cstdint>

namespace fal {

enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// How an optional attn_mask is interpreted: none, bool (True = attend) or additive (added to the scores).
enum class MaskKind : int32_t { kNone = 0, kBool = 1, kAdditive = 2 };

struct FwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  void* lse = nullptr;  // float, or double for fp64 inputs

  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;  // row stride is 1

  int b = 0, h = 0, h_kv = 0;  // batch, query heads, key/value heads (h % h_kv == 0)
  int s_q = 0, s_k = 0;        // sequence lengths (max lengths when varlen)
  int d = 0, d_v = 0;          // head dim of q/k, head dim of v/out
  DType dtype = DType::kFloat32;

  double scale = 1.0;      // softmax scale applied to q.k (kernels round it to their type)
  float scale_log2 = 1.f;  // scale * log2(e), for exp2-based kernels

  // Visibility: query i sees key j iff  i + diag - window_left <= j <= i + diag + window_right,
  // where diag = bottom_right ? s_k - s_q : 0, a negative window bound means unbounded and
  // causal forces window_right = 0.  flash_attn_* aligns bottom-right, SDPA aligns top-left.
  bool causal = false;
  bool bottom_right = true;
  // CPU, fp32 inputs: the products may take each value as the sum of two bf16 values (torch's
  // float32 matmul precision "high" / "medium": the mkldnn matmul precision tf32 or bf16; the amx
  // ISA's tiles, split_bf16.h); false = fp32 products. In the padding before window_left: no offset
  // moves (the static_assert below).
  bool fp32_split_bf16 = false;
  int window_left = -1, window_right = -1;

  // Score transforms and masks (ScoreMod in attn_math.h applies them).
  double softcap = 0.0;                 // 0 = off; else s <- softcap * tanh(s / softcap)
  const float* alibi_slopes = nullptr;  // (b, h) or (h,) fp32; nullptr = off
  int64_t alibi_batch_stride = 0;
  const void* mask = nullptr;  // (b, h, s_q, s_k) through strides: uint8 (bool) or the LSE dtype
  MaskKind mask_kind = MaskKind::kNone;
  int64_t mask_batch_stride = 0, mask_head_stride = 0, mask_row_stride = 0;

  // Variable length / KV cache (SeqInfo / KvRows in attn_math.h read them).
  const int32_t* cu_seqlens_q = nullptr;  // (b + 1,)
  const int32_t* cu_seqlens_k = nullptr;  // (b + 1,)
  const int32_t* seqused_k = nullptr;     // (b,)
  // KV cache (flash_attn_with_kvcache, inference): sequence bi reads k/v batch kv_batch_idx[bi]
  // (cache_batch_idx), keys from row leftpad_k[bi] (cache_leftpad) to seqused_k[bi]; with a paged
  // cache, k/v are (num_blocks, page_size, h_kv, d) and key row r of sequence bi lives in page
  // block_table[bi][r / page_size], row r % page_size (k_batch_stride = the page stride).
  const int32_t* kv_batch_idx = nullptr;  // (b,)
  const int32_t* leftpad_k = nullptr;     // (b,)
  const int32_t* block_table = nullptr;   // (b, max_blocks) paged KV
  int64_t block_table_batch_stride = 0;
  int page_size = 0;

  // Dropout with a replayable counter-based RNG (Dropout in attn_math.h).
  float dropout_p = 0.f;
  uint64_t seed = 0, offset = 0;    // from rng_state; see Dropout in attn_math.h
  uint32_t dropout_threshold = 0;   // round(dropout_p * 2^24)
  double dropout_keep_scale = 1.0;  // 1 / (1 - dropout_p)

  // Split-KV (decode): num_splits blocks share one query tile's keys; each writes a normalised
  // fp32 partial output and its LSE, and a combine pass merges them:
  //   lse = log sum_s exp(lse_s),  out = sum_s exp(lse_s - lse) * out_s.
  int num_splits = 1;
  // CPU: query heads per work item -- the decode over a token-major cache (cpu_kernels.h's
  // decode_group_heads), the forward of more rows (fwd_item_heads); 0 = not planned. It fills the
  // padding before o_accum, so no offset moves (the CUDA kernels take these structs by value:
  // tools/verified_sass.py)
  int decode_heads = 0;
  float* o_accum = nullptr;    // num_splits x b x h x s_q x d_v, fp32
  float* lse_accum = nullptr;  // num_splits x b x h x s_q, fp32
};

struct BwdParams : FwdParams {
  const void* dout = nullptr;  // like out
  const void* dlse = nullptr;  // like lse (same dtype), may be null (gradient w.r.t. the returned lse)
  void* dq = nullptr;          // like q
  void* dk = nullptr;          // like k
  void* dv = nullptr;          // like v
  int64_t do_batch_stride = 0, do_row_stride = 0, do_head_stride = 0;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  int64_t dlse_batch_stride = 0, dlse_head_stride = 0;
  // Scratch owned by the glue (device kernels): fp32 rowsum(dO*O) - dlse and a dQ accumulator.
  void* dsum = nullptr;       // b x h x s_q, lse dtype
  float* dq_accum = nullptr;  // b x s_q x h x d, fp32
  bool deterministic = false;
  // CPU (in the padding after deterministic): split_heads = false: the key range of one (batch, kv
  // head) split over key_splits work items (MQA / GQA with few kv heads still uses every thread);
  // each writes its fp32 dQ sum (unscaled) to dq_partial[split] (key_splits x b x h x s_q x d,
  // zeroed by the glue) and a combine pass adds them. split_heads = true: the item's query heads
  // split instead (key_splits parts of the group, every key each); each writes dQ of its heads
  // itself and its fp32 dK (times the dK scale) and dV rows to dq_partial[split] (key_splits x b x
  // h_kv x s_k x (d + d_v)), which the combine pass adds. key_splits = 1: the item writes dQ, dK, dV.
  bool split_heads = false;
  int key_splits = 1;
  float* dq_partial = nullptr;
  // Gradient of an additive attn_mask (b x h x s_q x s_k in the LSE dtype, zero-initialised by the
  // glue; the kernels write dS at every visible element); nullptr = not requested.
  void* dmask = nullptr;
  int64_t dmask_batch_stride = 0, dmask_head_stride = 0, dmask_row_stride = 0;
};

// fp32_split_bf16 (CPU only) sits in the padding after bottom_right: every CUDA-visible offset stays put
static_assert(offsetof(FwdParams, fp32_split_bf16) == offsetof(FwdParams, bottom_right) + 1 &&
                  offsetof(FwdParams, window_left) == offsetof(FwdParams, scale_log2) + 8,
              "FwdParams::fp32_split_bf16 must fill the padding before window_left");
// split_heads (CPU only) sits in the padding after deterministic: every CUDA-visible offset stays put
// (offsetof on the derived, so not standard-layout, BwdParams: checked by the host compiler, which
// lays it out as nvcc's host side does; GCC computes it, with a warning silenced here)
#if !defined(__CUDACC__)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
#endif
static_assert(offsetof(BwdParams, split_heads) == offsetof(BwdParams, deterministic) + 1 &&
                  offsetof(BwdParams, key_splits) == offsetof(BwdParams, deterministic) + 4,
              "BwdParams::split_heads must fill the padding before key_splits");
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif
// decode_heads (CPU only) sits in the padding after num_splits: every CUDA-visible offset stays put
static_assert(offsetof(FwdParams, decode_heads) + sizeof(int) == offsetof(FwdParams, o_accum),
              "FwdParams::decode_heads must fill the padding before o_accum");

}  // namespace fal
