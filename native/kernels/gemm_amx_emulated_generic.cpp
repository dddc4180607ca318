// The AMX-BF16 GEMM kernel with each tile instruction emulated in scalar code as the architecture
// defines it (Bf16Kernel::AmxEmulated): the same tile code as kernel_amx (gemm_amx_impl.h), so
// tests check its blocking, addressing and edges on CPUs without AMX. Far too slow for real work.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"

namespace tierlm {
namespace gemm {
namespace {

struct Tile {
  alignas(64) uint8_t row[16][64];
};
thread_local Tile t_tiles[8];  // tmm0-tmm7, as the configuration in gemm_amx_impl.h shapes them

void emu_load(int t, const void* p, int64_t stride) {
  for (int r = 0; r < 16; r++) std::memcpy(t_tiles[t].row[r], static_cast<const uint8_t*>(p) + r * stride, 64);
}

void emu_store(int t, void* p, int64_t stride) {
  for (int r = 0; r < 16; r++) std::memcpy(static_cast<uint8_t*>(p) + r * stride, t_tiles[t].row[r], 64);
}

// tdpbf16ps takes bf16 denormals as zero, rounds each step to nearest even and flushes a denormal
// result to zero (it ignores MXCSR).
float bf16_daz(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float ftz(float f) { return std::fpclassify(f) == FP_SUBNORMAL ? std::copysign(0.0f, f) : f; }

// C[m][n] += A[m].bf16[2k] * B[k].bf16[2n], then += A[m].bf16[2k+1] * B[k].bf16[2n+1], for k in
// order (the SDM's pseudo-code for TDPBF16PS).
void emu_dp(int c, int a, int b) {
  for (int m = 0; m < 16; m++) {
    float acc[16];
    std::memcpy(acc, t_tiles[c].row[m], 64);
    uint16_t av[32];
    std::memcpy(av, t_tiles[a].row[m], 64);
    for (int k = 0; k < 16; k++) {
      uint16_t bv[32];
      std::memcpy(bv, t_tiles[b].row[k], 64);
      for (int n = 0; n < 16; n++) {
        acc[n] = ftz(std::fma(bf16_daz(av[2 * k]), bf16_daz(bv[2 * n]), acc[n]));
        acc[n] = ftz(std::fma(bf16_daz(av[2 * k + 1]), bf16_daz(bv[2 * n + 1]), acc[n]));
      }
    }
    std::memcpy(t_tiles[c].row[m], acc, 64);
  }
}

}  // namespace
}  // namespace gemm
}  // namespace tierlm

#define AMX_ZERO(t) std::memset(t_tiles[t].row, 0, sizeof t_tiles[t].row)
#define AMX_LOAD(t, p, s) emu_load(t, p, s)
#define AMX_STORE(t, p, s) emu_store(t, p, s)
#define AMX_DP(c, a, b) emu_dp(c, a, b)
#define AMX_FENCE() ((void)0)

#include "kernels/gemm_amx_impl.h"

namespace tierlm {
namespace gemm {
void kernel_amx_emulated(Kernel* out) {
  amx::describe(out);
}

}  // namespace gemm
}  // namespace tierlm
