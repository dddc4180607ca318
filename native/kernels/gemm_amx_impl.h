// The AMX-BF16 GEMM tile (kernels/gemm.h, kernel_amx), written once over five tile operations
// that the including file defines as macros taking literal tile numbers (GCC's AMX intrinsics are
// inline assembly that pastes the number into the instruction):
//   AMX_ZERO(t)            tilezero tmm<t>
//   AMX_LOAD(t, p, s)      tileloadd tmm<t> from p, rows s bytes apart
//   AMX_STORE(t, p, s)     tilestored tmm<t> to p, rows s bytes apart
//   AMX_DP(c, a, b)        tdpbf16ps tmm<c> += tmm<a> · tmm<b>
//   AMX_FENCE()            makes plain stores visible to the next AMX_LOAD (a compiler barrier for
//                          the real instructions, whose assembly names no memory operand)
// gemm_amx_avx512.cpp maps them to the instructions, gemm_amx_emulated_generic.cpp to scalar code.
//
// Every tile is configured as 16 rows of 64 bytes (tile_config): C 16 × 16 floats, A 16 rows × 32
// bf16 of x, B 16 k pairs × 16 columns × 2 bf16 of W. A bf16 weight panel ([k/2][32][2], gemm.h)
// already is two B tiles side by side: columns 0-15 at the panel, 16-31 64 bytes on, 128 bytes a
// k pair. Tiles: C00 0, C01 1, C10 2, C11 3 (rows 16-31), A0 4, A1 5, B0 6, B1 7.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"

namespace tierlm {
namespace gemm {
namespace amx {
// Internal to each file that includes this: the two define the tile operations differently, and
// one inline function of two bodies would be one symbol to the linker.
namespace {

constexpr int kTileRows = 16;
constexpr int kChunk = 32;  // k steps a tdpbf16ps takes (16 pairs)

// The 64-byte tile configuration (palette 1): every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TileConfig tile_config() {
  TileConfig c;
  for (int t = 0; t < 8; t++) {
    c.colsb[t] = 64;
    c.rows[t] = kTileRows;
  }
  return c;
}

// rows (≤ 32) × ncols (≤ 32) outputs from xp (row-major bf16, kc a row, kc even: a row block of
// XPack::Bf16Rows, readable for 16 rows past each of its 16-row halves' starts) and a bf16 panel
// wp, over all kc steps. y (+)= as the other kernels do: from zero when flags & kFirst, else onto
// y; the bias is added where flags & kLast.
// (a KernelFn: xp is the block's packed x)
void tile(int rows, const void* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
          const float* bias) {
  const bool two = rows > kTileRows;
  const int64_t xs = static_cast<int64_t>(kc) * 2;  // bytes between rows of x
  const uint8_t* x0 = static_cast<const uint8_t*>(xp);
  const uint8_t* x1 = x0 + kTileRows * xs;
  AMX_ZERO(0);
  AMX_ZERO(1);
  if (two) {
    AMX_ZERO(2);
    AMX_ZERO(3);
  }
  const int full = kc / kChunk * kChunk;
  for (int kk = 0; kk < full; kk += kChunk) {
    const uint8_t* b = wp + (kk / 2) * 2 * kNR * 2;  // k pair kk/2: 128 bytes a pair
    AMX_LOAD(6, b, 128);
    AMX_LOAD(7, b + 64, 128);
    AMX_LOAD(4, x0 + kk * 2, xs);
    AMX_DP(0, 4, 6);
    AMX_DP(1, 4, 7);
    if (two) {
      AMX_LOAD(5, x1 + kk * 2, xs);
      AMX_DP(2, 5, 6);
      AMX_DP(3, 5, 7);
    }
  }
  if (full < kc) {
    // The last k steps, fewer than a chunk: copied into zeroed tiles, so that the steps past kc
    // multiply zeros by zeros (reading on would meet the next row of x and the next panel).
    alignas(64) uint8_t a[2 * kTileRows][64];
    alignas(64) uint8_t b[kTileRows][128];
    std::memset(a, 0, sizeof a);
    std::memset(b, 0, sizeof b);
    const int bytes = (kc - full) * 2;
    for (int i = 0; i < (two ? 2 * kTileRows : kTileRows) && i < rows; i++) std::memcpy(a[i], x0 + i * xs + full * 2, bytes);
    const uint8_t* wt = wp + (full / 2) * 2 * kNR * 2;
    for (int p = 0; p < (kc - full) / 2; p++) std::memcpy(b[p], wt + p * 128, 128);
    AMX_FENCE();
    AMX_LOAD(6, b[0], 128);
    AMX_LOAD(7, b[0] + 64, 128);
    AMX_LOAD(4, a[0], 64);
    AMX_DP(0, 4, 6);
    AMX_DP(1, 4, 7);
    if (two) {
      AMX_LOAD(5, a[kTileRows], 64);
      AMX_DP(2, 5, 6);
      AMX_DP(3, 5, 7);
    }
  }
  alignas(64) float c[2 * kTileRows][kNR];
  AMX_STORE(0, &c[0][0], kNR * 4);
  AMX_STORE(1, &c[0][16], kNR * 4);
  if (two) {
    AMX_STORE(2, &c[kTileRows][0], kNR * 4);
    AMX_STORE(3, &c[kTileRows][16], kNR * 4);
  }
  AMX_FENCE();
  const bool add_bias = (flags & kLast) && bias;
  for (int i = 0; i < rows; i++) {
    float* yr = y + i * ldy;
    for (int j = 0; j < ncols; j++) {
      float v = flags & kFirst ? c[i][j] : yr[j] + c[i][j];
      yr[j] = add_bias ? v + bias[j] : v;
    }
  }
}

// The Kernel for tile(): rows up to 32 a block, the whole of k in one block (the accumulators
// stay in the tiles), x packed as rows of bf16.
void describe(Kernel* out) {
  out->fn = tile;
  out->max_rows = kAmxRows;
  out->one_pass_rows = 0;
  out->kc = 0x7ffffffe;
  out->xpack = XPack::Bf16Rows;
}

}  // namespace
}  // namespace amx
}  // namespace gemm
}  // namespace tierlm
