// An offloaded training plan refused under --ram and --disk names the limit that is short, by the
// amount that is short (src/train/offload/plan.ts). Before, when the default tiles were short of RAM
// and every smaller tile (which fit the RAM) was short of disk, it named the RAM limit with the
// default tiles' shortfall: --ram 40MiB --disk 100MiB was "RAM limit 40.0 MiB is too small by
// 5.5 MiB", though --ram 40MiB ran without --disk and --ram 46MiB was still refused.
import { describe, expect, it } from 'vitest';
import { readPreset } from '../src/models/registry.js';
import { LimitRefusal, type OffloadPlanInput, planOffload } from '../src/train/offload/plan.js';
import { formatSize } from '../src/tensor/tiers/size.js';
import { alignUp } from '../src/tensor/disk/io.js';
import { planRank } from '../src/train/partition/plan.js';

const MiB = 2 ** 20;
// The reviewer's run: Llama-test with one layer (a 32000-row f32 embedding and head), fp32,
// --batch-size 2 --seq-len 64.
const { arch, config } = readPreset('llama-test', 1);
const base: Omit<OffloadPlanInput, 'ram'> = { config, names: arch.names(config, () => true), precision: 'fp32', maxTokens: 128, disk: 100 * MiB,
  checkpointActivations: true, optionNames: 'flags' };

function refused(o: OffloadPlanInput): LimitRefusal {
  try {
    planOffload(o);
  } catch (e) {
    if (e instanceof LimitRefusal) return e;
    throw e;
  }
  throw new Error(`planned under ${JSON.stringify({ ram: o.ram, disk: o.disk })}`);
}

const fits = (o: OffloadPlanInput) => expect(() => planOffload(o)).not.toThrow();

describe('the levers a RAM refusal names', () => {
  // It named --ram-percent with every state on disk already, and never --ram itself.
  it('the RAM limit first, and fewer states in RAM only where some are', () => {
    const none = refused({ ...base, ram: 30 * MiB, disk: undefined });
    expect(none.message).toMatch(/\. Raise --ram, compute weights in smaller tiles \(--tile-size\), or use/);
    const all = refused({ ...base, ram: 60 * MiB, disk: undefined, shares: { param: 1, grad: 1, master: 1, m: 1, v: 1, act: 1 } });
    expect(all.message).toMatch(/\. Raise --ram, keep fewer states in RAM \(--ram-percent\), compute weights/);
  });
});

describe('the disk a tiled plan counts', () => {
  // A tiled weight read from disk gets a transposed copy for its input gradient; an untied
  // embedding has none (its rows are gathered, never multiplied): its 15.6 MiB were counted and
  // reserved, never written, and a --disk the run fits was refused.
  it('a transposed copy for the head, none for an untied embedding', () => {
    const plan = planOffload({ ...base, ram: 48 * MiB, disk: undefined, shares: { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 } });
    expect(plan.tiled.has('model.embed_tokens.weight') && plan.tiled.has('lm_head.weight')).toBe(true);
    const copies = plan.layout.params.filter((p) => plan.tiled.has(p.name) && p.name !== 'model.embed_tokens.weight');
    expect(plan.items.find((i) => i.what === 'transposed copies of the tiled weights')!.disk).toBe(copies.reduce((n, p) => n + alignUp(p.size * 4), 0));
  });
});

describe('a training plan refused under --ram and --disk', () => {
  it('names the disk limit, by its shortfall at the tiles the RAM fits, and the RAM limit that would fit it', () => {
    // (44 and 48 MiB since the tile buffers count a tile of Wᵀ whole: 32 columns × 32000 rows)
    for (const ram of [44 * MiB, 48 * MiB]) {
      const e = refused({ ...base, ram });
      expect(e.tier).toBe('disk');
      expect(e.message).toMatch(new RegExp(`^disk limit 100\\.0 MiB is too small by ${formatSize(e.short)} for training 1 layers with 128 tokens per micro-batch: ` +
        `needs ${formatSize(100 * MiB + e.short)} \\(.*\\), with weights in tiles of ${formatSize(e.tileBytes)} \\(with larger ones the RAM limit ${formatSize(ram)} is short\\)\\. ` +
        'Raise the disk limit by that, or the RAM limit to ([\\d.]+) MiB \\(which keeps enough of the states in RAM\\)\\.$'));
      // Each claim holds: the RAM limit fits those tiles; the disk limit raised by the shortfall
      // fits (a byte less does not); the RAM limit named fits the disk limit as it is.
      fits({ ...base, ram, disk: undefined, tileSize: e.tileBytes });
      fits({ ...base, ram, disk: 100 * MiB + e.short });
      expect(refused({ ...base, ram, disk: 100 * MiB + e.short - 1 }).tier).toBe('disk');
      const enough = Number(/RAM limit to ([\d.]+) MiB/.exec(e.message)![1]) * MiB;
      expect(enough).toBeGreaterThan(ram);
      fits({ ...base, ram: enough });
    }
  });

  it('gives the least disk shortfall of the tiles tried, not the first', () => {
    // At 60 MiB every tile fits the RAM; the default ones leave the least of it for the states.
    const e = refused({ ...base, ram: 60 * MiB });
    expect(e.message).toMatch(/^disk limit 100\.0 MiB is too small by [\d.]+ MiB .*\)\. Raise the disk limit by that, or the RAM limit to [\d.]+ MiB/);
    fits({ ...base, ram: 60 * MiB, disk: 100 * MiB + e.short });
    expect(refused({ ...base, ram: 60 * MiB, disk: 100 * MiB + e.short - 1 }).tier).toBe('disk');
  });

  it('names the RAM limit where no tile fits it, with or without a disk limit', () => {
    for (const disk of [100 * MiB, undefined]) {
      const e = refused({ ...base, ram: 30 * MiB, disk });
      expect(e.tier).toBe('ram');
      expect(e.message).toMatch(new RegExp(`^RAM limit 30\\.0 MiB is too small by ${formatSize(e.short)} for training 1 layers .*Raise --ram, `));
      expect(e.message).not.toMatch(/disk limit/);
      expect(e.message).toMatch(/--tile-size/);
    }
  });

  it('under ranks, which compute weights untiled, does not advise --tile-size', () => {
    let message = '';
    try {
      planRank({ ...base, ram: 3 * MiB, disk: undefined, ranks: 2 });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/^RAM limit 3\.0 MiB is too small by .*Raise --ram, or use a smaller --batch-size/);
    expect(message).not.toMatch(/--tile-size/);
  });

  it('with given shares, names only the disk limit (more RAM would not move the states)', () => {
    const none = { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 };
    const e = refused({ ...base, ram: 60 * MiB, shares: none });
    expect(e.message).toMatch(/^disk limit 100\.0 MiB is too small by .*\. Raise the disk limit by that\.$/);
  });
});

describe('an offloaded plan under ranks', () => {
  it("holds rank 0's spill of the whole model's fp32 masters at a checkpoint in the disk limit", () => {
    // (the reviewer's run: rank 0's directory reached 158.6 MiB under --disk 110MiB, the extra being
    // the gathered masters of every rank, 4 bytes a parameter of the whole model)
    const params = config.vocabSize * config.hidden * 2 + config.layers * (4 * config.hidden * config.hidden + 3 * config.hidden * config.ffn);
    const plan = planRank({ ...base, ram: 512 * MiB, disk: undefined, ranks: 2 });
    const spill = plan.items.find((i) => /gathered fp32 masters, spilled/.test(i.what));
    expect(spill?.disk).toBeGreaterThanOrEqual(4 * params * 0.98);
    // A disk limit that holds the states but not the spill is refused, naming the spill.
    const states = plan.items.reduce((n, i) => n + i.disk, 0) - spill!.disk;
    let message = '';
    try {
      planRank({ ...base, ram: 512 * MiB, disk: states + spill!.disk / 2, ranks: 2 });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/^disk limit .* too small by .*gathered fp32 masters, spilled/);
  });
});
