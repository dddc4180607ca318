// EOS stops at the tokenizer's eos_token too, where config.json / generation_config.json name
// another id: training appends the tokenizer's EOS after each document, so a model fine-tuned
// here ends its text with that token (vLLM stops at both).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type GenerationRequest, type GenerationResult, type LanguageModel, loadModel } from '../src/index.js';
import { initModel } from '../src/models/init.js';
import { tmpDir } from './helpers/fixtures.js';
import { END, writeByteLevelTokenizer } from './helpers/byte-level-tokenizer.js';

async function generate(model: LanguageModel, req: GenerationRequest, stopAtEos: boolean): Promise<GenerationResult> {
  for await (const r of model.generate([req], { maxNewTokens: 8, stopAtEos })) {
    if ('error' in r) throw new Error(r.error);
    return r;
  }
  throw new Error('no result');
}

describe("the tokenizer's eos_token", () => {
  it('ends a sample (finish_reason "stop") where the config names another EOS; --ignore-eos runs past it', async () => {
    const dir = tmpDir('eos-tok');
    initModel({ config: 'llama-test', out: dir, dtype: 'f32', seed: 3, overrides: { vocab_size: END + 1 } });
    writeByteLevelTokenizer(dir);
    const req = { id: 'a', promptTokenIds: [72, 105, 32] };
    // The greedy tokens, run to the limit: the tokenizer's EOS is made one of them, one the config's EOS is not.
    let model = await loadModel(dir);
    const plain = await generate(model, req, false);
    await model.close();
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'generation_config.json'), 'utf8')) as { eos_token_id: number };
    const k = plain.tokenIds.findIndex((t, i) => i > 0 && t !== config.eos_token_id && !plain.tokenIds.slice(0, i).includes(t));
    expect(k).toBeGreaterThan(0);
    const eos = plain.tokenIds[k]!;
    const vocab = (JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } }).model.vocab;
    const eosText = Object.keys(vocab).find((s) => vocab[s] === eos)!;
    const tc = path.join(dir, 'tokenizer_config.json');
    fs.writeFileSync(tc, JSON.stringify({ ...JSON.parse(fs.readFileSync(tc, 'utf8')), eos_token: eosText }));

    model = await loadModel(dir);
    try {
      expect(model.tokenizer!.eosTokenId).toBe(eos);
      const stopped = await generate(model, req, true);
      expect(stopped.finishReason).toBe('stop');
      expect(stopped.tokenIds).toEqual(plain.tokenIds.slice(0, k + 1));
      expect(model.eosTokenIds).toEqual([config.eos_token_id, eos]);
      // The scheduler (the server's engine) stops there too.
      const s = model.scheduler({ maxNewTokens: 8 });
      expect(((await s.submit(req)) as GenerationResult).tokenIds).toEqual(stopped.tokenIds);
      await s.drain();
      expect(await generate(model, req, false)).toMatchObject({ tokenIds: plain.tokenIds, finishReason: 'length' });
    } finally {
      await model.close();
    }
  });
});
