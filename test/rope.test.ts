// Rotary frequencies and rope_scaling: the inv_freq table against values pinned from PyTorch
// (tools/fixtures/torch_reference.py, Hugging Face's _compute_llama3_parameters), config
// parsing with errors that name the field, and the Llama 3.x shapes of `tierlm init`.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type RopePositions, type RopeScaling, ropeInvFreq } from '../src/models/rope.js';
import { readConfig } from '../src/models/registry.js';
import { PRESETS } from '../src/models/presets.js';
import { tmpDir } from './helpers/fixtures.js';

const llama32: RopeScaling = { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };
const rope = (scaling: RopeScaling | null, rotaryDim = 64, theta = 500000): RopePositions => ({ kind: 'rope', theta, rotaryDim, scaling });

/** Parses a Llama config.json holding `extra` (on top of a small valid config). */
function parse(extra: Record<string, unknown>) {
  const dir = tmpDir('rope');
  const base = { model_type: 'llama', vocab_size: 64, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4, intermediate_size: 48, max_position_embeddings: 64 };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...base, ...extra }));
  return readConfig(dir).config;
}

describe('rope frequencies', () => {
  it('llama3 scaling (Llama 3.2 1B: head_dim 64, factor 32) matches PyTorch float64', () => {
    const inv = ropeInvFreq(rope(llama32));
    const torch: [number, number][] = [
      [0, 1.0], [10, 0.016560440080994446], // short wavelengths: unchanged
      [14, 0.0032114459947525913], [15, 0.0012905479282092638], [16, 0.00042955679655936815], // blended
      [17, 9.70828780262767e-5], [18, 1.9461638184831125e-5], [31, 9.418306725434909e-8], // long: divided by 32
    ];
    for (const [j, want] of torch) expect(Math.abs(inv[j]! - want) / want, `inv_freq[${j}]`).toBeLessThan(1e-14);
    const plain = ropeInvFreq(rope(null));
    expect(inv[10]).toBe(plain[10]);
    expect(inv[31]).toBe(plain[31]! / 32);
  });

  it('linear scaling divides every frequency by the factor', () => {
    const inv = ropeInvFreq(rope({ type: 'linear', factor: 4 }));
    expect(Math.abs(inv[5]! - 0.03217184335816263) / inv[5]!).toBeLessThan(1e-14);
    const plain = ropeInvFreq(rope(null));
    inv.forEach((f, j) => expect(f).toBe(plain[j]! / 4));
  });

  it('no scaling is theta^(-2j/d), and a partial rotary dimension has its own table', () => {
    expect(Array.from(ropeInvFreq(rope(null, 8, 10000)))).toEqual([1, 0.1, 0.01, 0.001]);
    expect(ropeInvFreq(rope(null, 10, 10000))).toHaveLength(5);
  });
});

describe('rope_scaling in config.json', () => {
  it('reads llama3 and linear (either type key); "default" and null mean none', () => {
    const l3 = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    expect(parse({ rope_scaling: l3 }).positions).toEqual({ kind: 'rope', theta: 10000, rotaryDim: 8, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 } });
    expect(parse({ rope_scaling: { type: 'linear', factor: 2 } }).positions).toMatchObject({ scaling: { type: 'linear', factor: 2 } });
    expect(parse({ rope_scaling: { rope_type: 'default' } }).positions).toMatchObject({ scaling: null });
    expect(parse({ rope_scaling: null }).positions).toMatchObject({ scaling: null });
  });

  it('reads the rope_parameters object of transformers 5 (theta and scaling in one place)', () => {
    const l3 = { rope_type: 'llama3', rope_theta: 500000, factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    expect(parse({ rope_parameters: l3 }).positions).toMatchObject({ theta: 500000, scaling: { type: 'llama3', factor: 32 } });
    expect(parse({ rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }).positions).toEqual({ kind: 'rope', theta: 1e6, rotaryDim: 8, scaling: null });
    expect(() => parse({ rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, factor: 4 } })).toThrow(/field "rope_parameters\.rope_type" "yarn" is not supported yet/);
    // rope_scaling added beside them is the scaling (it was ignored: positions unscaled, no error)
    const saved = { rope_parameters: { rope_type: 'default', rope_theta: 10000 } };
    expect(parse({ ...saved, rope_scaling: { type: 'linear', factor: 4 } }).positions).toEqual({ kind: 'rope', theta: 10000, rotaryDim: 8, scaling: { type: 'linear', factor: 4 } });
    expect(() => parse({ ...saved, rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 32 } })).toThrow(/field "rope_scaling\.type" "yarn" is not supported yet/);
  });

  it('refuses the types not implemented, and bad fields, naming the field', () => {
    for (const type of ['yarn', 'longrope', 'dynamic']) {
      expect(() => parse({ rope_scaling: { rope_type: type, factor: 4 } })).toThrow(new RegExp(`config\\.json: field "rope_scaling\\.rope_type" "${type}" is not supported yet \\(positions would be wrong; supported: default, linear, llama3\\)`));
    }
    expect(() => parse({ rope_scaling: { type: 'yarn', factor: 4 } })).toThrow(/field "rope_scaling\.type" "yarn" is not supported yet/);
    expect(() => parse({ rope_scaling: { rope_type: 'llama3', factor: 8, high_freq_factor: 4, original_max_position_embeddings: 8192 } })).toThrow(/field "rope_scaling\.low_freq_factor" must be a number, got undefined/);
    expect(() => parse({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 4, original_max_position_embeddings: 8192 } })).toThrow(/field "rope_scaling\.high_freq_factor" \(4\) must be greater than low_freq_factor \(4\)/);
    expect(() => parse({ rope_scaling: { type: 'linear', factor: 0 } })).toThrow(/field "rope_scaling\.factor" must be positive, got 0/);
    expect(() => parse({ rope_scaling: 'llama3' })).toThrow(/field "rope_scaling" must be an object/);
  });

  it('head_dim given in the config overrides hidden/heads; without it hidden must divide', () => {
    expect(parse({ head_dim: 24 })).toMatchObject({ headDim: 24, positions: { rotaryDim: 24 } });
    expect(() => parse({ num_attention_heads: 5 })).toThrow(/field "hidden_size" \(32\) is not divisible by num_attention_heads \(5\) and no head_dim is given/);
  });
});

describe('Llama 3.x shapes for tierlm init', () => {
  const shape = (name: string) => {
    const dir = tmpDir('preset');
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(PRESETS[name]!()));
    return readConfig(dir).config;
  };

  it('llama-3.1-8b and llama-3.2-1b parse to the published shapes', () => {
    expect(shape('llama-3.1-8b')).toMatchObject({
      hidden: 4096, layers: 32, heads: 32, kvHeads: 8, headDim: 128, ffn: 14336, vocabSize: 128256, maxPositions: 131072, normEps: 1e-5, tiedEmbeddings: false,
      positions: { theta: 500000, rotaryDim: 128, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 } },
    });
    expect(shape('llama-3.2-1b')).toMatchObject({
      hidden: 2048, layers: 16, heads: 32, kvHeads: 8, headDim: 64, ffn: 8192, vocabSize: 128256, tiedEmbeddings: true,
      positions: { theta: 500000, rotaryDim: 64, scaling: { type: 'llama3', factor: 32 } },
    });
  });
});
