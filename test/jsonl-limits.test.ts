// A `tierlm generate` JSONL line's own limits (max_new_tokens, stop, stop_token_ids, logprobs,
// top_logprobs): read as the API's request fields, checked as it checks them, and a bad one named
// with its file, line and field.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type GenerationResult, loadModel } from '../src/index.js';
import { eachLineSync, readRequests } from '../src/formats/jsonl.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, readJsonl, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');

async function read(lines: string[]) {
  const file = path.join(tmpDir('jsonl-limits'), 'in.jsonl');
  fs.writeFileSync(file, lines.join('\n') + '\n');
  const out = [];
  for await (const x of readRequests(file)) out.push(x);
  return { file, out };
}

describe('JSONL request limits', () => {
  it('are read into the request; bad values are errors naming file, line and field', async () => {
    const { file, out } = await read([
      '{"id": "a", "prompt_token_ids": [5], "max_new_tokens": 3, "stop": "x", "stop_token_ids": [7, 9], "logprobs": true, "top_logprobs": 2}',
      '{"id": "b", "prompt_token_ids": [5], "max_new_tokens": 0}',
      '{"id": "c", "prompt_token_ids": [5], "stop": ["a", "b", "c", "d", "e"]}',
      '{"id": "d", "prompt_token_ids": [5], "stop_token_ids": [-1]}',
      '{"id": "e", "prompt_token_ids": [5], "logprobs": 1}',
      '{"id": "f", "prompt_token_ids": [5], "top_logprobs": 21}',
      '{"id": "g", "prompt_token_ids": [5], "n": 1000000000}',
    ]);
    expect(out[0]).toEqual({ line: 1, request: { id: 'a', promptTokenIds: [5], maxNewTokens: 3, stop: ['x'], stopTokenIds: [7, 9], logprobs: true, topLogprobs: 2 } });
    const errors = out.slice(1).map((x) => (x as { error: string }).error);
    expect(errors).toEqual([
      `${file}:2: max_new_tokens must be an integer >= 1, got 0`,
      `${file}:3: stop must be a non-empty string or an array of at most 4 of them, got ["a","b","c","d","e"]`,
      `${file}:4: stop_token_ids must be an array of non-negative integers, got [-1]`,
      `${file}:5: logprobs must be true or false, got 1`,
      `${file}:6: top_logprobs must be an integer in [0, 20], got 21`,
      `${file}:7: n must be an integer in [1, 128], got 1000000000`,
    ]);
  });

  it('lines end at "\\n" (or "\\r\\n") only: a lone "\\r" is JSON whitespace inside a line (it split one request into two bad ones)', async () => {
    const file = path.join(tmpDir('jsonl-cr'), 'in.jsonl');
    // a multi-byte character across the stream's chunks, too
    const long = 'é'.repeat(70_000);
    fs.writeFileSync(file, `{"id": "a",\r"prompt_token_ids": [5]}\r\n{"id": "b", "prompt": "${long}"}\n\n{"id": "c", "prompt_token_ids": [6]}`);
    const out = [];
    for await (const x of readRequests(file)) out.push(x);
    expect(out).toEqual([
      { line: 1, request: { id: 'a', promptTokenIds: [5] } },
      { line: 2, request: { id: 'b', prompt: long } },
      { line: 4, request: { id: 'c', promptTokenIds: [6] } },
    ]);
  });

  it('eachLineSync reads any file a megabyte at a time: lines across chunk edges, characters split by them, the torn rest', () => {
    const dir = tmpDir('each-line');
    const rand = (n: number) => Math.floor(Math.random() * n);
    for (let trial = 0; trial < 6; trial++) {
      // Long lines (up to 2.5 MiB) so edges fall inside them, and multi-byte characters so edges
      // split them; blank lines; sometimes no newline at the end.
      const pieces = ['a', 'é', '’', '🦜', ' ', '\r'];
      const lines = Array.from({ length: 3 + rand(8) }, () => {
        const n = rand(3) === 0 ? 0 : rand(4) === 0 ? rand(900_000) : rand(200);
        return Array.from({ length: n }, () => pieces[rand(pieces.length)]).join('');
      });
      const text = lines.join('\n') + (trial % 2 ? '\n' : '');
      const file = path.join(dir, `t${trial}.txt`);
      fs.writeFileSync(file, text);
      const got: string[] = [];
      const { rest, restStart, lines: n } = eachLineSync(file, (l, i) => {
        expect(i).toBe(got.length + 1);
        got.push(l);
      });
      const want = text.split('\n');
      const wantRest = want.pop()!;
      expect(got).toEqual(want);
      expect(n).toBe(want.length);
      expect(rest).toBe(wantRest);
      expect(restStart).toBe(Buffer.byteLength(text) - Buffer.byteLength(wantRest));
    }
  });

  it('tierlm generate gives what the API gives for the same fields', async () => {
    const model = await loadModel(opt);
    const reqs = [
      { id: 'p', promptTokenIds: [5, 6, 7], maxNewTokens: 4, logprobs: true, topLogprobs: 2 },
      { id: 'q', promptTokenIds: [8, 9], maxNewTokens: 6 },
    ];
    const api: GenerationResult[] = [];
    for await (const r of model.generate(reqs, { stopAtEos: false })) api.push(r as GenerationResult);
    await model.close();
    const stopId = api[1]!.tokenIds[2]!;
    const dir = tmpDir('jsonl-limits');
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, [
      '{"id": "p", "prompt_token_ids": [5, 6, 7], "max_new_tokens": 4, "logprobs": true, "top_logprobs": 2}',
      `{"id": "q", "prompt_token_ids": [8, 9], "stop_token_ids": [${stopId}]}`,
      '{"id": "s", "prompt_token_ids": [8, 9], "stop": ["x"]}',
    ].join('\n') + '\n');
    const out = path.join(dir, 'out.jsonl');
    const r = cli(['generate', '--model', opt, '--prompts', input, '--out', out, '--max-new-tokens', '6', '--ignore-eos']);
    expect(r.code, r.stderr).toBe(2);
    const rows = readJsonl<Record<string, any>>(out);
    const p = rows.find((x) => x.id === 'p')!;
    expect(p.token_ids).toEqual(api[0]!.tokenIds);
    expect(p.logprobs).toEqual(api[0]!.logprobs);
    expect(p.top_logprobs).toEqual(api[0]!.topLogprobs);
    expect(rows.find((x) => x.id === 'q')!.token_ids).toEqual(api[1]!.tokenIds.slice(0, 3));
    expect(rows.find((x) => x.id === 's')!.error).toMatch(/no tokenizer\.json, so "stop" strings cannot be used/);
  });
});
