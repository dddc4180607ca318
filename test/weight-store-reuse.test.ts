// When packed weights in a disk directory are reused and when they are converted again: a model file
// swapped in with its old size and mtime (as rsync -a, cp -p and tar x leave it) is converted again,
// as is a manifest whose tensor list config.json no longer gives, and a weights.bin truncated or
// deleted since; reusablePackedBytes counts the packed weights only when a run would reuse them.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import { reusablePackedBytes } from '../src/schedule/weight-store.js';
import { weightsFolder } from '../src/schedule/disk-tier.js';
import { type Reference, fixturePrompts, fixturesDir, readJsonl, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const MTIME = 1_700_000_000;
const reference = readJsonl<Reference>(path.join(opt, 'reference.jsonl')).map((r) => r.token_ids);

/** A copy of the opt-tiny fixture, a disk directory, and the folder its packed weights go in. */
function copyModel(): { model: string; disk: string; folder: string } {
  const root = tmpDir('reuse');
  const model = path.join(root, 'opt-tiny');
  fs.mkdirSync(model);
  for (const f of fs.readdirSync(opt)) fs.copyFileSync(path.join(opt, f), path.join(model, f));
  // Whole seconds, which utimes sets back exactly (a Date has only milliseconds).
  fs.utimesSync(path.join(model, 'model.safetensors'), MTIME, MTIME);
  const disk = path.join(root, 'disk');
  fs.mkdirSync(disk);
  return { model, disk, folder: weightsFolder(disk, model, 'fp32') };
}

/** Greedy tokens for the fixture prompts with every layer weight on disk in `disk`, and the log. */
async function generate(model: string, disk: string, options: { precision?: 'bf16'; compressWeight?: boolean } = {}):
  Promise<{ tokens: number[][]; logs: string[] }> {
  const logs: string[] = [];
  const policy = { wGpuPercent: 0, wCpuPercent: 0, compressWeight: options.compressWeight === true };
  const m = await loadModel(model, { diskDir: disk, log: (s) => logs.push(s), precision: options.precision, policy });
  const tokens: number[][] = [];
  try {
    const requests = fixturePrompts().map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));
    for await (const r of m.generate(requests, { maxNewTokens: 8, stopAtEos: false })) {
      if ('error' in r) throw new Error(r.error);
      tokens.push(r.tokenIds);
    }
  } finally {
    await m.close();
  }
  return { tokens, logs };
}

/** Negates every fc2 weight of a safetensors file's bytes (flips the f16 sign bits): same shapes. */
function negateFc2(bytes: Buffer): Buffer {
  const out = Buffer.from(bytes);
  const n = Number(out.readBigUInt64LE(0));
  const header = JSON.parse(out.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  for (const [name, t] of Object.entries(header)) {
    if (!name.endsWith('fc2.weight')) continue;
    expect(t.dtype).toBe('F16');
    for (let i = 8 + n + t.data_offsets[0]; i < 8 + n + t.data_offsets[1]; i += 2) out[i + 1]! ^= 0x80;
  }
  return out;
}

const ino = (file: string) => fs.statSync(file).ino;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('packed weights of a model file changed with its old size and mtime', () => {
  it('are converted again when a new file is renamed in (a new inode), giving the new model\'s tokens', async () => {
    const { model, disk, folder } = copyModel();
    expect((await generate(model, disk)).tokens).toEqual(reference);
    const src = path.join(model, 'model.safetensors');
    const old = fs.statSync(src);
    fs.writeFileSync(`${src}.new`, negateFc2(fs.readFileSync(src)));
    fs.utimesSync(`${src}.new`, MTIME, MTIME);
    fs.renameSync(`${src}.new`, src);
    expect(fs.statSync(src).mtimeMs).toBe(old.mtimeMs);
    expect(fs.statSync(src).size).toBe(old.size);
    expect(reusablePackedBytes(folder), 'counted as reused').toBeNull();

    const freshDir = path.join(path.dirname(disk), 'fresh');
    fs.mkdirSync(freshDir);
    const fresh = await generate(model, freshDir);
    expect(fresh.tokens).not.toEqual(reference); // the change shows in the tokens
    expect((await generate(model, disk)).tokens).toEqual(fresh.tokens);
    expect(reusablePackedBytes(folder)).toBe(fs.statSync(path.join(folder, 'weights.bin')).size);
  });

  it('are converted again when the file is rewritten in place (its ctime moves; utime cannot set that)', async () => {
    const { model, disk, folder } = copyModel();
    await generate(model, disk);
    const bin = path.join(folder, 'weights.bin');
    const before = ino(bin);
    const src = path.join(model, 'model.safetensors');
    const old = fs.statSync(src);
    await sleep(20); // past the clock tick that stamped the file, so that its ctime moves
    fs.writeFileSync(src, fs.readFileSync(src));
    fs.utimesSync(src, MTIME, MTIME);
    expect(ino(src)).toBe(old.ino);
    expect(fs.statSync(src).mtimeMs).toBe(old.mtimeMs);
    expect(reusablePackedBytes(folder)).toBeNull();
    expect((await generate(model, disk)).tokens).toEqual(reference);
    expect(ino(bin), 'weights.bin was reused').not.toBe(before); // a conversion renames a new file in
    expect(reusablePackedBytes(folder)).not.toBeNull();

    const reused = await generate(model, disk); // unchanged since: reused, saying nothing
    expect(ino(bin)).not.toBe(before);
    const after = ino(bin);
    expect(reused.tokens).toEqual(reference);
    expect(reused.logs).toEqual([]);
    expect(ino(bin)).toBe(after);
  });
});

describe('packed weights whose tensor list config.json no longer gives', () => {
  it('are converted again, not indexed past their list', async () => {
    const { model, disk, folder } = copyModel();
    const config = path.join(model, 'config.json');
    const three = fs.readFileSync(config, 'utf8');
    fs.writeFileSync(config, three.replace('"num_hidden_layers": 3', '"num_hidden_layers": 2'));
    await generate(model, disk);
    fs.writeFileSync(config, three);
    // config.json is one of the stamped sources: the changed one is not counted as reused
    expect(reusablePackedBytes(folder)).toBeNull();
    const r = await generate(model, disk);
    expect(r.tokens).toEqual(reference);
    expect((await generate(model, disk)).logs).toEqual([]);
    // A manifest that matches but lists other tensors (cut here by hand) is not trusted either.
    const manifest = path.join(folder, 'weights.json');
    const m = JSON.parse(fs.readFileSync(manifest, 'utf8')) as { tensors: unknown[] };
    fs.writeFileSync(manifest, JSON.stringify({ ...m, tensors: m.tensors.slice(0, 12) }));
    const cut = await generate(model, disk);
    expect(cut.tokens).toEqual(reference);
    expect(cut.logs.join('\n')).toContain(`${manifest} lists 12 packed tensors, this model has 18: converting the weights again`);
  });
});

describe('a damaged weights.bin under a kept manifest', () => {
  it('is converted again, saying so, when truncated or deleted; it is not counted as reused meanwhile', async () => {
    const { model, disk, folder } = copyModel();
    await generate(model, disk);
    const bin = path.join(folder, 'weights.bin');
    expect(reusablePackedBytes(folder)).toBe(fs.statSync(bin).size);

    fs.truncateSync(bin, 4096);
    expect(reusablePackedBytes(folder)).toBeNull();
    const truncated = await generate(model, disk);
    expect(truncated.tokens).toEqual(reference);
    expect(truncated.logs.join('\n')).toMatch(new RegExp(`${bin} is 4096 bytes, shorter than the \\d+ its manifest lists: converting the weights again`));
    expect(reusablePackedBytes(folder)).toBe(fs.statSync(bin).size);

    fs.rmSync(bin);
    expect(reusablePackedBytes(folder)).toBeNull();
    const deleted = await generate(model, disk);
    expect(deleted.tokens).toEqual(reference);
    expect(deleted.logs.join('\n')).toContain(`${bin} cannot be read (ENOENT): converting the weights again`);
    expect((await generate(model, disk)).logs).toEqual([]);
  });
});

describe('packed weights left as they were', () => {
  it('are reused in every format (f16, bf16, 4-bit), saying nothing', async () => {
    const { model, disk } = copyModel();
    for (const options of [{}, { precision: 'bf16' as const }, { compressWeight: true }]) {
      const first = await generate(model, disk, options);
      const folder = weightsFolder(disk, model, (options.precision ?? 'fp32') + (options.compressWeight ? '-q4' : ''));
      const bin = ino(path.join(folder, 'weights.bin'));
      const again = await generate(model, disk, options);
      expect(again.tokens, JSON.stringify(options)).toEqual(first.tokens);
      expect(again.logs, JSON.stringify(options)).toEqual([]);
      expect(ino(path.join(folder, 'weights.bin')), `${JSON.stringify(options)}: converted again`).toBe(bin);
    }
  });
});
