// Tokens per second of training steps (forward, backward, AdamW) through the API:
//   node --import tsx bench/train-step.ts MODEL_DIR [--precision fp32|bf16] [--compute fp32|bf16] [--batch 4] [--seq 256] [--steps 3]
//     [--no-checkpoint]
// Random token ids; the first step is a warm-up and is not counted.
import { openTrainer } from '../src/train/index.js';
import { rng } from '../test/helpers/random.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : def;
};
const dir = args[0]!;
const precision = opt('precision', 'fp32') as 'fp32' | 'bf16';
const [batch, seq, steps] = [Number(opt('batch', '4')), Number(opt('seq', '256')), Number(opt('steps', '3'))];
const computeMode = opt('compute', 'fp32') as 'fp32' | 'bf16';
const trainer = await openTrainer(dir, { precision, computeMode, lr: 1e-4, checkpointActivations: !args.includes('--no-checkpoint') });
const params = trainer.parameters().reduce((n, p) => n + p.master.size, 0);
const r = rng(1);
const seqs = () => Array.from({ length: batch }, () => ({ tokenIds: Array.from({ length: seq }, () => Math.floor(r() * trainer.config.vocabSize)) }));
await trainer.step(seqs());
let tokens = 0, seconds = 0;
for (let s = 0; s < steps; s++) {
  const m = await trainer.step(seqs());
  tokens += m.tokens;
  seconds += m.seconds;
  console.log(`step ${m.step}: loss ${m.loss.toFixed(4)} grad-norm ${m.gradNorm.toFixed(3)} ${(m.tokens / m.seconds).toFixed(1)} tokens/s`);
}
const tps = tokens / seconds;
console.log(`${dir} ${precision} (${computeMode} compute) ${batch}x${seq}: ${tps.toFixed(1)} tokens/s, ${((6 * params * tps) / 1e9).toFixed(1)} GFLOP/s of model FLOPs (6·N·tokens/s, N = ${(params / 1e6).toFixed(1)}M)`);
