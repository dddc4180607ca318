// What an architecture file provides: how to read its config.json, and which Hugging Face tensor
// holds each of the model's weights. Architectures are data; the forward pass is shared
// (src/models/transformer.ts).

import type { ConfigReader, ModelConfig } from './config.js';

/** Weights of one layer, by role. fc1/fc2 of OPT are `up`/`down`. */
export type LayerSlot = 'attn_norm' | 'q' | 'k' | 'v' | 'o' | 'mlp_norm' | 'gate' | 'up' | 'down';
/** Weights outside the layers. */
export type GlobalSlot = 'embed' | 'pos_embed' | 'project_in' | 'project_out' | 'final_norm' | 'lm_head';

export interface NameTable {
  /** Hugging Face name (without .weight/.bias) of a global weight; undefined when the model has none. */
  global: Partial<Record<GlobalSlot, string>>;
  /** Hugging Face name of layer weights, with `{L}` for the layer index. */
  layer: Partial<Record<LayerSlot, string>>;
}

export interface Architecture {
  /** config.json model_type values this file handles. */
  readonly modelTypes: readonly string[];
  parseConfig(config: ConfigReader): ModelConfig;
  /** `has` tells which tensor names the checkpoint holds, for layouts that vary (key prefixes, tied heads). */
  names(config: ModelConfig, has: (name: string) => boolean): NameTable;
}

/** Expected shape of each weight, from the config (Hugging Face Linear weights are [out, in]). */
export function expectedShape(c: ModelConfig, slot: LayerSlot | GlobalSlot, part: 'weight' | 'bias'): number[] {
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const out: Record<LayerSlot | GlobalSlot, [number, number]> = {
    embed: [c.vocabSize, c.embedDim],
    pos_embed: [c.maxPositions + (c.positions.kind === 'learned' ? c.positions.offset : 0), c.hidden],
    project_in: [c.hidden, c.embedDim],
    project_out: [c.embedDim, c.hidden],
    final_norm: [c.hidden, 0],
    lm_head: [c.vocabSize, c.embedDim],
    attn_norm: [c.hidden, 0],
    mlp_norm: [c.hidden, 0],
    q: [q, c.hidden],
    k: [kv, c.hidden],
    v: [kv, c.hidden],
    o: [c.hidden, q],
    gate: [c.ffn, c.hidden],
    up: [c.ffn, c.hidden],
    down: [c.hidden, c.ffn],
  };
  const [rows, cols] = out[slot];
  return part === 'bias' || cols === 0 ? [rows] : [rows, cols];
}
