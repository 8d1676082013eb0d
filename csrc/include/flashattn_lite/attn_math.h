// attn_math.h -- attention semantics shared by the CPU and CUDA kernels (__host__ __device__):
// which keys a query row sees (causal / sliding window, both alignments) and the key range a
// tile of rows must visit.  The CPU tests cover this code; the CUDA kernels use it unchanged.
#pragma once
#include "flashattn_lite/isa_ns.h"
#include <cstdint>
#include <climits>
#include "flashattn_lite/numeric.h"
#include "flashattn_lite/params.h"

namespace fal {
FAL_ISA_NS_BEGIN

// Key interval [lo, hi) seen by a query row.
struct KeyRange {
  int lo;
  int hi;
};

// Static description of the visibility rule for one (batch) sequence pair.
struct Visibility {
  int64_t diag;   // query i is aligned with key i + diag
  int64_t left;   // keys before the diagonal allowed (-1 = unbounded)
  int64_t right;  // keys after the diagonal allowed (-1 = unbounded)
  int s_k;

  // Unclipped bounds for row i: keys j with raw_lo(i) <= j < raw_hi(i); both are
  // non-decreasing in i, which the tile helpers below rely on.
  FAL_HD int64_t raw_lo(int i) const { return left >= 0 ? int64_t(i) + diag - left : INT64_MIN / 4; }
  FAL_HD int64_t raw_hi(int i) const { return right >= 0 ? int64_t(i) + diag + right + 1 : INT64_MAX / 4; }

  // query i sees key j  <=>  i + diag - left <= j <= i + diag + right, and 0 <= j < s_k
  FAL_HD KeyRange keys_of_row(int i) const { return clip(raw_lo(i), raw_hi(i)); }

  // Keys that any of the rows [i0, i1) may see (a superset when some rows are empty;
  // elements outside a row's own range are masked by the kernels).
  FAL_HD KeyRange keys_of_rows(int i0, int i1) const { return clip(raw_lo(i0), raw_hi(i1 - 1)); }

  // True when every row in [i0, i1) sees every key in [j0, j1): no element mask needed.
  FAL_HD bool tile_fully_visible(int i0, int i1, int j0, int j1) const {
    return raw_lo(i1 - 1) <= j0 && raw_hi(i0) >= j1;
  }

  // Query rows that see key j: raw_row_lo(j) <= i < raw_row_hi(j) (inverse of the rule above;
  // both non-decreasing in j).
  FAL_HD int64_t raw_row_lo(int j) const { return right >= 0 ? int64_t(j) - diag - right : INT64_MIN / 4; }
  FAL_HD int64_t raw_row_hi(int j) const { return left >= 0 ? int64_t(j) - diag + left + 1 : INT64_MAX / 4; }
  FAL_HD KeyRange rows_of_key(int j, int s_q) const { return clip_to(raw_row_lo(j), raw_row_hi(j), s_q); }
  // Rows that any key in [j0, j1) may be seen by (a superset when some keys are unseen).
  FAL_HD KeyRange rows_of_keys(int j0, int j1, int s_q) const {
    return clip_to(raw_row_lo(j0), raw_row_hi(j1 - 1), s_q);
  }

  FAL_HD static KeyRange clip_to(int64_t lo, int64_t hi, int n) {
    if (lo < 0) lo = 0;
    if (hi > n) hi = n;
    if (hi <= lo) return KeyRange{0, 0};
    return KeyRange{int(lo), int(hi)};
  }

  FAL_HD KeyRange clip(int64_t lo, int64_t hi) const { return clip_to(lo, hi, s_k); }
};

FAL_HD Visibility make_visibility(const FwdParams& p, int s_q, int s_k) {
  Visibility v;
  v.diag = p.bottom_right ? int64_t(s_k) - int64_t(s_q) : 0;
  v.left = p.window_left < 0 ? -1 : p.window_left;
  v.right = p.causal ? 0 : (p.window_right < 0 ? -1 : p.window_right);
  v.s_k = s_k;
  return v;
}

// A query row's final state: l (the softmax denominator) is > 0 when the row saw a key, 0 when it
// saw none (output 0, LSE -inf), and NaN when a NaN reached its scores (output and LSE NaN).
template <typename Acc>
FAL_HD bool row_has_mass(Acc l) { return !(l <= Acc(0)); }

// Number of query tiles of `rows` rows.
FAL_HD int num_tiles(int n, int tile) { return (n + tile - 1) / tile; }

FAL_ISA_NS_END
}  // namespace fal
