// amx_tiles.h -- what the AMX kernels share (fwd_amx.cpp's forward, bwd_amx.cpp's backward,
// decode_amx.cpp's decode): the tile geometry, the layout of a tile configuration and the tile
// product sequences (plain, and of split_bf16.h's hi + lo operands). Only in sources compiled with -mamx-tile
// -mamx-bf16 (CMakeLists.txt), called only where the CPU has AMX-BF16 and the OS granted this
// process the tile state (isa.cpp). The configuration is a constant: GCC 12 does not see ldtilecfg
// read its operand and dropped the stores that filled a local one (the tiles then stayed
// unconfigured: SIGILL at the first tile op). Likewise its tileloadd is an asm statement without a
// memory operand: what vector code stored for a tile load to read must be fenced for the compiler
// first (tiles_fence). Tile numbers are literals: GCC's tile intrinsics are macros that paste the
// number into the instruction text (a template parameter fails in the assembler).
#pragma once
#include <cstdint>

#include "cpu/simd/vec.h"  // first: it includes <immintrin.h> past GCC 12's false uninitialized warnings

#if !defined(FAL_SIMD_AVX512)
#error "amx_tiles.h belongs to the AVX-512 objects"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

constexpr int kTileRows = 16;   // rows of a full tile
constexpr int kTilePairs = 16;  // 64-byte tile rows: 16 fp32, or 16 bf16 pairs
static_assert(kN == kTilePairs, "a tile row is one zmm");

// ldtilecfg's 64-byte operand: palette 1, then per tile its bytes per row and its rows.
struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Tiles 0-7 all 16 rows x 64 bytes; the kernels use 0-3 as C (accumulators), 4-5 as A, 6-7 as B.
constexpr TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

// C tiles 0-3 += A tile `A` times the 4 B tiles of 16 columns at b, b + 16, b + 32, b + 48 (rows
// `stride` bytes apart), loaded alternately into tiles 6 and 7 (a load overlaps the previous
// product). A macro: tile numbers are literals (above).
#define FAL_AMX_DP_C4(A, b, stride)     \
  do {                                  \
    _tile_loadd(6, (b), (stride));      \
    _tile_dpbf16ps(0, A, 6);            \
    _tile_loadd(7, (b) + 16, (stride)); \
    _tile_dpbf16ps(1, A, 7);            \
    _tile_loadd(6, (b) + 32, (stride)); \
    _tile_dpbf16ps(2, A, 6);            \
    _tile_loadd(7, (b) + 48, (stride)); \
    _tile_dpbf16ps(3, A, 7);            \
  } while (0)
// C tiles 0-3 += the 2 x 2 products of A tiles 4, 5 (rows at a0, a1; `lda` bytes apart) and B tiles
// 6, 7 (at b0, b1; `ldb` bytes apart): C0 = A4 B6, C1 = A4 B7, C2 = A5 B6, C3 = A5 B7 -- each load
// feeds two products, and a tile register is reloaded only after its two readers (AMX tiles are not
// renamed: a load waits for the products reading the register it replaces).
#define FAL_AMX_DP_2X2(a0, a1, lda, b0, b1, ldb) \
  do {                                           \
    _tile_loadd(4, (a0), (lda));                 \
    _tile_loadd(6, (b0), (ldb));                 \
    _tile_dpbf16ps(0, 4, 6);                     \
    _tile_loadd(7, (b1), (ldb));                 \
    _tile_dpbf16ps(1, 4, 7);                     \
    _tile_loadd(5, (a1), (lda));                 \
    _tile_dpbf16ps(2, 5, 6);                     \
    _tile_dpbf16ps(3, 5, 7);                     \
  } while (0)
// C tiles 0-3 += AH BH + AL BH + AH BL: A tiles AH (hi), AL (lo) against the 4 B column blocks of
// 16 at bh (hi) and bl (lo), rows `stride` bytes apart. Two C tiles at a time, so each C's three
// products alternate with the other's; each B tile load feeds two products or one (tiles are not
// renamed: a load waits for the products reading the register it replaces).
#define FAL_AMX_DP_SPLIT2(c0, c1, AH, AL, bh, bl, stride) \
  do {                                                    \
    _tile_loadd(6, (bh) + 16 * (c0), (stride));           \
    _tile_dpbf16ps(c0, AH, 6);                            \
    _tile_loadd(7, (bh) + 16 * (c1), (stride));           \
    _tile_dpbf16ps(c1, AH, 7);                            \
    _tile_dpbf16ps(c0, AL, 6);                            \
    _tile_dpbf16ps(c1, AL, 7);                            \
    _tile_loadd(6, (bl) + 16 * (c0), (stride));           \
    _tile_dpbf16ps(c0, AH, 6);                            \
    _tile_loadd(7, (bl) + 16 * (c1), (stride));           \
    _tile_dpbf16ps(c1, AH, 7);                            \
  } while (0)
#define FAL_AMX_DP_C4_SPLIT(AH, AL, bh, bl, stride)  \
  do {                                               \
    FAL_AMX_DP_SPLIT2(0, 1, AH, AL, bh, bl, stride); \
    FAL_AMX_DP_SPLIT2(2, 3, AH, AL, bh, bl, stride); \
  } while (0)
// Three parts (split_bf16.h: hi + mid + lo): C tiles 0 / 1 += AH (BH + BM), C2 / C3 += AL BH + AM
// BH + AM BM + AH BL -- the large and the small products apart (fwd_amx.cpp tiles_qk3, pv3) -- for
// the 2 B column blocks of 16 at bh / bm / bl (rows `ldb` bytes apart); the A parts at ah / am / al
// (rows `lda` bytes apart). A tiles 4 (hi), 5 (lo, then mid: one reload), B tiles 6 / 7.
#define FAL_AMX_DP_SPLIT3(ah, am, al, lda, bh, bm, bl, ldb) \
  do {                                                      \
    _tile_loadd(4, (ah), (lda));                            \
    _tile_loadd(5, (al), (lda));                            \
    _tile_loadd(6, (bh), (ldb));                            \
    _tile_loadd(7, (bh) + 16, (ldb));                       \
    _tile_dpbf16ps(0, 4, 6); /* hi hi */                    \
    _tile_dpbf16ps(1, 4, 7);                                \
    _tile_dpbf16ps(2, 5, 6); /* lo hi */                    \
    _tile_dpbf16ps(3, 5, 7);                                \
    _tile_loadd(5, (am), (lda));                            \
    _tile_dpbf16ps(2, 5, 6); /* mid hi */                   \
    _tile_dpbf16ps(3, 5, 7);                                \
    _tile_loadd(6, (bm), (ldb));                            \
    _tile_loadd(7, (bm) + 16, (ldb));                       \
    _tile_dpbf16ps(0, 4, 6); /* hi mid */                   \
    _tile_dpbf16ps(1, 4, 7);                                \
    _tile_dpbf16ps(2, 5, 6); /* mid mid */                  \
    _tile_dpbf16ps(3, 5, 7);                                \
    _tile_loadd(6, (bl), (ldb));                            \
    _tile_loadd(7, (bl) + 16, (ldb));                       \
    _tile_dpbf16ps(2, 4, 6); /* hi lo */                    \
    _tile_dpbf16ps(3, 4, 7);                                \
  } while (0)
// FAL_AMX_DP_2X2 of split operands (split_bf16.h: hi + lo parts): C += AH BH + AL BH + AH BL, with the
// A tiles' lo parts at a0l, a1l and the B tiles' at b0l, b1l; the lo A tiles meet the hi B tiles still loaded.
#define FAL_AMX_DP_2X2_SPLIT(a0, a1, a0l, a1l, lda, b0, b1, b0l, b1l, ldb) \
  do {                                                                     \
    FAL_AMX_DP_2X2(a0, a1, lda, b0, b1, ldb);                              \
    _tile_loadd(4, (a0l), (lda));                                          \
    _tile_dpbf16ps(0, 4, 6);                                               \
    _tile_dpbf16ps(1, 4, 7);                                               \
    _tile_loadd(5, (a1l), (lda));                                          \
    _tile_dpbf16ps(2, 5, 6);                                               \
    _tile_dpbf16ps(3, 5, 7);                                               \
    FAL_AMX_DP_2X2(a0, a1, lda, b0l, b1l, ldb);                            \
  } while (0)
// C tiles 0-3 as the 32 x 32 fp32 block at c (rows `stride` bytes apart; C0 top left, C1 top
// right, C2 bottom left, C3 bottom right: FAL_AMX_DP_2X2's layout), and back.
__attribute__((always_inline)) inline void store_c2x2(float* c, int stride) {
  float* c1 = c + 16 * (stride / 4);
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
  _tile_stored(2, c1, stride);
  _tile_stored(3, c1 + 16, stride);
}
__attribute__((always_inline)) inline void load_c2x2(const float* c, int stride) {
  const float* c1 = c + 16 * (stride / 4);
  _tile_loadd(0, c, stride);
  _tile_loadd(1, c + 16, stride);
  _tile_loadd(2, c1, stride);
  _tile_loadd(3, c1 + 16, stride);
}
// C tiles 0-3 to 4 blocks of 16 fp32 columns at c (rows `stride` bytes apart), and back.
__attribute__((always_inline)) inline void store_c4(float* c, int stride) {
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
  _tile_stored(2, c + 32, stride);
  _tile_stored(3, c + 48, stride);
}
__attribute__((always_inline)) inline void load_c4(const float* c, int stride) {
  _tile_loadd(0, c, stride);
  _tile_loadd(1, c + 16, stride);
  _tile_loadd(2, c + 32, stride);
  _tile_loadd(3, c + 48, stride);
}

__attribute__((always_inline)) inline void zero_c4() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// A compiler barrier before tile loads of memory that vector code just wrote (tileloadd reads
// memory the compiler does not know of; tilestored has a memory clobber). No instruction.
__attribute__((always_inline)) inline void tiles_fence() { asm volatile("" ::: "memory"); }

// The tiles configured (kTileConfig) for a scope, released at its end -- then the tile state no
// longer needs saving at a context switch. Per thread: each work range opens its own.
struct TileScope {
  TileScope() { _tile_loadconfig(&kTileConfig); }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
