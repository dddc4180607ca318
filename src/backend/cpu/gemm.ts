// Native GEMM kernels (native/kernels/gemm*.cpp, exported by native/napi/gemm.cpp). Weights are
// packed into 32-row panels with k outermost (bf16 as pairs along k); see native/kernels/gemm.h.
// 'q4' / 'q8' weights and quantize / dequantize: native/kernels/quant.h.
import type { FloatDType } from '../../tensor/dtype.js';
import type { ComputeMode, Kernels, MatmulEpilogue, QuantBits, WeightFormat } from '../kernels.js';
import { addon, nativeFn } from './addon.js';

type PackedByteLengthFn = (format: WeightFormat, n: number, k: number) => number;
type PackWeightFn = (src: Float32Array | Uint16Array, srcDtype: FloatDType, n: number, k: number, format: WeightFormat, dst: Uint8Array) => void;
type MatmulFn = (x: Float32Array, m: number, k: number, w: Uint8Array, format: WeightFormat, n: number,
  bias: Float32Array | null, y: Float32Array, mode: ComputeMode, async: boolean,
  activation?: MatmulEpilogue['activation'], addTo?: Float32Array) => Promise<void> | undefined;
type GatherRowsFn = (w: Uint8Array, format: WeightFormat, n: number, k: number, ids: Int32Array, out: Float32Array) => void;

type QuantizeFn = (src: Float32Array, n: number, k: number, bits: QuantBits, groupSize: number, codes: Uint8Array, params: Uint16Array) => void;
type DequantizeFn = (codes: Uint8Array, params: Uint16Array, n: number, k: number, bits: QuantBits, groupSize: number, out: Float32Array) => void;

let fns: {
  len: PackedByteLengthFn; pack: PackWeightFn; matmul: MatmulFn; gather: GatherRowsFn; quantize: QuantizeFn; dequantize: DequantizeFn;
} | undefined;

function native() {
  return (fns ??= {
    len: nativeFn<PackedByteLengthFn>('gemmPackedByteLength'),
    pack: nativeFn<PackWeightFn>('gemmPackWeight'),
    matmul: nativeFn<MatmulFn>('gemmMatmul'),
    gather: nativeFn<GatherRowsFn>('gemmGatherRows'),
    quantize: nativeFn<QuantizeFn>('quantQuantize'),
    dequantize: nativeFn<DequantizeFn>('quantDequantize'),
  });
}

export const gemmKernels: Partial<Kernels> = {
  packedByteLength(format, n, k) {
    return native().len(format, n, k);
  },
  // Every format is packed in panels of 32 rows (native/kernels/gemm.h).
  packedRowBlock: () => 32,
  packedBuffer(bytes) {
    const buf = new Uint8Array(bytes);  // (calloc'd: its own untouched mapping at this size)
    addon().adviseHugePages(buf);
    return buf;
  },
  packWeight(src, srcDtype, n, k, format, dst) {
    native().pack(src, srcDtype, n, k, format, dst);
  },
  matmul(x, m, k, w, format, n, bias, y, mode, epilogue) {
    // (native/kernels/epilogue.h: applied to each part of y as a thread finishes it)
    native().matmul(x, m, k, w, format, n, bias, y, mode, false, epilogue?.activation, epilogue?.addTo);
  },
  matmulAsync(x, m, k, w, format, n, bias, y, mode) {
    return native().matmul(x, m, k, w, format, n, bias, y, mode, true) as Promise<void>;
  },
  gatherRows(w, format, n, k, ids, out) {
    native().gather(w, format, n, k, ids, out);
  },
  quantize(src, n, k, bits, groupSize, codes, params) {
    native().quantize(src, n, k, bits, groupSize, codes, params);
  },
  dequantize(codes, params, n, k, bits, groupSize, out) {
    native().dequantize(codes, params, n, k, bits, groupSize, out);
  },
};

/** bf16 compute mode's GEMM kernel on bf16 weights: 'fma' (the weights widened for fp32 FMA on
 *  bf16-rounded x), 'dot' (AVX512_BF16 vdpbf16ps on bf16 pairs), 'amx' (AMX-BF16 tiles on the same
 *  pairs; only where `isaInfo().amx`), or 'amx-emulated' (the AMX kernel with each tile instruction
 *  emulated in scalar code, on any CPU: for tests only, far too slow for work). A kernel the active
 *  instruction set cannot run falls back: amx to dot to fma. Pass a name to change it (throws for
 *  'amx' where AMX is not usable and for 'dot' where the CPU lacks AVX512_BF16, rather than name a
 *  kernel that does not compute); returns the setting. */
export type Bf16GemmKernel = 'fma' | 'dot' | 'amx' | 'amx-emulated';
export function gemmBf16Kernel(kernel?: Bf16GemmKernel): Bf16GemmKernel {
  return nativeFn<(k?: string) => Bf16GemmKernel>('gemmBf16Kernel')(kernel);
}

/** Whether bf16 compute mode multiplies with AVX512_BF16 vdpbf16ps (when the active ISA has it)
 *  rather than widening bf16 weights for fp32 FMA (the default: faster where vdpbf16ps has half
 *  the FMA throughput). Pass a boolean to change it; returns the setting (true is not taken where
 *  the CPU lacks AVX512_BF16: the setting stays, and false says so). */
export function gemmBf16Dot(on?: boolean): boolean {
  return nativeFn<(on?: boolean) => boolean>('gemmBf16Dot')(on);
}

/** A float GEMM kernel: f32 or f16 weights with fp32 FMA, bf16 weights widened for FMA, or bf16
 *  weights with vdpbf16ps (bf16 compute on AVX512_BF16). */
export type GemmKernelKind = 'f32' | 'f16' | 'bf16' | 'bf16-dot';
export const GEMM_KERNEL_KINDS: readonly GemmKernelKind[] = ['f32', 'f16', 'bf16', 'bf16-dot'];

/** The kernels whose 15-16-row products (AVX-512: above the 14 rows a tile holds in registers) run
 *  as one row block, reading each weight panel once while computing, rather than as two blocks
 *  of 8. Which is faster depends on the kernel and the CPU: `tierlm profile` times it and a model
 *  load applies its choice (default: f32 and bf16-dot, measured on Zen 4). Results are the same
 *  bit for bit either way. TIERLM_GEMM_ONE_PASS=<mask> decides instead of the default and of a
 *  profile (bits in GEMM_KERNEL_KINDS order). Pass kinds to change it; returns the setting. */
export function gemmOnePassRows(kinds?: readonly GemmKernelKind[]): GemmKernelKind[] {
  return kernelMaskSetting('gemmOnePassRows', kinds);
}

/** A native setting held as a mask of GEMM_KERNEL_KINDS bits: sets it from `kinds` when given;
 *  returns the kinds set. */
function kernelMaskSetting(name: string, kinds: readonly GemmKernelKind[] | undefined): GemmKernelKind[] {
  const mask = kinds?.reduce((m, k) => {
    const bit = GEMM_KERNEL_KINDS.indexOf(k);
    if (bit < 0) throw new TypeError(`${name}: unknown kernel '${String(k)}' (${GEMM_KERNEL_KINDS.join(', ')})`);
    return m | (1 << bit);
  }, 0);
  const got = nativeFn<(mask?: number) => number>(name)(mask);
  return GEMM_KERNEL_KINDS.filter((_, i) => got & (1 << i));
}

/** The kernels that take bf16 or f16 weights through fp32 FMA ('f16', 'bf16') and whose weight
 *  panels a compute thread widens to f32 once per panel group, then runs the f32 kernel over,
 *  wherever it sweeps GEMM_WIDEN_BLOCKS row blocks or more (prefill, large batches), rather than
 *  widen each weight vector again in every row block (native/kernels/gemm.h, widen_panels). A
 *  decode step's few rows keep widening in the tile. Which is faster depends on the kernel and the
 *  CPU: `tierlm profile` times it and a model load applies its choice (default: bf16, and f16 on
 *  AVX-512; measured on Zen 4). Results are the same bit for bit either way. TIERLM_GEMM_WIDEN=<mask> decides instead of
 *  the default and of a profile (bits in GEMM_KERNEL_KINDS order). Pass kinds to change it
 *  ('f32' and 'bf16-dot' have nothing to widen and are left out); returns the setting. */
export function gemmWidenPanels(kinds?: readonly GemmKernelKind[]): GemmKernelKind[] {
  return kernelMaskSetting('gemmWidenPanels', kinds);
}

/** Row blocks a compute thread must sweep over a panel group for gemmWidenPanels to apply. */
export const GEMM_WIDEN_BLOCKS = 8;

/** Bytes of the next weight the idle compute threads prefetch while a batch-1..6 decode runs the
 *  small ops between two GEMVs (native/core/thread_pool.h, prefetch_while_idle; default 12 MiB,
 *  `TIERLM_IDLE_PREFETCH_MB` at start-up). Pass a number to change it (0: off); returns the
 *  setting. Results never depend on it: it only moves weights into cache sooner. */
export function gemmIdlePrefetch(bytes?: number): number {
  return nativeFn<(bytes?: number) => number>('gemmIdlePrefetch')(bytes);
}
