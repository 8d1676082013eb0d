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

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The blocks' lines in order ord (line o < kLines / 2: K's line o, else V's), c FMAs per line; pf: a
// prefetcht1 of the next block pair's line ord[i] (same place) before loading line i.
__attribute__((noinline)) float walk(const char* k, const char* v, long nb, const int* ord, int c, bool pf) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  const __m256 w = _mm256_set1_ps(1.0001f);
  for (long b = 0; b < nb; ++b) {
    const char* kb = k + b * kBlockBytes;
    const char* vb = v + b * kBlockBytes;
    for (int i = 0; i < kLines; ++i) {
      const int o = ord[i];
      const char* a = o < kLines / 2 ? kb + 64 * o : vb + 64 * (o - kLines / 2);
      if (pf && b + 1 < nb) asm volatile("prefetcht1 %0" : : "m"(a[kBlockBytes]));
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

int main(int argc, char** argv) {
  const int c = argc > 1 ? std::atoi(argv[1]) : 2;
  const long bytes = 128L << 20, nb = bytes / kBlockBytes;
  char* k = static_cast<char*>(std::aligned_alloc(4096, bytes + kBlockBytes));
  char* v = static_cast<char*>(std::aligned_alloc(4096, bytes + kBlockBytes));
  std::memset(k, 1, bytes + kBlockBytes);
  std::memset(v, 1, bytes + kBlockBytes);
  std::vector<int> seq, dec;
  for (int i = 0; i < kLines; ++i) seq.push_back(i);
  const int kl = kKeyBytes / 64;   // lines per key
  for (int g = 0; g < 16; g += 4)  // S: groups of 4 keys, lines interleaved
    for (int x = 0; x < kl; ++x)
      for (int j = 0; j < 4; ++j) dec.push_back((g + j) * kl + x);
  for (int x = 0; x < kl; x += 2)  // P V: 2 lines of O across the 16 keys
    for (int j = 0; j < 16; ++j)
      for (int e = 0; e < 2; ++e) dec.push_back(kLines / 2 + j * kl + x + e);
  const char* names[4] = {"sequential, no prefetch", "sequential, prefetcht1", "decode order, no prefetch",
                          "decode order, prefetcht1"};
  std::vector<double> gbs[4];
  float z = 0;
  for (int round = 0; round < 9; ++round)
    for (int m = 0; m < 4; ++m) {
      const double t0 = now();
      z += walk(k, v, nb, (m < 2 ? seq : dec).data(), c, m % 2 == 1);
      gbs[m].push_back(2.0 * bytes / 1e9 / (now() - t0));
    }
  std::printf("1 thread, K and V %ld MB each, %d FMAs a line, median of 9 rounds:\n", bytes >> 20, c + 1);
  for (int m = 0; m < 4; ++m) {
    std::sort(gbs[m].begin(), gbs[m].end());
    std::printf("  %-28s %5.1f GB/s (%.1f-%.1f)\n", names[m], gbs[m][4], gbs[m][0], gbs[m][8]);
  }
  if (z == 1.f) std::puts("");
  std::free(k);
  std::free(v);
  return 0;
}
