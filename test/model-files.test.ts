// Bad model directories get a clear error naming the file and tensor, never a crash.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import { SafetensorsFile } from '../src/formats/safetensors.js';
import { ChatTemplateError, TextTokenizer } from '../src/formats/tokenizer.js';
import { WeightLoader } from '../src/models/weights.js';
import { positionsNote } from '../src/models/config.js';
import { readConfig } from '../src/models/registry.js';
import { ModelFileError } from '../src/util/errors.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const opt = path.join(fixturesDir, 'opt-tiny');

/** A copy of opt-tiny whose safetensors file is rewritten by `edit`. */
function brokenCopy(edit: (header: Record<string, any>, data: Buffer) => { header?: Record<string, any>; data?: Buffer; raw?: Buffer }): string {
  const dir = tmpDir('broken');
  fs.copyFileSync(path.join(opt, 'config.json'), path.join(dir, 'config.json'));
  const buf = fs.readFileSync(path.join(opt, 'model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  const data = buf.subarray(8 + n);
  const r = edit(header, data);
  let out: Buffer;
  if (r.raw) out = r.raw;
  else {
    const json = Buffer.from(JSON.stringify(r.header ?? header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    out = Buffer.concat([len, json, r.data ?? data]);
  }
  fs.writeFileSync(path.join(dir, 'model.safetensors'), out);
  return dir;
}

async function loadError(dir: string): Promise<Error> {
  try {
    await loadModel(dir);
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected loading to fail');
}

describe('bad model files', () => {
  beforeAll(() => expect(fs.existsSync(opt)).toBe(true));

  it('a truncated file names the file and the tensor whose data is cut', async () => {
    const dir = brokenCopy((h, d) => ({ data: d.subarray(0, d.length - 100) }));
    const e = await loadError(dir);
    expect(e).toBeInstanceOf(ModelFileError);
    expect(e.message).toMatch(/model\.safetensors/);
    expect(e.message).toMatch(/overrun|truncated/);
  });

  it('a file shorter than its header length is refused before allocating the header', () => {
    const dir = brokenCopy(() => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(BigInt(1) << BigInt(50));
      return { raw: b };
    });
    expect(() => SafetensorsFile.open(path.join(dir, 'model.safetensors'))).toThrow(/header length \d+ exceeds/);
  });

  it('a file of a few bytes', () => {
    const dir = brokenCopy(() => ({ raw: Buffer.from([1, 2, 3]) }));
    expect(() => SafetensorsFile.open(path.join(dir, 'model.safetensors'))).toThrow(/too short/);
  });

  it('offsets that overrun the file', async () => {
    const name = 'model.decoder.layers.1.fc1.weight';
    const dir = brokenCopy((h, d) => {
      h[name].data_offsets = [d.length - 10, d.length + h[name].data_offsets[1] - h[name].data_offsets[0] - 10];
      return { header: h };
    });
    const e = await loadError(dir);
    expect(e.message).toContain(name);
    expect(e.message).toMatch(/overrun/);
  });

  it('overlapping tensors', async () => {
    const a = 'model.decoder.layers.0.fc1.bias';
    const b = 'model.decoder.layers.0.fc2.bias';
    const dir = brokenCopy((h) => {
      const [s] = h[a].data_offsets;
      const len = h[b].data_offsets[1] - h[b].data_offsets[0];
      h[b].data_offsets = [s, s + len];
      return { header: h };
    });
    const e = await loadError(dir);
    expect(e.message).toMatch(/overlaps/);
  });

  it('a span that disagrees with the shape', async () => {
    const name = 'model.decoder.final_layer_norm.weight';
    const dir = brokenCopy((h) => {
      h[name].shape = [65];
      return { header: h };
    });
    const e = await loadError(dir);
    expect(e.message).toContain(name);
  });

  it('a missing tensor', async () => {
    const name = 'model.decoder.layers.2.fc2.weight';
    const dir = brokenCopy((h) => {
      delete h[name];
      return { header: h };
    });
    const e = await loadError(dir);
    expect(e.message).toContain(name);
    expect(e.message).toMatch(/missing tensor/);
  });

  it('tensors of other dtypes (an int64 buffer, a mask) load when unused, are copied by a save, and are refused by name when needed', async () => {
    // Appended after the data: an I64 position_ids buffer [1, 130] and a BOOL mask [4]. Before,
    // either refused the whole model (unsupported dtype "I64"), as transformers does not.
    const extra = Buffer.alloc(130 * 8 + 4);
    for (let i = 0; i < 130; i++) extra.writeBigInt64LE(BigInt(i), i * 8);
    extra.set([1, 0, 1, 1], 130 * 8);
    const dir = brokenCopy((h, d) => {
      h['model.decoder.position_ids'] = { dtype: 'I64', shape: [1, 130], data_offsets: [d.length, d.length + 130 * 8] };
      h['model.decoder.mask'] = { dtype: 'BOOL', shape: [4], data_offsets: [d.length + 130 * 8, d.length + 130 * 8 + 4] };
      return { header: h, data: Buffer.concat([d, extra]) };
    });
    const reference = fs.readFileSync(path.join(opt, 'reference.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string; token_ids: number[] })[0]!;
    const model = await loadModel(dir);
    try {
      const out = [];
      for await (const r of model.generate([{ id: reference.id, promptTokenIds: JSON.parse(fs.readFileSync(path.join(fixturesDir, 'prompts.jsonl'), 'utf8').split('\n')[0]!).prompt_token_ids }],
        { maxNewTokens: reference.token_ids.length, stopAtEos: false })) out.push(r);
      expect((out[0] as { tokenIds: number[] }).tokenIds).toEqual(reference.token_ids);
    } finally {
      await model.close();
    }
    // A fine-tune's save copies them byte for byte, under their dtype.
    const out = path.join(tmpDir('other-dtypes-train'), 'out');
    const data = path.join(tmpDir('other-dtypes-data'), 'd.jsonl');
    fs.writeFileSync(data, JSON.stringify({ token_ids: Array.from({ length: 16 }, (_, i) => 3 + i) }) + '\n');
    const r = cli(['train', '--model', dir, '--data', data, '--out', out, '--seq-len', '16', '--batch-size', '1', '--max-steps', '1', '--threads', '1']);
    expect(r.code, r.stderr).toBe(0);
    const saved = SafetensorsFile.open(path.join(out, 'model.safetensors'));
    try {
      expect(saved.stored('model.decoder.position_ids')).toMatchObject({ dtype: 'I64', shape: [1, 130] });
      const copy = Buffer.alloc(130 * 8 + 4);
      saved.readBytesInto('model.decoder.position_ids', 0, copy.subarray(0, 130 * 8));
      saved.readBytesInto('model.decoder.mask', 0, copy.subarray(130 * 8));
      expect(copy.equals(extra)).toBe(true);
    } finally {
      saved.close();
    }
    // A needed tensor of such a dtype is refused naming the file, the tensor and the dtype; a
    // dtype safetensors does not define still refuses the file.
    const name = 'model.decoder.layers.1.fc1.weight';
    const int = await loadError(brokenCopy((h) => ((h[name].dtype = 'I16'), { header: h })));
    expect(int).toBeInstanceOf(ModelFileError);
    expect(int.message).toMatch(new RegExp(`model\\.safetensors \\(tensor '${name.replace(/\./g, '\\.')}'\\): dtype "I16" is not one the engine computes with \\(F32, F16, BF16\\)`));
    const unknown = await loadError(brokenCopy((h) => ((h[name].dtype = 'Q9'), { header: h })));
    expect(unknown.message).toMatch(/unsupported dtype "Q9" \(supported: F32, F16, BF16; others are kept aside: F64, I64/);
  });

  it('a shape that disagrees with config.json', async () => {
    const dir = brokenCopy((h) => ({ header: h }));
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    cfg.ffn_dim = 128;
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const e = await loadError(dir);
    expect(e.message).toMatch(/fc1\.weight.*disagrees with config\.json/);
    // a vocabulary the embedding does not hold is named before any memory is planned from it
    // (vocab_size 10^15 was reported as a RAM shortfall of millions of GiB by plan and generate)
    cfg.ffn_dim = JSON.parse(fs.readFileSync(path.join(opt, 'config.json'), 'utf8')).ffn_dim;
    cfg.vocab_size = 1e15;
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const r = cli(['plan', '--model', dir, '--ram', '200M', '--prompt-len', '8', '--gen-len', '4']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/\(tensor '[a-z_.]*embed_tokens\.weight'\): shape \[\d+, \d+\] disagrees with config\.json \(expected \[1000000000000000, /);
  });

  it('an unsupported model_type lists the supported ones', async () => {
    const dir = brokenCopy((h) => ({ header: h }));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'gpt_neox' }));
    const e = await loadError(dir);
    expect(e.message).toMatch(/unsupported model_type "gpt_neox" \(supported: opt, llama, mistral, qwen2\)/);
  });

  it('a config field of the wrong type names the field', async () => {
    const dir = brokenCopy((h) => ({ header: h }));
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    cfg.hidden_size = 'big';
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const e = await loadError(dir);
    expect(e.message).toMatch(/config\.json.*"hidden_size"/);
  });

  it('a shard index naming a file outside the model directory is refused', async () => {
    const dir = brokenCopy((h) => ({ header: h }));
    const outside = tmpDir('outside');
    fs.renameSync(path.join(dir, 'model.safetensors'), path.join(outside, 'model.safetensors'));
    const file = fs.readFileSync(path.join(outside, 'model.safetensors'));
    const names = Object.keys(JSON.parse(file.subarray(8, 8 + Number(file.readBigUInt64LE(0))).toString())).filter((k) => k !== '__metadata__');
    for (const target of [path.join('..', path.basename(outside), 'model.safetensors'), path.join(outside, 'model.safetensors')]) {
      fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: Object.fromEntries(names.map((n) => [n, target])) }));
      const e = await loadError(dir);
      expect(e).toBeInstanceOf(ModelFileError);
      expect(e.message).toMatch(/model\.safetensors\.index\.json.*(outside the model directory|not a file name inside)/);
    }
  });

  it("a Hugging Face cache snapshot (every file a link into ../../blobs) loads, sharded too, as the files themselves", async () => {
    // (a shard whose link pointed outside the directory was refused: every sharded model in the hub cache)
    const src = path.join(fixturesDir, 'opt-sharded');
    const hub = tmpDir('hub');
    const snapshot = path.join(hub, 'models--x--y', 'snapshots', 'abc');
    const blobs = path.join(hub, 'models--x--y', 'blobs');
    fs.mkdirSync(snapshot, { recursive: true });
    fs.mkdirSync(blobs);
    for (const f of fs.readdirSync(src)) {
      fs.copyFileSync(path.join(src, f), path.join(blobs, `blob-${f}`));
      fs.symlinkSync(path.join('..', '..', 'blobs', `blob-${f}`), path.join(snapshot, f));
    }
    const run = async (dir: string) => {
      const m = await loadModel(dir);
      try {
        const out = [];
        for await (const r of m.generate([{ id: 'a', promptTokenIds: [5, 6, 7] }], { maxNewTokens: 4, stopAtEos: false })) out.push(r);
        return out;
      } finally {
        await m.close();
      }
    };
    expect(await run(snapshot)).toEqual(await run(src));
  });

  it('a rope_scaling type not implemented is refused rather than computed wrongly; a sliding window limits the positions', async () => {
    const llama = path.join(fixturesDir, 'llama-tiny');
    const dir = tmpDir('rope');
    for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(llama, f), path.join(dir, f));
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, rope_scaling: { rope_type: 'yarn', factor: 8, original_max_position_embeddings: 32 } }));
    expect((await loadError(dir)).message).toMatch(/config\.json: field "rope_scaling\.rope_type" "yarn" is not supported yet/);
    // a factor with no type (it ran unscaled), and a rope_theta that is not positive
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, rope_scaling: { factor: 2 } }));
    expect((await loadError(dir)).message).toMatch(/config\.json: field "rope_scaling\.factor" is given without a rope_type/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, rope_theta: 0 }));
    expect((await loadError(dir)).message).toMatch(/config\.json: field "rope_theta" \(0\) must be a number > 0/);
  });

  it("sliding windows, rope_theta and key/value heads as transformers reads each family's config; a window's limit is named; OPT without affine norms is refused by name", async () => {
    const parsed = (fixture: string, change: Record<string, unknown>, drop: string[] = []) => {
      const dir = tmpDir('window');
      const cfg = { ...JSON.parse(fs.readFileSync(path.join(fixturesDir, fixture, 'config.json'), 'utf8')), ...change };
      for (const k of drop) delete cfg[k];
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
      return readConfig(dir).config;
    };
    // (max_position_embeddings is 256 in the four fixtures; 2 layers)
    // Llama has no sliding window: the key is ignored, as transformers ignores it (it limited positions)
    expect(parsed('llama-tiny', { sliding_window: 16 }).maxPositions).toBe(256);
    // Mistral: the window, or 4096 when the key is absent; null is none
    const mistral = parsed('mistral-tiny', { sliding_window: 16 });
    expect(mistral.maxPositions).toBe(16);
    expect(positionsNote(mistral)).toMatch(/config\.json: sliding_window 16; sliding-window attention is not implemented/);
    expect(parsed('mistral-tiny', { sliding_window: null, max_position_embeddings: 8192 }).maxPositions).toBe(8192);
    expect(parsed('mistral-tiny', { max_position_embeddings: 8192 }, ['sliding_window']).maxPositions).toBe(4096);
    // Qwen2: only with use_sliding_window (default false: a window of 8 refused 9-token prompts),
    // and only when a layer is at max_window_layers (28 by default) or above
    expect(parsed('qwen2-tiny', { sliding_window: 8 }, ['use_sliding_window']).maxPositions).toBe(256);
    expect(parsed('qwen2-tiny', { sliding_window: 8, use_sliding_window: true }).maxPositions).toBe(256);
    expect(parsed('qwen2-tiny', { sliding_window: 8, use_sliding_window: true, max_window_layers: 1 }).maxPositions).toBe(8);
    expect(parsed('qwen2-tiny', { sliding_window: 8, use_sliding_window: true }, ['max_window_layers']).maxPositions).toBe(256);
    expect(positionsNote(parsed('qwen2-tiny', {}))).toBe('');
    // Key/value heads without num_key_value_heads: transformers' defaults (Mistral 8, Qwen2 32;
    // Llama as many as the attention heads, as null means in each); one they cannot divide is named
    expect(parsed('mistral-tiny', { num_attention_heads: 16, hidden_size: 256 }, ['num_key_value_heads', 'head_dim']).kvHeads).toBe(8);
    expect(parsed('mistral-tiny', { num_key_value_heads: null, num_attention_heads: 16, hidden_size: 256 }, ['head_dim']).kvHeads).toBe(16);
    expect(parsed('qwen2-tiny', { num_attention_heads: 32, hidden_size: 256 }, ['num_key_value_heads', 'head_dim']).kvHeads).toBe(32);
    expect(parsed('llama-tiny', { num_attention_heads: 16, hidden_size: 256 }, ['num_key_value_heads', 'head_dim']).kvHeads).toBe(16);
    expect(() => parsed('qwen2-tiny', { num_attention_heads: 4, hidden_size: 256 }, ['num_key_value_heads', 'head_dim']))
      .toThrow(/config\.json: field "num_key_value_heads" is absent, which means 32 key\/value heads for qwen2 \(as in transformers\), and num_attention_heads \(4\) is not a multiple of that/);
    // Qwen2's rope_theta default is 10000 (it was 1e6 here: a config without it gave other tokens)
    expect(parsed('qwen2-tiny', {}, ['rope_theta']).positions).toMatchObject({ theta: 10000 });
    expect(parsed('qwen2-tiny', {}).positions).toMatchObject({ theta: 1e6 });
    // OPT's LayerNorms without weight and bias: refused by name (it was a missing tensor)
    expect(() => parsed('opt-tiny', { layer_norm_elementwise_affine: false })).toThrow(/config\.json: field "layer_norm_elementwise_affine" false \(LayerNorms without weight and bias\) is not supported/);
    // a prompt past the window is refused naming it
    const dir = tmpDir('window-run');
    for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(fixturesDir, 'mistral-tiny', f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), sliding_window: 8 }));
    const model = await loadModel(dir);
    try {
      const out = [];
      for await (const r of model.generate([{ id: 'a', promptTokenIds: [1, 2, 3, 4, 5, 6, 7, 8, 9] }])) out.push(r);
      expect(out).toEqual([{ id: 'a', error: expect.stringMatching(/^prompt of 9 tokens does not fit the model's 8 positions \(.*config\.json: sliding_window 8; sliding-window attention is not implemented, so a sequence stays within its window\)/) }]);
    } finally {
      await model.close();
    }
  });

  it('a JSON side file holding null, a list or a number names the file (it was a TypeError)', async () => {
    const cases: [string, string][] = [
      ['config.json', 'null'], ['generation_config.json', 'null'], ['generation_config.json', '[1, 2]'], ['model.safetensors.index.json', '7'],
    ];
    for (const [name, text] of cases) {
      const dir = brokenCopy((h) => ({ header: h }));
      fs.writeFileSync(path.join(dir, name), text);
      // (an index is read only without model.safetensors, which transformers loads first)
      if (name === 'model.safetensors.index.json') fs.rmSync(path.join(dir, 'model.safetensors'));
      const e = await loadError(dir);
      expect(e).toBeInstanceOf(ModelFileError);
      expect(e.message).toContain(`${path.join(dir, name)}: not a JSON object`);
    }
    const tok = tokenizerModelDir();
    fs.writeFileSync(path.join(tok, 'tokenizer_config.json'), 'null');
    expect(() => TextTokenizer.load(tok)).toThrow(`${path.join(tok, 'tokenizer_config.json')}: not a JSON object (it holds null)`);
  });

  it('a shard that is a directory is named, not a bare EISDIR', async () => {
    const dir = brokenCopy((h) => ({ header: h }));
    const names = Object.keys(JSON.parse(fs.readFileSync(path.join(opt, 'model.safetensors')).subarray(8, 8 + Number(fs.readFileSync(path.join(opt, 'model.safetensors')).readBigUInt64LE(0))).toString()))
      .filter((k) => k !== '__metadata__');
    fs.rmSync(path.join(dir, 'model.safetensors'));
    fs.mkdirSync(path.join(dir, 'shard-1.safetensors'));
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: Object.fromEntries(names.map((n) => [n, 'shard-1.safetensors'])) }));
    const e = await loadError(dir);
    expect(e).toBeInstanceOf(ModelFileError);
    expect(e.message).toContain(`${path.join(fs.realpathSync(dir), 'shard-1.safetensors')}: not a regular file`);
  });

  it("a weight larger than Node's largest buffer is named with what to do (a bare 'Invalid typed array length' otherwise)", async () => {
    const saved = WeightLoader.maxBufferBytes;
    WeightLoader.maxBufferBytes = 1000;
    try {
      const e = await loadError(opt);
      expect(e).toBeInstanceOf(ModelFileError);
      expect(e.message).toMatch(/model\.safetensors \(tensor '[^']+'\): packed as \w+, this weight takes [\d.]+ KiB, more than the largest buffer this Node\.js allows \(1000 B\): load it with --compress-weight/);
    } finally {
      WeightLoader.maxBufferBytes = saved;
    }
  });

  it('a missing directory or config.json', async () => {
    expect((await loadError('/nonexistent/model')).message).toMatch(/does not exist/);
    const dir = tmpDir('empty');
    expect((await loadError(dir)).message).toMatch(/config\.json: not found/);
  });
});

describe('config.json fields the forward pass cannot run, and tied heads', () => {
  const withConfig = (src: string, edit: (c: Record<string, unknown>) => void) => {
    const dir = tmpDir('cfg');
    for (const f of fs.readdirSync(path.join(fixturesDir, src))) fs.copyFileSync(path.join(fixturesDir, src, f), path.join(dir, f));
    const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    edit(c);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c));
    return dir;
  };

  it('are refused at load naming the field (they loaded, then every step failed as an internal error)', async () => {
    const heads = await loadError(withConfig('opt-tiny', (c) => (c.num_attention_heads = 5)));
    expect(heads).toBeInstanceOf(ModelFileError);
    expect(heads.message).toMatch(/config\.json.*hidden_size \(\d+\) is not a multiple of num_attention_heads \(5\)/);
    const gelu = await loadError(withConfig('llama-tiny', (c) => (c.hidden_act = 'gelu')));
    expect(gelu.message).toMatch(/config\.json.*field "hidden_act": gelu is not supported in a gated MLP \(supported: silu\)/);
    const silu = await loadError(withConfig('opt-tiny', (c) => (c.activation_function = 'silu')));
    expect(silu.message).toMatch(/field "activation_function": silu is not supported in an ungated MLP \(supported: relu, gelu, gelu_new\)/);
    // more layers than the file holds: the first missing one, found without sizing a billion layers
    const layers = await loadError(withConfig('llama-tiny', (c) => (c.num_hidden_layers = 1e9)));
    expect(layers.message).toMatch(/\(tensor 'model\.layers\.\d+\.self_attn\.q_proj\.weight'\): missing tensor \(config\.json says num_hidden_layers = 1000000000\)/);
  });

  it('tie_word_embeddings: the head is the embedding even when the file also holds an lm_head.weight, as transformers ties them', async () => {
    // llama3-tiny is tied and has no lm_head.weight: add one that differs, and the tokens must not change
    const src = path.join(fixturesDir, 'llama3-tiny');
    const dir = withConfig('llama3-tiny', () => undefined);
    const buf = fs.readFileSync(path.join(src, 'model.safetensors'));
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString());
    const data = buf.subarray(8 + n);
    const [b0, b1] = header['model.embed_tokens.weight'].data_offsets;
    // another head: the embedding with every sign flipped (the top byte of each element)
    const embed = header['model.embed_tokens.weight'];
    const width = embed.dtype === 'F32' ? 4 : 2;
    const head = Buffer.from(data.subarray(b0, b1));
    for (let i = width - 1; i < head.length; i += width) head[i]! ^= 0x80;
    header['lm_head.weight'] = { dtype: embed.dtype, shape: embed.shape, data_offsets: [data.length, data.length + head.length] };
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.concat([len, json, data, head]));
    const tokens = async (d: string) => {
      const m = await loadModel(d);
      try {
        for await (const r of m.generate([{ id: 'a', promptTokenIds: [5, 6, 7] }], { maxNewTokens: 6, stopAtEos: false })) return (r as { tokenIds: number[] }).tokenIds;
      } finally {
        await m.close();
      }
    };
    expect(await tokens(dir)).toEqual(await tokens(src));
  });
});

describe('a model whose weights hold NaN or infinity', () => {
  it("fails the request saying its logits are not finite, not answer with token 0 (or one token) over and over", async () => {
    const poisoned = (name: string, bits: { F32: number; F16: number; BF16: number }) => brokenCopy((h, data) => {
      const t = h[name];
      const d = Buffer.from(data);
      if (t.dtype === 'F32') d.writeUInt32LE(bits.F32, t.data_offsets[0]);
      else d.writeUInt16LE(t.dtype === 'F16' ? bits.F16 : bits.BF16, t.data_offsets[0]);
      return { data: d };
    });
    const nan = { F32: 0x7fc00000, F16: 0x7e00, BF16: 0x7fc0 };
    for (const dir of [poisoned('model.decoder.layers.0.fc1.weight', nan), poisoned('model.decoder.embed_tokens.weight', nan)]) {
      const m = await loadModel(dir);
      try {
        const out = [];
        for await (const r of m.generate([{ id: 'a', promptTokenIds: [0, 5, 6] }, { id: 'b', promptTokenIds: [1, 2] }], { maxNewTokens: 4, stopAtEos: false })) out.push(r);
        expect(out).toEqual([
          { id: 'a', error: expect.stringMatching(/^the model's logits are not finite \(NaN for the token chosen at new token 1\): its weights or activations hold NaN or infinity/) },
          { id: 'b', error: expect.stringMatching(/logits are not finite/) },
        ]);
      } finally {
        await m.close();
      }
    }
  });
});

describe('chat templates', () => {
  const messages = [{ role: 'user', content: 'hi' }];

  it("chat_template.jinja is the model's template, ahead of tokenizer_config.json's (as transformers); without either there is none", () => {
    const dir = tokenizerModelDir();
    expect(TextTokenizer.load(dir)!.applyChatTemplate(messages)).toBe('<s>[user] hi\n[assistant]');
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), '{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}');
    expect(TextTokenizer.load(dir)!.applyChatTemplate(messages)).toBe('<user>hi<assistant>');
    // a newer checkpoint: the template only in the .jinja file
    const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    delete tc.chat_template;
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tc));
    expect(TextTokenizer.load(dir)!.hasChatTemplate).toBe(true);
    fs.rmSync(path.join(dir, 'chat_template.jinja'));
    expect(TextTokenizer.load(dir)!.hasChatTemplate).toBe(false);
  });

  it("decodes without clean_up_tokenization_spaces, so a text decoded whole equals its pieces decoded a token at a time", () => {
    // (with the cleanup " 's" became "'s" in the whole text only: a stream repeated itself, stop strings went unseen)
    const dir = tokenizerModelDir();
    const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    for (const cleanup of [true, false, undefined]) {
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tc, clean_up_tokenization_spaces: cleanup }));
      const t = TextTokenizer.load(dir)!;
      const text = "it 's a cat , isn 't it ?";
      const ids = t.encode(text, false);
      expect(t.decode(ids)).toBe(text);
      for (let i = 1; i <= ids.length; i++) expect(text.startsWith(t.decode(ids.slice(0, i))), `${cleanup} ${i}`).toBe(true);
    }
  });

  it("add_bos_token / add_eos_token in tokenizer_config.json decide the special tokens, as transformers' Llama tokenizers", () => {
    const dir = tokenizerModelDir();
    const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    const plain = TextTokenizer.load(dir)!.encode('Hello world', false);
    const cases: [object, number[]][] = [
      [{ add_bos_token: true, add_eos_token: false }, [1, ...plain]],
      [{ add_bos_token: false, add_eos_token: true }, [...plain, 2]],
      [{ add_bos_token: false, add_eos_token: false }, plain],
      [{ add_eos_token: true }, [1, ...plain, 2]],
      [{}, [1, ...plain]],
    ];
    for (const [flags, want] of cases) {
      const { add_bos_token: _b, add_eos_token: _e, ...rest } = tc;
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...rest, ...flags }));
      const t = TextTokenizer.load(dir)!;
      expect(t.encode('Hello world'), JSON.stringify(flags)).toEqual(want);
      expect(t.encode('Hello world', false)).toEqual(plain);
    }
  });

  it('errors name the file the template came from', () => {
    const dir = tokenizerModelDir();
    const jinja = path.join(dir, 'chat_template.jinja');
    // one @huggingface/jinja cannot parse (Python Jinja's `{% do %}`): the model loads, its
    // conversations fail (it failed the whole load, token-id prompts too)
    fs.writeFileSync(jinja, '{% set l = [] %}{% do l.append(1) %}');
    const broken = TextTokenizer.load(dir)!;
    expect(broken.encode('hi')[0]).toBe(1);
    expect(broken.hasChatTemplate).toBe(true);
    expect(() => broken.applyChatTemplate(messages)).toThrow(ChatTemplateError);
    expect(() => broken.applyChatTemplate(messages)).toThrow(`${jinja}: chat_template does not parse`);
    fs.writeFileSync(jinja, "{{ raise_exception('no system messages') }}");
    expect(() => TextTokenizer.load(dir)!.applyChatTemplate(messages)).toThrow(`the chat template (${jinja}) fails on these messages: no system messages`);
    fs.rmSync(jinja);
    const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: 42 }));
    expect(() => TextTokenizer.load(dir)).toThrow(`${path.join(dir, 'tokenizer_config.json')}: chat_template is neither a string nor a list of named templates`);
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: [{ name: 'tool_use', template: 'x' }, { name: 'default', template: 'D' }] }));
    expect(TextTokenizer.load(dir)!.applyChatTemplate(messages)).toBe('D');
  });
});
