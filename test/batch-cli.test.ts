// `tierlm batch` on its own: every kind of bad line gets its own error line naming the line and
// the field while the rest run, errors go to --output without --errors, and a rerun after a crash
// (a torn last line) answers only what is missing, each custom_id once.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';
import { lineId } from '../src/openai/batch-lines.js';

const line = (custom_id: string, body: object, url = '/v1/completions') => JSON.stringify({ custom_id, method: 'POST', url, body });

describe('tierlm batch', () => {
  it('answers good lines, gives each bad line its own error, and resumes after a torn write', () => {
    const dir = tmpDir('batch');
    const model = tinyChatModel(dir);
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, [
      line('a', { model: 'tiny', prompt: 'Hello', max_tokens: 4, temperature: 0 }),
      line('b', { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, n: 2, stream: true }, '/v1/chat/completions'),
      '{"custom_id": "c", "method": "POST",',
      line('a', { model: 'tiny', prompt: 'again' }),
      line('d', { model: 'tiny', input: 'x' }, '/v1/embeddings'),
      line('e', { model: 'tiny', prompt: 'x', n: 9 }),
      line('f', { model: 'tiny', prompt: Array.from({ length: 600 }, () => 7) }),
      '',
      line('g', { model: 'tiny', prompt: ['p', 'q'], max_tokens: 2, logprobs: 2 }),
      // custom_ids spelt like the keys of line 3 (not JSON) and of line 4 (a duplicate): they
      // were taken for answered and never ran
      line('line:3', { model: 'tiny', prompt: 'Hi', max_tokens: 2 }),
      line('line:4:a', { model: 'tiny', prompt: 'Hi', max_tokens: 2 }),
    ].join('\n') + '\n');
    const out = path.join(dir, 'out.jsonl');
    const args = ['batch', '--model', model, '--served-model-name', 'tiny', '--input', input, '--output', out, '--gpu-batch-size', '2'];
    const r = cli(args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('5 answered, 5 failed');
    const lines = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const by = new Map(lines.map((l) => [`${l.custom_id}:${l.response?.status_code ?? l.error.code}`, l]));
    expect([...by.keys()].sort()).toEqual(['a:200', 'a:duplicate_custom_id', 'b:200', 'd:invalid_url', 'e:400', 'f:400', 'g:200', 'line:3:200', 'line:4:a:200', 'null:invalid_json']);
    expect(by.get('null:invalid_json').error.message).toMatch(/^line 3: not valid JSON/);
    // numbered lines keep the ids earlier versions wrote (a rerun after an upgrade recognises them)
    expect(by.get('null:invalid_json').id).toBe(lineId('line:3'));
    expect(by.get('a:duplicate_custom_id').id).toBe(lineId('line:4:a'));
    expect(by.get('a:200').id).toBe(lineId('a'));
    expect(by.get('a:duplicate_custom_id').error.message).toMatch(/^line 4: duplicate custom_id "a"/);
    expect(by.get('e:400').response.body.error).toMatchObject({ param: 'n', message: expect.stringMatching(/^line 6: .*'n'/) });
    expect(by.get('f:400').response.body.error.code).toBe('context_length_exceeded');
    const b = by.get('b:200').response.body;
    expect(b.object).toBe('chat.completion');
    expect(b.choices).toHaveLength(2);
    expect(b.usage.completion_tokens).toBe(6);
    expect(by.get('g:200').response.body.choices[1].logprobs.tokens).toHaveLength(2);

    // A crash in the middle of the last write: that line is answered again, nothing else.
    const text = fs.readFileSync(out, 'utf8');
    const last = JSON.parse(text.trim().split('\n').pop()!);
    fs.writeFileSync(out, text.slice(0, text.length - 25));
    const again = cli(args);
    expect(again.stderr).toMatch(/9 already answered \([45] of them failed\)/);
    const after = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(after).toHaveLength(10);
    expect(after.filter((l) => l.id === last.id)).toHaveLength(1);
    // The exit code is the file's: with nothing left to run, the failed lines still fail the job.
    const third = cli(args);
    expect(third.code, third.stderr).toBe(2);
    expect(third.stderr).toContain('0 answered, 0 failed, 10 already answered (5 of them failed)');
  });
});
