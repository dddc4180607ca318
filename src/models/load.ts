// Opens a Hugging Face model directory: config.json, the safetensors tensors (one file or shards),
// and generation_config.json; builds the transformer on a backend.

import fs from 'node:fs';
import path from 'node:path';
import type { Backend, ComputeMode } from '../backend/index.js';
import { TensorStore } from '../formats/safetensors.js';
import { ConfigReader, type ModelConfig } from './config.js';
import { readConfig } from './registry.js';
import { Transformer } from './transformer.js';
import { WeightLoader } from './weights.js';
import { UserError } from '../util/errors.js';

export interface LoadedModel {
  dir: string;
  config: ModelConfig;
  transformer: Transformer;
  /** Token ids that end a sequence (generation_config.json, else config.json). */
  eosTokenIds: number[];
}

export function loadTransformer(dir: string, backend: Backend, mode: ComputeMode): LoadedModel {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UserError(`model directory ${dir} does not exist`);
  const { arch, config } = readConfig(dir);
  const store = TensorStore.open(dir);
  try {
    const loader = new WeightLoader(store, config, arch.names(config, (n) => store.has(n)), backend, mode);
    const globals = loader.globals();
    const layers = Array.from({ length: config.layers }, (_, j) => loader.layer(j));
    return { dir, config, transformer: new Transformer(config, backend, globals, layers), eosTokenIds: eosIds(dir, config) };
  } finally {
    store.close();
  }
}

function eosIds(dir: string, config: ModelConfig): number[] {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return config.eosTokenIds;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`${file}: cannot read JSON: ${(e as Error).message}`);
  }
  const ids = new ConfigReader(file, raw).ids('eos_token_id');
  return ids.length > 0 ? ids : config.eosTokenIds;
}
