// ggml_attn.cpp -- times ggml's CPU flash attention (ggml_flash_attn_ext, llama.cpp's attention)
// for bench/ggml_bench.py, which compiles it against a ggml the user built (GGML_DIR). The project
// never vendors, downloads or builds ggml.
//
//   ggml_attn DIR THREADS REPEATS S_Q S_K H H_KV D KV_TYPE LAYOUT CAUSAL
//     KV_TYPE f32 | f16;  LAYOUT hm (head-major K/V, [H_KV][S_K][D]) | tm (token-major, [S_K][H_KV][D],
//     llama.cpp's cache); CAUSAL 0 | 1 (bottom-right, through an f16 -inf mask as llama.cpp does)
//   reads DIR/q.bin (f32 [H][S_Q][D]), DIR/k.bin, DIR/v.bin (KV_TYPE, LAYOUT);
//   writes DIR/out.bin (f32 [S_Q][H][D]); prints the median seconds of REPEATS graph computes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"

namespace {

void read_into(const std::string& path, void* dst, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(dst, 1, bytes, f) != bytes) {
    std::fprintf(stderr, "ggml_attn: cannot read %zu bytes from %s\n", bytes, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr, "usage: ggml_attn DIR THREADS REPEATS S_Q S_K H H_KV D f32|f16 hm|tm 0|1\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int threads = std::atoi(argv[2]), repeats = std::atoi(argv[3]);
  const int64_t s_q = std::atoll(argv[4]), s_k = std::atoll(argv[5]), h = std::atoll(argv[6]),
                h_kv = std::atoll(argv[7]), d = std::atoll(argv[8]);
  const bool f16 = std::strcmp(argv[9], "f16") == 0, token_major = std::strcmp(argv[10], "tm") == 0;
  const bool causal = std::atoi(argv[11]) != 0;
  const ggml_type kv_type = f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
  const size_t kv_bytes = size_t(s_k) * h_kv * d * (f16 ? 2 : 4);

  ggml_cpu_init();
  ggml_init_params ip{};
  ip.mem_size = size_t(s_q) * h * d * 4 * 2 + 2 * kv_bytes + size_t(s_k) * s_q * 2 + 64 * 1024 * 1024;
  ip.no_alloc = false;
  ggml_context* ctx = ggml_init(ip);

  ggml_tensor* q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, d, s_q, h);  // memory [h][s_q][d]
  ggml_tensor *k, *v;
  if (token_major) {  // memory [s_k][h_kv][d]: a permuted view, as llama.cpp reads its cache
    ggml_tensor* kt = ggml_new_tensor_3d(ctx, kv_type, d, h_kv, s_k);
    ggml_tensor* vt = ggml_new_tensor_3d(ctx, kv_type, d, h_kv, s_k);
    read_into(dir + "/k.bin", kt->data, kv_bytes);
    read_into(dir + "/v.bin", vt->data, kv_bytes);
    k = ggml_permute(ctx, kt, 0, 2, 1, 3);
    v = ggml_permute(ctx, vt, 0, 2, 1, 3);
  } else {
    k = ggml_new_tensor_3d(ctx, kv_type, d, s_k, h_kv);
    v = ggml_new_tensor_3d(ctx, kv_type, d, s_k, h_kv);
    read_into(dir + "/k.bin", k->data, kv_bytes);
    read_into(dir + "/v.bin", v->data, kv_bytes);
  }
  read_into(dir + "/q.bin", q->data, size_t(s_q) * h * d * 4);
  ggml_tensor* mask = nullptr;
  if (causal) {  // row i sees keys j <= i + s_k - s_q
    mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, s_k, s_q);
    ggml_fp16_t* m = static_cast<ggml_fp16_t*>(mask->data);
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.f), ninf = ggml_fp32_to_fp16(-INFINITY);
    for (int64_t i = 0; i < s_q; ++i)
      for (int64_t j = 0; j < s_k; ++j) m[i * s_k + j] = j <= i + s_k - s_q ? zero : ninf;
  }
  ggml_tensor* out = ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f / std::sqrt(float(d)), 0.0f, 0.0f);
  ggml_cgraph* gf = ggml_new_graph(ctx);
  ggml_build_forward_expand(gf, out);

  std::vector<double> secs;
  ggml_graph_compute_with_ctx(ctx, gf, threads);  // warm-up
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    ggml_graph_compute_with_ctx(ctx, gf, threads);
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  FILE* f = std::fopen((dir + "/out.bin").c_str(), "wb");
  std::fwrite(out->data, 1, size_t(s_q) * h * d * 4, f);  // [s_q][h][d] (ggml's permuted result)
  std::fclose(f);
  std::printf("%.9f\n", secs[secs.size() / 2]);
  ggml_free(ctx);
  return 0;
}
