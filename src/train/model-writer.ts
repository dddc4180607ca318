// Writes trained weights as a Hugging Face model directory that `tierlm generate` (and other
// tools) load directly: the source model's config.json and tokenizer files, and model.safetensors
// with the source's tensor names and shapes in the model's own dtype (config.json's torch_dtype),
// rounded from the fp32 master weights to nearest even. A tied head is stored once, as the source
// stores it. Source tensors the trainer does not train (an old Llama's rotary inv_freq buffer, the
// lm_head.weight some tied models also store, which loaders ignore) are copied unchanged, in their
// own dtype, so the output loads wherever the source did. The caller makes the directory appear
// atomically (checkpoint.ts).

import fs from 'node:fs';
import path from 'node:path';
import { type OtherTensor, TensorStore, floatDType } from '../formats/safetensors.js';
import { readConfig } from '../models/registry.js';
import { type FloatDType, narrowInto } from '../tensor/dtype.js';
import { ModelFileError } from '../util/errors.js';
import { fsyncPath } from '../util/atomic.js';
import { paramList } from './params.js';
import { type TensorProducer, writeTensorFile } from './tensor-file.js';
import { type F32Source, f32Chunk } from './training-state.js';

/** Files copied from the source model directory when present. */
export const MODEL_SIDE_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'];

export interface Weight {
  shape: number[];
  /** fp32 master weight (in RAM, or pulled chunk by chunk). */
  data: F32Source;
}

const TORCH_DTYPES: Record<string, FloatDType> = { float32: 'f32', float16: 'f16', bfloat16: 'bf16' };

/** The dtype the model is stored in: config.json's torch_dtype (or newer "dtype"), else that of
 *  its first stored tensor. */
export function modelDtype(sourceDir: string): FloatDType {
  const { raw } = readConfig(sourceDir);
  const declared = raw.torch_dtype ?? raw.dtype;
  if (declared !== undefined && declared !== null) {
    const d = typeof declared === 'string' ? TORCH_DTYPES[declared] : undefined;
    if (!d) throw new ModelFileError(path.join(sourceDir, 'config.json'), `torch_dtype ${JSON.stringify(declared)} is not one of ${Object.keys(TORCH_DTYPES).join(', ')}`);
    return d;
  }
  const store = TensorStore.open(sourceDir);
  try {
    // (the first tensor the engine computes with: an int64 buffer says nothing of the weights)
    const first = store.names().find((n) => floatDType(store.stored(n).dtype) !== null);
    return first ? store.info(first).dtype : 'f32';
  } finally {
    store.close();
  }
}

/** Writes config, tokenizer files and model.safetensors into `dir` (which exists), each fsynced. */
export async function writeModelFiles(dir: string, sourceDir: string, weights: Map<string, Weight>): Promise<void> {
  const dtype = modelDtype(sourceDir);
  // (open for the save: the tensors it does not train are read from it as they are written)
  const store = TensorStore.open(sourceDir);
  try {
    const entries = modelEntries(sourceDir, store, weights).map(({ name, weight, info }): TensorProducer => {
      if (weight) return { name, dtype, shape: weight.shape, fill: (dst, offset) => narrow(dtype, weight.data, offset, dst) };
      // (copied byte for byte, whatever its dtype: an int64 buffer too)
      const elem = info.byteLength / Math.max(1, info.shape.reduce((a, b) => a * b, 1));
      const float = floatDType(info.dtype);
      return { name, dtype: float ?? 'f32', shape: info.shape, ...(float ? {} : { stored: { dtype: info.dtype, elementBytes: elem } }),
        fill: (dst, offset) => store.readBytesInto(name, offset * elem, dst) };
    });
    for (const f of MODEL_SIDE_FILES) {
      const src = path.join(sourceDir, f);
      if (!fs.existsSync(src)) continue;
      fs.copyFileSync(src, path.join(dir, f));
      fsyncPath(path.join(dir, f));
    }
    await writeTensorFile(path.join(dir, 'model.safetensors'), entries, { format: 'pt' });
  } finally {
    store.close();
  }
}

/** The source's tensors in its order under its names, each with its trained weight, or without
 *  one to be copied unchanged (a tensor the trainer does not train). Checks that the trained
 *  weights are the trained tensors of the source, with its shapes (a tied head's alias is
 *  dropped: the source does not store it). */
function modelEntries(sourceDir: string, store: TensorStore, weights: Map<string, Weight>): { name: string; weight?: Weight; info: OtherTensor & { file: string } }[] {
  const { arch, config } = readConfig(sourceDir);
  const names = arch.names(config, (n) => store.has(n));
  const trained = new Set(paramList(config, names).map((p) => p.name));
  for (const name of weights.keys()) {
    if (store.has(name) || (name === 'lm_head.weight' && names.global.lm_head !== 'lm_head')) continue;
    throw new ModelFileError(store.fileName(name), 'the trained weights have a tensor the source model does not', name);
  }
  return store.names().map((name) => {
    const weight = weights.get(name);
    const info = store.stored(name);
    if (!weight) {
      if (trained.has(name)) throw new ModelFileError(info.file, 'the trained weights lack this tensor of the source model', name);
      return { name, info };
    }
    const size = info.shape.reduce((a, b) => a * b, 1);
    if (weight.shape.join() !== info.shape.join() || weight.data.length !== size) {
      throw new ModelFileError(info.file, `trained weight has shape [${weight.shape.join(', ')}] (${weight.data.length} values), the source [${info.shape.join(', ')}]`, name);
    }
    return { name, weight, info };
  });
}

/** Converts src[offset ..] into dst's bytes, rounding to nearest even. */
export function narrow(dtype: FloatDType, src: F32Source, offset: number, dst: Uint8Array): void {
  if (dtype === 'f32') {
    const c = f32Chunk(src, offset, dst.byteLength / 4);
    dst.set(new Uint8Array(c.buffer, c.byteOffset, dst.byteLength));
    return;
  }
  const out = new Uint16Array(dst.buffer, dst.byteOffset, dst.byteLength / 2);
  narrowInto(dtype, f32Chunk(src, offset, out.length), out);
}
