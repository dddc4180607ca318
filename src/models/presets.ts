// Named model shapes for `tierlm init` (dummy weights, as FlexGen's benchmarks use), written as
// the Hugging Face config.json of the real model.

import { UserError } from '../util/errors.js';

type Json = Record<string, unknown>;

function optConfig(hidden: number, layers: number, heads: number, extra: Json = {}): Json {
  return {
    model_type: 'opt', architectures: ['OPTForCausalLM'], vocab_size: 50272, hidden_size: hidden, num_hidden_layers: layers,
    num_attention_heads: heads, ffn_dim: 4 * hidden, max_position_embeddings: 2048, word_embed_proj_dim: hidden,
    do_layer_norm_before: true, activation_function: 'relu', enable_bias: true, layer_norm_elementwise_affine: true,
    bos_token_id: 2, eos_token_id: 2, pad_token_id: 1, torch_dtype: 'float16', ...extra,
  };
}

function llamaConfig(hidden: number, layers: number, heads: number, kvHeads: number, ffn: number, extra: Json = {}): Json {
  return {
    model_type: 'llama', architectures: ['LlamaForCausalLM'], vocab_size: 32000, hidden_size: hidden, num_hidden_layers: layers,
    num_attention_heads: heads, num_key_value_heads: kvHeads, intermediate_size: ffn, max_position_embeddings: 4096,
    rms_norm_eps: 1e-5, rope_theta: 10000, hidden_act: 'silu', tie_word_embeddings: false, attention_bias: false,
    bos_token_id: 1, eos_token_id: 2, torch_dtype: 'float16', ...extra,
  };
}

/** Llama 3.x: vocabulary 128256, rope_theta 500000 with llama3 rope scaling from an original
 *  context of 8192 to 131072 positions (values of the published config.json files). */
function llama3Config(hidden: number, layers: number, heads: number, kvHeads: number, ffn: number, ropeFactor: number, extra: Json): Json {
  return llamaConfig(hidden, layers, heads, kvHeads, ffn, {
    vocab_size: 128256, max_position_embeddings: 131072, rope_theta: 500000, mlp_bias: false,
    rope_scaling: { rope_type: 'llama3', factor: ropeFactor, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    bos_token_id: 128000, eos_token_id: 128001, torch_dtype: 'bfloat16', ...extra,
  });
}

export const PRESETS: Record<string, () => Json> = {
  'opt-125m': () => optConfig(768, 12, 12),
  'opt-350m': () => optConfig(1024, 24, 16, { word_embed_proj_dim: 512, do_layer_norm_before: false }),
  'opt-1.3b': () => optConfig(2048, 24, 32),
  'opt-2.7b': () => optConfig(2560, 32, 32),
  'opt-6.7b': () => optConfig(4096, 32, 32),
  'opt-13b': () => optConfig(5120, 40, 40),
  'opt-30b': () => optConfig(7168, 48, 56),
  'opt-66b': () => optConfig(9216, 64, 72),
  'opt-175b': () => optConfig(12288, 96, 96),
  'llama-2-7b': () => llamaConfig(4096, 32, 32, 32, 11008),
  'llama-2-13b': () => llamaConfig(5120, 40, 40, 40, 13824),
  'llama-2-70b': () => llamaConfig(8192, 80, 64, 8, 28672),
  'llama-3.1-8b': () => llama3Config(4096, 32, 32, 8, 14336, 8, { tie_word_embeddings: false }),
  'llama-3.2-1b': () => llama3Config(2048, 16, 32, 8, 8192, 32, { head_dim: 64, tie_word_embeddings: true }),
  'mistral-7b': () => ({ ...llamaConfig(4096, 32, 32, 8, 14336), model_type: 'mistral', architectures: ['MistralForCausalLM'], max_position_embeddings: 32768, sliding_window: 4096 }),
  'qwen2-0.5b': () => ({ ...llamaConfig(896, 24, 14, 2, 4864), model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'], vocab_size: 151936, rope_theta: 1000000, tie_word_embeddings: true, rms_norm_eps: 1e-6, max_position_embeddings: 32768, bos_token_id: 151643, eos_token_id: 151643 }),
  // Small shapes for tests and demos.
  'opt-demo-1b': () => optConfig(2048, 12, 32, { vocab_size: 8192, max_position_embeddings: 512 }),
  'opt-offload-test': () => optConfig(1024, 8, 16, { vocab_size: 2048, max_position_embeddings: 512 }),
  'opt-test': () => optConfig(256, 4, 4, { vocab_size: 1024, max_position_embeddings: 512 }),
  'llama-test': () => llamaConfig(128, 2, 4, 2, 344, { max_position_embeddings: 512 }),
};

export function presetNames(): string[] {
  return Object.keys(PRESETS);
}

/** A named shape's config.json with `layers` layers when given (fewer than its own or more); an unknown name is
 *  refused with the known ones. */
export function presetJson(name: string | undefined, layers?: number): Json {
  const preset = PRESETS[name ?? ''];
  if (!preset) throw new UserError(`unknown config "${name}" (known: ${presetNames().join(', ')})`);
  const json = preset();
  if (layers !== undefined) json.num_hidden_layers = layers;
  return json;
}
