// Group-wise 4-bit / 8-bit quantization (FlexGen's scheme) and the GEMM over quantized weights.
//
// Scheme: the k elements of each output row are cut into groups of G consecutive elements (the
// last group of a row may be shorter). Per group: min and max; with L = 2^bits - 1
//   min_h  = min rounded DOWN to f16                          (so min_h <= every element)
//   step_h = (max - min_h) / L rounded to f16, then raised one f16 ulp at a time until
//            min_h + L * step_h >= max                        (so every element is covered)
//   q      = nearbyint((x - min_h) * (1 / step_h)) clamped to [0, L]      (all in f32)
//   x'     = q * step_h + min_h                               (one f32 rounding: q * step_h is exact)
// so |x - x'| <= step_h / 2 (+ f32 rounding). A group whose elements all equal one f16 value gets
// step 0 and reconstructs that value exactly (never a division by zero). step_h and min_h are
// stored as f16, so every element must be finite with |x| <= 65504 (pack / quantize reject others).
//
// Standalone layout (quantize / dequantize, any group size >= 1; e.g. a KV cache head):
//   codes, row-major: 8-bit: k bytes per row; 4-bit: ceil(k/2) bytes per row, element j in byte
//   j/2, low nibble for even j. params: [n][ceil(k/G)][2] uint16 f16 bits = (step, min).
//
// Packed GEMM layout ('q4' / 'q8', G fixed at kQGroup = 64, position-independent):
//   panels of 32 output rows (n padded with rows of zero codes, step 0, min 0); a panel is
//   ceil(k/64) group blocks, each (the last group's codes zero-padded to 64 k steps):
//     codes  q8: [16 quads][32 cols][4]  byte (kk/4*32 + c)*4 + kk%4       (2048 bytes)
//            q4: [8 octets][32 cols][4]  byte (kk/8*32 + c)*4 + kk%4, low nibble for kk%8 < 4,
//                                        high nibble for kk%8 >= 4         (1024 bytes)
//     step   32 × f16 (per column), then min 32 × f16                     (128 bytes)
//   i.e. 0.5625 bytes per weight for q4 and 1.0625 for q8. The 4-byte column runs are what
//   AVX512-VNNI vpdpbusd consumes directly.
//
// GEMM numerics:
//   fp32 mode: every weight is dequantized exactly as above (in registers, a panel slice at a
//     time into a small per-thread tile) and each output is one f32 FMA chain over k in order,
//     so batched == unbatched bit for bit and the result matches a float64 GEMM over the
//     dequantized weights to ~1e-6.
//   bf16 mode ("fast"): q4 from ISA level avx2 up, q8 at level avx512bf16 with AVX512_VNNI, each
//     x row is quantized to int8 per group of 64 (scale = max|x| / 127, round to nearest); the
//     group's dot products run as u8 × s8 -> int32
//     (AVX512_VNNI's vpdpbusd at level avx512bf16; AVX2's vpmaddubsw + vpmaddwd below it: the same
//     integers), and y += step * sx * dot + min * sx * sum(qx) per group in f32: exactly the
//     int8-rounded x times the dequantized weights, up to f32 rounding, the same bits at every
//     level. The int8 rounding of x costs ~5e-3 normalised error on random data (about what bf16
//     weights give). Otherwise bf16 mode computes as fp32 mode. Rows stay independent:
//     batched == unbatched bit for bit in both modes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/epilogue.h"

namespace tierlm {
namespace quant {

constexpr int kQGroup = 64;  // group size of the packed formats
constexpr int kNR = 32;      // panel width (as gemm::kNR)

inline int64_t groups(int64_t k, int64_t g) { return (k + g - 1) / g; }
inline int64_t code_bytes_per_group(int bits) { return static_cast<int64_t>(kNR) * kQGroup * bits / 8; }
inline int64_t group_block_bytes(int bits) { return code_bytes_per_group(bits) + kNR * 4; }
inline int64_t panel_bytes(int bits, int64_t k) { return groups(k, kQGroup) * group_block_bytes(bits); }
inline int64_t packed_bytes(int bits, int64_t n, int64_t k) { return (n + kNR - 1) / kNR * panel_bytes(bits, k); }

// Standalone code bytes per row and params entries (uint16) for n rows.
inline int64_t row_code_bytes(int bits, int64_t k) { return bits == 8 ? k : (k + 1) / 2; }
inline int64_t params_len(int64_t n, int64_t k, int64_t g) { return n * groups(k, g) * 2; }

// Returns the index of the first element that is not finite or exceeds the f16 range, or -1.
int64_t find_unrepresentable(const float* x, int64_t len);
// Index of the first finite element of x[0..len) that f16 rounds to infinity (|x| >= 65520; up to
// that it rounds to ±65504), or -1. Infinities and NaN are f16 values and pass.
int64_t find_f16_overflow(const float* x, int64_t len);

// Standalone quantize / dequantize (threaded over rows). Inputs must be representable (above).
void quantize(const float* src, int64_t n, int64_t k, int bits, int64_t group, uint8_t* codes, uint16_t* params);
void dequantize(const uint8_t* codes, const uint16_t* params, int64_t n, int64_t k, int bits, int64_t group, float* out);

// Packed GEMM format. src: n*k elements, src_fmt 0 = f32, 1 = f16 bits, 2 = bf16 bits.
// Returns -1, or the flat index of an unrepresentable source element (nothing useful written).
int64_t pack(const void* src, int src_fmt, int64_t n, int64_t k, int bits, uint8_t* dst);
void gather_rows(const uint8_t* w, int bits, int64_t n, int64_t k, const int32_t* ids, int64_t count, float* out);
// y[m,n] = x[m,k] · W'[n,k]ᵀ (+ bias), then `ep` on each finished part of y. fast: the bf16-mode
// VNNI path where available.
void matmul(const float* x, int64_t m, int64_t k, const uint8_t* w, int bits, int64_t n, const float* bias, float* y,
            bool fast, const Epilogue& ep = Epilogue());

// ---- per-ISA pieces -------------------------------------------------------------------------
// Dequantizes `ng` whole group blocks of one panel into tile[ng*64][32] floats.
using DequantFn = void (*)(const uint8_t* blocks, int bits, int ng, float* tile);
DequantFn dequant_avx512();
DequantFn dequant_avx2();

// VNNI tile: rows × 32 outputs over `ng` groups. xq: [ng*16][rows] int32 (4 int8 of x along k);
// sx, xsum: [ng][rows] (x scale, and sx * sum of the int8 x, per group); blocks: the panel's group blocks.
// flags as gemm::kFirst / gemm::kLast.
using VnniFn = void (*)(int rows, const int32_t* xq, const float* sx, const float* xsum, const uint8_t* blocks,
                        int bits, int ng, float* y, int64_t ldy, int ncols, int flags, const float* bias);
constexpr int kVnniRows = 6;
// Quantizes row i of a block of `rows` rows for the VNNI tile: x row xr[k] to int8 per group of 64
// (scale amax/127, round to nearest even, clamp to ±127) into dq[(g*16 + q)*rows + i] (4 int8 per
// int32), ds[g*rows + i] = amax/127 and dsum[g*rows + i] = sum(int8) * amax/127. Vectorised: the
// scalar loop called nearbyintf per element (no SSE4.1 in the generic build), 17 µs of a 290 µs
// batch-1 GEMV at k = 4096; the values are the same (nearbyint's default mode rounds to even).
using XQuantFn = void (*)(const float* xr, int64_t k, int rows, int i, int32_t* dq, float* ds, float* dsum);
XQuantFn xquant_avx512();
// The same tile (q4 only) and quantizer on AVX2 (vpmaddubsw + vpmaddwd for vpdpbusd; results equal
// the VNNI tile's bit for bit), up to kDot8Rows rows: the integer sums of a row take two registers
// per 8 columns, and sixteen registers hold four rows.
constexpr int kDot8Rows = 4;
VnniFn dot8_avx2();
XQuantFn xquant_avx2();

// fp32 path for m <= kSmallRows: rows x[rows][k] (row-major) times panels [p0, p1) over all of k,
// dequantizing in registers; the same per-output FMA chains as the tile path (bit-identical).
using SmallFn = void (*)(int rows, const float* x, int64_t k, const uint8_t* w, int bits, int64_t p0, int64_t p1,
                         int64_t n, const float* bias, float* y);
constexpr int kSmallRows = 2;
SmallFn small_avx512();
SmallFn small_avx2();
VnniFn vnni_avx512();

}  // namespace quant
}  // namespace tierlm
