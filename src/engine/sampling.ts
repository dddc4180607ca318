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

/** murmur3's 32-bit finalizer: every input bit flips each output bit with probability ~1/2. */
function fmix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A small, fast seeded generator (SplitMix32-style) per request. */
export class Rng {
  private state: number;
  constructor(seed: number, stream: string) {
    // The seed is mixed fully before the stream is hashed in: XOR-ing its raw bits into the word
    // the stream's first character lands in made (seed 0, id "1") the generator of (seed 1, id
    // "0"). Its bits above 32 count too (any safe integer: a timestamp seed must not repeat seed 7).
    const high = Math.floor(seed / 2 ** 32);
    let h = fmix32((seed >>> 0) ^ fmix32((high + 0x9e3779b9) >>> 0));
    for (let i = 0; i < stream.length; i++) h = Math.imul(h ^ stream.charCodeAt(i), 0x01000193);
    this.state = fmix32(h);
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return fmix32(this.state) / 4294967296;
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
  if (p.topK > 0 && p.topK < n) {
    const idx = topKIndices(row, p.topK);
    // topKIndices ranks NaN, then +inf, first: either (or a row all -inf) is the only candidate.
    if (!Number.isFinite(row[idx[0]!]!)) return { idx: [idx[0]!], probs: [1] };
    return cut(row, withTies(row, idx), p);
  }
  const e = weights(row, p.temperature);
  let total = 0;
  for (let i = 0; i < n; i++) total += e[i]!;
  // A NaN or +inf logit (or none finite) makes the total NaN; the cuts below would skip it.
  if (!Number.isFinite(total)) return { idx: [nonFinite(row)], probs: [1] };
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

/** The tokens of row >= the k-th largest, `top` (topKIndices' k) and those tied with its last,
 *  in sortedIndices' order: Hugging Face's top-k keeps every token tied at the boundary. */
function withTies(row: Float32Array, top: number[]): number[] {
  const kth = row[top[top.length - 1]!]!;
  let count = 0;
  for (let i = 0; i < row.length; i++) if (row[i]! >= kth) count++;
  if (count === top.length) return top;
  const idx = new Array<number>(count);
  let k = 0;
  for (let i = 0; i < row.length; i++) if (row[i]! >= kth) idx[k++] = i;
  return sortIndices(row, idx);
}

/** The first NaN or +inf of row, else its first -inf (0 when every value is finite): the token
 *  to answer a row that cannot be sampled with, which Sequence.next then refuses as not finite. */
function nonFinite(row: Float32Array): number {
  for (let i = 0; i < row.length; i++) if (!(row[i]! < Infinity)) return i;
  for (let i = 0; i < row.length; i++) if (row[i]! === -Infinity) return i;
  return 0;
}

/** Whether row holds a NaN or +inf: four sums (NaN or +inf stays NaN or +inf in a float64 sum,
 *  -inf alone gives -inf), a quarter of the cost of a compare and branch per value. */
function hasNanOrInf(row: Float32Array): boolean {
  let a = 0, b = 0, c = 0, d = 0;
  const n4 = row.length & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    a += row[i]!;
    b += row[i + 1]!;
    c += row[i + 2]!;
    d += row[i + 3]!;
  }
  for (; i < row.length; i++) a += row[i]!;
  return !(a < Infinity && b < Infinity && c < Infinity && d < Infinity);
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
  // argmax never picks a NaN: look for one (and +inf) so that Sequence.next refuses the row.
  if (p.temperature <= 0) return hasNanOrInf(logits) ? nonFinite(logits) : argmax(logits);
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
  // A NaN or +inf logit (or none finite): the walk below would fall through to the least likely.
  if (!Number.isFinite(total)) return nonFinite(row);
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

/** Every index of `row`, largest value first, equal values (+0 and -0 too) in index order (what
 *  a stable comparator sort gives); NaN ranks above +inf, as in torch.topk. One native numeric sort of packed keys (the value's order-preserving
 *  32 bits above a 20-bit index, exact in a float64) instead of a comparator sort, which took
 *  tens of milliseconds per token over a 32k–128k vocabulary. */
export function sortedIndices(row: Float32Array): number[] {
  return sortIndices(row, Array.from({ length: row.length }, (_, i) => i));
}

/** `idx` (indices of row) in sortedIndices' order, in place. */
function sortIndices(row: Float32Array, idx: number[]): number[] {
  const n = idx.length;
  if (row.length > INDEX_SPAN) return idx.sort((a, b) => rank(row[b]!) - rank(row[a]!) || row[b]! - row[a]! || a - b);
  const bits = new Uint32Array(row.buffer, row.byteOffset, row.length);
  const keys = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    const i = idx[k]!;
    // Negated for descending.
    keys[k] = (0xffffffff - orderedBits(bits[i]!)) * INDEX_SPAN + i;
  }
  keys.sort();
  for (let k = 0; k < n; k++) idx[k] = keys[k]! % INDEX_SPAN;
  return idx;
}

/** An order-preserving map of a float32's bits to an unsigned integer: -0 maps as +0 (they tie
 *  in a comparator sort), any NaN above +inf. */
function orderedBits(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return 0xffffffff;
  if (b === 0x80000000) return 0x80000000;
  return b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
}

/** 1 for NaN, else 0: NaN ranks above every number (a comparator sort's key). */
function rank(v: number): number {
  return v !== v ? 1 : 0;
}

/** Whether v ranks strictly above w: larger, or NaN over a number. */
function beats(v: number, w: number): boolean {
  return v > w || (v !== v && w === w);
}

/** Above this k, topKIndices sorts the row rather than insert into a sorted array of k (O(n·k)). */
const TOPK_INSERT_MAX = 64;

/** Indices of the k largest entries of row, largest first, ties in index order, NaN first (as
 *  torch.topk ranks it): exactly k of them, in sortedIndices' order. */
export function topKIndices(row: Float32Array, k: number): number[] {
  if (k > TOPK_INSERT_MAX) {
    const idx = sortedIndices(row);
    idx.length = Math.min(k, idx.length);
    return idx;
  }
  // Partial selection: keep the k best in a small sorted array.
  const best: number[] = [];
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    if (best.length === k && !beats(v, row[best[k - 1]!]!)) continue;
    let pos = best.length === k ? k - 1 : best.length;
    while (pos > 0 && beats(v, row[best[pos - 1]!]!)) pos--;
    best.splice(pos, 0, i);
    if (best.length > k) best.pop();
  }
  return best;
}
