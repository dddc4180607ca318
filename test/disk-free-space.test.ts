// The disk tier's limit without --disk: the free space in --disk-dir (plus packed weights there a
// run reuses), said on stderr, so that a plan never puts more on disk than the file system holds
// (a run planned without it died of ENOSPC midway). Also: each size flag's error says what leaving
// it out gives, and a failed first conversion leaves no packed-weights folder behind.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import { cpuBackend } from '../src/backend/index.js';
import type { ModelConfig } from '../src/models/config.js';
import type { WeightLoader } from '../src/models/weights.js';
import { diskLimitFromFreeSpace, freeBytes, reusedWeights, sizeOption } from '../src/cli/policy-options.js';
import { WeightStore } from '../src/schedule/weight-store.js';
import { withWeightsLock } from '../src/schedule/weights-dir.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

const MiB = 2 ** 20;
const opt = path.join(fixturesDir, 'opt-tiny');
const env = { TIERLM_PROFILE: path.join(fixturesDir, 'hardware-profile.json') };

/** A copy of the opt-tiny fixture (its files' times may then change) and a disk directory. */
function copyModel(): { model: string; disk: string } {
  const root = tmpDir('free-space');
  const model = path.join(root, 'opt-tiny');
  fs.mkdirSync(model);
  for (const f of fs.readdirSync(opt)) fs.copyFileSync(path.join(opt, f), path.join(model, f));
  const disk = path.join(root, 'disk');
  fs.mkdirSync(disk);
  return { model, disk };
}

/** Loads `model` with half its weights on disk in `disk` (converting them there), then closes it. */
async function convertInto(model: string, disk: string): Promise<void> {
  const m = await loadModel(model, { diskDir: disk, policy: { wCpuPercent: 50 } });
  await m.close();
}

describe('the disk limit from free space', () => {
  it('is the free bytes, plus reused packed weights, shared by the ranks on the machine, at least one byte', () => {
    expect(diskLimitFromFreeSpace('/d', 200 * MiB, null)).toEqual({
      bytes: 200 * MiB, note: 'no --disk given: the disk limit is the free space in /d, 200.0 MiB (--disk SIZE sets another)',
    });
    const reused = { dir: '/d/weights-m-fp32-0123456789abcdef', bytes: 192 * MiB };
    const r = diskLimitFromFreeSpace('/d', 8 * MiB, reused);
    expect(r.bytes).toBe(200 * MiB);
    expect(r.note).toContain('8.0 MiB, plus the 192.0 MiB of packed weights in /d/weights-m-fp32-0123456789abcdef that this run reuses');
    const shared = diskLimitFromFreeSpace('/d', 100 * MiB, null, 4);
    expect(shared.bytes).toBe(25 * MiB);
    expect(shared.note).toContain('100.0 MiB, 25.0 MiB for each of 4 ranks on this machine');
    expect(diskLimitFromFreeSpace('/d', 0, null).bytes).toBe(1); // the planner takes no limit of 0
  });

  it("reads the directory's free space (statfs)", () => {
    const free = freeBytes(tmpDir('statfs'));
    expect(Number.isSafeInteger(free) && free > 0).toBe(true);
  });

  it("counts a model's converted weights only while they are complete and its files unchanged", async () => {
    const { model, disk } = copyModel();
    expect(reusedWeights(disk, model, 'fp32')).toBeNull();
    await convertInto(model, disk);
    const reused = reusedWeights(disk, model, 'fp32');
    expect(reused).not.toBeNull();
    expect(path.dirname(reused!.dir)).toBe(disk);
    expect(reused!.bytes).toBe(fs.statSync(path.join(reused!.dir, 'weights.bin')).size);
    expect(reused!.bytes).toBeGreaterThan(0);
    expect(reusedWeights(disk, model, 'bf16')).toBeNull(); // another mode converts its own
    expect(reusedWeights(disk, model, 'fp32-q4')).toBeNull();
    const file = path.join(model, 'model.safetensors');
    const t = fs.statSync(file).mtime;
    fs.utimesSync(file, t, new Date(t.getTime() + 5000)); // changed since: the run converts again
    expect(reusedWeights(disk, model, 'fp32')).toBeNull();
  });

  it('is what `tierlm plan --disk-dir` plans under without --disk, and says so; --disk still wins', async () => {
    const { model, disk } = copyModel();
    await convertInto(model, disk);
    const r = cli(['plan', '--model', model, '--prompt-len', '4', '--gen-len', '4', '--disk-dir', disk], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`^tierlm: no --disk given: the disk limit is the free space in ${disk}, [0-9.]+ [KMGT]?i?B, ` +
      `plus the [0-9.]+ KiB of packed weights in ${disk}/weights-opt-tiny-fp32-[0-9a-f]{16} that this run reuses`, 'm'));
    expect(r.stdout).toContain('memory   RAM');
    const given = cli(['plan', '--model', model, '--prompt-len', '4', '--gen-len', '4', '--disk-dir', disk, '--disk', '1GiB'], env);
    expect(given.code, given.stderr).toBe(0);
    expect(given.stderr).not.toContain('free space');
  });

  // A run says nothing of the limit up front, and its refusal named a "disk limit 1 B" on a full
  // file system (/proc has no free space) that no flag had set, under the RAM item's label.
  it('a run refused by it says where the limit came from', () => {
    const r = cli(['generate', '--model', opt, '--prompts', path.join(fixturesDir, 'prompts.jsonl'), '--out', path.join(tmpDir('free-space-out'), 'o.jsonl'),
      '--percent', '0', '0', '0', '0', '0', '0', '--disk-dir', '/proc'], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^tierlm: disk limit 1 B is too small by [0-9.]+ KiB for .*layer weights \(packed on disk\) [0-9.]+ KiB.*\) \(no --disk given: the disk limit is the free space in \/proc, 0 B \(--disk SIZE sets another\)\)$/m);
  });
});

describe('a size flag below one byte', () => {
  it('says what leaving that flag out gives', () => {
    const refused = (name: string, omitted?: string) => {
      try {
        sizeOption(name, omitted)('0B');
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error(`${name} 0B was accepted`);
    };
    expect(refused('--ram')).toBe('--ram: "0B" is less than one byte (leave --ram out for no limit)');
    expect(refused('--body-limit')).toBe('--body-limit: "0B" is less than one byte (leave --body-limit out for the default, 4 MiB)');
    expect(refused('--tile-size')).toBe('--tile-size: "0B" is less than one byte (leave --tile-size out to plan it from --ram)');
    expect(refused('--x', 'for the default, 1 KiB')).toBe('--x: "0B" is less than one byte (leave --x out for the default, 1 KiB)');
  });

  it('on the command line: --body-limit, --tile-size and --disk', () => {
    const serve = cli(['serve', '--model', opt, '--body-limit', '0B']);
    expect(serve.code).not.toBe(0);
    expect(serve.stderr).toContain('leave --body-limit out for the default, 4 MiB');
    const train = cli(['train', '--model', opt, '--data', 'x.jsonl', '--out', 'y', '--tile-size', '0.5B']);
    expect(train.code).not.toBe(0);
    expect(train.stderr).toContain('leave --tile-size out to plan it from --ram');
    const plan = cli(['plan', '--model', opt, '--disk', '0B']);
    expect(plan.stderr).toContain('leave --disk out to take the free space in --disk-dir');
  });
});

describe('a failed first conversion', () => {
  /** A loader of one layer whose weights cannot be packed (as a write that fails midway). */
  const failing = {
    matrices: () => [{ slot: 'q', name: 'layers.0.q', part: 'attn', bias: false }],
    sizes: () => ({ packedChunkBytes: 4096 }),
    packMatrixChunks: () => {
      throw Object.assign(new Error('ENOSPC (No space left on device) injected'), { code: 'ENOSPC' });
    },
  } as unknown as WeightLoader;
  const config = { layers: 1 } as ModelConfig;
  const shares = { device: 0, ram: 0.5, disk: 0.5 };

  it('removes its packed-weights folder; a folder with weights stays', async () => {
    const dir = path.join(tmpDir('failed-convert'), 'weights-m-fp32-0123456789abcdef');
    fs.mkdirSync(dir);
    await expect(WeightStore.open(failing, config, cpuBackend(), 'fp32', shares, dir, [])).rejects.toThrow(/ENOSPC/);
    expect(fs.existsSync(dir), 'the failed conversion left its folder').toBe(false);

    // Weights converted before (a stale manifest: converted again, and that fails) are not removed.
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'weights.bin'), Buffer.alloc(4096));
    fs.writeFileSync(path.join(dir, 'weights.json'), JSON.stringify({ key: 'stale', tensors: [] }));
    await expect(WeightStore.open(failing, config, cpuBackend(), 'fp32', shares, dir, [])).rejects.toThrow(/ENOSPC/);
    expect(fs.readdirSync(dir).sort()).toEqual(['convert.lock', 'weights.bin', 'weights.json']);
  });

  it('lets a run waiting for the lock go on in a folder made again', async () => {
    const dir = path.join(tmpDir('failed-convert-wait'), 'weights-m-fp32-0123456789abcdef');
    fs.mkdirSync(dir);
    let fail!: () => void;
    const failed = new Promise<void>((resolve) => (fail = resolve));
    const first = withWeightsLock(dir, () => {}, async () => {
      await failed;
      throw new Error('injected conversion failure');
    });
    const waits: string[] = [];
    const second = withWeightsLock(dir, (m) => waits.push(m), async () => {
      fs.writeFileSync(path.join(dir, 'weights.json'), '{}'); // the folder exists, and is ours
      return 'converted';
    });
    await new Promise((r) => setTimeout(r, 250));
    expect(waits).toHaveLength(1);
    fail();
    await expect(first).rejects.toThrow('injected conversion failure');
    await expect(second).resolves.toBe('converted');
    expect(fs.readdirSync(dir).sort()).toEqual(['convert.lock', 'weights.json']);
  });
});
