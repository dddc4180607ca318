// Training beyond memory (src/train/offload): the model states on disk, or split between RAM and
// disk, give the same losses and the same final weights, bit for bit, as the same run in RAM —
// fp32 and bf16, an OPT and a Llama model made here, with gradient accumulation (gradients read
// back from disk) and activation checkpoints on disk.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { initModel } from '../src/models/init.js';
import { type TrainerOptions, openTrainer } from '../src/train/index.js';
import { tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';
import { readAll } from './helpers/train.js';

const MiB = 2 ** 20;

function model(config: 'opt-test' | 'llama-test', layers: number): string {
  const dir = tmpDir(`offload-${config}`);
  initModel({ config, out: dir, layers, dtype: 'f32', seed: 3 });
  return dir;
}

/** Steps of two micro-batches of two random sequences each. */
function batches(steps: number, vocab: number, seed: number): { tokenIds: number[] }[][][] {
  const r = rng(seed);
  return Array.from({ length: steps }, () => Array.from({ length: 2 }, () => Array.from({ length: 2 }, () => ({
    tokenIds: Array.from({ length: 5 + Math.floor(r() * 11) }, () => Math.floor(r() * vocab)),
  }))));
}

async function run(dir: string, o: TrainerOptions, steps: { tokenIds: number[] }[][][]): Promise<{ losses: number[]; norms: number[]; weights: Map<string, Float32Array> }> {
  const t = await openTrainer(dir, { lr: 1e-3, maxGradNorm: 0.5, threads: 1, ...o });
  const losses: number[] = [], norms: number[] = [];
  try {
    for (const b of steps) {
      const m = await t.step(b);
      losses.push(m.loss);
      norms.push(m.gradNorm);
    }
    const file = path.join(tmpDir('offload-out'), 'w.safetensors');
    t.saveParams(file);
    return { losses, norms, weights: readAll(file) };
  } finally {
    t.close();
  }
}

function expectSame(a: Awaited<ReturnType<typeof run>>, b: Awaited<ReturnType<typeof run>>): void {
  expect(b.losses).toEqual(a.losses);
  expect(b.norms).toEqual(a.norms);
  expect([...b.weights.keys()]).toEqual([...a.weights.keys()]);
  for (const [name, w] of a.weights) expect(Buffer.from(b.weights.get(name)!.buffer).equals(Buffer.from(w.buffer)), name).toBe(true);
}

const none = { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 };
const half = { param: 0.5, grad: 0.5, master: 0.5, m: 0.3, v: 0.7, act: 1 };

describe('offloaded training equals training in RAM, bit for bit', () => {
  it.each([
    { config: 'opt-test' as const, precision: 'fp32' as const },
    { config: 'llama-test' as const, precision: 'bf16' as const },
    { config: 'opt-test' as const, precision: 'bf16' as const },
    { config: 'llama-test' as const, precision: 'fp32' as const },
  ])('$config $precision: every state on disk, and split between RAM and disk', async ({ config, precision }) => {
    const dir = model(config, 2);
    const steps = batches(3, 300, 7);
    const ram = await run(dir, { precision }, steps);
    const disk = await run(dir, { precision, offload: { ram: 256 * MiB, diskDir: tmpDir('offload-disk'), shares: none, subGroupSize: 5000, maxTokens: 32 } }, steps);
    expectSame(ram, disk);
    const split = await run(dir, { precision, offload: { ram: 256 * MiB, diskDir: tmpDir('offload-disk'), shares: half, maxTokens: 32 } }, steps);
    expectSame(ram, split);
  });
});
