// bf16 compute has two GEMM kernels: bf16 weights widened for fp32 FMAs (the native default) and
// AVX512_BF16's vdpbf16ps dot products. Which is faster depends on the CPU: on one Xeon vdpbf16ps
// ran at half the FMA rate (docs/benchmarks.md, Kernels), on the AMD EPYC (Zen 4) of 2026-11-29 at
// 1.9× it (385 vs 205 GFLOP/s on 2 threads). So a bf16 run measures both on one of the model's
// layer shapes and keeps the faster, for generation and training alike. The measurement is made
// once per process: the two kernels round differently, and two models loaded by one process
// (a run and its reference, say) must compute alike. A resumed training run passes the kernel its
// checkpoint saved, since exact resume needs the same one. TIERLM_BF16_DOT=0|1 decides instead.

import { cpuBackend, isaInfo } from '../index.js';
import { gemmBf16Dot } from './gemm.js';
import { fromFloat32 } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';

export type Bf16Kernel = 'dot' | 'fma';

/** A layer's GEMM shape: rows × k inputs → n outputs. */
export interface GemmShape {
  rows: number;
  n: number;
  k: number;
}

let measured: Bf16Kernel | null = null;

/** Sets the bf16 GEMM kernel: `saved` when given, else the environment's, else the faster one
 *  measured (once per process) on `shape`; returns what was set. */
export function selectBf16Kernel(shape: GemmShape, saved: Bf16Kernel | null = null): Bf16Kernel {
  const env = process.env.TIERLM_BF16_DOT;
  const choice: Bf16Kernel = saved ?? (env === '0' || env === '1' ? (env === '1' ? 'dot' : 'fma') : (measured ??= fasterKernel(shape)));
  gemmBf16Dot(choice === 'dot');
  return choice;
}

function fasterKernel(shape: GemmShape): Bf16Kernel {
  if (isaInfo().active !== 'avx512bf16') return 'fma';
  const b = cpuBackend();
  // Capped (at most 4 MiB of weights): the rates are the CPU's, and a run under a tight --ram
  // has no room for a whole large layer beside it.
  const [n, k] = [Math.min(shape.n, 2048), Math.min(shape.k, 1024)];
  const m = Math.max(1, Math.min(shape.rows, 256));
  const w = b.packWeight(new Tensor('bf16', [n, k], fromFloat32('bf16', Float32Array.from({ length: n * k }, (_, i) => ((i * 7919) % 2003) / 2003 - 0.5))), 'bf16');
  const x = new Tensor('f32', [m, k], Float32Array.from({ length: m * k }, (_, i) => ((i * 104729) % 1009) / 1009 - 0.5));
  const out = Tensor.zeros('f32', [m, n]);
  const time = (dot: boolean) => {
    gemmBf16Dot(dot);
    b.matmul(x, w, null, out);
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      b.matmul(x, w, null, out);
      best = Math.min(best, performance.now() - t);
    }
    return best;
  };
  // Interleaved, so that a burst of load on a shared machine hits both.
  const [fma1, dot1, fma2, dot2] = [time(false), time(true), time(false), time(true)];
  return Math.min(dot1, dot2) < Math.min(fma1, fma2) ? 'dot' : 'fma';
}
