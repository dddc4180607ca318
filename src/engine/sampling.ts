// Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k and
// top-p. Each request has its own seeded generator, so its tokens do not depend on the batch it
// ran in, nor on whether a job was resumed.

export interface SamplingParams {
  /** 0 (the default) means greedy. */
  temperature: number;
  /** 0 means no top-k cut. */
  topK: number;
  /** 1 means no nucleus cut. */
  topP: number;
  seed: number;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, seed: 0 };

/** A small, fast seeded generator (SplitMix32-style) per request. */
export class Rng {
  private state: number;
  constructor(seed: number, stream: string) {
    let h = (seed >>> 0) ^ 0x9e3779b9;
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

export function argmax(row: Float32Array): number {
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

export function sample(row: Float32Array, p: SamplingParams, rng: Rng): number {
  if (p.temperature <= 0) return argmax(row);
  // Candidates by descending logit; top-k and top-p cut the list before drawing.
  const n = row.length;
  let idx: number[];
  if (p.topK > 0 && p.topK < n) {
    idx = topKIndices(row, p.topK);
  } else {
    idx = Array.from({ length: n }, (_, i) => i).sort((a, b) => row[b]! - row[a]!);
  }
  const max = row[idx[0]!]!;
  const probs = idx.map((i) => Math.exp((row[i]! - max) / p.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (p.topP < 1) {
    let cum = 0;
    let keep = 0;
    while (keep < probs.length && cum < p.topP * total) cum += probs[keep++]!;
    probs.length = Math.max(1, keep);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let u = rng.next() * total;
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i]!;
    if (u < 0) return idx[i]!;
  }
  return idx[probs.length - 1]!;
}

function topKIndices(row: Float32Array, k: number): number[] {
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
