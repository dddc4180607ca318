// Offloaded training of a large vocabulary with the LM head and the embedding in tiles, at 512
// tokens per micro-batch: peak RSS within --ram + the runtime's 128 MiB. It went 31-62 MiB past it:
// the tiled head's weight gradient made a fresh array of dy's columns per tile (tokens × vocab
// floats of garbage per micro-batch, 62.5 MiB here), and its input gradient handed the native GEMM a
// whole chunk of dlogits, which it packs into a scratch kept at its largest (a second 62.5 MiB copy
// of the logits the plan did not count). Results stay those of the same run in RAM, bit for bit.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { initModel } from '../src/models/init.js';
import { RUNTIME_OVERHEAD_BYTES } from '../src/policy/memory.js';
import { cli, cliPeak } from './helpers/cli.js';
import { readJsonl, tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';

const MiB = 2 ** 20;

describe('tierlm train --ram with a tiled 32000-row LM head', () => {
  // Llama-test: 2 layers, hidden 128, 32000 rows untied; under 100 MiB (where the plan accepts 512
  // tokens) the head and the embedding are tiled. Old code: fp32 peaked at 258-287 MiB, bf16 at 223.
  const m = tmpDir('vocab-rss-model');
  initModel({ config: 'llama-test', out: m, layers: 2, dtype: 'f32', seed: 3 });
  const file = path.join(tmpDir('vocab-rss-data'), 'data.jsonl');
  const r = rng(11);
  fs.writeFileSync(file, Array.from({ length: 8 }, () => JSON.stringify({ token_ids: Array.from({ length: 512 }, () => Math.floor(r() * 32000)) })).join('\n') + '\n');
  const base = (precision: string, accum: number) => ['train', '--model', m, '--data', file, '--max-steps', '2', '--batch-size', '1',
    '--grad-accum', String(accum), '--seq-len', '512', '--threads', '2', '--precision', precision];
  const ram = 100 * MiB;
  const offloaded = (precision: string, accum: number, out: string) =>
    cliPeak([...base(precision, accum), '--out', out, '--ram', '100MiB', '--disk-dir', tmpDir('vocab-rss-disk')]);

  it('holds --ram + 128 MiB in fp32 with gradient accumulation, with the in-RAM run\'s results', () => {
    const out = tmpDir('vocab-rss-fp32');
    const run = offloaded('fp32', 2, out);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/weights computed in tiles of/);
    expect(run.peakRssBytes / MiB).toBeLessThanOrEqual((ram + RUNTIME_OVERHEAD_BYTES) / MiB);
    const inRam = tmpDir('vocab-rss-fp32-ram');
    const plain = cli([...base('fp32', 2), '--out', inRam]);
    expect(plain.code, plain.stderr).toBe(0);
    const losses = (dir: string) => readJsonl<{ loss: number; grad_norm: number }>(path.join(dir, 'metrics.jsonl')).map((l) => [l.loss, l.grad_norm]);
    expect(losses(out)).toEqual(losses(inRam));
    expect(fs.readFileSync(path.join(out, 'model.safetensors')).equals(fs.readFileSync(path.join(inRam, 'model.safetensors')))).toBe(true);
  });

  it('holds --ram + 128 MiB in bf16', () => {
    const run = offloaded('bf16', 1, tmpDir('vocab-rss-bf16'));
    expect(run.code, run.stderr).toBe(0);
    expect(run.peakRssBytes / MiB).toBeLessThanOrEqual((ram + RUNTIME_OVERHEAD_BYTES) / MiB);
  });
});
