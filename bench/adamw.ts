// AdamW on N parameters (default 10^8) in bf16 mixed precision: reads the gradient (bf16, 2
// bytes), master, m, v (fp32, 12) and writes master, m, v (12) and the bf16 parameter (2): 28
// bytes per parameter. Reports the achieved GB/s beside memcpy's on the same buffers' scale
// (multi-threaded, read + write bytes counted), the fp32-gradient variant (no bf16 copy:
// 4 + 12 read, 12 written, also 28 bytes) and the global-norm pass (sum of squares, read only).
//   node --import tsx bench/adamw.ts [--n 100000000] [--reps 5]
import { cpuBackend, getThreads, isaInfo } from '../src/backend/index.js';
import { copyStrided } from '../src/tensor/copy.js';
import { Tensor } from '../src/tensor/tensor.js';
import { bestOf, cpuModel, numberArg as arg } from './timing.js';

const N = arg('--n', 1e8);
const REPS = arg('--reps', 5);
const backend = cpuBackend();

// Constant fills: the update's speed does not depend on the values (none is denormal).
function filled<D extends 'f32' | 'bf16'>(dtype: D, n: number, value: number): Tensor<D> {
  const t = Tensor.zeros(dtype, [n]);
  t.data.fill(value);
  return t;
}

const master = filled('f32', N, 0.02);
const m = filled('f32', N, 1e-3);
const v = filled('f32', N, 1e-6);
const gradBf16 = filled('bf16', N, 0x3c00);  // bf16 bits of 2^-7
const gradF32 = filled('f32', N, 1e-2);
const paramBf16 = Tensor.zeros('bf16', [N]);

let step = 0;
const hyper = () => ({ lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, gradScale: 0.9, step: ++step });
const tMixed = bestOf(REPS, () => backend.train.adamw(gradBf16, master, m, v, paramBf16, hyper()));
const tFp32 = bestOf(REPS, () => backend.train.adamw(gradF32, master, m, v, null, hyper()));

// memcpy of 4N bytes over the thread pool, in runs of 1 MiB and of 32 MiB (glibc switches to
// non-temporal stores for large copies, which saves the destination's read-for-ownership): the
// faster one is the bound quoted.
const src = master.bytes, dst = new Uint8Array(src.byteLength);
const copyGBs = Math.max(...[1 << 20, 32 << 20].map((run) => {
  const runs = Math.floor(src.byteLength / run);
  const t = bestOf(REPS, () => copyStrided(dst, src, { run, counts: [runs, 1], dstOffset: 0, dstStrides: [run, 0], srcOffset: 0, srcStrides: [run, 0] }));
  return (2 * runs * run) / t / 1e9;
}));

// The global-norm pass: Σ g² over the f32 gradients, read only (4 bytes per parameter).
const tNorm = bestOf(REPS, () => backend.train.sumSquares(gradF32));

const gbs = (t: number) => (28 * N) / t / 1e9;
console.log(`CPU: ${cpuModel()}, ${getThreads()} threads, ISA ${isaInfo().active}`);
console.log(`parameters: ${N.toExponential(2)}, 28 bytes moved per parameter`);
console.log(`AdamW bf16 mixed (bf16 grad, fp32 master/m/v, bf16 param out): ${(tMixed * 1e3).toFixed(1)} ms, ${gbs(tMixed).toFixed(2)} GB/s, ${(gbs(tMixed) / copyGBs * 100).toFixed(0)}% of memcpy`);
console.log(`AdamW fp32 grads (no bf16 copy):                              ${(tFp32 * 1e3).toFixed(1)} ms, ${gbs(tFp32).toFixed(2)} GB/s, ${(gbs(tFp32) / copyGBs * 100).toFixed(0)}% of memcpy`);
console.log(`memcpy (threaded, read + write counted): ${copyGBs.toFixed(2)} GB/s`);
console.log(`sum of squares (global norm, f32 grads, read only): ${(tNorm * 1e3).toFixed(1)} ms, ${((4 * N) / tNorm / 1e9).toFixed(2)} GB/s`);
