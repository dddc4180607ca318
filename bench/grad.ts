// Linear-layer gradients against the forward GEMM on the same shapes (OPT-125m's layers at 512
// tokens by default), f32 weights in fp32 mode and bf16 weights in bf16 mode: GFLOP/s of
//   forward  y  = x · Wᵀ          (packed W, as inference)
//   dX       dx = dy · W          (matmul over Wᵀ packed by packWeightT)
//   dW       dw += dyᵀ · x        (linearGradWeight: x packed transposed per call, included)
// plus the cost of packing W and Wᵀ (once per step in training), and training attention
// forward/backward at the same token count (12 heads of 64).
//   node --import tsx bench/grad.ts [--m 512] [--reps 10] [--threads N]
// The three products of a layer are timed in turn, so a loaded machine slows them alike.
import { cpuBackend, getThreads, isaInfo, setThreads } from '../src/backend/index.js';
import type { ComputeMode } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import { randomF32, randomFloat } from '../test/helpers/random.js';
import { bestOf, bestOfEach, cpuModel, numberArg as arg } from './timing.js';

const M = arg('--m', 512);
const REPS = arg('--reps', 10);
const B = cpuBackend();
if (arg('--threads', 0) > 0) setThreads(arg('--threads', 0));
const SHAPES: [string, number, number][] = [['qkv/out 768x768', 768, 768], ['fc1 3072x768', 3072, 768], ['fc2 768x3072', 768, 3072]];

console.log(`CPU: ${cpuModel()}, ${getThreads()} threads, ISA ${isaInfo().active}; m = ${M} tokens`);
console.log('layer [n x k]        mode   forward   dX        dW        GFLOP/s;  pack W, Wᵀ ms');
for (const [name, n, k] of SHAPES) {
  for (const [dtype, mode] of [['f32', 'fp32'], ['bf16', 'bf16']] as const) {
    const w = randomFloat(dtype, [n, k], 1), x = randomF32([M, k], 2), dy = randomF32([M, n], 3);
    const tPack = bestOf(REPS, () => B.packWeight(w, mode as ComputeMode));
    const tPackT = bestOf(REPS, () => B.packWeightT(w, mode as ComputeMode));
    const packed = B.packWeight(w, mode), packedT = B.packWeightT(w, mode);
    const y = Tensor.zeros('f32', [M, n]), dx = Tensor.zeros('f32', [M, k]), dw = Tensor.zeros('f32', [n, k]);
    const flops = 2 * M * n * k;
    const rate = (t: number) => (flops / t / 1e9).toFixed(1).padStart(6);
    const [tF, tX, tW] = bestOfEach(REPS, [
      () => B.matmul(x, packed, null, y), () => B.matmul(dy, packedT, null, dx), () => B.train.linearGradWeight(dy, x, dw, mode),
    ]) as [number, number, number];
    console.log(`${name.padEnd(20)} ${mode.padEnd(5)} ${rate(tF)}    ${rate(tX)}    ${rate(tW)}              ${(tPack * 1e3).toFixed(2)}, ${(tPackT * 1e3).toFixed(2)}`);
  }
}

const [hq, d] = [12, 64];
const q = randomF32([M, hq, d], 4), k = randomF32([M, hq, d], 5), v = randomF32([M, hq, d], 6), dout = randomF32([M, hq, d], 7);
const starts = Tensor.i32([0, M]);
const fwd = B.train.attentionForward(q, k, v, starts, 0.125);
const [tAf, tAb, tAp] = bestOfEach(REPS, [
  () => B.train.attentionForward(q, k, v, starts, 0.125, fwd.out, fwd.lse),
  () => B.train.attentionBackward({ q, k, v, out: fwd.out, lse: fwd.lse, dout, seqStarts: starts, scale: 0.125 }),
  () => B.attentionPrefill(q, k, v, starts, 0.125),
]) as [number, number, number];
// causal: half of the T² score matrix; forward 2 matmuls, backward 2·(2 + 3) with the recompute.
const attnFlops = 2 * hq * d * (M * (M + 1)) / 2;
console.log(`attention ${M} tokens, ${hq} heads of ${d}: training forward ${(tAf * 1e3).toFixed(1)} ms (${(2 * attnFlops / tAf / 1e9).toFixed(1)} GFLOP/s), ` +
  `backward ${(tAb * 1e3).toFixed(1)} ms (${(7 * attnFlops / tAb / 1e9).toFixed(1)} GFLOP/s incl. recompute), inference prefill ${(tAp * 1e3).toFixed(1)} ms`);
