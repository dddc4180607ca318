// The architecture-neutral description of a decoder-only transformer that the forward pass runs.
// Each architecture file turns its Hugging Face config.json into one of these.

import { ModelFileError } from '../util/errors.js';
import type { RopePositions } from './rope.js';

export type NormKind = 'layernorm' | 'rmsnorm';
export type Activation = 'relu' | 'gelu' | 'gelu_new' | 'silu';

export interface ModelConfig {
  /** Hugging Face model_type. */
  modelType: string;
  vocabSize: number;
  /** Width of the residual stream. */
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Width of the MLP's hidden layer. */
  ffn: number;
  maxPositions: number;
  /** Why maxPositions is below config.json's max_position_embeddings, for messages (a sliding
   *  window: see llama.ts); absent when it is not. */
  positionsLimit?: string;
  norm: NormKind;
  normEps: number;
  /** Norm before each block (pre-LN) or after each residual add (OPT-350m's post-LN). */
  preNorm: boolean;
  /** Whether the stack ends with a final norm. */
  finalNorm: boolean;
  activation: Activation;
  /** SwiGLU-style MLP: down(act(gate(x)) · up(x)). */
  gatedMlp: boolean;
  /** Learned absolute positions (OPT, with its offset of 2) or rotary (src/models/rope.ts). */
  positions: { kind: 'learned'; offset: number } | RopePositions;
  qkvBias: boolean;
  outBias: boolean;
  mlpBias: boolean;
  tiedEmbeddings: boolean;
  /** Embedding width when it differs from hidden (OPT project_in / project_out). */
  embedDim: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/** Typed access to config.json fields with errors that name the file and field (a nested object's
 *  fields are named with its path, e.g. "rope_scaling.factor"). */
export class ConfigReader {
  constructor(
    readonly file: string,
    private readonly json: Record<string, unknown>,
    private readonly path = '',
  ) {}

  has(field: string): boolean {
    return this.json[field] !== undefined && this.json[field] !== null;
  }

  /** Whether the field is written at all (null included: "none", where absent means a default). */
  given(field: string): boolean {
    return this.json[field] !== undefined;
  }

  /** A nested object, or null when the field is absent or null. */
  object(field: string): ConfigReader | null {
    const v = this.json[field];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) throw this.error(field, `must be an object, got ${JSON.stringify(v)}`);
    return new ConfigReader(this.file, v as Record<string, unknown>, `${this.path}${field}.`);
  }

  /** An error about a field, naming the file and the field's full path. */
  error(field: string, message: string): ModelFileError {
    return new ModelFileError(this.file, `field "${this.path}${field}" ${message}`);
  }

  int(field: string, fallback?: number): number {
    const v = this.json[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      throw this.error(field, `must be a non-negative integer, got ${JSON.stringify(this.json[field])}`);
    }
    return v;
  }

  positiveInt(field: string, fallback?: number): number {
    const v = this.int(field, fallback);
    if (v === 0) throw this.error(field, 'must be positive');
    return v;
  }

  num(field: string, fallback?: number): number {
    const v = this.json[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      throw this.error(field, `must be a number, got ${JSON.stringify(this.json[field])}`);
    }
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    const v = this.json[field] ?? fallback;
    if (typeof v !== 'boolean') throw this.error(field, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  str(field: string, fallback?: string): string {
    const v = this.json[field] ?? fallback;
    if (typeof v !== 'string') throw this.error(field, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A token id or list of ids (eos_token_id may be either); null when absent. */
  ids(field: string): number[] {
    const v = this.json[field];
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => Number.isSafeInteger(x) && x >= 0)) {
      throw this.error(field, 'must be a token id or a list of them');
    }
    return list as number[];
  }

  activation(field: string, fallback: string): Activation {
    const v = this.str(field, fallback);
    const known: Record<string, Activation> = { relu: 'relu', gelu: 'gelu', gelu_new: 'gelu_new', gelu_pytorch_tanh: 'gelu_new', silu: 'silu', swish: 'silu' };
    const a = known[v];
    if (!a) throw this.error(field, `holds an unsupported activation "${v}" (supported: ${Object.keys(known).join(', ')})`);
    return a;
  }
}

/** Checks the relations between fields that the forward pass depends on. */
export function checkConfig(file: string, c: ModelConfig): ModelConfig {
  // (OPT's head size is hidden / heads: 2048 over 5 heads loaded, then failed at the first step)
  if (!Number.isInteger(c.headDim)) throw new ModelFileError(file, `hidden_size (${c.hidden}) is not a multiple of num_attention_heads (${c.heads})`);
  // What the forward pass computes (models/ops.ts): a gated MLP is SwiGLU, an ungated one ReLU or GELU.
  const runs = c.gatedMlp ? ['silu'] : ['relu', 'gelu', 'gelu_new'];
  if (!runs.includes(c.activation)) {
    const field = c.modelType === 'opt' ? 'activation_function' : 'hidden_act';
    throw new ModelFileError(file, `field "${field}": ${c.activation} is not supported in a${c.gatedMlp ? ' gated' : 'n ungated'} MLP (supported: ${runs.join(', ')})`);
  }
  if (c.heads % c.kvHeads !== 0) throw new ModelFileError(file, `num_attention_heads (${c.heads}) is not a multiple of the key/value heads (${c.kvHeads})`);
  if (c.positions.kind === 'rope' && (c.positions.rotaryDim % 2 !== 0 || c.positions.rotaryDim > c.headDim)) {
    throw new ModelFileError(file, `rotary dimension ${c.positions.rotaryDim} must be even and at most head_dim ${c.headDim}`);
  }
  if (c.eosTokenIds.some((id) => id >= c.vocabSize)) throw new ModelFileError(file, `eos_token_id outside the vocabulary of ${c.vocabSize}`);
  return c;
}

/** " (why)" after a count of the model's positions, when something other than
 *  max_position_embeddings sets it (a sliding window); "" otherwise. */
export function positionsNote(c: ModelConfig): string {
  return c.positionsLimit ? ` (${c.positionsLimit})` : '';
}
