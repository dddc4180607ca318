// OPT (facebook/opt-*): learned positions offset by 2, LayerNorm before (most sizes) or after
// (350m) each block, ReLU MLP, biases everywhere, lm_head tied to the token embedding, and for
// 350m a projection between a narrower embedding and the residual stream.
//
// Checkpoints name tensors `model.decoder.*` (OPTForCausalLM) or `decoder.*` (OPTModel).

import type { Architecture, NameTable } from './architecture.js';
import { type ConfigReader, type ModelConfig, checkConfig } from './config.js';

export const opt: Architecture = {
  modelTypes: ['opt'],

  parseConfig(r: ConfigReader): ModelConfig {
    const hidden = r.positiveInt('hidden_size');
    const heads = r.positiveInt('num_attention_heads');
    const preNorm = r.bool('do_layer_norm_before', true);
    // LayerNorms without weight and bias: none is published; refused by name rather than as a
    // missing tensor.
    if (!r.bool('layer_norm_elementwise_affine', true)) throw r.error('layer_norm_elementwise_affine', 'false (LayerNorms without weight and bias) is not supported');
    return checkConfig(r.file, {
      modelType: 'opt',
      vocabSize: r.positiveInt('vocab_size'),
      hidden,
      layers: r.positiveInt('num_hidden_layers'),
      heads,
      kvHeads: heads,
      headDim: hidden / heads,
      ffn: r.positiveInt('ffn_dim'),
      maxPositions: r.positiveInt('max_position_embeddings'),
      norm: 'layernorm',
      normEps: 1e-5,
      preNorm,
      // transformers drops the final LayerNorm of post-LN checkpoints (opt-350m).
      finalNorm: preNorm && !r.bool('_remove_final_layer_norm', false),
      activation: r.activation('activation_function', 'relu'),
      gatedMlp: false,
      positions: { kind: 'learned', offset: 2 },
      qkvBias: r.bool('enable_bias', true),
      outBias: r.bool('enable_bias', true),
      mlpBias: r.bool('enable_bias', true),
      tiedEmbeddings: r.bool('tie_word_embeddings', true),
      embedDim: r.positiveInt('word_embed_proj_dim', hidden),
      bosTokenId: r.has('bos_token_id') ? r.int('bos_token_id') : 2,
      eosTokenIds: r.has('eos_token_id') ? r.ids('eos_token_id') : [2],
    });
  },

  names(c: ModelConfig, has: (name: string) => boolean): NameTable {
    const p = has('decoder.embed_tokens.weight') && !has('model.decoder.embed_tokens.weight') ? 'decoder.' : 'model.decoder.';
    const l = `${p}layers.{L}.`;
    return {
      global: {
        embed: `${p}embed_tokens`,
        pos_embed: `${p}embed_positions`,
        project_in: c.embedDim !== c.hidden ? `${p}project_in` : undefined,
        project_out: c.embedDim !== c.hidden ? `${p}project_out` : undefined,
        final_norm: c.finalNorm ? `${p}final_layer_norm` : undefined,
        // Tied (transformers' default for OPT): the embedding, whatever lm_head.weight a file holds;
        // untied, the file's own head.
        lm_head: c.tiedEmbeddings || !has('lm_head.weight') ? `${p}embed_tokens` : 'lm_head',
      },
      layer: {
        attn_norm: `${l}self_attn_layer_norm`,
        q: `${l}self_attn.q_proj`,
        k: `${l}self_attn.k_proj`,
        v: `${l}self_attn.v_proj`,
        o: `${l}self_attn.out_proj`,
        mlp_norm: `${l}final_layer_norm`,
        up: `${l}fc1`,
        down: `${l}fc2`,
      },
    };
  },
};
