// Text that is not well-formed is refused, naming the field, rather than run as U+FFFD: an HTTP
// body that is not UTF-8, and strings holding a lone surrogate (a "\ud83d" escape) in a request
// body, a Batch API line, a `tierlm generate` JSONL line or a library request. (A stop "\udfe7"
// cut a surrogate pair: the text ended in half of one.)
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Scheduler } from '../src/engine/scheduler.js';
import type { GenerationRequest, GenerationResult, RequestError } from '../src/engine/requests.js';
import { type LanguageModel, loadModel } from '../src/index.js';
import { initModel } from '../src/models/init.js';
import { readRequests } from '../src/formats/jsonl.js';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { ApiError } from '../src/openai/errors.js';
import { type Engine, check } from '../src/openai/complete.js';
import type { ServedModel } from '../src/openai/translate.js';
import { type Server, buildServer } from '../src/server/app.js';
import { illFormedField, illFormedText } from '../src/util/text.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';
import { END, writeByteLevelTokenizer } from './helpers/byte-level-tokenizer.js';

const t = TextTokenizer.load(tokenizerModelDir())!;
const served: ServedModel = { id: 'tiny', maxPositions: 512, vocabSize: 32000, tokenizer: t, created: 0 };
let submitted = 0;
const engine: Engine = {
  scheduler: {
    stats: { generatedTokens: 0, timeToFirstTokenSeconds: [] },
    positionsUnderLimits: 0,
    submit: async (req: GenerationRequest): Promise<GenerationResult> => {
      submitted++;
      return { id: req.id, promptTokens: req.promptTokenIds!.length, tokenIds: [3], text: 'x', finishReason: 'length' };
    },
  } as unknown as Scheduler,
  model: served,
};

describe('illFormedText', () => {
  it('finds a lone high or low surrogate, and passes pairs and U+FFFD', () => {
    expect(illFormedText('a🦙b\ufffd')).toBeNull();
    expect(illFormedText('ab\ud83d')).toMatch(/^holds a lone surrogate U\+D83D at character 2 /);
    expect(illFormedText('\udfe7')).toMatch(/U\+DFE7 at character 0/);
    expect(illFormedText('\udfe7\ud83d')).toMatch(/U\+DFE7/);
    expect(illFormedField({ model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'x\ud83d' }] }] })?.field).toBe('messages[0].content[0].text');
  });
});

describe('the server', () => {
  let server: Server;
  beforeAll(async () => {
    server = await buildServer({ engine, maxQueue: 4, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 1, dataDir: tmpDir('well-formed') });
  });
  afterAll(async () => server?.close());

  const post = (url: string, payload: string | Buffer) => server.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload });

  it('answers 400 naming the field for a lone surrogate in stop, prompt or a message', async () => {
    const before = submitted;
    const cases: [string, string, string][] = [
      ['/v1/completions', '{"model":"tiny","prompt":"Hi","stop":["\\udfe7"]}', 'stop[0]'],
      ['/v1/completions', '{"model":"tiny","prompt":"Hi","stop":"ok\\udfe7"}', 'stop'],
      ['/v1/completions', '{"model":"tiny","prompt":"a\\ud83d"}', 'prompt'],
      ['/v1/completions', '{"model":"tiny","prompt":["ok","\\ud83d"]}', 'prompt[1]'],
      ['/v1/chat/completions', '{"model":"tiny","messages":[{"role":"user","content":"ok"},{"role":"user","content":"\\ud83d!"}]}', 'messages[1].content'],
    ];
    for (const [url, body, field] of cases) {
      const r = await post(url, body);
      expect(r.statusCode, body).toBe(400);
      expect(r.json().error.param, body).toBe(field);
      expect(r.json().error.message).toMatch(new RegExp(`^Invalid value for '${field.replace(/[[\]]/g, '\\$&')}': holds a lone surrogate`));
    }
    expect(submitted).toBe(before);
    // (a pair escaped is a character: it runs)
    expect((await post('/v1/completions', '{"model":"tiny","prompt":"\\ud83e\\udd99","stop":["\\ud83e\\udd99"]}')).statusCode).toBe(200);
  });

  it('answers 400 for a body that is not valid UTF-8, naming the byte', async () => {
    const body = Buffer.concat([Buffer.from('{"model":"tiny","prompt":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]);
    const r = await post('/v1/completions', body);
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toMatchObject({ code: 'invalid_json', message: 'The request body is not valid JSON: it is not valid UTF-8 (byte offset 26 of the body)' });
    // (a surrogate encoded in UTF-8, ED A0 BD, is not UTF-8 either)
    const surrogate = Buffer.concat([Buffer.from('{"model":"tiny","prompt":"'), Buffer.from([0xed, 0xa0, 0xbd]), Buffer.from('"}')]);
    expect((await post('/v1/completions', surrogate)).statusCode).toBe(400);
    expect((await post('/v1/completions', Buffer.from('{"model":"tiny","prompt":"🦙"}'))).statusCode).toBe(200);
  });
});

describe('a Batch API line (tierlm batch, and the server\'s batches)', () => {
  it('is answered 400 naming the field', async () => {
    const e = await check(engine, '/v1/completions', { model: 'tiny', prompt: 'Hi', stop: ['\udfe7'] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 400, param: 'stop[0]' });
  });
});

describe('the engine (library requests, tierlm generate\'s JSONL lines)', () => {
  let model: LanguageModel;
  beforeAll(async () => {
    const dir = tmpDir('well-formed-model');
    initModel({ config: 'llama-test', out: dir, dtype: 'f32', seed: 3, overrides: { vocab_size: END + 1 } });
    writeByteLevelTokenizer(dir);
    model = await loadModel(dir);
  });
  afterAll(async () => model?.close());

  it('refuses a lone surrogate in prompt, messages or stop, naming it; the requests beside it run', async () => {
    const reqs: GenerationRequest[] = [
      { id: 'p', prompt: 'a\ud83d' },
      { id: 'm', messages: [{ role: 'user', content: '\udfe7' }] },
      { id: 's', prompt: 'Hi', stop: ['ok', '\udfe7'] },
      { id: 'ok', prompt: 'Hi 🦙', stop: ['🦙'] },
    ];
    const got: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generate(reqs, { maxNewTokens: 2 })) got.push(r);
    const errors = Object.fromEntries(got.map((r) => [r.id, 'error' in r ? r.error : null]));
    expect(errors.p).toMatch(/^"prompt" holds a lone surrogate U\+D83D at character 1/);
    expect(errors.m).toMatch(/^"messages\[0\]\.content" holds a lone surrogate U\+DFE7/);
    expect(errors.s).toMatch(/^"stop\[1\]" holds a lone surrogate U\+DFE7/);
    expect(errors.ok).toBeNull();
  });

  it('refuses a JSONL line\'s escaped lone surrogate, naming the field', async () => {
    const file = path.join(tmpDir('well-formed-jsonl'), 'in.jsonl');
    fs.writeFileSync(file, '{"id": "a", "prompt": "Hi", "stop": ["\\udfe7"]}\n{"id": "b", "prompt": "\\ud83d"}\n');
    const lines = [];
    for await (const l of readRequests(file)) lines.push(l);
    const reqs = lines.map((l) => ('request' in l ? l.request : null)).filter((r) => r !== null);
    expect(reqs).toHaveLength(2);
    const got: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generateNamed(reqs, { maxNewTokens: 2 }, undefined, 'json')) got.push(r);
    const errors = got.map((r) => ('error' in r ? r.error : 'ran'));
    expect(errors[0]).toMatch(/^"stop\[0\]" holds a lone surrogate U\+DFE7/);
    expect(errors[1]).toMatch(/^"prompt" holds a lone surrogate U\+D83D/);
  });
});
