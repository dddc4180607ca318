// Checkpoints: a Hugging Face model directory that loads and generates as the source did, the
// training state read back bit for bit with clear errors on mismatch, and saves that a SIGKILL
// in the middle of cannot damage.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { SafetensorsFile } from '../src/formats/safetensors.js';
import { loadModel } from '../src/index.js';
import { f32ToBf16, f32ToF16 } from '../src/tensor/dtype.js';
import { LATEST, latestCheckpoint, loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { MODEL_SIDE_FILES, narrow, writeModelFiles } from '../src/train/model-writer.js';
import { readTensorFile, writeTensorFile } from '../src/train/tensor-file.js';
import { STATE_DIR, type TrainingState } from '../src/train/training-state.js';
import { type Prompt, type Reference, fixturesDir, readJsonl, repoRoot, tmpDir } from './helpers/fixtures.js';
import { stateFromModel } from './helpers/train-state.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const prompts = readJsonl<Prompt>(path.join(fixturesDir, 'prompts.jsonl'));

async function greedy(dir: string): Promise<number[][]> {
  const model = await loadModel(dir);
  const out: number[][] = [];
  for await (const r of model.generate(prompts.map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids })), { maxNewTokens: 8, stopAtEos: false })) {
    if ('error' in r) throw new Error(r.error);
    out.push(r.tokenIds);
  }
  await model.close();
  return out;
}

/** Every tensor's raw bytes, by name. */
function tensorBytes(file: string): Map<string, { dtype: string; bytes: Buffer }> {
  const f = SafetensorsFile.open(file);
  const out = new Map<string, { dtype: string; bytes: Buffer }>();
  for (const [name, info] of f.tensors) out.set(name, { dtype: info.dtype, bytes: Buffer.from(f.read(name).data.buffer) });
  f.close();
  return out;
}

function sourceBytes(dir: string): Map<string, { dtype: string; bytes: Buffer }> {
  const out = new Map<string, { dtype: string; bytes: Buffer }>();
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.safetensors'))) for (const [k, v] of tensorBytes(path.join(dir, f))) out.set(k, v);
  return out;
}

function expectSameState(a: TrainingState, b: TrainingState): void {
  expect({ ...a, tensors: null }).toEqual({ ...b, tensors: null });
  expect([...a.tensors.keys()]).toEqual([...b.tensors.keys()]);
  for (const [name, p] of a.tensors) {
    const q = b.tensors.get(name)!;
    expect(q.shape).toEqual(p.shape);
    const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    for (const k of ['master', 'm', 'v'] as const) expect(bytes(q[k]).equals(bytes(p[k])), `${name} ${k}`).toBe(true);
  }
}

describe('the saved model directory', () => {
  for (const name of ['qwen2-tiny', 'opt-350m-style', 'mistral-tiny', 'opt-sharded']) {
    it(`${name}: same tensor names, dtype and bytes as the source, loads and generates the reference tokens`, async () => {
      const src = path.join(fixturesDir, name);
      const out = tmpDir('ckpt');
      const dir = await saveCheckpoint(out, src, stateFromModel(src, 3));
      expect(dir).toBe(path.join(out, 'checkpoint-3'));
      // The masters are the stored weights widened, so narrowing them again gives the same bytes.
      const saved = tensorBytes(path.join(dir, 'model.safetensors'));
      const source = sourceBytes(src);
      expect([...saved.keys()].sort()).toEqual([...source.keys()].sort());
      for (const [n, s] of source) {
        expect(saved.get(n)!.dtype, n).toBe(s.dtype);
        expect(saved.get(n)!.bytes.equals(s.bytes), n).toBe(true);
      }
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors'))).toEqual(['model.safetensors']);
      expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'))).toEqual(JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')));
      const reference = readJsonl<Reference>(path.join(src, 'reference.jsonl'));
      const tokens = await greedy(path.join(out, LATEST));
      expect(tokens).toEqual(reference.map((r) => r.token_ids));
    });
  }

  it('copies the tokenizer files, the chat template and generation config', async () => {
    const src = tmpDir('srcmodel');
    const fixture = path.join(fixturesDir, 'qwen2-tiny');
    for (const f of fs.readdirSync(fixture)) fs.copyFileSync(path.join(fixture, f), path.join(src, f));
    const tok = tokenizerModelDir();
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(tok, f), path.join(src, f));
    fs.writeFileSync(path.join(src, 'special_tokens_map.json'), '{"eos_token": "</s>"}');
    fs.writeFileSync(path.join(src, 'generation_config.json'), '{"eos_token_id": 3}');
    fs.writeFileSync(path.join(src, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }}{% endfor %}');
    const dir = await saveCheckpoint(tmpDir('ckpt'), src, stateFromModel(src, 1));
    for (const f of MODEL_SIDE_FILES) expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(src, f))), f).toBe(true);
  });

  it('rounds fp32 masters to the model dtype to nearest even', () => {
    const values = Float32Array.from([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -0, Infinity, -Infinity, NaN, 3.4e38, 1e-40, 65520, -2.5e-8]);
    for (const dtype of ['bf16', 'f16'] as const) {
      const dst = new Uint8Array(values.length * 2);
      narrow(dtype, values, 0, dst);
      const want = Array.from(values, dtype === 'bf16' ? f32ToBf16 : f32ToF16);
      expect(Array.from(new Uint16Array(dst.buffer)), dtype).toEqual(want);
    }
    // The ties: 1 + 2^-8 is halfway between two bf16 values and goes to the even one (1).
    const one = new Uint8Array(2);
    narrow('bf16', Float32Array.of(1 + 2 ** -8), 0, one);
    expect(new Uint16Array(one.buffer)[0]).toBe(0x3f80);
  });

  it('refuses weights that are not exactly the source model\'s tensors, naming the tensor', async () => {
    const src = path.join(fixturesDir, 'mistral-tiny');
    const state = stateFromModel(src, 1);
    const weights = new Map([...state.tensors].map(([n, p]) => [n, { shape: p.shape, data: p.master }]));
    const missing = new Map(weights);
    missing.delete('model.norm.weight');
    await expect(writeModelFiles(tmpDir('w'), src, missing)).rejects.toThrow(/\(tensor 'model\.norm\.weight'\): the trained weights lack this tensor/);
    const extra = new Map(weights).set('model.extra.weight', { shape: [1], data: new Float32Array(1) });
    await expect(writeModelFiles(tmpDir('w'), src, extra)).rejects.toThrow(/\(tensor 'model\.extra\.weight'\): the trained weights have a tensor the source model does not/);
    const reshaped = new Map(weights).set('model.norm.weight', { shape: [2, 32], data: weights.get('model.norm.weight')!.data });
    await expect(writeModelFiles(tmpDir('w'), src, reshaped)).rejects.toThrow(/'model\.norm\.weight'\): trained weight has shape \[2, 32\]/);
    // A tied model's head alias is not stored twice.
    const tiedSrc = path.join(fixturesDir, 'qwen2-tiny');
    const tied = stateFromModel(tiedSrc, 1);
    const tiedWeights = new Map([...tied.tensors].map(([n, p]) => [n, { shape: p.shape, data: p.master }]));
    tiedWeights.set('lm_head.weight', tiedWeights.get('model.embed_tokens.weight')!);
    const dir = tmpDir('w');
    await writeModelFiles(dir, tiedSrc, tiedWeights);
    expect(tensorBytes(path.join(dir, 'model.safetensors')).has('lm_head.weight')).toBe(false);
  });
});

describe('the training state', () => {
  it('reads back bit for bit: step, data position, RNG, options, master, m and v', async () => {
    const src = path.join(fixturesDir, 'opt-350m-style');
    const state = stateFromModel(src, 5);
    const out = tmpDir('state');
    await saveCheckpoint(out, src, state);
    const expected = new Map([...state.tensors].map(([n, p]) => [n, p.shape]));
    const { dir, state: back } = await loadCheckpoint(out, expected);
    expect(dir).toBe(path.join(out, 'checkpoint-5'));
    expectSameState(back, state);
    // A trainer may read the state into buffers of its own (here: one arena).
    const total = [...state.tensors.values()].reduce((n, p) => n + 3 * p.master.length, 0);
    const arena = new Float32Array(total);
    let used = 0;
    const placed = await loadCheckpoint(out, expected, (_name, _part, size) => arena.subarray(used, (used += size)));
    expect(used).toBe(total);
    expectSameState(placed.state, state);
    expect([...placed.state.tensors.values()].every((p) => p.m.buffer === arena.buffer)).toBe(true);
  });

  it('streams files larger than the I/O chunks, with tensors across chunk boundaries and an unaligned end', async () => {
    const file = path.join(tmpDir('big'), 'x.safetensors');
    const big = Float32Array.from({ length: 2_500_001 }, (_, i) => Math.sin(i));
    const odd = Uint16Array.from({ length: 3333 }, (_, i) => i * 7);
    const entries = [
      { name: 'a', dtype: 'bf16' as const, shape: [3333], data: odd },
      { name: 'b', dtype: 'f32' as const, shape: [2_500_001], data: big },
      { name: 'c', dtype: 'bf16' as const, shape: [3, 1111], data: odd },
    ];
    const bytes = (d: Float32Array | Uint16Array) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    const length = await writeTensorFile(file, entries.map((e) => ({
      ...e, fill: (dst: Uint8Array, off: number) => dst.set(bytes(e.data).subarray(off * (e.dtype === 'f32' ? 4 : 2)).subarray(0, dst.byteLength)),
    })));
    expect(fs.statSync(file).size).toBe(length);
    expect(length % 4096).not.toBe(0);
    const back = new Map(entries.map((e) => [e.name, new Uint8Array(e.data.byteLength)]));
    await readTensorFile(file, (info) => back.get(info.name)!);
    for (const e of entries) expect(Buffer.from(back.get(e.name)!).equals(Buffer.from(bytes(e.data))), e.name).toBe(true);
    // What the safetensors reader sees agrees.
    const st = SafetensorsFile.open(file);
    expect(Buffer.from(st.read('b').data.buffer).equals(Buffer.from(big.buffer))).toBe(true);
    st.close();
  });

  it('names the file and tensor or field when the state does not fit the model or is damaged', async () => {
    const src = path.join(fixturesDir, 'mistral-tiny');
    const state = stateFromModel(src, 2);
    const out = tmpDir('bad');
    const dir = await saveCheckpoint(out, src, state);
    const stateJson = path.join(dir, STATE_DIR, 'state.json');
    const shapes = new Map([...state.tensors].map(([n, p]) => [n, p.shape]));
    const lacking = new Map(shapes).set('model.new.weight', [4]);
    await expect(loadCheckpoint(out, lacking)).rejects.toThrow(new RegExp(`${stateJson}: the checkpoint has no state for parameter 'model\\.new\\.weight'`));
    const fewer = new Map(shapes);
    fewer.delete('lm_head.weight');
    await expect(loadCheckpoint(out, fewer)).rejects.toThrow(/has state for 'lm_head\.weight', which the model does not have/);
    const reshaped = new Map(shapes).set('model.norm.weight', [65]);
    await expect(loadCheckpoint(out, reshaped)).rejects.toThrow(/parameter 'model\.norm\.weight' has shape \[64\] in the checkpoint, \[65\] in the model/);
    // A truncated optimizer file.
    const opt = path.join(dir, STATE_DIR, 'optimizer.safetensors');
    const good = fs.readFileSync(opt);
    fs.writeFileSync(opt, good.subarray(0, good.length - 100));
    await expect(loadCheckpoint(out)).rejects.toThrow(new RegExp(`${opt}.*overrun the file's`));
    fs.writeFileSync(opt, good);
    // A state.json field of the wrong type.
    const j = JSON.parse(fs.readFileSync(stateJson, 'utf8'));
    fs.writeFileSync(stateJson, JSON.stringify({ ...j, step: -1 }));
    await expect(loadCheckpoint(out)).rejects.toThrow(new RegExp(`${stateJson}: field "step" must be a non-negative integer`));
    await expect(loadCheckpoint(tmpDir('empty'))).rejects.toThrow(/no checkpoint to resume from/);
  });
});

describe('saves are atomic', () => {
  /** Runs checkpoint-child.ts; with `pause`, kills it with SIGKILL once the save reaches that stage. */
  function child(out: string, model: string, step: number, pause?: string): Promise<string> {
    const p = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'test/helpers/checkpoint-child.ts'), out, model, String(step)], {
      cwd: repoRoot, env: { ...process.env, TIERLM_TEST_CHECKPOINT_PAUSE: pause ?? '' },
    });
    let stdout = '';
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    return new Promise((resolve, reject) => {
      p.stdout.on('data', (d) => {
        stdout += d;
        if (pause && stdout.includes(`paused at ${pause}`)) p.kill('SIGKILL');
      });
      p.on('exit', (code, signal) => (signal === 'SIGKILL' || code === 0 ? resolve(stdout) : reject(new Error(`child exited ${code}: ${stderr}`))));
    });
  }

  it('a save killed at any stage leaves the previous checkpoint intact and loadable', async () => {
    const src = path.join(fixturesDir, 'qwen2-tiny');
    const out = tmpDir('crash');
    expect(await child(out, src, 1)).toMatch(/saved/);
    const first = stateFromModel(src, 1);
    const reference = await greedy(path.join(out, LATEST));
    for (const stage of ['model', 'rename']) {
      expect(await child(out, src, 2, stage)).toMatch(`paused at ${stage}`);
      // The half-written save is a hidden temporary; latest still names checkpoint-1.
      expect(fs.readdirSync(out).filter((n) => n.startsWith('.checkpoint-2.tmp-'))).toHaveLength(1);
      expect(fs.readlinkSync(path.join(out, LATEST))).toBe('checkpoint-1');
      expect(latestCheckpoint(out)).toBe(path.join(out, 'checkpoint-1'));
      expectSameState((await loadCheckpoint(out)).state, first);
      expect(await greedy(path.join(out, LATEST))).toEqual(reference);
    }
    // The next save clears the leftovers, links the new checkpoint and then drops the old one.
    await saveCheckpoint(out, src, stateFromModel(src, 2));
    expect(fs.readdirSync(out).sort()).toEqual(['checkpoint-2', LATEST]);
    expectSameState((await loadCheckpoint(out)).state, stateFromModel(src, 2));
  });

  // A disk full as a save starts: its directory made, the one inside it refused. The empty
  // directory stayed until the next run cleared it.
  it('a save that cannot make its directories leaves none', async () => {
    const src = path.join(fixturesDir, 'qwen2-tiny');
    const out = tmpDir('enospc');
    const real = fs.mkdirSync;
    const spy = vi.spyOn(fs, 'mkdirSync').mockImplementation(((p: fs.PathLike, o?: fs.MakeDirectoryOptions) => {
      if (String(p).endsWith(STATE_DIR)) {
        real(path.dirname(String(p)));
        throw Object.assign(new Error(`ENOSPC: no space left on device, mkdir '${String(p)}'`), { code: 'ENOSPC' });
      }
      return real(p, o);
    }) as typeof fs.mkdirSync);
    try {
      await expect(saveCheckpoint(out, src, stateFromModel(src, 1))).rejects.toThrow(/ENOSPC/);
    } finally {
      spy.mockRestore();
    }
    expect(fs.readdirSync(out)).toEqual([]);
  });

  it('keeps the newest `keep` checkpoints; a resaved step gets a new name; without the link the newest is latest', async () => {
    const src = path.join(fixturesDir, 'qwen2-tiny');
    const out = tmpDir('keep');
    for (const step of [1, 2, 3]) await saveCheckpoint(out, src, stateFromModel(src, step), { keep: 2 });
    expect(fs.readdirSync(out).sort()).toEqual(['checkpoint-2', 'checkpoint-3', LATEST]);
    await saveCheckpoint(out, src, stateFromModel(src, 3), { keep: 2 });
    expect(fs.readlinkSync(path.join(out, LATEST))).toBe('checkpoint-3-1');
    expect(fs.readdirSync(out).sort()).toEqual(['checkpoint-3', 'checkpoint-3-1', LATEST]);
    fs.rmSync(path.join(out, LATEST));
    expect(latestCheckpoint(out)).toBe(path.join(out, 'checkpoint-3-1'));
  });
});
