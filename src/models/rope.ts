// Rotary position embeddings: the per-dimension frequency table (inv_freq) the rope kernel rotates
// by, from rope_theta and the config's rope_scaling, exactly as Hugging Face computes it
// (modeling_rope_utils: _compute_default_rope_parameters, _compute_linear_scaling_rope_parameters,
// _compute_llama3_parameters). Scaling types that change more than the frequencies (yarn and
// longrope scale the attention too, dynamic depends on the sequence length) are refused.

import type { ConfigReader } from './config.js';

export type RopeScaling =
  /** Position interpolation: every frequency divided by factor. */
  | { type: 'linear'; factor: number }
  /** Llama 3.x: long wavelengths divided by factor, short ones kept, the band between blended. */
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

export interface RopePositions {
  kind: 'rope';
  theta: number;
  /** Features rotated at the start of each head (head_dim × partial_rotary_factor); even. */
  rotaryDim: number;
  scaling: RopeScaling | null;
}

const SUPPORTED = ['default', 'linear', 'llama3'];

/** Rotary positions from config.json: rope_theta, partial_rotary_factor and rope_scaling, or the
 *  one rope_parameters object that transformers 5 writes in their place. */
export function parseRope(config: ConfigReader, headDim: number, defaultTheta: number): RopePositions {
  const params = config.object('rope_parameters');
  const from = (field: string) => (params?.has(field) ? params : config);
  const thetaFrom = from('rope_theta');
  const theta = thetaFrom.num('rope_theta', defaultTheta);
  if (!(theta > 0)) throw thetaFrom.error('rope_theta', `(${theta}) must be a number > 0`);
  const partial = from('partial_rotary_factor').num('partial_rotary_factor', 1);
  // rope_scaling beside rope_parameters (a user adding it, as model cards say, to a config that
  // transformers 5 saved) is the one that counts, as transformers 5 reads it: it was ignored.
  return { kind: 'rope', theta, rotaryDim: Math.round(headDim * partial), scaling: parseRopeScaling(config.object('rope_scaling') ?? params) };
}

/** The scaling an object of rope_scaling's form describes (none: null, or rope_type "default"). */
function parseRopeScaling(r: ConfigReader | null): RopeScaling | null {
  if (!r) return null;
  // Older configs name the type "type"; Hugging Face reads rope_type first.
  const field = r.has('rope_type') ? 'rope_type' : 'type';
  // A factor with no type: Hugging Face refuses it; taken as "default" the positions would be unscaled.
  if (!r.has(field) && r.has('factor')) throw r.error('factor', 'is given without a rope_type (or type): which scaling it is for cannot be known');
  const type = r.str(field, 'default');
  if (type === 'default') return null;
  if (type === 'linear') return { type, factor: positive(r, 'factor') };
  if (type === 'llama3') {
    const s: RopeScaling = {
      type,
      factor: positive(r, 'factor'),
      lowFreqFactor: positive(r, 'low_freq_factor'),
      highFreqFactor: positive(r, 'high_freq_factor'),
      originalMaxPositions: r.positiveInt('original_max_position_embeddings'),
    };
    // The blend divides by their difference.
    if (!(s.highFreqFactor > s.lowFreqFactor)) throw r.error('high_freq_factor', `(${s.highFreqFactor}) must be greater than low_freq_factor (${s.lowFreqFactor})`);
    return s;
  }
  throw r.error(field, `"${type}" is not supported yet (positions would be wrong; supported: ${SUPPORTED.join(', ')})`);
}

function positive(r: ConfigReader, field: string): number {
  const v = r.num(field);
  if (!(v > 0)) throw r.error(field, `must be positive, got ${v}`);
  return v;
}

/** inv_freq[j] for j < rotaryDim/2, in float64: theta^(-2j/rotaryDim), then scaled. Token at
 *  position p rotates features j and j + rotaryDim/2 by the angle p · inv_freq[j]. */
export function ropeInvFreq(p: RopePositions): Float64Array {
  const half = p.rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / p.theta ** ((2 * j) / p.rotaryDim);
  const s = p.scaling;
  if (s?.type === 'linear') for (let j = 0; j < half; j++) inv[j]! /= s.factor;
  if (s?.type === 'llama3') {
    const lowFreqWavelen = s.originalMaxPositions / s.lowFreqFactor;
    const highFreqWavelen = s.originalMaxPositions / s.highFreqFactor;
    for (let j = 0; j < half; j++) {
      const wavelen = (2 * Math.PI) / inv[j]!;
      if (wavelen > lowFreqWavelen) inv[j]! /= s.factor;
      else if (wavelen >= highFreqWavelen) {
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[j] = ((1 - smooth) * inv[j]!) / s.factor + smooth * inv[j]!;
      }
    }
  }
  return inv;
}
