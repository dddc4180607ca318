// Training throughput and model FLOPs utilisation (MFU) on OPT shapes with random weights:
//   node --import tsx bench/train.ts [--config opt-125m] [--layers N] [--seq 256,512] [--batch 4]
//        [--precision fp32,bf16] [--compute-mode fp32|bf16] [--steps 2] [--threads 2] [--no-checkpoint] [--json]
// Each case runs one warm-up step, then --steps timed steps (forward, backward with activation
// checkpointing, AdamW) on random token ids. MFU = 6 · parameters · tokens/s ÷ the best GEMM rate
// measured here in this run (fp32 and bf16 compute, the model's own GEMM shapes at M = batch · seq,
// through the same kernels), so it says how close training comes to the machine's GEMM speed.
// bench/torch_train.py times PyTorch eager on the same shape for comparison.
import { cpuBackend, getThreads, isaInfo, setThreads } from '../src/backend/index.js';
import { defaultModelCache, dummyModel } from '../src/engine/bench.js';
import { openTrainer } from '../src/train/index.js';
import { selectBf16Kernel } from '../src/backend/cpu/bf16-kernel.js';
import { randomF32, randomFloat, rng } from '../test/helpers/random.js';
import { gemmBf16Dot } from '../src/backend/cpu/gemm.js';
import { Tensor } from '../src/tensor/tensor.js';
import { bestOf, cpuModel } from './timing.js';
import { loadavg } from 'node:os';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : def;
};
const config = arg('config', 'opt-125m');
const layers = args.includes('--layers') ? Number(arg('layers', '0')) : undefined;
const seqs = arg('seq', '256,512').split(',').map(Number);
const precisions = arg('precision', 'fp32,bf16').split(',') as ('fp32' | 'bf16')[];
const batch = Number(arg('batch', '4'));
const steps = Number(arg('steps', '2'));
setThreads(Number(arg('threads', String(getThreads()))));
const json = args.includes('--json');
const checkpointActivations = !args.includes('--no-checkpoint');
// The GEMM mode with bf16 parameters (TrainerOptions.computeMode); default: the trainer's.
const computeMode = args.includes('--compute-mode') ? (arg('compute-mode', 'fp32') as 'fp32' | 'bf16') : undefined;

const dir = await dummyModel(config, layers, defaultModelCache());
const hidden = (await openTrainer(dir, { lr: 0 })).config.hidden;

/** Best GEMM rate (FLOP/s) over fp32 and both bf16 kernels (FMA on widened weights, vdpbf16ps)
 *  on [m, hidden] × [hidden, 4·hidden] and [m, 4·hidden] × [4·hidden, hidden]: the fc1/fc2 shapes,
 *  the largest of a layer. The bf16 kernel setting is restored after. */
function gemmPeak(m: number): { rate: number; mode: string } {
  const b = cpuBackend();
  const dotWas = gemmBf16Dot();
  let best = { rate: 0, mode: '' };
  for (const [mode, dot] of [['fp32', false], ['bf16', false], ['bf16-dot', true]] as const) {
    gemmBf16Dot(dot);
    for (const [k, n] of [[hidden, 4 * hidden], [4 * hidden, hidden]]) {
      const w = b.packWeight(mode === 'fp32' ? randomF32([n!, k!], 1, 0.05) : randomFloat('bf16', [n!, k!], 1, 0.05), mode === 'fp32' ? 'fp32' : 'bf16');
      const x = randomF32([m, k!], 2);
      const out = Tensor.zeros('f32', [m, n!]);
      const s = bestOf(3, () => b.matmul(x, w, null, out));
      const rate = (2 * m * k! * n!) / s;
      if (rate > best.rate) best = { rate, mode: `${mode} ${m}x${k}x${n}` };
    }
  }
  gemmBf16Dot(dotWas);
  return best;
}

console.error(`${cpuModel()}, ${getThreads()} threads, ISA ${isaInfo().active}, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}, ${new Date().toISOString()}`);
for (const seq of seqs) {
  const peak = gemmPeak(batch * seq);
  for (const precision of precisions) {
    const trainer = await openTrainer(dir, { precision, lr: 1e-4, checkpointActivations, computeMode });
    // As `tierlm train` does: the faster bf16 GEMM kernel of this machine.
    const chosen = precision === 'bf16' ? selectBf16Kernel({ rows: batch * seq, n: trainer.config.ffn, k: trainer.config.hidden }) : 'fp32';
    // fp32 compute over bf16 weights always runs the FMA kernel (widened weights).
    const kernel = precision === 'bf16' && (computeMode ?? 'bf16') === 'fp32' ? 'fp32-compute fma' : chosen;
    const params = trainer.parameters().reduce((n, p) => n + p.master.size, 0);
    const r = rng(seq);
    const data = () => Array.from({ length: batch }, () => ({ tokenIds: Array.from({ length: seq }, () => Math.floor(r() * trainer.config.vocabSize)) }));
    await trainer.step(data());
    let tokens = 0, seconds = 0;
    for (let s = 0; s < steps; s++) {
      const m = await trainer.step(data());
      tokens += m.tokens;
      seconds += m.seconds;
    }
    const tps = tokens / seconds;
    const row = {
      kernel, config: `${config}${layers ? ` (${layers} layers)` : ''}${checkpointActivations ? '' : ' no-ckpt'}`, precision, batch, seq, params, steps, tokensPerSecond: tps, secondsPerStep: seconds / steps,
      modelGflops: (6 * params * tps) / 1e9, gemmPeakGflops: peak.rate / 1e9, gemmPeakCase: peak.mode, mfu: (6 * params * tps) / peak.rate,
    };
    if (json) console.log(JSON.stringify(row));
    else {
      console.log(`${row.config} ${precision}${precision === 'bf16' ? ` (${kernel} kernel)` : ''} ${batch}x${seq}: ${tps.toFixed(1)} tokens/s (${row.secondsPerStep.toFixed(2)} s/step), ` +
        `${row.modelGflops.toFixed(1)} GFLOP/s of model FLOPs (6·${(params / 1e6).toFixed(1)}M·tokens/s), MFU ${(100 * row.mfu).toFixed(1)}% ` +
        `of ${row.gemmPeakGflops.toFixed(1)} GFLOP/s (best GEMM: ${peak.mode})`);
    }
  }
}
