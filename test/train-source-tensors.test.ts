// Source tensors the trainer does not train: an old Llama checkpoint's rotary inv_freq buffer, and
// the lm_head.weight a tied model may store besides its embedding (loaders tie them and ignore it).
// A run on such a model trained every step, then failed at its first save ("the trained weights
// lack this tensor of the source model"), losing every step. Saves copy them unchanged, in their
// own dtype, and the output loads and generates as the source did.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../src/formats/safetensors.js';
import { loadModel } from '../src/index.js';
import { openTrainer, train } from '../src/train/index.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';

/** A copy of fixture `name` whose model.safetensors also holds `extra` (appended after the data). */
function withExtraTensor(name: string, extra: { name: string; dtype: 'F32' | 'BF16'; shape: number[]; bytes: Buffer }): string {
  const dir = tmpDir(`extra-${name}`);
  for (const f of fs.readdirSync(path.join(fixturesDir, name))) fs.copyFileSync(path.join(fixturesDir, name, f), path.join(dir, f));
  const file = path.join(dir, 'model.safetensors');
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
  const data = b.subarray(8 + n);
  header[extra.name] = { dtype: extra.dtype, shape: extra.shape, data_offsets: [data.length, data.length + extra.bytes.length] } as never;
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), data, extra.bytes]));
  return dir;
}

/** A tensor's dtype and raw bytes. */
function tensor(dir: string, name: string): { dtype: string; bytes: Buffer } {
  const f = SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  try {
    const t = f.read(name);
    return { dtype: t.dtype, bytes: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength) };
  } finally {
    f.close();
  }
}

function names(dir: string): string[] {
  const f = SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  f.close();
  return [...f.tensors.keys()].sort();
}

function tokenData(vocab: number): string {
  const r = rng(5);
  const file = path.join(tmpDir('extra-data'), 'data.jsonl');
  fs.writeFileSync(file, Array.from({ length: 6 }, () => JSON.stringify({ token_ids: Array.from({ length: 12 }, () => Math.floor(r() * vocab)) })).join('\n') + '\n');
  return file;
}

async function greedy(dir: string): Promise<number[]> {
  const model = await loadModel(dir);
  try {
    for await (const r of model.generate([{ id: 'a', promptTokenIds: [5, 6, 7, 8] }], { maxNewTokens: 6, stopAtEos: false })) {
      if ('error' in r) throw new Error(r.error);
      return r.tokenIds;
    }
    throw new Error('no result');
  } finally {
    await model.close();
  }
}

async function run(model: string, out: string, o: Record<string, unknown>): Promise<number> {
  let steps = 0;
  for await (const m of train({ model, data: tokenData(384), out, maxSteps: 2, batchSize: 2, seqLen: 16, threads: 1, ...o })) steps = m.step;
  return steps;
}

describe('a model with tensors the trainer does not train', () => {
  it('an old Llama\'s rotary inv_freq buffer: trains 2 steps and saves; the buffer is copied unchanged and the output generates as the source', async () => {
    const inv = Buffer.from(Float32Array.of(1, 0.1, 0.01, 0.001).buffer);
    const src = withExtraTensor('llama-tiny', { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', dtype: 'F32', shape: [4], bytes: inv });
    const out = path.join(tmpDir('extra-llama-out'), 'out');
    // lr 0 and no weight decay: every trained weight stays as it was, so the output must be the
    // source's tensors, bit for bit (bf16 → fp32 master → bf16), and generate what it does.
    expect(await run(src, out, { lr: 0, weightDecay: 0 })).toBe(2);
    expect(names(out)).toEqual(names(src));
    for (const name of names(src)) expect(tensor(out, name), name).toEqual(tensor(src, name));
    expect(tensor(out, 'model.layers.0.self_attn.rotary_emb.inv_freq')).toEqual({ dtype: 'f32', bytes: inv });
    expect(await greedy(out)).toEqual(await greedy(src));
  });

  it('a tied model that also stores lm_head.weight, offloaded: the embedding trains, the stored head is copied unchanged, and the output loads', async () => {
    const embed = tensor(path.join(fixturesDir, 'qwen2-tiny'), 'model.embed_tokens.weight');
    const src = withExtraTensor('qwen2-tiny', { name: 'lm_head.weight', dtype: 'BF16', shape: [416, 64], bytes: embed.bytes });
    const out = path.join(tmpDir('extra-qwen2-out'), 'out');
    expect(await run(src, out, { lr: 1e-2, ram: 64 * 2 ** 20, diskDir: tmpDir('extra-qwen2-disk') })).toBe(2);
    expect(names(out)).toEqual(names(src));
    expect(tensor(out, 'model.embed_tokens.weight').bytes.equals(embed.bytes)).toBe(false);
    expect(tensor(out, 'lm_head.weight')).toEqual(tensor(src, 'lm_head.weight'));
    expect(await greedy(out)).toHaveLength(6);
  });

  // What a save needs of the source beyond its tensors is checked when the trainer opens, before
  // any step: a torch_dtype saves cannot write was only found at the first save.
  it('a dtype saves cannot write is refused by openTrainer, naming config.json', async () => {
    const dir = withExtraTensor('llama-tiny', { name: 'model.rotary_emb.inv_freq', dtype: 'F32', shape: [1], bytes: Buffer.alloc(4) });
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, torch_dtype: 'float64' }));
    await expect(openTrainer(dir)).rejects.toThrow(`${path.join(dir, 'config.json')}: torch_dtype "float64" is not one of float32, float16, bfloat16`);
  });
});
