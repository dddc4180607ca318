// bf16 compute has two GEMM kernels: bf16 weights widened for fp32 FMAs (the native default) and
// AVX512_BF16's vdpbf16ps dot products. Which is faster depends on the CPU: on one Xeon vdpbf16ps
// ran at half the FMA rate (docs/benchmarks.md, Kernels), on the AMD EPYC (Zen 4) of 2026-11-29 at
// 1.9× it (385 vs 205 GFLOP/s on 2 threads), which made bf16 training 1.9× faster. So a bf16 run
// measures both on one of the model's layer shapes and keeps the faster. The two round
// differently, so the choice is saved with each checkpoint and a resumed run reuses it: exact
// resume needs the same kernel. TIERLM_BF16_DOT=0|1 decides instead of the measurement.

import { cpuBackend, isaInfo } from '../backend/index.js';
import { gemmBf16Dot } from '../backend/cpu/gemm.js';
import { fromFloat32 } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from '../models/config.js';

export type Bf16Kernel = 'dot' | 'fma';

/** Sets the bf16 GEMM kernel: `saved` when resuming, else the environment's or the faster one
 *  measured on [rows, hidden] × [hidden, ffn]; returns what was set. */
export function selectBf16Kernel(c: ModelConfig, rows: number, saved: Bf16Kernel | null): Bf16Kernel {
  const env = process.env.TIERLM_BF16_DOT;
  const choice: Bf16Kernel = saved ?? (env === '0' || env === '1' ? (env === '1' ? 'dot' : 'fma') : fasterKernel(c, rows));
  gemmBf16Dot(choice === 'dot');
  return choice;
}

function fasterKernel(c: ModelConfig, rows: number): Bf16Kernel {
  if (isaInfo().active !== 'avx512bf16') return 'fma';
  const b = cpuBackend();
  const m = Math.max(1, Math.min(rows, 512));
  const w = b.packWeight(new Tensor('bf16', [c.ffn, c.hidden], fromFloat32('bf16', Float32Array.from({ length: c.ffn * c.hidden }, (_, i) => ((i * 7919) % 2003) / 2003 - 0.5))), 'bf16');
  const x = new Tensor('f32', [m, c.hidden], Float32Array.from({ length: m * c.hidden }, (_, i) => ((i * 104729) % 1009) / 1009 - 0.5));
  const out = Tensor.zeros('f32', [m, c.ffn]);
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
