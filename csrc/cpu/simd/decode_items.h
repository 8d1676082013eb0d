// decode_items.h -- the SIMD decode's work items (decode.cpp; decode_amx.cpp with the AMX tiles):
// at most kDecodeMaxRows query rows (one token, GQA heads packed as rows, speculative decoding)
// against a long KV range, K and V streamed from memory once, optionally split over work items
// (split-KV, merged by fwd_combine_run). The per-head state and its walk over the keys:
// decode_head.h. With few rows memory-bound (the measure: GB/s of K + V against the machine's read
// bandwidth); with 16 rows per K/V row bf16 is compute-bound on vdpbf16ps, not on AMX tiles
// (bench/cpu_bench.py reports % of the roofline).
#pragma once
#include "cpu/simd/decode_head.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// decode_item, decode_item_heads: true when an output row may hold a NaN value (DecodeHead::finish)
template <typename T, bool kAmx>
bool decode_item(const FwdParams& p, int bi, int hi, int split, Buf<float>& buf) {
  buf.resize(DecodeHead<T, kAmx>::floats(p) + DecodeHead<T, kAmx>::scratch_floats(p));
  DecodeHead<T, kAmx> h;
  if (!h.init(p, bi, hi, buf.data(), buf.data() + DecodeHead<T, kAmx>::floats(p))) return false;
  int j0, j1;
  h.split_range(split, j0, j1);
  h.run(j0, j1);
  return h.finish(split);
}

// Decode over K/V whose heads are interleaved in a row ((batch, seqlen, heads, dim), the flash-attn
// and KV-cache layout): one work item = (batch, split of the keys) for *every* head, walking the
// keys in chunks that fit in L2 and, per chunk, every head over it. Each K/V row is then read
// from memory once, as a contiguous h_kv * d span (prefetched a chunk ahead), instead of as h_kv
// strided streams, one per head item (measured: 12.5 GB/s that way at H32 D128 bf16).
template <typename T, bool kAmx>
bool decode_item_heads(const FwdParams& p, int bi, int h0, int h1, int split, Buf<float>& buf) {
  const size_t per_head = DecodeHead<T, kAmx>::floats(p);
  buf.resize(per_head * (h1 - h0) + DecodeHead<T, kAmx>::scratch_floats(p));
  float* scratch = buf.data() + per_head * (h1 - h0);
  // every head's state lives in buf, its struct (pointers, masks, score mods) in heads: attached
  // once, not per chunk
  Buf<DecodeHead<T, kAmx>> heads(size_t(h1 - h0));
  DecodeHead<T, kAmx>& first = heads[0];
  if (!first.init(p, bi, h0, buf.data(), scratch)) return false;
  int j_begin, j_end;
  first.split_range(split, j_begin, j_end);
  for (int hi = h0 + 1; hi < h1; ++hi)
    heads[size_t(hi - h0)].init(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
  // chunks of ~64 KB of K + V (L2-resident while the group's heads pass over them; at least a tile
  // block of 64 keys per head with the AMX tiles: 256 KB at GQA 32/8 D128 bf16; one block of
  // decode_pairs_run's with several bf16 rows on AVX-512: ~128 KB, decode_pairs_keys); the next
  // chunk's lines are prefetched a share per head, issued between that head's steps (KeyLines).
  // The hint (isa.h): on a Zen 5 T1 for fp32 (its chunk cannot stay in L1: 37 -> 40 GB/s) and T0
  // for bf16 (30 -> 36), in one process, B1 H32 1 x 32768 D128, 2 threads; T1 on a 32 KB L1 and on
  // Intel, where spans of 4 KB or more stream best without (decode_prefetch, isa.h).
  const int g = p.h / p.h_kv, hk0 = h0 / g, hk1 = (h1 - 1) / g + 1;
  const int64_t span_k = (int64_t(hk1 - hk0 - 1) * p.k_head_stride + p.d) * int64_t(sizeof(T));
  const int64_t span_v = (int64_t(hk1 - hk0 - 1) * p.v_head_stride + p.d_v) * int64_t(sizeof(T));
  const DecodePrefetch& pf = decode_prefetch();
  const PrefetchHint hint = pf.chunk_hw_span > 0 && span_k >= pf.chunk_hw_span ? PrefetchHint::kNone
                            : sizeof(T) == 4                                   ? pf.chunk32
                                                                               : pf.chunk16;
  int block = first.block_keys();  // keys a head's step takes at most
#if defined(FAL_SIMD_AVX512)
  if constexpr (std::is_same_v<T, bf16_t>)
    if (first.pairs && first.rows > 1) block = decode_pairs_keys(p);  // decode_pairs_run's blocks
#endif
#if defined(FAL_DECODE_AMX)
  if (first.tiles) block = kTileKeys;
#endif
  // K / V rows so wide that a block of them passes 64 KB: one query row walks chunks of 8 keys on
  // AVX-512 too (half a 16-key block; its products are cheap next to the bytes), not 16. Decided on
  // the call's whole rows (every kv head), not this group's span, so the keys' blocks -- and the
  // results, bit for bit -- do not depend on how decode_heads_plan groups the heads per thread --
  // B1 32768 keys D128, 2 threads, token-major, against 16-key chunks, alternating call by call in
  // one process (Zen 4, 2026-12-04): H32 fp32 1.09-1.20x, bf16 1.05-1.09x, fp16 0.83-1.12x (median
  // 1.09x of 5 runs); H16 bf16 1.17x, fp16 1.12x; H8 fp32 1.06x; 4-key chunks fp32 1.16x, bf16
  // 1.0x; 2 keys 0.65-0.95x. Several rows keep whole blocks (4 rows, GQA 32/8 at 8 keys: 0.73x).
  const int64_t row_k = (int64_t(p.h_kv - 1) * p.k_head_stride + p.d) * int64_t(sizeof(T));
  const int64_t row_v = (int64_t(p.h_kv - 1) * p.v_head_stride + p.d_v) * int64_t(sizeof(T));
  const bool eight = first.rows == 1 && (64 * 1024) / (row_k + row_v) < block;
  const int chunk = eight ? std::min(8, block) : std::max(block, int((64 * 1024) / (span_k + span_v)) / block * block);
  const T* k0 = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, first.sq, hk0);
  const T* v0 = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, first.sq, hk0);
  const int nh = h1 - h0;
  KeyLines next;  // the next chunk's lines, a share per head issued between its steps
  next.setup(k0, first.krows, span_k, v0, first.vrows, span_v, hint);
  for (int jc = j_begin; jc < j_end; jc += chunk) {
    const int jn = std::min(jc + chunk, j_end);
    next.start(jn, std::min(jn + chunk, j_end));
    for (int hi = h0; hi < h1; ++hi) {
      const int64_t target = next.lines * (hi - h0 + 1) / nh;  // lines issued once this head is done
      DecodeHead<T, kAmx>& h = heads[size_t(hi - h0)];
      h.feed = &next;
      h.feed_quota = target - next.issued;
      h.run(jc, jn);
      next.issue(target - next.issued);
    }
    next.finish();
  }
  bool nan_value = false;
  for (int hi = h0; hi < h1; ++hi) nan_value |= heads[size_t(hi - h0)].finish(split);
  return nan_value;
}

// The work items [begin, end) of decode_items (decode.cpp) for K/V of type T.
template <typename T, bool kAmx>
bool decode_items_run(const FwdParams& p, int64_t begin, int64_t end) {
  const int ns = std::max(1, p.num_splits);
  const int groups = decode_head_groups(p), per = decode_group_heads(p);
  Buf<float> buf;
  bool nan_value = false;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t bg = it / ns;
    const int bi = int(bg / groups), h0 = int(bg % groups) * per;
    if (per == 1)
      nan_value |= decode_item<T, kAmx>(p, bi, h0, int(it % ns), buf);
    else
      nan_value |= decode_item_heads<T, kAmx>(p, bi, h0, std::min(p.h, h0 + per), int(it % ns), buf);
  }
  return nan_value;
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
