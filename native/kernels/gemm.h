// GEMM kernels: y[m,n] = x[m,k] · W[n,k]ᵀ (+ bias[n]) with W pre-packed.
//
// Packed layout (the same for every instruction set, position-independent):
//   W is cut into panels of kNR = 32 output rows (n padded with zero rows to a multiple of 32).
//   Panel p holds rows 32p..32p+31 with k outermost:
//     f32 / f16: [k][32] elements                           (panel bytes: k * 32 * es)
//     bf16:      [kp/2][32][2] (pairs along k, kp = k rounded up to even, zero padded)
//   so element (row r, col kk) of panel p sits at index kk*32 + (r%32) for f32/f16 and at
//   (kk/2)*64 + (r%32)*2 + (kk&1) for bf16; the byte offset of k-step k0 (even for bf16) inside
//   a panel is k0 * 32 * es in both cases.
//
// Numerics: every output element is one FMA chain over k in increasing order (kc blocks are
// stored to y and reloaded, which is exact), the bias is added last; so a row's result does not
// depend on m or on how rows are blocked (batched == unbatched, bit for bit).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/epilogue.h"

namespace tierlm {
namespace gemm {

// Q4 / Q8: group-wise quantized weights (kernels/quant.h has their layout and numerics).
enum class Fmt : int { F32 = 0, F16 = 1, Bf16 = 2, Q4 = 3, Q8 = 4 };
enum class Mode : int { Fp32 = 0, Bf16 = 1 };

constexpr int kNR = 32;

inline bool is_quant(Fmt f) { return f == Fmt::Q4 || f == Fmt::Q8; }
inline int quant_bits(Fmt f) { return f == Fmt::Q4 ? 4 : 8; }
inline int elem_bytes(Fmt f) { return f == Fmt::F32 ? 4 : 2; }  // float formats only
// k as stored in a panel (bf16 pads to even).
inline int64_t stored_k(Fmt f, int64_t k) { return f == Fmt::Bf16 ? (k + 1) & ~int64_t(1) : k; }
inline int64_t panels(int64_t n) { return (n + kNR - 1) / kNR; }
inline int64_t panel_bytes(Fmt f, int64_t k) {
  if (is_quant(f)) return (k + 63) / 64 * (kNR * 64 * quant_bits(f) / 8 + kNR * 4);  // quant::panel_bytes
  return stored_k(f, k) * kNR * elem_bytes(f);
}
inline int64_t packed_bytes(Fmt f, int64_t n, int64_t k) { return panels(n) * panel_bytes(f, k); }

// src: n*k elements of src_fmt (float or uint16 bits), row-major. dst: packed_bytes(fmt, n, k).
void pack_weight(const void* src, Fmt src_fmt, int64_t n, int64_t k, Fmt fmt, uint8_t* dst);
// Packs Wᵀ, a weight of k rows over n inputs, from row-major W[n,k] (src_fmt elements), into
// packed_bytes(fmt, k, n) bytes: matmul(dy, m, n, dst, fmt, k) is then dX[m,k] = dY[m,n] · W.
void pack_weight_t(const void* src, Fmt src_fmt, int64_t n, int64_t k, Fmt fmt, uint8_t* dst);
// dw[n,k] += dy[m,n]ᵀ · x[m,k], accumulated in fp32 onto dw (bf16 mode: dy and x rounded to bf16
// first, as the forward GEMM rounds its operands). Runs on the thread pool like matmul.
void matmul_grad_weight(const float* dy, const float* x, int64_t m, int64_t n, int64_t k, float* dw, Mode mode);
// out[i, :] = row ids[i] of the packed W, widened to float. ids must be in [0, n).
void gather_rows(const uint8_t* w, Fmt fmt, int64_t n, int64_t k, const int32_t* ids, int64_t count, float* out);
// Runs on the thread pool; dispatches on active_isa(). `ep` runs on each finished part of y.
void matmul(const float* x, int64_t m, int64_t k, const uint8_t* w, Fmt fmt, int64_t n, const float* bias, float* y,
            Mode mode, const Epilogue& ep = Epilogue());

// bf16 compute mode's GEMM kernel on bf16 weights. Fma: widen the bf16 weights to fp32 and use
// FMA on bf16-rounded x (the default). Dot: AVX512_BF16 vdpbf16ps on bf16 pairs of x and W. Amx:
// AMX-BF16 tiles (tdpbf16ps: 16 rows × 16 columns × 32 k steps an instruction) on the same pairs.
// Which is fastest depends on the CPU (on an Emerald Rapids Xeon vdpbf16ps zmm sustained ~83
// GFLOP/s per core against ~170 for FMA; on Zen 4 it is twice the FMA rate, and Zen 4 has no
// AMX), so `tierlm profile` times them and the engine sets its choice. Each kernel rounds its own
// way, but within one kernel a row's result never depends on the other rows (batched ==
// unbatched). A kernel the active CPU cannot run falls back: Amx to Dot to Fma.
// AmxEmulated runs the Amx kernel's blocking and addressing with each tile instruction emulated
// in scalar code as the architecture defines it, on any CPU: tests check the kernel's logic with
// it on machines without AMX; it is far too slow for anything else.
// TIERLM_BF16_KERNEL=fma|dot|amx (or the older TIERLM_BF16_DOT=0|1) at start-up sets it.
enum class Bf16Kernel : int { Fma = 0, Dot = 1, Amx = 2, AmxEmulated = 3 };
Bf16Kernel bf16_kernel();
// Whether this CPU (and OS) can run k at all: Amx where amx_usable(), Dot where the CPU has
// AVX512_BF16 (a lowered active ISA still falls back, as above, but that is a test setting).
bool bf16_kernel_runs_here(Bf16Kernel k);
// Sets it; false (and nothing changes) for a kernel that cannot run here (bf16_kernel_runs_here),
// so that the setting never names a kernel while another one computes.
bool set_bf16_kernel(Bf16Kernel k);
const char* bf16_kernel_name(Bf16Kernel k);
bool parse_bf16_kernel(const char* name, Bf16Kernel* out);
// The older switch: bf16_kernel() == Dot; set_bf16_dot(b) sets Dot or Fma (Dot only where it can
// run: set_bf16_kernel; returns whether it was set).
bool bf16_dot();
bool set_bf16_dot(bool on);

// Scalar IEEE half conversions with round to nearest even (overflow to infinity, NaN to a quiet
// NaN), shared by the baseline GEMM and quantization code. Defined in gemm_generic.cpp.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
bool set_bf16_dot(bool on);

// Which kernels run a product of max_rows+1 .. one_pass_rows rows as one row block (reading each
// weight panel once while it computes) rather than as blocks of at most max_rows: a mask of
// kOnePass* bits. Whether one block is faster depends on the kernel and the CPU (AVX-512 on Zen 4:
// f32 and vdpbf16ps 7-10% faster, f16 even, widened bf16 10% slower, docs/benchmarks.md), so
// `tierlm profile` times it per kernel and the engine sets the mask it saved. A row's sums run
// in the same order either way: results are the same bit for bit. TIERLM_GEMM_ONE_PASS=<mask>
// at start-up overrides the default.
constexpr int kOnePassF32 = 1, kOnePassF16 = 2, kOnePassBf16 = 4, kOnePassBf16Dot = 8;
constexpr int kOnePassDefault = kOnePassF32 | kOnePassBf16Dot;
int one_pass_rows();
void set_one_pass_rows(int mask);

// Where a thread sweeps at least kWidenBlocks row blocks over each group of bf16 or f16 panels, it
// can widen the group's k slices to f32 once (widen_panel_avx2) and run the f32 kernel over them,
// rather than widen every weight vector again in every row block's tile: the FMA kernels spend
// issue slots on the conversion (AVX2 on Zen 4: bf16 at 0.77 of the f32 kernel's rate at 512 rows).
// A decode step's few rows keep widening in the tile, which reads each weight once from RAM while
// it computes. Whether widening once is faster depends on the kernel and the CPU, so `tierlm
// profile` times it per kernel and the engine sets the mask it saved (the kOnePassF16 and
// kOnePassBf16 bits). The f32 kernel runs each output's FMA chain over k in the same order, so
// results are the same bit for bit. TIERLM_GEMM_WIDEN=<mask> at start-up overrides the default.
// Until set, the active ISA's default, measured on Zen 4: bf16 everywhere (AVX2: 0.76-0.85 of the
// time at 64-512 rows, AVX-512: 0.90-0.94); f16 on AVX-512 only (0.92-0.95), AVX2 converting with
// F16C in the tile costs nothing (widened: 1.04-1.20 of the time).
constexpr int kWidenBlocks = 8;
constexpr int kWidenDefaultAvx512 = kOnePassF16 | kOnePassBf16;
constexpr int kWidenDefaultAvx2 = kOnePassBf16;
int widen_panels();
void set_widen_panels(int mask);
// dst[kk*32 + c] = element (c, k0 + kk) of a bf16 or f16 panel, kk < kc, given wp = the panel at k
// offset k0 (k0 and kc even for bf16). AVX2 + F16C.
void widen_panel_avx2(Fmt fmt, const uint8_t* wp, int kc, float* dst);

// ---- micro-kernels (one per instruction set) ------------------------------------------------
// How x is packed for a kernel: per row block of `rows` rows, k-major.
enum class XPack : int {
  F32 = 0,       // [k][rows] float
  Bf16F32 = 1,   // [k][rows] float, each rounded to bf16 (bf16 mode emulated)
  Bf16Pair = 2,  // [k/2][rows] uint32: bf16(x[k]) | bf16(x[k+1]) << 16
  Bf16Rows = 3,  // [rows][ks] bf16, row-major (AMX tiles load 16 rows of it at a stride)
};

enum : int { kFirst = 1, kLast = 2 };

// Computes a rows × 32 tile: y[i, c] (+)= sum over kc steps of x[i, .] * W[c, .], c < ncols.
// xp: the row block's packed x at the current k offset; wp: the panel at the current k offset.
// flags & kFirst: start from zero (else accumulate onto y); flags & kLast: add bias (if not null).
using KernelFn = void (*)(int rows, const void* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols,
                          int flags, const float* bias);

// The k block of the SIMD kernels: a tile accumulating over k blocks stores its rows × 32 outputs
// to y and loads them back for the next block, and by then y has left the caches (every row block
// and panel group came between), so each reload stalls a tile's start on misses. Up to 4096 steps
// a model's layer (hidden 2048–4096) takes its whole k in one block; its x block and W slice still
// fit L2. Measured against 512 (vdpbf16ps) and 256 (FMA) on Zen 4, two threads, two addons side
// by side: 6–10% less time at 1024–2048 rows, 4–23% at 16–32 rows (docs/benchmarks.md, issue #14).
constexpr int kKBlock = 4096;

struct Kernel {
  KernelFn fn = nullptr;
  int max_rows = 1;       // rows per call at most, where a product takes several row blocks
  int one_pass_rows = 0;  // a product of up to this many rows (> max_rows) takes one block of them
  int kc = 256;      // k block (even)
  XPack xpack = XPack::F32;
  // Called by each thread before its first and after its last tile of a product (AMX: load the
  // tile configuration, release the tiles); null for kernels that need neither.
  void (*enter)() = nullptr;
  void (*leave)() = nullptr;
};

// XPack::Bf16Pair of `rows` rows of x (row i at x + i*ldx, k floats; ks = k rounded up to even):
// dst[(kk/2)*rows + i] = bf16(x[i][kk]) | bf16(x[i][kk+1]) << 16, rounded to nearest even, a NaN
// kept (quiet), zero past k: what the scalar packing gives, 16 floats at a time. AVX-512 only (the
// vdpbf16ps kernel, the one that takes this packing, needs it).
void pack_bf16_pairs_avx512(const float* x, int64_t ldx, int64_t k, int64_t ks, int rows, uint32_t* dst);

// Fill *out and return true when the instruction set has a kernel for this combination.
bool kernel_avx512(Fmt fmt, bool bf16_pairs, Kernel* out);  // bf16_pairs: vdpbf16ps (fmt == Bf16)
bool kernel_avx2(Fmt fmt, Kernel* out);
// AMX-BF16 on bf16 weights and XPack::Bf16Rows x: tiles of up to kAmxRows rows × 32 columns over the
// whole of k. The packed x of a product must be readable for kAmxRows - 1 rows past its last row
// (a tile loads 16 rows; the rows past a block's end only feed outputs that are never stored).
// False where this build's compiler has no AMX intrinsics.
constexpr int kAmxRows = 32;
bool kernel_amx(Kernel* out);
// The same kernel with the tile instructions emulated (Bf16Kernel::AmxEmulated), for tests.
void kernel_amx_emulated(Kernel* out);
void kernel_scalar(Fmt fmt, Kernel* out);

}  // namespace gemm
}  // namespace tierlm
