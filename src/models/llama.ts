// Llama (and the family that shares its layout): RMSNorm before each block, rotary positions
// (rotate-half) with rope_theta and optional rope_scaling (linear, llama3), grouped-query
// attention, SwiGLU MLP, optional explicit head_dim, optionally tied embeddings (Llama 3.2 1B/3B).
// Mistral and Qwen2 reuse this layout with their own config defaults.

import type { Architecture, NameTable } from './architecture.js';
import { type ConfigReader, type ModelConfig, checkConfig } from './config.js';
import { parseRope } from './rope.js';

export interface LlamaFamilyDefaults {
  modelType: string;
  ropeTheta: number;
  /** q/k/v projections carry biases regardless of config (Qwen2). */
  qkvBias?: boolean;
  tied: boolean;
  /** Key/value heads when config.json lacks num_key_value_heads (transformers' default: Mistral
   *  8, Qwen2 32); null in it means as many as the attention heads, as does Llama's default. */
  kvHeads?: number;
  /** The attention window config.json sets, read the family's way (null: full attention; Llama
   *  has none). */
  window?: (r: ConfigReader, layers: number) => number | null;
}

/** `sliding_window` as transformers reads it for Mistral and Qwen2: absent, 4096 (their configs'
 *  default); null, none. */
export function slidingWindow(r: ConfigReader): number | null {
  if (!r.given('sliding_window')) return 4096;
  return r.has('sliding_window') ? r.positiveInt('sliding_window') : null;
}

export function parseLlamaFamily(r: ConfigReader, d: LlamaFamilyDefaults): ModelConfig {
  const hidden = r.positiveInt('hidden_size');
  const heads = r.positiveInt('num_attention_heads');
  const headDim = r.has('head_dim') ? r.positiveInt('head_dim') : hidden / heads;
  if (!Number.isInteger(headDim)) throw r.error('hidden_size', `(${hidden}) is not divisible by num_attention_heads (${heads}) and no head_dim is given`);
  const attentionBias = r.bool('attention_bias', false);
  // Sliding-window attention only differs from full attention past the window, so sequences are
  // limited to it rather than computed wrongly (and messages say why).
  const layers = r.positiveInt('num_hidden_layers');
  const window = d.window?.(r, layers) ?? Infinity;
  const positions = r.positiveInt('max_position_embeddings');
  return checkConfig(r.file, {
    modelType: d.modelType,
    vocabSize: r.positiveInt('vocab_size'),
    hidden,
    layers,
    heads,
    kvHeads: kvHeads(r, heads, d),
    headDim,
    ffn: r.positiveInt('intermediate_size'),
    maxPositions: Math.min(positions, window),
    ...(window < positions ? { positionsLimit: `${r.file}: sliding_window ${window}; sliding-window attention is not implemented, so a sequence stays within its window` } : {}),
    norm: 'rmsnorm',
    normEps: r.num('rms_norm_eps', 1e-6),
    preNorm: true,
    finalNorm: true,
    activation: r.activation('hidden_act', 'silu'),
    gatedMlp: true,
    positions: parseRope(r, headDim, d.ropeTheta),
    qkvBias: d.qkvBias ?? attentionBias,
    outBias: d.qkvBias ? false : attentionBias,
    mlpBias: r.bool('mlp_bias', false),
    tiedEmbeddings: r.bool('tie_word_embeddings', d.tied),
    embedDim: hidden,
    bosTokenId: r.has('bos_token_id') ? r.int('bos_token_id') : null,
    eosTokenIds: r.ids('eos_token_id'),
  });
}

function kvHeads(r: ConfigReader, heads: number, d: LlamaFamilyDefaults): number {
  if (r.given('num_key_value_heads') || d.kvHeads === undefined) return r.positiveInt('num_key_value_heads', heads);
  if (heads % d.kvHeads !== 0) {
    throw r.error('num_key_value_heads', `is absent, which means ${d.kvHeads} key/value heads for ${d.modelType} (as in transformers), and num_attention_heads (${heads}) ` +
      'is not a multiple of that: write num_key_value_heads (null for as many as the attention heads)');
  }
  return d.kvHeads;
}

export function llamaFamilyNames(c: ModelConfig, _has: (name: string) => boolean): NameTable {
  const l = 'model.layers.{L}.';
  return {
    global: {
      embed: 'model.embed_tokens',
      final_norm: 'model.norm',
      // Tied: the embedding, whatever lm_head.weight a file also holds (as transformers ties them).
      lm_head: c.tiedEmbeddings ? 'model.embed_tokens' : 'lm_head',
    },
    layer: {
      attn_norm: `${l}input_layernorm`,
      q: `${l}self_attn.q_proj`,
      k: `${l}self_attn.k_proj`,
      v: `${l}self_attn.v_proj`,
      o: `${l}self_attn.o_proj`,
      mlp_norm: `${l}post_attention_layernorm`,
      gate: `${l}mlp.gate_proj`,
      up: `${l}mlp.up_proj`,
      down: `${l}mlp.down_proj`,
    },
  };
}

export const llama: Architecture = {
  modelTypes: ['llama'],
  parseConfig: (r) => parseLlamaFamily(r, { modelType: 'llama', ropeTheta: 10000, tied: false }),
  names: llamaFamilyNames,
};
