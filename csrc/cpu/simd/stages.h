// stages.h -- the stage entry points of one ISA's SIMD objects (in fal::cpu::<isa>, vec.h), which
// kernels.cpp assembles into that ISA's kernel table (isa.h). Work items and their threading
// contract as in cpu_kernels.h.
#pragma once
#include <cstdint>

#include "cpu/cpu_kernels.h"
#include "cpu/simd/vec.h"

namespace fal::cpu::FAL_CPU_NS {

// Forward of more than kDecodeMaxRows query rows (fwd.cpp): (batch, head, chunk of query rows).
// The runs return the kernel table's fwd_run flag (isa.h): whether an output row may hold a NaN value.
int64_t fwd_chunk_items(const FwdParams& p);
bool fwd_chunks_run(const FwdParams& p, int64_t begin, int64_t end);

#if defined(FAL_SIMD_AVX512) && defined(FAL_WITH_AMX)
// The bf16 forward of fwd_chunks_run on AMX tiles and the amx ISA's peak probe (fwd_amx.cpp); only
// where the CPU has AMX-BF16 and the OS granted the tile state (isa.cpp).
int64_t fwd_chunk_items_amx(const FwdParams& p);
bool fwd_chunks_run_amx(const FwdParams& p, int64_t begin, int64_t end);
// The decode of decode_run for bf16 K/V, its several-row blocks on AMX tiles (decode_amx.cpp).
bool decode_run_amx(const FwdParams& p, int64_t begin, int64_t end);
// The backward of bwd_items_run, bf16 on AMX tiles (bwd_amx.cpp).
void bwd_items_run_amx(const BwdParams& p, int64_t begin, int64_t end);
float peak_loop_amx(int kind, int64_t iters);
double peak_flops_per_iter_amx(int kind);
#endif
// the kernel table's probes (kernels.cpp)
float peak_loop(int kind, int64_t iters);
double peak_flops_per_iter(int kind);

// Decode, at most kDecodeMaxRows query rows (decode.cpp, decode_items.h): (batch, group of heads, split).
int64_t decode_items(const FwdParams& p);
bool decode_run(const FwdParams& p, int64_t begin, int64_t end);

// Backward (bwd.cpp): (batch, kv head).
int64_t bwd_items(const BwdParams& p);
void bwd_items_run(const BwdParams& p, int64_t begin, int64_t end);

}  // namespace fal::cpu::FAL_CPU_NS
