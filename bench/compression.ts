// Accuracy of compression (4-bit weights, 4-bit KV cache, sparse attention) against the
// uncompressed run of the same model: greedy tokens equal up to the first disagreement, and the
// largest change in a chosen token's log-probability over that common prefix. Fixture models
// and a larger dummy model made by `tierlm init`.
//
//   node --import tsx bench/compression.ts [--json]
import path from 'node:path';
import { loadModel } from '../src/index.js';
import type { Policy } from '../src/policy/policy.js';
import { dummyModel } from '../src/engine/bench.js';
import { fixtureModels, fixturePrompts } from '../test/helpers/fixtures.js';

const json = process.argv.includes('--json');
const variants: [string, Partial<Policy>][] = [
  ['4-bit weights', { compressWeight: true }],
  ['4-bit cache', { compressCache: true }],
  ['4-bit weights + cache', { compressWeight: true, compressCache: true }],
  ['sparsity 0.5', { attnSparsity: 0.5 }],
  ['sparsity 0.1', { attnSparsity: 0.1 }],
];

async function tokens(dir: string, policy: Partial<Policy>, requests: { id: string; promptTokenIds: number[] }[], maxNewTokens: number) {
  const m = await loadModel(dir, { policy });
  const out = new Map<string, { t: number[]; lp: number[] }>();
  // An f32 cache, except where the variant stores it 4-bit (asking for f32 there is refused).
  const cacheDtype = policy.compressCache ? 'q4' : 'f32';
  for await (const r of m.generate(requests, { maxNewTokens, logprobs: true, stopAtEos: false, batchSize: 8, cacheDtype })) {
    if ('error' in r) throw new Error(r.error);
    out.set(r.id, { t: r.tokenIds, lp: r.logprobs! });
  }
  await m.close();
  return out;
}

const models: [string, string, { id: string; promptTokenIds: number[] }[], number][] = fixtureModels().map(([n, d]) =>
  [n, d, fixturePrompts().map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids })), 8]);
const big = await dummyModel('opt-125m', undefined, path.resolve('.bench/models'));
models.push(['opt-125m (init, random weights)', big, Array.from({ length: 8 }, (_, i) => ({ id: `r${i}`, promptTokenIds: Array.from({ length: 32 }, (_, j) => 3 + ((i * 7919 + j * 104729) % 50000)) })), 16]);

const rows: Record<string, unknown>[] = [];
for (const [name, dir, requests, n] of models) {
  const base = await tokens(dir, {}, requests, n);
  for (const [label, policy] of variants) {
    const got = await tokens(dir, policy, requests, n);
    let agree = 0, total = 0, maxDiff = 0;
    for (const [id, b] of base) {
      const g = got.get(id)!;
      for (let i = 0; i < b.t.length; i++) {
        total++;
        if (g.t[i] !== b.t[i]) break;
        agree++;
        maxDiff = Math.max(maxDiff, Math.abs(g.lp[i]! - b.lp[i]!));
      }
    }
    const row = { model: name, variant: label, tokensAgree: agree, tokensCompared: total, maxLogprobChange: maxDiff };
    rows.push(row);
    if (json) console.log(JSON.stringify(row));
  }
}
if (!json) {
  console.log('| model | variant | greedy tokens equal to the uncompressed run | max abs logprob change (common prefix) |');
  console.log('|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.model} | ${r.variant} | ${r.tokensAgree}/${r.tokensCompared} | ${(r.maxLogprobChange as number).toExponential(2)} |`);
}
