// micro_load_order.cpp -- how fast one thread streams K and V from memory depending on the order of
// its loads, with and without software prefetch: the question behind the decode's prefetch (prefetch.h,
// KeyLines). Blocks of 16 keys of 512 bytes (fp32 D128) of K, then of V, each line loaded once, with 1 + c
// fp32 FMAs per line standing in for the products; in order
//   sequential   every line of the K block, then of the V block, ascending (a head's K / V span read
//                once through, as the read probe does),
//   decode       S = Q K^T's order (groups of 4 keys, each key's lines interleaved with the group's
//                others: decode_qk_rows_grouped) and P V's (blocks of 2 lines of O across the 16 keys),
// each with no software prefetch and with prefetcht1 of every line of the next block pair, one per line
// loaded. Rounds alternate, medians. On a Zen 4 VM (2026-12-05; bench/results/cpu-2026-12-05b-zen4.md),
// c = 2: sequential 24.2 GB/s without prefetch, 20.6 with; decode order 7.2 without (the hardware
// prefetcher follows ascending lines only), 14.9 with; c = 0: 22.5 / 20.8 / 8.3 / 17.9. The read
// probe (kernels.cpp read_sum) gets 25-30 GB/s a thread there.
// Then a token-major chunk (decode_items.h: 32 tokens of 8 kv heads' 256-byte bf16 rows, K then V), in
//   head by head  the decode's chunk walk (each head's rows, 2 KB apart, two keys' lines interleaved
//                 as a vdpbf16ps pass pairs them), with and without prefetcht1 of the next chunk,
//   memory order  token by token (every line ascending),
//   token pairs   token t's and t + 1's rows interleaved line by line (a key pair for vdpbf16ps),
//   half rows     1 KB of token t, 1 KB of t + 1, the next 1 KB of t, ...
// Zen 4 (2026-12-05, bench/results/cpu-2026-12-05c-zen4.md; 3 runs at c = 2, 2 at c = 0), c = 2: head by head 16.8-20.3
// GB/s with prefetch, 4.5-4.8 without; memory order 20.4-24.8 without; token pairs 7.8-8.5, half rows
// 7.2-8.0; c = 0: 19.0-24.8 / 5.6-6.4 / 19.2-22.6 / 8.6-9.4 / 7.3-7.9. The hardware prefetcher streams
// only an unbroken ascending run, which the register-blocked products (a head's O in registers, keys
// in pairs) do not issue; the software prefetch nears that run's rate when the work between loads
// is light.
//
// Build and run (from the repository root; not part of the package):
//   g++ -O3 -std=gnu++17 -mavx2 -mfma bench/micro_load_order.cpp -o /tmp/micro_load_order &&
//     /tmp/micro_load_order [c]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {
constexpr long kKeyBytes = 512, kBlockBytes = 16 * kKeyBytes, kLines = 2 * kBlockBytes / 64;  // K + V lines
constexpr long kHeads = 8, kRowBytes = 256, kTokBytes = kHeads * kRowBytes, kChunkBytes = 32 * kTokBytes;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The blocks' (blk bytes of K, then of V) lines in order ord (line o < blk / 64: K's line o, else V's), c
// FMAs per line; pf: a prefetcht1 of the next block pair's line ord[i] (same place) before loading line i.
__attribute__((noinline)) float walk(const char* k, const char* v, long nb, long blk, const int* ord, int c, bool pf) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  const __m256 w = _mm256_set1_ps(1.0001f);
  for (long b = 0; b < nb; ++b) {
    const char* kb = k + b * blk;
    const char* vb = v + b * blk;
    const long n = 2 * blk / 64;
    for (long i = 0; i < n; ++i) {
      const int o = ord[i];
      const char* a = o < n / 2 ? kb + 64 * o : vb + 64 * (o - n / 2);
      if (pf && b + 1 < nb) asm volatile("prefetcht1 %0" : : "m"(a[blk]));
      const __m256 x = _mm256_add_ps(_mm256_load_ps(reinterpret_cast<const float*>(a)),
                                     _mm256_load_ps(reinterpret_cast<const float*>(a + 32)));
      acc[i & 7] = _mm256_fmadd_ps(x, w, acc[i & 7]);
      for (int r = 0; r < c; ++r) acc[(i + r + 1) & 7] = _mm256_fmadd_ps(acc[(i + r + 1) & 7], w, x);
    }
  }
  __m256 s = acc[0];
  for (int i = 1; i < 8; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  return t[0] + t[7];
}
}  // namespace

// Rounds alternating the orders (name, block bytes, order, prefetch), medians printed.
struct Order {
  const char* name;
  long blk;
  std::vector<int> ord;
  bool pf;
};

void run(const char* k, const char* v, long bytes, int c, const std::vector<Order>& orders, const char* title) {
  std::vector<std::vector<double>> gbs(orders.size());
  float z = 0;
  for (int round = 0; round < 9; ++round)
    for (size_t m = 0; m < orders.size(); ++m) {
      const Order& o = orders[m];
      const double t0 = now();
      z += walk(k, v, bytes / o.blk, o.blk, o.ord.data(), c, o.pf);
      gbs[m].push_back(2.0 * bytes / 1e9 / (now() - t0));
    }
  std::printf("%s; 1 thread, K and V %ld MB each, %d FMAs a line, median of 9 rounds:\n", title, bytes >> 20, c + 1);
  for (size_t m = 0; m < orders.size(); ++m) {
    std::sort(gbs[m].begin(), gbs[m].end());
    std::printf("  %-34s %5.1f GB/s (%.1f-%.1f)\n", orders[m].name, gbs[m][4], gbs[m][0], gbs[m][8]);
  }
  if (z == 1.f) std::puts("");
}

int main(int argc, char** argv) {
  const int c = argc > 1 ? std::atoi(argv[1]) : 2;
  const long bytes = 128L << 20;
  char* k = static_cast<char*>(std::aligned_alloc(4096, bytes + kChunkBytes));
  char* v = static_cast<char*>(std::aligned_alloc(4096, bytes + kChunkBytes));
  std::memset(k, 1, bytes + kChunkBytes);
  std::memset(v, 1, bytes + kChunkBytes);
  std::vector<int> seq, dec;
  for (int i = 0; i < kLines; ++i) seq.push_back(i);
  const int kl = kKeyBytes / 64;   // lines per key
  for (int g = 0; g < 16; g += 4)  // S: groups of 4 keys, lines interleaved
    for (int x = 0; x < kl; ++x)
      for (int j = 0; j < 4; ++j) dec.push_back((g + j) * kl + x);
  for (int x = 0; x < kl; x += 2)  // P V: 2 lines of O across the 16 keys
    for (int j = 0; j < 16; ++j)
      for (int e = 0; e < 2; ++e) dec.push_back(kLines / 2 + j * kl + x + e);
  run(k, v, bytes, c,
      {{"sequential, no prefetch", kBlockBytes, seq, false},
       {"sequential, prefetcht1", kBlockBytes, seq, true},
       {"decode order, no prefetch", kBlockBytes, dec, false},
       {"decode order, prefetcht1", kBlockBytes, dec, true}},
      "head-major blocks of 16 fp32 D128 keys");
  // the token-major chunk: line (t, h, x) of K at (t kTokBytes + h kRowBytes) / 64 + x, V's after K's
  const int tl = kTokBytes / 64, rl = kRowBytes / 64, tokens = kChunkBytes / kTokBytes, vl = kChunkBytes / 64;
  std::vector<int> heads, mem, pairs, halves;
  for (int side = 0; side < 2; ++side) {
    for (int h = 0; h < kHeads; ++h)
      for (int t = 0; t < tokens; t += 2)
        for (int x = 0; x < rl; ++x)
          for (int e = 0; e < 2; ++e) heads.push_back(side * vl + (t + e) * tl + h * rl + x);
    for (int i = 0; i < vl; ++i) mem.push_back(side * vl + i);
    for (int t = 0; t < tokens; t += 2)
      for (int x = 0; x < tl; ++x)
        for (int e = 0; e < 2; ++e) pairs.push_back(side * vl + (t + e) * tl + x);
    for (int t = 0; t < tokens; t += 2)
      for (int half = 0; half < 2; ++half)
        for (int e = 0; e < 2; ++e)
          for (int x = 0; x < tl / 2; ++x) halves.push_back(side * vl + (t + e) * tl + half * (tl / 2) + x);
  }
  run(k, v, bytes, c,
      {{"head by head, prefetcht1", kChunkBytes, heads, true},
       {"head by head, no prefetch", kChunkBytes, heads, false},
       {"memory order, no prefetch", kChunkBytes, mem, false},
       {"token pairs, no prefetch", kChunkBytes, pairs, false},
       {"half rows, no prefetch", kChunkBytes, halves, false}},
      "token-major chunks of 32 tokens x 8 heads x 256 bytes");
  std::free(k);
  std::free(v);
  return 0;
}
