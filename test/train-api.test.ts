// The training API around the step: learning-rate schedules (Hugging Face's formulas), input
// errors, evaluate, saveParams and resuming from saved states.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { UserError, loadModel } from '../src/index.js';
import { learningRate } from '../src/train/schedule.js';
import { openTrainer } from '../src/train/index.js';
import { tmpDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES, fixtureBatch } from './helpers/train.js';

const OPT = path.join(TRAIN_FIXTURES, 'opt-train');

describe('learning-rate schedules', () => {
  const at = (schedule: 'constant' | 'linear' | 'cosine', warmupSteps: number, totalSteps: number) =>
    Array.from({ length: totalSteps + 1 }, (_, s) => learningRate({ lr: 2, schedule, warmupSteps, totalSteps }, s));

  it('constant, linear and cosine with warmup, as get_*_schedule_with_warmup', () => {
    expect(at('constant', 3, 5)).toEqual([0, 2 / 3, 4 / 3, 2, 2, 2]);
    expect(at('linear', 2, 6)).toEqual([0, 1, 2, 1.5, 1, 0.5, 0]);
    const cos = at('cosine', 2, 6);
    [0, 1, 2, 1 + Math.cos(Math.PI / 4), 1, 1 + Math.cos((3 * Math.PI) / 4), 0].forEach((v, i) => expect(cos[i]).toBeCloseTo(v, 12));
    expect(at('linear', 0, 4)).toEqual([2, 1.5, 1, 0.5, 0]);
  });

  it('each step reports the rate it used', async () => {
    const trainer = await openTrainer(OPT, { lr: 1e-3, lrSchedule: 'linear', warmupSteps: 1, totalSteps: 3 });
    const batch = fixtureBatch();
    const lrs = [];
    for (let s = 0; s < 3; s++) lrs.push((await trainer.step(batch)).lr);
    expect(lrs).toEqual([0, 1e-3, 5e-4]);
  });

  it('rejects schedules it cannot run', async () => {
    await expect(openTrainer(OPT, { lrSchedule: 'cosine' })).rejects.toThrow(/needs totalSteps/);
    await expect(openTrainer(OPT, { lr: -1 })).rejects.toThrow(/lr must be/);
  });

  it('refuses options it does not know, and wrong values, by name (a misspelt one trained at the default)', async () => {
    const refused = async (o: unknown) => (await openTrainer(OPT, o as never).catch((e: Error) => e)) as Error;
    expect((await refused({ learningRate: 1 })).message).toMatch(/^openTrainer\(\) options: unknown option "learningRate" \(known: precision, /);
    expect((await refused({ max_grad_norm: 0 })).message).toMatch(/unknown option "max_grad_norm"/);
    expect((await refused(null)).message).toBe('openTrainer() options must be an object');
    expect((await refused({ checkpointActivations: 'no' })).message).toMatch(/^checkpointActivations must be true or false/);
    expect((await refused({ computeMode: 'fp16' })).message).toMatch(/^computeMode must be 'fp32' or 'bf16', got "fp16"/);
    expect((await refused({ betas: [0.9, 1] })).message).toMatch(/^betas must be two numbers in \[0, 1\)/);
    const disk = tmpDir('trainer-options');
    expect((await refused({ offload: { ram: '64MiB', diskDir: disk } })).message).toMatch(/^offload\.ram must be the RAM limit in bytes/);
    expect((await refused({ offload: { ram: 1e9 } })).message).toMatch(/^offload\.diskDir must be the disk tier's directory/);
    expect((await refused({ offload: { ram: 1e9, diskDir: disk, shres: {} } })).message).toMatch(/^offload: unknown option "shres"/);
    expect((await refused({ offload: { ram: 1e9, diskDir: disk, shares: { param: 2 } } })).message).toMatch(/^offload\.shares\.param must be a number in \[0, 1\], got 2/);
    expect(fs.readdirSync(disk)).toEqual([]);
  });
});

describe('inputs', () => {
  it('names the sequence and token at fault', async () => {
    const trainer = await openTrainer(OPT);
    await expect(trainer.step([{ tokenIds: [1, 2, 512] }])).rejects.toThrow(/sequence 0: token 2 = 512 is outside the vocabulary of 512/);
    await expect(trainer.step([{ tokenIds: [1, 2] }, { tokenIds: [1, 2, 3], labels: [1, 2] }])).rejects.toThrow(/sequence 1: labels has 2 entries/);
    await expect(trainer.step([{ tokenIds: [1, 2], labels: [-100, -100] }])).rejects.toThrow(UserError);
    await expect(trainer.step([{ tokenIds: Array(129).fill(5) }])).rejects.toThrow(/more than the model's 128 positions/);
    await expect(trainer.step([{ tokenIds: [] }])).rejects.toThrow(/sequence 0 is empty/);
    await expect(trainer.step([])).rejects.toThrow(TypeError);
    await expect(trainer.step([[{ tokenIds: [1, 2] }], []])).rejects.toThrow(/a micro-batch needs at least one sequence/);
    expect(trainer.stepsDone).toBe(0);
  });

  it('refuses a checkpoint whose tensors disagree with config.json', async () => {
    const dir = tmpDir('train-shape');
    try {
      const config = JSON.parse(fs.readFileSync(path.join(OPT, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, ffn_dim: 128 }));
      fs.copyFileSync(path.join(OPT, 'model.safetensors'), path.join(dir, 'model.safetensors'));
      await expect(openTrainer(dir)).rejects.toThrow(/layers\.0\.fc1\.weight'\): shape \[256, 64\] disagrees with config.json \(expected \[128, 64\]\)/);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('evaluate gives the loss the step reports', async () => {
    const trainer = await openTrainer(OPT, { lr: 1e-3 });
    const batch = fixtureBatch();
    const before = await trainer.evaluate(batch);
    const step = await trainer.step(batch);
    expect(before.targets).toBe(step.targets);
    expect(Math.abs(before.loss - step.loss) / step.loss).toBeLessThan(1e-6);
    expect((await trainer.evaluate(batch)).loss).toBeLessThan(before.loss);
  });
});

describe('saving and resuming', () => {
  it('saveParams writes a model directory that loadModel and openTrainer read back', async () => {
    const trainer = await openTrainer(OPT, { lr: 1e-3 });
    await trainer.step(fixtureBatch());
    const dir = tmpDir('train-save');
    try {
      fs.copyFileSync(path.join(OPT, 'config.json'), path.join(dir, 'config.json'));
      // a dtype it cannot write is refused, no file made (fp8 wrote a header with no dtype)
      await expect(trainer.saveParams(path.join(dir, 'bad.safetensors'), 'fp8' as never)).rejects.toThrow(new RangeError(`saveParams: dtype must be 'f32', 'bf16' or 'f16', got "fp8"`));
      expect(fs.existsSync(path.join(dir, 'bad.safetensors'))).toBe(false);
      await trainer.saveParams(path.join(dir, 'model.safetensors'));
      const again = await openTrainer(dir);
      for (const [i, p] of again.parameters().entries()) expect(p.master.data).toEqual(trainer.parameters()[i]!.master.data);
      const model = await loadModel(dir);
      try {
        for await (const r of model.generate([{ id: 'a', promptTokenIds: [5, 6, 7] }], { maxNewTokens: 2, stopAtEos: false })) {
          expect('tokenIds' in r && r.tokenIds.length).toBe(2);
        }
      } finally {
        model.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('a trainer given the saved weights, moments and step count continues exactly', async () => {
    const batch = fixtureBatch();
    const a = await openTrainer(OPT, { lr: 1e-3 });
    await a.step(batch);
    const b = await openTrainer(OPT, { lr: 1e-3 });
    b.parameters().forEach((p, i) => {
      const q = a.parameters()[i]!;
      p.master.data.set(q.master.data);
      p.m.data.set(q.m.data);
      p.v.data.set(q.v.data);
    });
    b.stepsDone = a.stepsDone;
    const [sa, sb] = [await a.step(batch), await b.step(batch)];
    expect(sb).toEqual({ ...sa, seconds: sb.seconds });
    b.parameters().forEach((p, i) => expect(p.master.data).toEqual(a.parameters()[i]!.master.data));
  });
});
