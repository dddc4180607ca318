// The training model on architectures and layouts the golden runs do not show (post-LN OPT with
// project_in/out, Qwen2 with q/k/v biases and a tied head, Mistral, Llama with an explicit
// head_dim and biases): its forward is the generation forward, and its gradients are the
// derivatives of its loss (central finite differences, tensor by tensor). Also: gradient
// accumulation equals one large micro-batch, checkpointing on equals off, and the layer code runs
// the same on the TypeScript reference backend.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cpuBackend, referenceBackend } from '../src/backend/index.js';
import { openModel } from '../src/models/load.js';
import { type CacheBlock, Transformer, prefillStep } from '../src/models/transformer.js';
import { Tensor } from '../src/tensor/tensor.js';
import { type TrainSequence, type Trainer, openTrainer } from '../src/train/index.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';
import { TRAIN_FIXTURES, fixtureBatch } from './helpers/train.js';

const ARCHS = ['opt-350m-style', 'qwen2-tiny', 'mistral-tiny', 'llama-headdim', 'opt-unprefixed', 'opt-sharded'];
const dirOf = (name: string) => path.join(fixturesDir, name);

/** Ragged sequences of random tokens, one with a masked prompt. */
function batchFor(vocab: number, seed: number, lengths = [9, 3, 14, 6]): TrainSequence[] {
  const r = rng(seed);
  return lengths.map((n, i) => {
    const tokenIds = Array.from({ length: n }, () => Math.floor(r() * vocab));
    return i === 2 ? { tokenIds, labels: tokenIds.map((id, p) => (p < 5 ? -100 : id)) } : { tokenIds };
  });
}

/** Mean next-token cross-entropy by the generation forward (Transformer, one prefill, every row's logits). */
function generationLoss(dir: string, seqs: TrainSequence[]): number {
  const backend = cpuBackend();
  const model = openModel(dir, backend, 'fp32');
  try {
    const c = model.config;
    const tf = new Transformer(c, backend, model.loader.globals());
    const step = prefillStep(seqs.map((s) => Int32Array.from(s.tokenIds)));
    const cap = Math.max(...seqs.map((s) => s.tokenIds.length));
    const x = tf.embed(step, Tensor.zeros('f32', [step.ids.length, c.hidden]));
    for (let j = 0; j < c.layers; j++) {
      const w = model.loader.layer(j);
      const cache: CacheBlock = { k: Tensor.zeros('f32', [seqs.length, c.kvHeads, cap, c.headDim]), v: Tensor.zeros('f32', [seqs.length, c.kvHeads, cap, c.headDim]) };
      tf.attentionBlock(w, x, cache, step);
      tf.mlpBlock(w, x);
    }
    const logits = tf.head(x);
    let loss = 0, count = 0;
    seqs.forEach((s, i) => {
      const labels = s.labels ?? s.tokenIds;
      for (let p = 0; p + 1 < s.tokenIds.length; p++) {
        if (labels[p + 1] === -100) continue;
        const row = logits.data.subarray((step.seqStarts[i]! + p) * c.vocabSize, (step.seqStarts[i]! + p + 1) * c.vocabSize);
        const max = row.reduce((m, v) => Math.max(m, v), -Infinity);
        loss += Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0)) + max - row[labels[p + 1]!]!;
        count++;
      }
    });
    return loss / count;
  } finally {
    model.close();
  }
}

describe('the training forward is the generation forward', () => {
  it.each(ARCHS)('%s: same loss', async (name) => {
    const trainer = await openTrainer(dirOf(name));
    const seqs = batchFor(trainer.config.vocabSize, 7);
    const { loss } = await trainer.evaluate(seqs);
    expect(Math.abs(loss - generationLoss(dirOf(name), seqs)) / loss).toBeLessThan(1e-5);
  });
});

/** Loss sum·(1/count) of the batch under the trainer's current fp32 weights, in double. */
async function lossAt(trainer: Trainer, seqs: TrainSequence[]): Promise<number> {
  return (await trainer.evaluate(seqs)).loss;
}

/** opt-350m-style with GELU instead of ReLU: the same post-LN, project_in/out, tied layout with a
 *  smooth loss, so finite differences are not thrown off by ReLU kinks (ReLU's backward is checked
 *  against the golden run of the pre-LN OPT). */
function smoothOpt350m(): string {
  const dir = tmpDir('opt-gelu');
  const config = JSON.parse(fs.readFileSync(path.join(dirOf('opt-350m-style'), 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, activation_function: 'gelu' }));
  fs.copyFileSync(path.join(dirOf('opt-350m-style'), 'model.safetensors'), path.join(dir, 'model.safetensors'));
  return dir;
}

describe('gradients are derivatives of the loss (finite differences, every tensor)', () => {
  it.each(['opt-350m-style+gelu', 'qwen2-tiny', 'llama-headdim'])('%s', async (name) => {
    // lr 0: the step leaves the weights as they are and the gradients in their buffers.
    const dir = name === 'opt-350m-style+gelu' ? smoothOpt350m() : dirOf(name);
    const trainer = await openTrainer(dir, { lr: 0, weightDecay: 0 });
    if (dir !== dirOf(name)) fs.rmSync(dir, { recursive: true });  // read in full by openTrainer
    const seqs = batchFor(trainer.config.vocabSize, 11);
    await trainer.step(seqs);
    const r = rng(3);
    for (const p of trainer.parameters()) {
      const w = p.master.data, g = p.grad.data as Float32Array;
      // Along the gradient (a large, well-conditioned derivative) and along a random direction.
      for (const dirKind of ['grad', 'random'] as const) {
        const u = Float64Array.from(g, (x) => (dirKind === 'grad' ? x : r() * 2 - 1));
        const norm = Math.hypot(...u);
        if (norm === 0) continue;
        u.forEach((x, i) => (u[i] = x / norm));
        const analytic = u.reduce((a, x, i) => a + x * g[i]!, 0);
        const saved = w.slice();
        const central = async (h: number) => {
          w.set(Float32Array.from(saved, (x, i) => x + h * u[i]!));
          const plus = await lossAt(trainer, seqs);
          w.set(Float32Array.from(saved, (x, i) => x - h * u[i]!));
          const minus = await lossAt(trainer, seqs);
          w.set(saved);
          return (plus - minus) / (2 * h);
        };
        // A step that moves the loss by about 5% but stays short (ReLU kinks), and Richardson's
        // extrapolation (error O(h⁴)).
        const h = Math.min(0.02, 0.05 / Math.max(Math.abs(analytic), 1e-9));
        const numeric = (4 * (await central(h / 2)) - (await central(h))) / 3;
        // The fp32 loss's rounding (a few 1e-6 absolute between two nearby weights) divided by the
        // step bounds the numeric side's error: about 2.5e-4 absolute at the longest step, a few
        // percent of a random direction's derivative; a missing or wrong term shows far above it.
        const tol = 1e-3 * Math.abs(analytic) + 5e-6 / h;
        expect(Math.abs(numeric - analytic), `${p.name} along ${dirKind}: numeric ${numeric}, analytic ${analytic}`).toBeLessThan(tol);
      }
    }
  });
});

/** Every parameter's gradient after one step of `micro` (lr 0, so nothing moves). */
async function gradsOf(dir: string, micro: TrainSequence[] | TrainSequence[][], opts: { checkpointActivations?: boolean; reference?: boolean } = {}) {
  const trainer = await openTrainer(dir, { lr: 0, checkpointActivations: opts.checkpointActivations, backend: opts.reference ? referenceBackend() : undefined });
  const m = await trainer.step(micro);
  return { loss: m.loss, gradNorm: m.gradNorm, grads: new Map(trainer.parameters().map((p) => [p.name, (p.grad.data as Float32Array).slice()])) };
}

function expectSameGrads(a: Map<string, Float32Array>, b: Map<string, Float32Array>, tol: number): void {
  for (const [name, ga] of a) {
    const gb = b.get(name)!;
    let d = 0, n = 0;
    ga.forEach((x, i) => {
      d += (x - gb[i]!) ** 2;
      n += gb[i]! ** 2;
    });
    // OPT's k_proj biases have a true gradient of exactly 0 (a constant added to every key score of
    // a query): theirs is rounding noise, compared against the size of the other gradients instead.
    const scale = name.includes('k_proj.bias') && !name.startsWith('model.layers') ? 1 : n;
    expect(Math.sqrt(d / Math.max(scale, 1e-30)), name).toBeLessThanOrEqual(tol);
  }
}

describe('step semantics', () => {
  const trainDir = (n: string) => path.join(TRAIN_FIXTURES, n);
  it.each(['opt-train', 'llama-train'])('%s: 2 micro-batches of 2 = 1 micro-batch of 4 = 4 of 1', async (name) => {
    const batch = fixtureBatch();
    const one = await gradsOf(trainDir(name), batch);
    for (const split of [[batch.slice(0, 2), batch.slice(2)], batch.map((s) => [s])]) {
      const acc = await gradsOf(trainDir(name), split);
      expect(Math.abs(acc.loss - one.loss) / one.loss).toBeLessThan(1e-6);
      expectSameGrads(acc.grads, one.grads, 1e-6);
    }
  });

  it.each(['opt-350m-style', 'qwen2-tiny'])('%s: checkpointing on = off', async (name) => {
    const seqs = batchFor(400, 5);
    const on = await gradsOf(dirOf(name), seqs, { checkpointActivations: true });
    const off = await gradsOf(dirOf(name), seqs, { checkpointActivations: false });
    expect(off.loss).toBe(on.loss);
    expectSameGrads(off.grads, on.grads, 0);
  });

  it.each(['opt-350m-style', 'qwen2-tiny'])('%s: the reference backend gives the same gradients', async (name) => {
    const seqs = batchFor(400, 9);
    const native = await gradsOf(dirOf(name), seqs);
    const reference = await gradsOf(dirOf(name), seqs, { reference: true });
    expect(Math.abs(reference.loss - native.loss) / native.loss).toBeLessThan(1e-6);
    expectSameGrads(reference.grads, native.grads, 2e-5);
  });
});
