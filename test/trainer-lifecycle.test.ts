// A Trainer's life (src/train/trainer.ts): close() while a step or an evaluation runs waits for it,
// then removes an offloaded run's files (it rejected with "BufferPool.dispose: 1 buffers are still
// leased", left the state files and the lock behind, and the trainer went on training); every call
// after close() is refused by name (step() failed inside the disposed pool, stateSources() gave
// readers of deleted files, and in RAM step, evaluate and saveParams went on as if open). Calls
// made without awaiting run one after another in call order, with the results of awaiting each
// (a step and an evaluation ran at once: wrong losses in RAM, and offloaded, close() met a buffer
// still leased and left the files). And an offloaded plan refused under the RAM limit names
// openTrainer's options to an API caller, the flags to the CLI (src/train/offload/plan.ts; it gave
// API callers --ram-percent and --batch-size).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readPreset } from '../src/models/registry.js';
import { loadProfile } from '../src/policy/profile.js';
import { type Trainer, type TrainerOptions, openTrainer } from '../src/train/index.js';
import type { TrainingState } from '../src/train/training-state.js';
import { type OffloadPlanInput, planOffload } from '../src/train/offload/plan.js';
import { planRank } from '../src/train/partition/plan.js';
import { UserError } from '../src/util/errors.js';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';

const MODEL = 'test/fixtures/llama-tiny';
const MiB = 2 ** 20;
const batch = Array.from({ length: 4 }, (_, i) => ({ tokenIds: Array.from({ length: 40 }, (_, j) => ((i * 7 + j * 3) % 300) + 1) }));

/** Every file under `dir` (the lock, the state files in their own directory). */
function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

async function refusal(p: Promise<unknown>): Promise<Error> {
  const r = await Promise.allSettled([p]);
  if (r[0]!.status === 'fulfilled') throw new Error('not refused');
  return r[0]!.reason as Error;
}

const offloaded = (diskDir: string): TrainerOptions => ({ threads: 1, offload: { ram: 24 * MiB, diskDir } });

describe('Trainer.close()', () => {
  it('during an offloaded step waits for the step, then removes every state file', async () => {
    const diskDir = tmpDir('trainer-close');
    const t = await openTrainer(MODEL, offloaded(diskDir));
    await t.step(batch);
    expect(files(diskDir).length).toBeGreaterThan(0);
    const [step, close] = await Promise.allSettled([t.step(batch), t.close()]);
    expect(close).toEqual({ status: 'fulfilled', value: undefined });
    expect(step.status === 'fulfilled' && step.value.step).toBe(2);
    expect(files(diskDir)).toEqual([]);
    // Closed: no third step (it ran one before), and a second close does nothing.
    const e = await refusal(t.step(batch));
    expect(e).toBeInstanceOf(UserError);
    expect(e.message).toBe('step() was called after close(): open the trainer again');
    expect(t.stepsDone).toBe(2);
    await expect(t.close()).resolves.toBeUndefined();
  });

  it('during an evaluation or a save waits for it', async () => {
    const diskDir = tmpDir('trainer-close');
    const out = path.join(tmpDir('trainer-close-out'), 'w.safetensors');
    const t = await openTrainer(MODEL, offloaded(diskDir));
    await t.step(batch);
    const [evaluation, save, close] = await Promise.allSettled([t.evaluate(batch), t.saveParams(out), t.close()]);
    expect(evaluation.status === 'fulfilled' && Number.isFinite(evaluation.value.loss)).toBe(true);
    expect(save.status).toBe('fulfilled');
    expect(close.status).toBe('fulfilled');
    expect(fs.statSync(out).size).toBeGreaterThan(0);
    expect(files(diskDir)).toEqual([]);
  });

  // Overlapping calls run one after another in call order (they ran at once: an offloaded step and
  // evaluation shared the buffer pool, and close() met a buffer still leased and left the files).
  for (const mode of ['in RAM', 'offloaded'] as const) {
    it(`${mode}: steps, evaluations, a failing step, sync and saveParams not awaited, then close(), give the awaited results`, async () => {
      const dirs = [tmpDir('trainer-order'), tmpDir('trainer-order')];
      const outDir = tmpDir('trainer-order-out');
      const outs = [path.join(outDir, 'awaited.safetensors'), path.join(outDir, 'overlapped.safetensors')];
      const options = (d: string): TrainerOptions => (mode === 'in RAM' ? { threads: 1 } : offloaded(d));
      const other = batch.map((s) => ({ tokenIds: s.tokenIds.slice(0, 30).reverse() }));
      // A failed call in the middle reports to its caller and the ones after it still run.
      const calls = (t: Trainer, out: string) => [() => t.step(batch), () => t.evaluate(other), () => t.step([]), () => t.step(other), () => t.sync(),
        () => t.evaluate(batch), () => t.saveParams(out)];
      // Timings and transfer statistics differ from run to run; every value computed must not.
      const values = (r: PromiseSettledResult<unknown>) => (r.status === 'rejected' ? (r.reason as Error).message
        : r.value && typeof r.value === 'object' && 'step' in r.value ? { ...r.value, seconds: 0, offload: undefined } : r.value);
      const awaited = await openTrainer(MODEL, options(dirs[0]!));
      const expected: unknown[] = [];
      for (const call of calls(awaited, outs[0]!)) expected.push(values((await Promise.allSettled([call()]))[0]!));
      await awaited.close();
      expect(expected[2]).toMatch(/^step: batch must be a non-empty array/);
      const t = await openTrainer(MODEL, options(dirs[1]!));
      const settled = Promise.allSettled(calls(t, outs[1]!).map((call) => call()));
      await expect(t.close()).resolves.toBeUndefined();
      expect((await settled).map(values)).toEqual(expected);
      expect(fs.readFileSync(outs[1]!).equals(fs.readFileSync(outs[0]!))).toBe(true);
      expect(files(dirs[1]!)).toEqual([]);
    });
  }

  for (const mode of ['in RAM', 'offloaded'] as const) {
    it(`${mode}: every method after close() is refused by name`, async () => {
      const diskDir = tmpDir('trainer-closed');
      const t: Trainer = await openTrainer(MODEL, mode === 'in RAM' ? { threads: 1 } : offloaded(diskDir));
      await t.step(batch);
      await t.close();
      const out = path.join(diskDir, 'after.safetensors');
      const profile = loadProfile(process.env.TIERLM_PROFILE!)!;
      const calls: [string, () => unknown][] = [
        ['step', () => t.step(batch)], ['evaluate', () => t.evaluate(batch)], ['saveParams', () => t.saveParams(out)], ['sync', () => t.sync()],
        ['stateSources', () => t.stateSources()], ['parameters', () => t.parameters()], ['parameterCount', () => t.parameterCount()],
        ['restoreStates', () => t.restoreStates(diskDir, {} as TrainingState)], ['predictStep', () => t.predictStep(profile, 80)],
        ['offloadPlacement', () => t.offloadPlacement()],
      ];
      for (const [name, call] of calls) {
        const e = await refusal((async () => call())());
        expect(e, name).toBeInstanceOf(UserError);
        expect(e.message).toBe(`${name}() was called after close(): open the trainer again`);
      }
      expect(fs.existsSync(out)).toBe(false);
      expect(files(diskDir)).toEqual([]);
      await expect(t.close()).resolves.toBeUndefined();
    });
  }
});

describe('an offloaded plan refused under the RAM limit', () => {
  it('names openTrainer\'s options to an API caller, no flag', async () => {
    const diskDir = tmpDir('trainer-ram');
    for (const [offload, held] of [[{ ram: MiB, diskDir }, false], [{ ram: 4 * MiB, diskDir, heldBytes: 3 * MiB }, true]] as const) {
      const e = await refusal(openTrainer(MODEL, { offload }));
      expect(e).toBeInstanceOf(UserError);
      expect(e.message).toMatch(/^RAM limit [\d.]+ MiB is too small by .*\. Raise the RAM limit \(offload\.ram\), compute weights in smaller tiles \(offload\.tileSize\), or use smaller micro-batches \(offload\.maxTokens, or train\(\)'s batchSize and seqLen\) or optimizer sub-groups \(offload\.subGroupSize\)/);
      expect(e.message.includes('offload.heldBytes')).toBe(held);
      expect(e.message).not.toMatch(/--/);
    }
    expect(files(diskDir)).toEqual([]);
  });

  it('under ranks (untiled) names no tile size, in either style', () => {
    const { arch, config } = readPreset('llama-test', 1);
    const o: OffloadPlanInput = { config, names: arch.names(config, () => true), precision: 'fp32', maxTokens: 128, checkpointActivations: true, ram: 3 * MiB };
    const message = (optionNames: 'api' | 'flags') => {
      try {
        planRank({ ...o, ranks: 2, optionNames });
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error('planned');
    };
    expect(message('api')).toMatch(/Raise the RAM limit \(offload\.ram\), or use smaller micro-batches/);
    expect(message('flags')).toMatch(/Raise --ram, or use a smaller --batch-size/);
    expect(message('api')).not.toMatch(/tileSize|--/);
    // A direct caller gets the process's style: this one names options as the API does.
    expect(() => planOffload({ ...o, ram: MiB })).toThrow(/\(offload\.ram\)/);
  });

  it('names the flags to `tierlm train`', () => {
    const dir = tmpDir('trainer-ram-cli');
    const data = path.join(dir, 'data.jsonl');
    fs.writeFileSync(data, batch.map((s) => JSON.stringify({ token_ids: s.tokenIds })).join('\n') + '\n');
    const r = cli(['train', '--model', MODEL, '--data', data, '--out', path.join(dir, 'out'), '--ram', '1MiB', '--disk-dir', dir, '--seq-len', '40', '--batch-size', '2']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^tierlm: RAM limit 1\.0 MiB is too small by .*\. Raise --ram, compute weights in smaller tiles \(--tile-size\), or use a smaller --batch-size, --seq-len or --sub-group-size\.\n$/);
    expect(r.stderr).not.toMatch(/offload\./);
  });
});
