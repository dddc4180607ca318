// The command line as users run it: batch jobs that keep finished work, resume, and report bad
// input per line; single prompts; init.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { type Reference, addTokenizer, readJsonl, fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = path.join(fixturesDir, 'prompts.jsonl');
const reference = readJsonl<Reference>(path.join(opt, 'reference.jsonl'));

function readOut(file: string): Record<string, any>[] {
  return readJsonl<Record<string, any>>(file);
}

describe('tierlm generate (batch job)', () => {
  it('writes one line per input, reproduces the reference, and reports bad lines without stopping', () => {
    const dir = tmpDir('cli');
    const input = path.join(dir, 'in.jsonl');
    const lines = fs.readFileSync(prompts, 'utf8').trim().split('\n');
    lines.splice(2, 0, '{"id": "bad-json", "prompt_token_ids": [1, 2', '{"id": "bad-token", "prompt_token_ids": [1, 99999]}', '{"prompt_token_ids": [3]}',
      '{"id": "too-long", "prompt_token_ids": [' + Array(200).fill(5).join(',') + ']}', '{"id": "p0", "prompt_token_ids": [7]}',
      '{"id": "empty", "prompt_token_ids": []}');
    fs.writeFileSync(input, lines.join('\n') + '\n');
    const out = path.join(dir, 'out.jsonl');
    const r = cli(['generate', '--model', opt, '--prompts', input, '--out', out, '--max-new-tokens', '8', '--ignore-eos', '--logprobs', '--batch-size', '3']);
    // The job runs to the end, but a failed request makes the exit code say so.
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/5 results, 6 failed/);
    const rows = readOut(out);
    expect(rows).toHaveLength(11);
    for (const ref of reference) {
      const row = rows.find((x) => x.id === ref.id && !x.error)!;
      expect(row.token_ids).toEqual(ref.token_ids);
      expect(row.finish_reason).toBe('length');
      row.logprobs.forEach((lp: number, i: number) => expect(Math.abs(lp - ref.logprobs[i]!)).toBeLessThan(2e-3));
    }
    const errors = rows.filter((x) => x.error);
    expect(errors.map((x) => x.id).sort()).toEqual(['line-3', 'line-5', 'bad-token', 'too-long', 'line-7', 'empty'].sort());
    expect(errors.find((x) => x.id === 'empty')!.error).toMatch(/in\.jsonl:8: "prompt_token_ids" is empty: a prompt needs at least one token/);
    // every error names the file and line, the model's refusals too; and every line is in input order
    expect(errors.find((x) => x.id === 'line-3')!.error).toMatch(/in\.jsonl:3: not valid JSON/);
    expect(errors.find((x) => x.id === 'bad-token')!.error).toMatch(/in\.jsonl:4: prompt_token_ids\[1\] = 99999/);
    expect(errors.find((x) => x.id === 'too-long')!.error).toMatch(/in\.jsonl:6: prompt of 200 tokens does not fit the model's 128 positions/);
    expect(errors.find((x) => x.id === 'line-7')!.error).toMatch(/in\.jsonl:7: duplicate id "p0"/);
    // (a duplicate's error line is under its line's name: the first line's result stands)
    const taken = new Set<string>();
    const ids = lines.map((l, i) => {
      let id: string;
      try { id = JSON.parse(l).id ?? `line-${i + 1}`; } catch { id = `line-${i + 1}`; }
      if (taken.has(id)) return `line-${i + 1}`;
      taken.add(id);
      return id;
    });
    expect(rows.map((x) => x.id)).toEqual(ids);
  });

  it('resumes: ids already in the output are skipped and a torn last line is repaired', () => {
    const dir = tmpDir('resume');
    const out = path.join(dir, 'out.jsonl');
    const done = { id: 'p1', token_ids: [1, 2, 3], finish_reason: 'length' };
    fs.writeFileSync(out, JSON.stringify(done) + '\n{"id": "p2", "token_ids": [4');
    const r = cli(['generate', '--model', opt, '--prompts', prompts, '--out', out, '--max-new-tokens', '8', '--ignore-eos']);
    expect(r.code, r.stderr).toBe(0);
    const rows = readOut(out);
    expect(rows.map((x) => x.id).sort()).toEqual(['p0', 'p1', 'p2', 'p3', 'p4']);
    expect(rows.find((x) => x.id === 'p1')).toEqual(done);
    expect(rows.find((x) => x.id === 'p2')!.token_ids).toEqual(reference[2]!.token_ids);
    expect(r.stderr).toMatch(/1 already done/);
    // A second rerun has nothing left to do.
    const again = cli(['generate', '--model', opt, '--prompts', prompts, '--out', out]);
    expect(again.code).toBe(0);
    expect(readOut(out)).toHaveLength(5);
  });

  it('stops at EOS with finish_reason "stop"', () => {
    const dir = tmpDir('stop');
    const out = path.join(dir, 'out.jsonl');
    // opt-tiny's reference for p0 starts with 291: make that a stop token.
    const r = cli(['generate', '--model', opt, '--prompts', prompts, '--out', out, '--max-new-tokens', '8', '--stop-token-ids', '291']);
    expect(r.code, r.stderr).toBe(0);
    const p0 = readOut(out).find((x) => x.id === 'p0')!;
    expect(p0.token_ids).toEqual([291]);
    expect(p0.finish_reason).toBe('stop');
  });

  it('clear errors for bad options and a missing model, without a stack trace', () => {
    const bad = cli(['generate', '--model', opt, '--prompt', 'x', '--temperature', '-1']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--temperature must be a number/);
    const missing = cli(['generate', '--model', '/nonexistent', '--prompt', 'x']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/--model \/nonexistent: does not exist/);
    expect(missing.stderr).not.toMatch(/at .*\.ts:\d+/);
    const noTok = cli(['generate', '--model', opt, '--prompt', 'hello']);
    expect(noTok.code).toBe(1);
    expect(noTok.stderr).toMatch(/^tierlm: --prompt needs the model's tokenizer\.json, which .* does not have: give token ids in a --prompts file \("prompt_token_ids"\)/);
    expect(noTok.stderr).not.toMatch(/promptTokenIds/);
  });
});

describe('tierlm init and text prompts', () => {
  it('init writes a loadable model; --prompt and text/chat JSONL prompts use the tokenizer', () => {
    const dir = tmpDir('init');
    const model = path.join(dir, 'llama');
    const r = cli(['init', '--config', 'llama-test', '--out', model, '--seed', '3']);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.existsSync(path.join(model, 'model.safetensors'))).toBe(true);
    addTokenizer(model);
    const one = cli(['generate', '--model', model, '--prompt', 'The capital of France is', '--max-new-tokens', '5']);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout.trim().length).toBeGreaterThan(0);
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, [
      JSON.stringify({ id: 'text', prompt: 'The capital of France is' }),
      JSON.stringify({ id: 'chat', messages: [{ role: 'user', content: 'Hi there' }] }),
    ].join('\n'));
    const out = path.join(dir, 'out.jsonl');
    const job = cli(['generate', '--model', model, '--prompts', input, '--out', out, '--max-new-tokens', '5']);
    expect(job.code, job.stderr).toBe(0);
    const rows = readOut(out);
    expect(rows.map((x) => x.id)).toEqual(['text', 'chat']);
    for (const row of rows) {
      expect(typeof row.text).toBe('string');
      expect(row.token_ids.length).toBeGreaterThan(0);
    }
    // The single prompt printed exactly the JSONL result's text.
    expect(one.stdout.trim()).toBe(rows[0]!.text.trim());

    // A conversation the chat template refuses (raise_exception, as Llama 2's and Mistral's do) is
    // that line's error, and a tokenizer that encodes past config.json's vocabulary is the line's
    // too: both stopped the whole job, with every result lost.
    const tc = path.join(model, 'tokenizer_config.json');
    const cfg = JSON.parse(fs.readFileSync(tc, 'utf8'));
    cfg.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" + cfg.chat_template;
    fs.writeFileSync(tc, JSON.stringify(cfg));
    fs.writeFileSync(input, [
      JSON.stringify({ id: 'ok', prompt: 'The capital of France is' }),
      JSON.stringify({ id: 'refused', messages: [{ role: 'assistant', content: 'Hi' }] }),
      JSON.stringify({ id: 'chat', messages: [{ role: 'user', content: 'Hi there' }] }),
    ].join('\n'));
    const out2 = path.join(dir, 'out2.jsonl');
    const job2 = cli(['generate', '--model', model, '--prompts', input, '--out', out2, '--max-new-tokens', '3']);
    expect(job2.code, job2.stderr).toBe(2);
    const rows2 = readOut(out2);
    expect(rows2.map((x) => [x.id, !!x.error])).toEqual([['ok', false], ['refused', true], ['chat', false]]);
    expect(rows2[1]!.error).toMatch(/in\.jsonl:2: "messages": the chat template \(.*tokenizer_config\.json\) fails on these messages: Conversation roles must alternate/);
    const small = path.join(dir, 'small-vocab'); // llama-tiny's few hundred tokens, Llama 2's tokenizer
    fs.mkdirSync(small);
    for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(fixturesDir, 'llama-tiny', f), path.join(small, f));
    addTokenizer(small);
    fs.writeFileSync(input, [JSON.stringify({ id: 'big-ids', prompt: 'Hello world' }), JSON.stringify({ id: 'ids', prompt_token_ids: [5, 6] })].join('\n') + '\n');
    const job3 = cli(['generate', '--model', small, '--prompts', input, '--out', '-', '--max-new-tokens', '3']);
    expect(job3.code, job3.stderr).toBe(2);
    const rows3 = job3.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(rows3[0].error).toMatch(/in\.jsonl:1: "prompt" encodes to token id \d+ at \d, outside the model's vocabulary of \d+: tokenizer\.json does not match config\.json's vocab_size/);
    expect(rows3[1].token_ids).toHaveLength(3);
  });

  it('init refuses an unknown shape and names the known ones', () => {
    const r = cli(['init', '--config', 'gpt-5', '--out', tmpDir('x')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/unknown config "gpt-5" \(known: opt-125m/);
  });
});
