// Drift of --precision bf16 (and of an f16 KV cache) against the float64 references of every
// fixture model: greedy-token agreement and the largest change in log-probability.
//
//   node --import tsx bench/precision.ts [--json]
import path from 'node:path';
import { loadModel } from '../src/index.js';
import { fixtureModels, fixturePrompts, readJsonl, type Reference } from '../test/helpers/fixtures.js';

const json = process.argv.includes('--json');
const prompts = fixturePrompts();
const requests = prompts.map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));
const rows: Record<string, unknown>[] = [];
for (const [name, dir] of fixtureModels()) {
  const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
  for (const [precision, cacheDtype] of [['fp32', 'f32'], ['fp32', 'f16'], ['bf16', 'f32']] as const) {
    const model = await loadModel(dir, { precision });
    let agree = 0;
    let total = 0;
    let maxDiff = 0;
    for await (const r of model.generate(requests, { maxNewTokens: 8, logprobs: true, stopAtEos: false, cacheDtype })) {
      if ('error' in r) throw new Error(r.error);
      const want = ref.find((x) => x.id === r.id)!;
      // Compare up to the first disagreement (after it the contexts differ).
      for (let i = 0; i < want.token_ids.length; i++) {
        total++;
        if (r.tokenIds[i] !== want.token_ids[i]) break;
        agree++;
        maxDiff = Math.max(maxDiff, Math.abs(r.logprobs![i]! - want.logprobs[i]!));
      }
    }
    const row = { model: name, precision, cacheDtype, tokensAgree: agree, tokensCompared: total, maxLogprobDiff: maxDiff };
    rows.push(row);
    if (json) console.log(JSON.stringify(row));
  }
}
if (!json) {
  console.log('| model | precision | KV cache | greedy tokens equal to the reference | max abs logprob change |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.model} | ${r.precision} | ${r.cacheDtype} | ${r.tokensAgree}/${r.tokensCompared} | ${(r.maxLogprobDiff as number).toExponential(2)} |`);
}
