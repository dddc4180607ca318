// Choosing the next token from a row of logits: penalties for tokens already seen, then greedy,
// or sampling with temperature, top-k, top-p and min-p. Each sample has its own seeded generator,
// so its tokens do not depend on the batch it ran in, nor on whether a job was resumed.
//
// Semantics follow Hugging Face / vLLM: repetition_penalty divides the positive logits (and
// multiplies the negative ones) of every token in the prompt or the output; presence and
// frequency penalties (OpenAI) subtract presence·[count > 0] + frequency·count over generated
// tokens; min_p keeps tokens whose probability is at least min_p × the largest one.

import { argmaxF32 } from '../backend/index.js';

export interface SamplingParams {
  /** 0 (the default) means greedy. */
  temperature: number;
  /** 0 means no top-k cut. */
  topK: number;
  /** 1 means no nucleus cut. */
  topP: number;
  /** 0 means no min-p cut. */
  minP: number;
  seed: number;
  /** 1 means none. */
  repetitionPenalty: number;
  /** 0 means none. */
  presencePenalty: number;
  /** 0 means none. */
  frequencyPenalty: number;
}

export const GREEDY: SamplingParams = {
  temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0,
};

/** The tokens one sequence has seen: its prompt's, and counts of those it generated. */
export class TokenHistory {
  private readonly prompt: Set<number>;
  readonly counts = new Map<number, number>();
  constructor(promptIds: Iterable<number>) {
    this.prompt = new Set(promptIds);
  }
  add(token: number): void {
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
  }
  /** Every token of the prompt or the output, once. */
  seen(): Set<number> {
    return new Set([...this.prompt, ...this.counts.keys()]);
  }
}

function penalized(p: SamplingParams): boolean {
  return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
}

/** The row with the penalties applied (a copy; the row itself, unchanged, when there are none). */
export function applyPenalties(row: Float32Array, p: SamplingParams, h: TokenHistory): Float32Array {
  if (!penalized(p)) return row;
  const out = Float32Array.from(row);
  if (p.repetitionPenalty !== 1) {
    for (const t of h.seen()) out[t] = out[t]! > 0 ? out[t]! / p.repetitionPenalty : out[t]! * p.repetitionPenalty;
  }
  for (const [t, count] of h.counts) out[t] = out[t]! - p.presencePenalty - p.frequencyPenalty * count;
  return out;
}

/** A small, fast seeded generator (SplitMix32-style) per request. */
export class Rng {
  private state: number;
  constructor(seed: number, stream: string) {
    // The seed's bits above 32 too (any safe integer: a timestamp seed must not repeat seed 7);
    // below 2^32 the state is what it always was.
    let h = (seed >>> 0) ^ 0x9e3779b9;
    const high = Math.floor(seed / 2 ** 32);
    if (high > 0) h = Math.imul(h ^ (high >>> 0), 0x85ebca6b) ^ Math.imul(Math.floor(high / 2 ** 32) + 1, 0xc2b2ae35);
    for (let i = 0; i < stream.length; i++) h = Math.imul(h ^ stream.charCodeAt(i), 0x01000193);
    this.state = h >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  }
}

/** Rows this long or longer are scanned natively (argmaxF32: the same answer). */
export const NATIVE_ARGMAX_MIN = 2048;

/** The index of the first largest value (NaN is never larger): greedy sampling. */
export function argmax(row: Float32Array): number {
  // Native for a vocabulary's row, where the call costs far less than the scan.
  if (row.length >= NATIVE_ARGMAX_MIN) return argmaxF32(row);
  let best = 0;
  let bestV = row[0]!;
  for (let i = 1; i < row.length; i++) {
    const v = row[i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** The tokens sampling may draw from (most likely first) and their unnormalised probabilities,
 *  after temperature, top-k, top-p and min-p. `row` already carries the penalties. */
export function candidates(row: Float32Array, p: SamplingParams): { idx: number[]; probs: number[] } {
  const n = row.length;
  if (p.topK > 0 && p.topK < n) return cut(row, topKIndices(row, p.topK), p);
  const e = weights(row, p.temperature);
  let total = 0;
  for (let i = 0; i < n; i++) total += e[i]!;
  // min-p keeps exactly the tokens of weight >= minP (the largest weight is 1); top-p's mass is
  // still that of every token.
  if (p.minP > 0) return cut(row, above(row, e, p.minP)!, p, total);
  if (p.topP < 1) {
    // The top-p prefix lies within the tokens above any weight whose set already holds the mass
    // it needs: try small sets first (a prefix of the sorted order, sorted alone).
    for (let tau = 2 ** -6; tau > 2 ** -40; tau /= 64) {
      const idx = above(row, e, tau, n / 4);
      if (!idx) break;
      let mass = 0;
      for (const i of idx) mass += e[i]!;
      if (mass >= p.topP * total * (1 + 1e-9)) return cut(row, idx, p, total);
    }
  }
  return cut(row, sortedIndices(row), p);
}

/** exp((row - max) / temperature) for every token (the largest is exactly 1). */
function weights(row: Float32Array, temperature: number): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  const e = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) e[i] = Math.exp((row[i]! - max) / temperature);
  return e;
}

/** The tokens whose weight is at least tau, in sampling order (a prefix of sortedIndices: the
 *  weight grows with the logit); null when there are more than `most`. */
function above(row: Float32Array, e: Float64Array, tau: number, most = Infinity): number[] | null {
  let count = 0;
  for (let i = 0; i < e.length; i++) if (e[i]! >= tau) count++;
  if (count > most) return null;
  const idx = new Array<number>(count);
  let k = 0;
  for (let i = 0; i < e.length; i++) if (e[i]! >= tau) idx[k++] = i;
  return sortIndices(row, idx);
}

/** Top-p and min-p over a sorted prefix `idx` of the candidates (`total`: the mass of all of
 *  them, when idx is only a prefix). */
function cut(row: Float32Array, idx: number[], p: SamplingParams, total?: number): { idx: number[]; probs: number[] } {
  const max = row[idx[0]!]!;
  const probs = idx.map((i) => Math.exp((row[i]! - max) / p.temperature));
  if (p.topP < 1) {
    const mass = total ?? probs.reduce((a, b) => a + b, 0);
    let cum = 0;
    let keep = 0;
    while (keep < probs.length && cum < p.topP * mass) cum += probs[keep++]!;
    probs.length = Math.max(1, keep);
  }
  // probs[0] is the largest (exp(0) = 1): min-p keeps a prefix of the sorted list.
  if (p.minP > 0) {
    let keep = 1;
    while (keep < probs.length && probs[keep]! >= p.minP * probs[0]!) keep++;
    probs.length = keep;
  }
  idx.length = probs.length;
  return { idx, probs };
}

/** The next token: penalties from `history`, then greedy (temperature 0) or a draw from `rng`. */
export function sample(row: Float32Array, p: SamplingParams, rng: Rng, history?: TokenHistory): number {
  const logits = history ? applyPenalties(row, p, history) : row;
  if (p.temperature <= 0) return argmax(logits);
  if (p.topK === 0 && p.topP >= 1 && p.minP <= 0) return drawAll(logits, p.temperature, rng);
  const { idx, probs } = candidates(logits, p);
  const total = probs.reduce((a, b) => a + b, 0);
  let u = rng.next() * total;
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i]!;
    if (u < 0) return idx[i]!;
  }
  return idx[probs.length - 1]!;
}

/** A draw over the whole vocabulary (no cut): the inverse CDF in sampling order, walked over the
 *  smallest prefix that holds it (sorted alone) rather than the whole sorted vocabulary. */
function drawAll(row: Float32Array, temperature: number, rng: Rng): number {
  const e = weights(row, temperature);
  let total = 0;
  for (let i = 0; i < e.length; i++) total += e[i]!;
  const u0 = rng.next() * total;
  for (let tau = 2 ** -6; tau > 2 ** -40; tau /= 64) {
    const idx = above(row, e, tau, e.length / 4);
    if (!idx) break;
    let u = u0;
    for (const i of idx) if ((u -= e[i]!) < 0) return i;
  }
  const idx = sortedIndices(row);
  let u = u0;
  for (const i of idx) if ((u -= e[i]!) < 0) return i;
  return idx[idx.length - 1]!;
}

const INDEX_SPAN = 2 ** 20;

/** Every index of `row`, largest value first, equal values in index order (what a stable
 *  comparator sort gives). One native numeric sort of packed keys (the value's order-preserving
 *  32 bits above a 20-bit index, exact in a float64) instead of a comparator sort, which took
 *  tens of milliseconds per token over a 32k–128k vocabulary. */
export function sortedIndices(row: Float32Array): number[] {
  return sortIndices(row, Array.from({ length: row.length }, (_, i) => i));
}

/** `idx` (indices of row) in sortedIndices' order, in place. */
function sortIndices(row: Float32Array, idx: number[]): number[] {
  const n = idx.length;
  if (row.length > INDEX_SPAN) return idx.sort((a, b) => row[b]! - row[a]! || a - b);
  const bits = new Uint32Array(row.buffer, row.byteOffset, row.length);
  const keys = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    const i = idx[k]!;
    const b = bits[i]!;
    // Order-preserving map of a float32's bits to an unsigned integer; negated for descending.
    const ordered = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
    keys[k] = (0xffffffff - ordered) * INDEX_SPAN + i;
  }
  keys.sort();
  for (let k = 0; k < n; k++) idx[k] = keys[k]! % INDEX_SPAN;
  return idx;
}

/** Indices of the k largest entries of row, largest first. */
export function topKIndices(row: Float32Array, k: number): number[] {
  // Partial selection: keep the k best in a small sorted array (k is small in practice).
  const best: number[] = [];
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    if (best.length === k && v <= row[best[k - 1]!]!) continue;
    let pos = best.length === k ? k - 1 : best.length;
    while (pos > 0 && row[best[pos - 1]!]! < v) pos--;
    best.splice(pos, 0, i);
    if (best.length > k) best.pop();
  }
  return best;
}
