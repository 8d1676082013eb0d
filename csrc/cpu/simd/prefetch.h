// prefetch.h -- software prefetch for the SIMD kernels (one home): a cache line into the level of a
// hint, and KeyLines, the K and V lines of a range of keys handed out a few at a time so that the
// prefetches interleave with the compute. Compiled into each per-ISA object (common.h's rules).
//
// Prefetches are inline asm, not _mm_prefetch: GCC 12 at -O3 deleted whole loops of _mm_prefetch
// (a loop without side effect) once the hint was a runtime value, and the forward's loop too
// (DEVELOPERS pitfall). Count them after a change: objdump -d <object> | grep -c prefetch.
#pragma once
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/simd/common.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

template <PrefetchHint H>
inline void prefetch_line(const char* a) {
  if constexpr (H == PrefetchHint::kT0) asm volatile("prefetcht0 %0" : : "m"(*a));
  if constexpr (H == PrefetchHint::kT1) asm volatile("prefetcht1 %0" : : "m"(*a));
  if constexpr (H == PrefetchHint::kNta) asm volatile("prefetchnta %0" : : "m"(*a));
}

// m lines from a (a line-aligned), the hint a runtime value chosen once per call.
inline void prefetch_lines(const char* a, int64_t m, PrefetchHint hint) {
  auto run = [&](auto h) {  // one line per iteration: unrolled by 4 (bursts of 4) the AVX-512 decode
                            // streamed 3-9 % slower (bf16 H32 1x32768 D128, Zen 4, 2026-12-01)
    for (int64_t i = 0; i < m; ++i) prefetch_line<decltype(h)::value>(a + 64 * i);
  };
  switch (hint) {
    case PrefetchHint::kT0: run(std::integral_constant<PrefetchHint, PrefetchHint::kT0>{}); break;
    case PrefetchHint::kT1: run(std::integral_constant<PrefetchHint, PrefetchHint::kT1>{}); break;
    case PrefetchHint::kNta: run(std::integral_constant<PrefetchHint, PrefetchHint::kNta>{}); break;
    default: break;
  }
}

// The lines of the bytes [a, a + n), from the line that holds a.
inline void prefetch_bytes(const char* a, int64_t n, PrefetchHint hint) {
  const int64_t lead = int64_t(reinterpret_cast<uintptr_t>(a) & 63);
  prefetch_lines(a - lead, (lead + n + 63) / 64, hint);
}

// The cache lines of K and V rows [j, j_end) of one head base each (k + krows.at(j), kbytes bytes
// per row; v likewise): issue(n) prefetches the next n of them. Rows back to back in memory (a
// head-major cache; a token-major one whose rows hold every head) are one span each for K and V,
// else the order is K row j, V row j, K row j + 1, ... A decode block that issues its successor's
// lines in pieces between its own steps (the query rows' S = Q K^T, the softmax, P V) keeps a
// steady stream of requests in flight; all of a block's lines at once (128 at H32 D128 bf16) stall
// the core on its miss buffers until memory answers, and the compute and the memory time add up
// (Zen 4, 2026-12-01: H32 1x32768 D128 2 threads, 1.1-1.5x over the burst one block ahead).
struct KeyLines {
  const char *k = nullptr, *v = nullptr;
  const KvRows *krows = nullptr, *vrows = nullptr;
  int64_t esize = 1, kbytes = 0, vbytes = 0;
  PrefetchHint hint = PrefetchHint::kNone;
  bool spans = false;                         // K rows and V rows each one contiguous span
  int j = 0, j_end = 0;                       // the rows whose units are not handed out yet: [j, j_end)
  bool in_v = false;                          // the next unit (a row, or the K / V span) is V's
  const char *cur = nullptr, *end = nullptr;  // the current unit's lines not issued yet
  int64_t lines = 0;                          // about how many lines [start's a, b) holds (rounded up, + 1 per unit)
  int64_t issued = 0;                         // lines issued since start

  template <typename T>
  void setup(const T* k_, const KvRows& kr, int64_t kb, const T* v_, const KvRows& vr, int64_t vb, PrefetchHint h) {
    k = reinterpret_cast<const char*>(k_);
    v = reinterpret_cast<const char*>(v_);
    krows = &kr;
    vrows = &vr;
    esize = int64_t(sizeof(T));
    kbytes = kb;
    vbytes = vb;
    hint = h;
    spans = !kr.pages && !vr.pages && kr.row_stride * esize == kb && vr.row_stride * esize == vb;
  }
  // Keys [a, b) from their first line (an empty range when hint is kNone).
  void start(int a, int b) {
    j = a;
    j_end = hint == PrefetchHint::kNone ? a : b;
    in_v = false;
    cur = end = nullptr;
    issued = 0;
    const int64_t n = j_end > j ? j_end - j : 0;
    lines =
        spans ? (n * kbytes + 63) / 64 + (n * vbytes + 63) / 64 + 2 : n * ((kbytes + 63) / 64 + (vbytes + 63) / 64 + 2);
  }
  // The next unit's lines into [cur, end): row j's K, then its V (spans: every row's K, then V);
  // false when every unit was handed out.
  bool next_unit() {
    if (j >= j_end) return false;
    const int64_t rows = spans ? j_end - j : 1;
    const char* a = in_v ? v + vrows->at(j) * esize : k + krows->at(j) * esize;
    const char* b = a + rows * (in_v ? vbytes : kbytes);
    cur = a - (reinterpret_cast<uintptr_t>(a) & 63);
    end = b + ((64 - (reinterpret_cast<uintptr_t>(b) & 63)) & 63);
    if (in_v) j += int(rows);
    in_v = !in_v;
    return true;
  }
  // The next n lines (fewer when the range runs out): first the common case, the current unit
  // holding all n, in a few instructions; the walk across units apart (issue_units). One loop for
  // both spent ~35 instructions a call besides the prefetches (the AVX2 several-row decode makes 14
  // calls per 16-key block: callgrind, bf16 GQA 32/8); split, the AVX-512 several-row fp32 decode
  // runs 1.06x from L3 (bench/results/cpu-2026-12-05-zen4.md), streamed unchanged.
  void issue(int64_t n) {
    if (n > 0 && n <= (end - cur) / 64) {
      prefetch_lines(cur, n, hint);
      cur += 64 * n;
      issued += n;
      return;
    }
    issue_units(n);
  }
  // issue() across units: the rest of the current one, then the next ones'.
  void issue_units(int64_t n) {
    while (n > 0) {
      if (cur == end && !next_unit()) return;
      const int64_t m = std::min(n, int64_t(end - cur) / 64);
      prefetch_lines(cur, m, hint);
      cur += 64 * m;
      n -= m;
      issued += m;
    }
  }
  void finish() { issue(INT64_MAX); }
};

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
