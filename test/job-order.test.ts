// A batch job (tierlm generate --prompts) writes each result as soon as its request finishes: a
// long first request holds back no other's result (a kill keeps the finished work). Error lines
// keep their place after the requests before them, up to HELD_REFUSALS of them. An id is taken
// by its first line even when that line is malformed, so a later line with it is a duplicate.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/index.js';
import { HELD_REFUSALS, type JobSummary, runJob } from '../src/engine/job.js';
import { ResultWriter } from '../src/formats/jsonl.js';
import { parseBatchLine } from '../src/openai/batch-lines.js';
import { fixturesDir, readJsonl, tmpDir } from './helpers/fixtures.js';

let model: LanguageModel;
beforeAll(async () => {
  model = await loadModel(path.join(fixturesDir, 'llama-tiny'));
});
afterAll(async () => {
  await model.close();
});

type Row = { id: string; token_ids?: number[]; error?: string };

/** Runs the job of `lines` into `out` (appended to, as a rerun does); returns its summary and
 *  the file's lines. */
async function job(dir: string, name: string, lines: string[], out: string): Promise<{ summary: JobSummary; rows: Row[] }> {
  const input = path.join(dir, name);
  fs.writeFileSync(input, lines.join('\n') + '\n');
  const writer = new ResultWriter(out);
  try {
    const summary = await runJob(model, writer, { prompts: input, params: { maxNewTokens: 1, stopAtEos: false, batchSize: 2, numGpuBatches: 1 } });
    return { summary, rows: readJsonl<Row>(out) };
  } finally {
    writer.close();
  }
}

const req = (id: string, more: Record<string, unknown> = {}) => JSON.stringify({ id, prompt_token_ids: [7, 9], ...more });

describe('a batch job writes results as they finish', () => {
  it('short requests are written before a long first one finishes', async () => {
    const dir = tmpDir('job-order');
    const shorts = Array.from({ length: 60 }, (_, i) => `s${i}`);
    // One slot runs the head for 100 steps; the other answers a short request per step.
    const { summary, rows } = await job(dir, 'in.jsonl', [req('head', { max_new_tokens: 100 }), ...shorts.map((id) => req(id))], path.join(dir, 'out.jsonl'));
    expect(rows.map((r) => r.id)).toEqual([...shorts, 'head']);
    expect(rows.at(-1)!.token_ids).toHaveLength(100);
    expect([summary.succeeded, summary.failed]).toEqual([61, 0]);
  });

  it('error lines keep their place after the requests before them, so equal requests come out in input order', async () => {
    const dir = tmpDir('job-order-errors');
    const lines = [req('a'), req('b'), '{"id": "bad-json", ', req('bad-token', { prompt_token_ids: [1, 99999] }), '{"prompt_token_ids": [3]}',
      req('a'), req('c'), req('d'), req('e')];
    const { summary, rows } = await job(dir, 'in.jsonl', lines, path.join(dir, 'out.jsonl'));
    expect(rows.map((r) => r.id)).toEqual(['a', 'b', 'line-3', 'bad-token', 'line-5', 'line-6', 'c', 'd', 'e']);
    expect(rows[3]!.error).toMatch(/in\.jsonl:4: prompt_token_ids\[1\] = 99999/);
    expect(rows[5]!.error).toBe(`${path.join(dir, 'in.jsonl')}:6: duplicate id "a"`);
    expect([summary.succeeded, summary.failed]).toEqual([5, 4]);
  });

  it(`behind a long request, error lines past ${HELD_REFUSALS} are written without waiting for it`, async () => {
    const dir = tmpDir('job-order-held');
    const bad = Array.from({ length: HELD_REFUSALS + 20 }, (_, i) => `{"id": "bad${i}", "temperature": -1, "prompt_token_ids": [5]}`);
    const { rows } = await job(dir, 'in.jsonl', [req('head', { max_new_tokens: 20 }), ...bad], path.join(dir, 'out.jsonl'));
    expect(rows).toHaveLength(bad.length + 1);
    // the oldest 20 went at once; the rest waited for the head, then followed in input order
    expect(rows.map((r) => r.id)).toEqual([...bad.slice(0, 20).map((_, i) => `bad${i}`), 'head', ...bad.slice(20).map((_, i) => `bad${i + 20}`)]);
  });
});

describe('an id taken by a malformed line', () => {
  it('is refused on a later line, and the rerun with the line fixed runs it', async () => {
    const dir = tmpDir('job-dup');
    const out = path.join(dir, 'out.jsonl');
    const first = await job(dir, 'in.jsonl', [req('x', { temperature: -1 }), req('y'), req('x', { prompt_token_ids: [7, 8, 9] })], out);
    expect(first.rows.map((r) => [r.id, r.error === undefined])).toEqual([['x', false], ['y', true], ['line-3', false]]);
    expect(first.rows[0]!.error).toMatch(/in\.jsonl:1: temperature must be a number >= 0/);
    expect(first.rows[2]!.error).toBe(`${path.join(dir, 'in.jsonl')}:3: duplicate id "x"`);
    expect([first.summary.succeeded, first.summary.failed, first.summary.skipped]).toEqual([1, 2, 0]);
    // The fixed line 1 runs (not line 3's prompt under its id); line 3 is still a duplicate.
    const fixed = await job(dir, 'fixed.jsonl', [req('x'), req('y'), req('x', { prompt_token_ids: [7, 8, 9] })], out);
    expect([fixed.summary.succeeded, fixed.summary.failed, fixed.summary.skipped]).toEqual([1, 1, 1]);
    const x = fixed.rows.slice(3);
    expect(x.map((r) => [r.id, r.error === undefined])).toEqual([['x', true], ['line-3', false]]);
    const alone = await collect([{ id: 'x', promptTokenIds: [7, 9] }]);
    expect(x[0]!.token_ids).toEqual(alone);
    // A third run runs nothing again; line 3 is still a duplicate, reported as any bad line is
    // on every run.
    const again = await job(dir, 'fixed.jsonl', [req('x'), req('y'), req('x', { prompt_token_ids: [7, 8, 9] })], out);
    expect([again.summary.succeeded, again.summary.failed, again.summary.skipped]).toEqual([0, 1, 2]);
    expect(again.rows.at(-1)!.error).toBe(`${path.join(dir, 'fixed.jsonl')}:3: duplicate id "x"`);
  });

  // Results are written as requests finish, and a duplicate's error line waits for the lines
  // before it: a run killed after writing "a" while "head" still ran had written no error for
  // line 3, and the rerun skipped it as done, exit 0.
  it('a rerun after a kill still refuses the duplicate of an id already done', async () => {
    const dir = tmpDir('job-dup-killed');
    const out = path.join(dir, 'out.jsonl');
    // what the killed run left: a's result only
    fs.writeFileSync(out, JSON.stringify({ id: 'a', prompt_tokens: 2, token_ids: [5], text: '', finish_reason: 'length' }) + '\n');
    const rerun = await job(dir, 'in.jsonl', [req('head'), req('a'), req('a', { prompt_token_ids: [7, 8] })], out);
    expect([rerun.summary.succeeded, rerun.summary.failed, rerun.summary.skipped]).toEqual([1, 1, 1]);
    expect(rerun.rows.slice(1).map((r) => [r.id, r.error ?? 'result'])).toEqual([['head', 'result'], ['line-3', `${path.join(dir, 'in.jsonl')}:3: duplicate id "a"`]]);
    // The duplicate's error is under its line's name: "a"'s newest line is still its result, so
    // a further rerun computes nothing again (it computed "a" again on every run).
    const third = await job(dir, 'in.jsonl', [req('head'), req('a'), req('a', { prompt_token_ids: [7, 8] })], out);
    expect([third.summary.succeeded, third.summary.failed, third.summary.skipped]).toEqual([0, 1, 2]);
  });

  // A duplicate's error line is named line-N; with a request whose own id is "line-2" in the input,
  // the error written after that request's result was its id's newest line: it read as failed.
  it("a duplicate's error line never takes the name of a request in the input", async () => {
    const dir = tmpDir('job-dup-line-name');
    const out = path.join(dir, 'out.jsonl');
    const lines = [req('a'), req('a', { prompt_token_ids: [7, 8] }), req('line-2'), req('line-5'), '{"id": "bad-json", '];
    const first = await job(dir, 'in.jsonl', lines, out);
    expect([first.summary.succeeded, first.summary.failed]).toEqual([3, 2]);
    const newest = (rows: Row[]) => new Map(rows.map((r) => [r.id, r]));
    for (const id of ['a', 'line-2', 'line-5']) expect(newest(first.rows).get(id)!.token_ids, id).toHaveLength(1);
    expect(newest(first.rows).get('line-2-2')!.error).toBe(`${path.join(dir, 'in.jsonl')}:2: duplicate id "a"`);
    expect(newest(first.rows).get('line-5-2')!.error).toMatch(/in\.jsonl:5: not valid JSON/);
    // A rerun computes nothing and every request's newest line is still its result.
    const again = await job(dir, 'in.jsonl', lines, out);
    expect([again.summary.succeeded, again.summary.skipped]).toEqual([0, 3]);
    for (const id of ['a', 'line-2', 'line-5']) expect(newest(again.rows).get(id)!.token_ids, id).toHaveLength(1);
  });

  // A malformed later line repeating an id was written under that id: the id's newest line, so
  // its first line's result read as failed and every rerun added another error under it.
  it('a malformed later line with a taken id is a duplicate too', async () => {
    const dir = tmpDir('job-dup-malformed');
    const out = path.join(dir, 'out.jsonl');
    const lines = [req('x'), req('x', { temperature: 'hot' })];
    const first = await job(dir, 'in.jsonl', lines, out);
    expect(first.rows.map((r) => [r.id, r.error ?? 'result'])).toEqual([['x', 'result'], ['line-2', `${path.join(dir, 'in.jsonl')}:2: duplicate id "x"`]]);
    const again = await job(dir, 'in.jsonl', lines, out);
    expect([again.summary.succeeded, again.summary.failed, again.summary.skipped]).toEqual([0, 1, 1]);
    expect(new Map(again.rows.map((r) => [r.id, r])).get('x')!.token_ids).toHaveLength(1);
  });

  // A line whose own id is "line-N", N its line number, is a request of the input, not an id the
  // reader made up: malformed, it takes its id like any other (a later line with the id ran as
  // "line-2", and the rerun with line 2 fixed skipped it as done).
  it('takes an id of the form line-N on its own line N', async () => {
    const dir = tmpDir('job-dup-own-line');
    const out = path.join(dir, 'out.jsonl');
    const first = await job(dir, 'in.jsonl', [req('a'), req('line-2', { temperature: 'hot' }), req('b'), req('line-2', { prompt_token_ids: [7, 8, 9] })], out);
    const rows = first.rows.map((r) => [r.id, r.error === undefined]);
    expect(rows).toContainEqual(['line-2', false]);
    expect(rows).toContainEqual(['line-4', false]);
    expect(first.rows.find((r) => r.id === 'line-4')!.error).toBe(`${path.join(dir, 'in.jsonl')}:4: duplicate id "line-2"`);
    expect(first.summary.succeeded).toBe(2);
    const fixed = await job(dir, 'in.jsonl', [req('a'), req('line-2'), req('b'), req('line-2', { prompt_token_ids: [7, 8, 9] })], out);
    expect([fixed.summary.succeeded, fixed.summary.failed, fixed.summary.skipped]).toEqual([1, 1, 2]);
    const alone = await collect([{ id: 'line-2', promptTokenIds: [7, 9] }]);
    expect(new Map(fixed.rows.map((r) => [r.id, r])).get('line-2')!.token_ids).toEqual(alone);
  });

  // Numbers past 2^53 lose digits as JavaScript reads them: two such ids were one, under a third.
  it('refuses a numeric id that is not an exact integer, naming the line', async () => {
    const dir = tmpDir('job-numeric-id');
    const out = path.join(dir, 'out.jsonl');
    const lines = ['{"id":12345678901234567890,"prompt_token_ids":[7,9]}', '{"id":12345678901234567891,"prompt_token_ids":[7,9]}',
      '{"id":1.5,"prompt_token_ids":[7,9]}', '{"id":42,"prompt_token_ids":[7,9]}'];
    const first = await job(dir, 'in.jsonl', lines, out);
    expect(first.rows.map((r) => [r.id, r.error === undefined])).toEqual([['line-1', false], ['line-2', false], ['line-3', false], ['42', true]]);
    expect(first.rows[1]!.error).toMatch(/in\.jsonl:2: "id" 12345678901234567000 is not an integer JSON numbers hold exactly .*send it as a string/);
    expect(first.rows[2]!.error).toMatch(/in\.jsonl:3: "id" 1\.5 is not an integer/);
  });

  it("a batch line's custom_id is taken likewise (a malformed first line's)", () => {
    const seen = new Set<string>();
    const bad = parseBatchLine(JSON.stringify({ custom_id: 'x', method: 'GET', url: '/v1/completions', body: {} }), 1, seen);
    expect('error' in bad && bad.error.code).toBe('invalid_method');
    const dup = parseBatchLine(JSON.stringify({ custom_id: 'x', method: 'POST', url: '/v1/completions', body: { prompt: 'a' } }), 3, seen);
    expect('error' in dup && dup.error.code).toBe('duplicate_custom_id');
  });

  // A line's id hashes its custom_id's UTF-8, where a lone surrogate is U+FFFD: "a\ud800" and
  // "a\ufffd" had one id, and a rerun after a kill took the unanswered one for answered.
  it("refuses a custom_id that is not well-formed text, under its line's id", () => {
    const line = (customId: string) => `{"custom_id":"${customId}","method":"POST","url":"/v1/completions","body":{"prompt":"a"}}`;
    const seen = new Set<string>();
    const lone = parseBatchLine(line('a\\ud800'), 1, seen);
    const replaced = parseBatchLine(line('a\\ufffd'), 2, seen);
    expect('error' in lone && lone.error).toMatchObject({ code: 'invalid_custom_id', message: expect.stringMatching(/^line 1: "custom_id" holds a lone surrogate U\+D800/) });
    expect('error' in replaced).toBe(false);
    expect(lone.id).not.toBe(replaced.id);
  });
});

async function collect(requests: { id: string; promptTokenIds: number[] }[]): Promise<number[]> {
  for await (const r of model.generate(requests, { maxNewTokens: 1, stopAtEos: false })) {
    if ('error' in r) throw new Error(r.error);
    return r.tokenIds;
  }
  throw new Error('no result');
}
