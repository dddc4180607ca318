// Opens a Hugging Face model directory: config.json, the safetensors tensors (one file or shards),
// and generation_config.json.

import fs from 'node:fs';
import path from 'node:path';
import type { Backend, ComputeMode } from '../backend/index.js';
import { TensorStore } from '../formats/safetensors.js';
import { UserError } from '../util/errors.js';
import { readJsonObject } from '../util/json-file.js';
import { ConfigReader, type ModelConfig } from './config.js';
import { readConfig } from './registry.js';
import { WeightLoader } from './weights.js';

export interface OpenModel {
  dir: string;
  config: ModelConfig;
  /** Token ids that end a sequence (generation_config.json, else config.json). */
  eosTokenIds: number[];
  loader: WeightLoader;
  /** The files the weights come from (to tell when a converted copy is stale). */
  sourceFiles: string[];
  close(): void;
}

/** Checks config.json and the tensor files; weights are read later through `loader`. */
export function openModel(dir: string, backend: Backend, mode: ComputeMode, compressWeight = false): OpenModel {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UserError(`model directory ${dir} does not exist`);
  const { arch, config } = readConfig(dir);
  const store = TensorStore.open(dir);
  const loader = new WeightLoader(store, config, arch.names(config, (n) => store.has(n)), backend, mode, compressWeight);
  // (config.json too: it decides which tensors are packed, and how)
  const sourceFiles = [...new Set([...store.names().map((n) => store.fileName(n)), fs.realpathSync(path.join(dir, 'config.json'))])];
  return { dir, config, eosTokenIds: eosIds(dir, config), loader, sourceFiles, close: () => store.close() };
}

function eosIds(dir: string, config: ModelConfig): number[] {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return config.eosTokenIds;
  const ids = new ConfigReader(file, readJsonObject(file)).ids('eos_token_id');
  return ids.length > 0 ? ids : config.eosTokenIds;
}
