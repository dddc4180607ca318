// Writes a model directory with random ("dummy") weights of a named shape, streaming the tensors
// to disk so a model far larger than RAM is written with little memory.

import fs from 'node:fs';
import path from 'node:path';
import { writeSafetensors, type TensorEntry } from '../formats/safetensors-writer.js';
import { type FloatDType, f32ToBf16, f32ToF16 } from '../tensor/dtype.js';
import { expectedShape, type GlobalSlot, type LayerSlot } from './architecture.js';
import { ConfigReader } from './config.js';
import { presetJson } from './presets.js';
import { architectureFor } from './registry.js';

export interface InitOptions {
  config: string;
  out: string;
  dtype?: FloatDType;
  layers?: number;
  seed?: number;
  /** config.json fields replacing the preset's (e.g. a smaller vocab_size for a test). */
  overrides?: Record<string, unknown>;
}

const TORCH_DTYPE: Record<FloatDType, string> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };

export function initModel(o: InitOptions): { bytes: number; tensors: number } {
  const json = presetJson(o.config, o.layers);
  const dtype = o.dtype ?? 'f16';
  Object.assign(json, o.overrides ?? {});
  json.torch_dtype = TORCH_DTYPE[dtype];
  // A failed init (a full disk, say) leaves nothing of its own behind: no half-written model that
  // a later load would take for a whole one, and no directory it made.
  const made = fs.mkdirSync(o.out, { recursive: true });
  const files = ['config.json', 'model.safetensors', 'generation_config.json'].map((f) => path.join(o.out, f));
  try {
    return writeModel(o, json, dtype);
  } catch (e) {
    for (const f of files) fs.rmSync(f, { force: true });
    if (made) fs.rmSync(made, { recursive: true, force: true });
    throw e;
  }
}

function writeModel(o: InitOptions, json: Record<string, unknown>, dtype: FloatDType): { bytes: number; tensors: number } {
  const configFile = path.join(o.out, 'config.json');
  fs.writeFileSync(configFile, JSON.stringify(json, null, 2) + '\n');
  const arch = architectureFor(String(json.model_type), configFile);
  const config = arch.parseConfig(new ConfigReader(configFile, json));
  // Names as the real checkpoints use them (a tied head is not stored).
  const names = arch.names(config, () => false);
  const entries: (TensorEntry & { kind: 'matrix' | 'norm' | 'bias' })[] = [];
  const add = (base: string | undefined, slot: LayerSlot | GlobalSlot, bias: boolean, norm = false) => {
    if (!base) return;
    entries.push({ name: `${base}.weight`, dtype, shape: expectedShape(config, slot, 'weight'), kind: norm ? 'norm' : 'matrix' });
    if (bias) entries.push({ name: `${base}.bias`, dtype, shape: expectedShape(config, slot, 'bias'), kind: 'bias' });
  };
  const g = names.global;
  const layerNorm = config.norm === 'layernorm';
  add(g.embed, 'embed', false);
  add(g.pos_embed, 'pos_embed', false);
  add(g.project_in, 'project_in', false);
  add(g.project_out, 'project_out', false);
  add(g.final_norm, 'final_norm', layerNorm, true);
  if (!config.tiedEmbeddings && g.lm_head !== g.embed) add('lm_head', 'lm_head', false);
  for (let j = 0; j < config.layers; j++) {
    const n = (s: LayerSlot) => names.layer[s]?.replace('{L}', String(j));
    add(n('attn_norm'), 'attn_norm', layerNorm, true);
    add(n('q'), 'q', config.qkvBias);
    add(n('k'), 'k', config.qkvBias);
    add(n('v'), 'v', config.qkvBias);
    add(n('o'), 'o', config.outBias);
    add(n('mlp_norm'), 'mlp_norm', layerNorm, true);
    if (config.gatedMlp) add(n('gate'), 'gate', config.mlpBias);
    add(n('up'), 'up', config.mlpBias);
    add(n('down'), 'down', config.mlpBias);
  }
  const tables = { matrix: valueTable(dtype, 0.02, o.seed ?? 0), bias: valueTable(dtype, 0.01, (o.seed ?? 0) + 1) };
  let state = ((o.seed ?? 0) * 2654435761 + 12345) >>> 0;
  const bytes = writeSafetensors(path.join(o.out, 'model.safetensors'), entries, (entry, dst) => {
    const kind = (entry as (typeof entries)[number]).kind;
    if (kind === 'norm') return fillConstant(dtype, dst, 1);
    state = fillRandom(dtype, dst, tables[kind], state);
  });
  fs.writeFileSync(path.join(o.out, 'generation_config.json'), JSON.stringify({ bos_token_id: json.bos_token_id, eos_token_id: json.eos_token_id }, null, 2) + '\n');
  return { bytes, tensors: entries.length };
}

/** 65536 values of a zero-mean distribution (uniform, std `std`), encoded in the dtype, so that
 *  filling is a table lookup per element instead of a float conversion. */
function valueTable(dtype: FloatDType, std: number, seed: number): Uint16Array | Float32Array {
  const half = std * Math.sqrt(3);
  let s = (seed * 747796405 + 2891336453) >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
  if (dtype === 'f32') return Float32Array.from({ length: 65536 }, () => (next() * 2 - 1) * half);
  const conv = dtype === 'bf16' ? f32ToBf16 : f32ToF16;
  return Uint16Array.from({ length: 65536 }, () => conv((next() * 2 - 1) * half));
}

function fillRandom(dtype: FloatDType, dst: Uint8Array, table: Uint16Array | Float32Array, state: number): number {
  let s = state;
  if (dtype === 'f32') {
    const out = new Float32Array(dst.buffer, dst.byteOffset, dst.byteLength / 4);
    for (let i = 0; i < out.length; i++) {
      s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
      out[i] = table[(s >>> 0) & 0xffff]!;
    }
  } else {
    const out = new Uint16Array(dst.buffer, dst.byteOffset, dst.byteLength / 2);
    for (let i = 0; i < out.length; i += 2) {
      s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
      out[i] = table[s & 0xffff]!;
      if (i + 1 < out.length) out[i + 1] = table[(s >>> 16) & 0xffff]!;
    }
  }
  return s >>> 0;
}

function fillConstant(dtype: FloatDType, dst: Uint8Array, value: number): void {
  if (dtype === 'f32') new Float32Array(dst.buffer, dst.byteOffset, dst.byteLength / 4).fill(value);
  else new Uint16Array(dst.buffer, dst.byteOffset, dst.byteLength / 2).fill(dtype === 'bf16' ? f32ToBf16(value) : f32ToF16(value));
}
