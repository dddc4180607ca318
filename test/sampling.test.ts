// Sampling: penalties, min-p, top-k/top-p and n samples per prompt, each against a plain
// reference written from the HF / vLLM / OpenAI definitions; the same fields through the API, the
// CLI's flags and a JSONL request line give the same tokens, whatever the batching.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type GenerationResult, type SamplingParams, loadModel } from '../src/index.js';
import { GREEDY, Rng, TokenHistory, applyPenalties, argmax, candidates, sample, sortedIndices, topKIndices } from '../src/engine/sampling.js';
import { cli } from './helpers/cli.js';
import { type Prompt, fixturePrompts, readJsonl, fixturesDir, tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';

/** The reference: float64, every token, each step as its definition reads. Returns token → probability. */
function reference(logits: number[], p: SamplingParams, prompt: number[], generated: number[]): Map<number, number> {
  const l = [...logits];
  // Hugging Face RepetitionPenaltyLogitsProcessor, over prompt and output.
  for (const t of new Set([...prompt, ...generated])) l[t] = l[t]! > 0 ? l[t]! / p.repetitionPenalty : l[t]! * p.repetitionPenalty;
  // OpenAI: logit -= presence · [count > 0] + frequency · count, over generated tokens.
  const counts = new Map<number, number>();
  for (const t of generated) counts.set(t, (counts.get(t) ?? 0) + 1);
  for (const [t, c] of counts) l[t] = l[t]! - p.presencePenalty * (c > 0 ? 1 : 0) - p.frequencyPenalty * c;
  const max = Math.max(...l);
  const e = l.map((x) => Math.exp((x - max) / p.temperature));
  const z = e.reduce((a, b) => a + b, 0);
  let order = e.map((v, i) => ({ i, p: v / z })).sort((a, b) => b.p - a.p);
  // Hugging Face's TopKLogitsWarper: every token at least as likely as the k-th (ties kept).
  if (p.topK > 0 && p.topK < order.length) order = order.filter((x) => x.p >= order[p.topK - 1]!.p);
  if (p.topP < 1) {
    // The smallest prefix whose mass reaches top_p (of the mass left after top-k).
    const mass = order.reduce((a, b) => a + b.p, 0);
    let cum = 0;
    order = order.filter((x) => {
      const keep = cum < p.topP * mass;
      cum += x.p;
      return keep;
    });
  }
  const pmax = order[0]!.p;
  order = order.filter((x) => x.p >= p.minP * pmax);
  const kept = order.reduce((a, b) => a + b.p, 0);
  return new Map(order.map((x) => [x.i, x.p / kept]));
}

function randomCase(seed: number) {
  const r = rng(seed);
  const vocab = 50;
  const logits = Array.from({ length: vocab }, () => (r() * 2 - 1) * 4);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  const p: SamplingParams = {
    ...GREEDY,
    temperature: pick([0.5, 1, 1.7]),
    topK: pick([0, 5, 20]),
    topP: pick([1, 0.9, 0.5]),
    minP: pick([0, 0.05, 0.3]),
    seed,
    repetitionPenalty: pick([1, 1.3, 0.8]),
    presencePenalty: pick([0, 0.5, -1]),
    frequencyPenalty: pick([0, 0.4, 1.5]),
  };
  const prompt = Array.from({ length: 6 }, () => Math.floor(r() * vocab));
  const generated = Array.from({ length: 8 }, () => Math.floor(r() * vocab));
  return { logits, p, prompt, generated };
}

describe('sampling against the reference', () => {
  it('the distribution after penalties, temperature, top-k, top-p and min-p matches, over 300 random cases', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const { logits, p, prompt, generated } = randomCase(seed);
      const h = new TokenHistory(prompt);
      for (const t of generated) h.add(t);
      const { idx, probs } = candidates(applyPenalties(Float32Array.from(logits), p, h), p);
      const total = probs.reduce((a, b) => a + b, 0);
      const want = reference(logits, p, prompt, generated);
      expect(new Set(idx), `case ${seed}`).toEqual(new Set(want.keys()));
      idx.forEach((t, i) => expect(Math.abs(probs[i]! / total - want.get(t)!), `case ${seed} token ${t}`).toBeLessThan(1e-5));
    }
  });

  it('a draw is the inverse CDF of that distribution at the generator\'s next number', () => {
    for (let seed = 1; seed <= 100; seed++) {
      const { logits, p, prompt, generated } = randomCase(seed);
      const h = new TokenHistory(prompt);
      for (const t of generated) h.add(t);
      const token = sample(Float32Array.from(logits), p, new Rng(seed, 'x'), h);
      const want = [...reference(logits, p, prompt, generated)].sort((a, b) => b[1] - a[1]);
      let u = new Rng(seed, 'x').next();
      const pick = want.find(([, q]) => (u -= q) < 0)?.[0] ?? want[want.length - 1]![0];
      expect(token, `case ${seed}`).toBe(pick);
    }
  });

  it('over a 32k vocabulary too (the cuts and draws that sort only a prefix of it)', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const r = rng(seed);
      const vocab = 32003;
      const spread = [2, 8, 30][seed % 3]!;
      const logits = Array.from({ length: vocab }, () => (r() * 2 - 1) * spread);
      const p: SamplingParams = { ...GREEDY, temperature: [0.7, 1, 1.5][seed % 3]!, topP: [1, 0.9, 0.3, 1][seed % 4]!, minP: [0, 0, 0.1][seed % 3]!, seed };
      const want = reference(logits, p, [], []);
      const { idx, probs } = candidates(Float32Array.from(logits), p);
      const total = probs.reduce((a, b) => a + b, 0);
      expect(new Set(idx), `case ${seed}`).toEqual(new Set(want.keys()));
      idx.forEach((t, i) => expect(Math.abs(probs[i]! / total - want.get(t)!), `case ${seed} token ${t}`).toBeLessThan(1e-5));
      const token = sample(Float32Array.from(logits), p, new Rng(seed, 'y'));
      let u = new Rng(seed, 'y').next();
      const sorted = [...want].sort((a, b) => b[1] - a[1]);
      expect(token, `case ${seed}`).toBe(sorted.find(([, q]) => (u -= q) < 0)?.[0] ?? sorted[sorted.length - 1]![0]);
    }
  });

  it('sortedIndices orders like a stable comparator sort: negatives, zeros, ties, infinities, odd sizes', () => {
    for (const [seed, n] of [[1, 1], [2, 7], [3, 1001], [4, 32003]] as const) {
      const r = rng(seed);
      // Few distinct values, so ties are common; both signs, ±0 and ±Infinity among them.
      const pool = [-Infinity, -3.5, -1e-30, -0, 0, 1e-30, 2.25, 7, 1e30, Infinity];
      const row = Float32Array.from({ length: n }, () => (r() < 0.5 ? pool[Math.floor(r() * pool.length)]! : (r() - 0.5) * 20));
      const want = Array.from({ length: n }, (_, i) => i).sort((a, b) => row[b]! - row[a]! || a - b);
      expect(sortedIndices(row), `n = ${n}`).toEqual(want);
      // A view into a larger buffer (a logits row of a batch) sorts the same.
      const big = new Float32Array(n + 3);
      big.set(row, 3);
      expect(sortedIndices(big.subarray(3))).toEqual(want);
    }
  });

  it('greedy decoding applies the penalties too (HF semantics)', () => {
    const row = Float32Array.from([1, 3, 2.5, -1]);
    const h = new TokenHistory([1]);
    expect(sample(row, { ...GREEDY, repetitionPenalty: 1.5 }, new Rng(0, 'g'), h)).toBe(2);
    h.add(2);
    expect(sample(row, { ...GREEDY, repetitionPenalty: 1.5, presencePenalty: 1 }, new Rng(0, 'g'), h)).toBe(1);
    expect(argmax(row)).toBe(1);
  });
});

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = fixturePrompts();

async function run(sampling: Partial<SamplingParams>, n: number, batchSize: number, numGpuBatches = 1): Promise<GenerationResult[]> {
  const model = await loadModel(opt, { policy: { gpuBatchSize: batchSize, numGpuBatches } });
  const out: GenerationResult[] = [];
  try {
    for await (const r of model.generate(prompts.map((x: Prompt) => ({ id: x.id, promptTokenIds: x.prompt_token_ids })), { maxNewTokens: 6, stopAtEos: false, n, sampling })) {
      if ('error' in r) throw new Error(r.error);
      out.push(r);
    }
  } finally {
    await model.close();
  }
  return out;
}

describe('n samples and penalties in the engine', () => {
  const sampling = { temperature: 1.2, topK: 40, minP: 0.02, seed: 11, repetitionPenalty: 1.2, presencePenalty: 0.3, frequencyPenalty: 0.2 };

  it('n samples per prompt do not depend on batching; sample 0 is the n = 1 result', async () => {
    const a = await run(sampling, 3, 1);
    const b = await run(sampling, 3, 4, 2);
    expect(b).toEqual(a);
    expect(a.every((r) => r.samples!.length === 3)).toBe(true);
    // Samples are drawn apart: on this model at temperature 1.2 they differ.
    expect(a.some((r) => JSON.stringify(r.samples![1]!.tokenIds) !== JSON.stringify(r.samples![0]!.tokenIds))).toBe(true);
    const one = await run(sampling, 1, 2);
    one.forEach((r, i) => expect(r.tokenIds).toEqual(a[i]!.samples![0]!.tokenIds));
  });

  it('a strong repetition penalty stops greedy decoding from repeating prompt or output tokens', async () => {
    const plain = await run({}, 1, 8);
    expect(plain.some((r) => new Set(r.tokenIds).size < r.tokenIds.length)).toBe(true);
    const penalized = await run({ repetitionPenalty: 1e6 }, 1, 8);
    penalized.forEach((r, i) => {
      const seen = [...prompts[i]!.prompt_token_ids, ...r.tokenIds];
      // The logits of this model are not all of one sign, so a penalty this strong forbids every seen token.
      expect(new Set(r.tokenIds).size).toBe(r.tokenIds.length);
      expect(r.tokenIds.some((t) => prompts[i]!.prompt_token_ids.includes(t))).toBe(false);
      expect(seen.length).toBeGreaterThan(0);
    });
  });

  it('the CLI flags and JSONL request fields give what the API gives', async () => {
    const api = await run(sampling, 2, 8);
    const dir = tmpDir('sampling');
    const flagsOut = path.join(dir, 'flags.jsonl');
    const r = cli(['generate', '--model', opt, '--prompts', path.join(fixturesDir, 'prompts.jsonl'), '--out', flagsOut, '--max-new-tokens', '6', '--ignore-eos',
      '--n', '2', '--temperature', '1.2', '--top-k', '40', '--min-p', '0.02', '--seed', '11', '--repetition-penalty', '1.2', '--presence-penalty', '0.3',
      '--frequency-penalty', '0.2', '--batch-size', '3']);
    expect(r.code, r.stderr).toBe(0);
    const lines = prompts.map((x) => JSON.stringify({
      id: x.id, prompt_token_ids: x.prompt_token_ids, n: 2, temperature: 1.2, top_k: 40, min_p: 0.02, seed: 11,
      repetition_penalty: 1.2, presence_penalty: 0.3, frequency_penalty: 0.2,
    }));
    lines.push('{"id": "bad-top-p", "prompt_token_ids": [5], "top_p": 0}', '{"id": "unknown", "prompt_token_ids": [5], "max_tokens": 3}',
      // what a message echoes of the line is cut (600 error lines echoing 400,000-character keys
      // took a run under --ram 48MiB to 356 MiB)
      JSON.stringify({ id: 'huge-key', prompt_token_ids: [5], ['k'.repeat(50_000)]: 1 }), JSON.stringify({ id: 'huge-stop', prompt_token_ids: [5], stop: Array(5000).fill('s') }));
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, lines.join('\n') + '\n');
    const jsonOut = path.join(dir, 'json.jsonl');
    const j = cli(['generate', '--model', opt, '--prompts', input, '--out', jsonOut, '--max-new-tokens', '6', '--ignore-eos']);
    expect(j.code, j.stderr).toBe(2);
    const want = api.map((x) => ({ id: x.id, prompt_tokens: x.promptTokens, samples: x.samples!.map((s) => ({ token_ids: s.tokenIds, finish_reason: s.finishReason })) }));
    expect(readJsonl(flagsOut)).toEqual(want);
    const rows = readJsonl<Record<string, any>>(jsonOut);
    // Lines refused on reading are written as soon as the job writes anything, before the results.
    expect(rows.filter((x) => !x.error)).toEqual(want);
    expect(rows.find((x) => x.id === 'bad-top-p')!.error).toMatch(/top_p must be a number in \(0, 1\], got 0/);
    expect(rows.find((x) => x.id === 'unknown')!.error).toMatch(/unknown field "max_tokens"/);
    for (const id of ['huge-key', 'huge-stop']) {
      const error = rows.find((x) => x.id === id)!.error as string;
      expect(error).toMatch(/… \(\d+ characters\)/);
      expect(error.length).toBeLessThan(500);
    }
  });
});

describe('seeds', () => {
  const draws = (seed: number, id: string) => {
    const r = new Rng(seed, id);
    return [r.next(), r.next(), r.next(), r.next()];
  };

  it('every (seed, stream) pair gets its own generator: seed k with id "k" repeated seed 0 with id "0"', () => {
    const ids = [...Array.from({ length: 64 }, (_, i) => String(i)), ...'abcdefghijklmnopqrstuvwxyz'];
    const seen = new Map<string, string>();
    for (let seed = 0; seed < 64; seed++) {
      for (const id of ids) {
        const key = draws(seed, id).join(' ');
        expect(seen.get(key), `seed ${seed}, id ${JSON.stringify(id)}`).toBeUndefined();
        seen.set(key, `seed ${seed}, id ${JSON.stringify(id)}`);
      }
    }
    expect(seen.size).toBe(64 * 90);
  });

  it('every bit of a safe-integer seed counts; the same (seed, id) draws the same numbers', () => {
    expect(draws(2 ** 32, 'a')).not.toEqual(draws(2 ** 33 + 3, 'a'));
    expect(draws(2 ** 32 + 7, 'req')).not.toEqual(draws(7, 'req'));
    expect(draws(2 ** 52 + 7, 'req')).not.toEqual(draws(2 ** 32 + 7, 'req'));
    expect(draws(Number.MAX_SAFE_INTEGER, 'req')).not.toEqual(draws(2 ** 32 - 1, 'req'));
    for (const [seed, id] of [[0, ''], [7, 'req'], [2 ** 40 + 5, 'x\u00001']] as const) expect(draws(seed, id)).toEqual(draws(seed, id));
    // Uniform in [0, 1): the mean of many draws is near 1/2.
    const r = new Rng(11, 'mean');
    let sum = 0;
    for (let i = 0; i < 10000; i++) sum += r.next();
    expect(Math.abs(sum / 10000 - 0.5)).toBeLessThan(0.02);
  });
});

describe('non-finite logits', () => {
  const modes: [string, Partial<SamplingParams>][] = [
    ['greedy', {}], ['temperature 1', { temperature: 1 }], ['top_k', { temperature: 1, topK: 2 }],
    ['top_k near the vocabulary', { temperature: 1, topK: 99 }], ['min_p', { temperature: 1, minP: 0.1 }],
    ['top_p', { temperature: 1, topP: 0.9 }], ['top_k, top_p and min_p', { temperature: 0.7, topK: 3, topP: 0.8, minP: 0.05 }],
  ];

  it('a NaN or +inf logit is the token chosen, in every mode, so Sequence.next refuses the request', () => {
    for (const n of [6, 100, 4096]) {
      for (const bad of [NaN, Infinity]) {
        for (const at of [0, 2, n - 1]) {
          const row = Float32Array.from({ length: n }, (_, i) => 5 - (i % 7));
          row[at] = bad;
          for (const [name, p] of modes) {
            for (let seed = 0; seed < 5; seed++) {
              const token = sample(row, { ...GREEDY, ...p, seed }, new Rng(seed, 'nan'));
              expect(Number.isFinite(row[token]!), `${name}: ${bad} at ${at} of ${n}, seed ${seed}: chose ${token}`).toBe(false);
            }
          }
        }
      }
    }
  });

  it('-inf logits are masked tokens: never chosen while a finite one is left', () => {
    const row = Float32Array.from([-Infinity, 4, 3, -Infinity, 1, -Infinity]);
    for (const [name, p] of modes) {
      for (let seed = 0; seed < 20; seed++) expect(Number.isFinite(row[sample(row, { ...GREEDY, ...p }, new Rng(seed, 'm'))]!), name).toBe(true);
    }
  });

  it('topKIndices ranks NaN first, as torch.topk does', () => {
    expect(topKIndices(Float32Array.from([1, NaN, Infinity, 3]), 2)).toEqual([1, 2]);
    expect(topKIndices(Float32Array.from({ length: 300 }, (_, i) => (i === 250 ? NaN : i)), 100)[0]).toBe(250);
  });
});

describe('top-k', () => {
  /** A stable comparator sort, NaN first (torch.topk's order), then the first k. */
  const referenceTopK = (row: Float32Array, k: number) => Array.from({ length: row.length }, (_, i) => i)
    .sort((a, b) => Number(Number.isNaN(row[b]!)) - Number(Number.isNaN(row[a]!)) || row[b]! - row[a]! || a - b).slice(0, k);

  it('keeps every token tied with the k-th logit (Hugging Face\'s TopKLogitsWarper)', () => {
    const { idx, probs } = candidates(Float32Array.from([0, 1, 2, 1, -1]), { ...GREEDY, temperature: 1, topK: 2 });
    expect(idx).toEqual([2, 1, 3]);
    expect(probs[1]).toBe(probs[2]);
    // No tie at the boundary: exactly k.
    expect(candidates(Float32Array.from([0, 1, 2, 1.5, -1]), { ...GREEDY, temperature: 1, topK: 2 }).idx).toEqual([2, 3]);
  });

  it('any k, up to the vocabulary size, selects what a full sort does: ties, ±0, ±inf, NaN', () => {
    for (const [seed, n] of [[1, 7], [2, 300], [3, 5000]] as const) {
      const r = rng(seed);
      const pool = [-Infinity, -3.5, -0, 0, 2.25, 7, Infinity];
      const row = Float32Array.from({ length: n }, () => (r() < 0.5 ? pool[Math.floor(r() * pool.length)]! : Math.round((r() - 0.5) * 40) / 4));
      if (seed === 2) row[123] = NaN;
      for (const k of [1, 2, 5, 63, 64, 65, 66, 200, n - 2, n - 1, n]) {
        if (k < 1 || k > n) continue;
        expect(topKIndices(row, k), `n ${n} k ${k}`).toEqual(referenceTopK(row, k));
      }
    }
  });

  it('a top_k near the vocabulary size gives the reference distribution', () => {
    for (let seed = 1; seed <= 6; seed++) {
      const r = rng(seed);
      const vocab = 2000;
      // Logits on a grid of quarters: many ties, at the boundary too.
      const logits = Array.from({ length: vocab }, () => Math.round((r() * 2 - 1) * 24) / 4);
      for (const topK of [vocab - 1, vocab - 37, 1500, 100, 65]) {
        const p: SamplingParams = { ...GREEDY, temperature: [0.7, 1, 1.5][seed % 3]!, topK, topP: [1, 0.9][seed % 2]!, seed };
        const want = reference(logits, p, [], []);
        const { idx, probs } = candidates(Float32Array.from(logits), p);
        const total = probs.reduce((a, b) => a + b, 0);
        expect(new Set(idx), `case ${seed} top_k ${topK}`).toEqual(new Set(want.keys()));
        idx.forEach((t, i) => expect(Math.abs(probs[i]! / total - want.get(t)!), `case ${seed} token ${t}`).toBeLessThan(1e-5));
      }
    }
  });
});
