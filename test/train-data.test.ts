// Training data: the four line shapes, packing, labels, bad lines, and the seeded, resumable batcher.
// test/fixtures/train/batch.jsonl is a copy of ../shared/fixtures/train/batch.jsonl: four token_ids
// sequences (lengths 12, 7, 20, 16); line 3 has labels with its first 8 positions ignored.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { Batcher, evalBatches, shuffled } from '../src/train/batcher.js';
import { type DataOptions, type Dataset, dataContextFor, readDataset } from '../src/train/dataset.js';
import { IGNORE_INDEX } from '../src/train/sequence.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const batchFile = path.join(fixturesDir, 'train/batch.jsonl');
const idsOnly: DataOptions = { vocabSize: 512, eosTokenId: 2, tokenizer: null, seqLen: 64 };

function writeLines(lines: (string | object)[]): string {
  const file = path.join(tmpDir('data'), 'data.jsonl');
  fs.writeFileSync(file, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');
  return file;
}

const ids = (s: { ids: Int32Array }) => Array.from(s.ids);
const labels = (s: { labels: Int32Array }) => Array.from(s.labels);

describe('token_ids lines', () => {
  it('are taken exactly as given, labels in the Hugging Face convention, with counts', async () => {
    const d = await readDataset(batchFile, idsOnly);
    const raw = fs.readFileSync(batchFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect([...d.sequences].map((s) => s.ids.length)).toEqual([12, 7, 20, 16]);
    [...d.sequences].forEach((s, i) => {
      expect(ids(s)).toEqual(raw[i].token_ids);
      expect(labels(s)).toEqual(raw[i].labels ?? raw[i].token_ids);
      expect(s.line).toBe(i + 1);
    });
    expect(labels(d.sequences.at(2)!).slice(0, 8)).toEqual(Array(8).fill(IGNORE_INDEX));
    // Targets: every position after the first, less line 3's 7 ignored ones after its first.
    expect(d.counts).toEqual({ sequences: 4, tokens: 55, targets: 11 + 6 + 12 + 15 });
    expect(d.skipped).toEqual([]);
  });

  it('skips bad lines, naming file, line and field, and keeps the good ones', async () => {
    const file = writeLines([
      { token_ids: [1, 2, 3] },
      '{"token_ids": [1, 2',
      '[1, 2, 3]',
      { tokens: [1, 2] },
      { token_ids: [1, 'x'] },
      { token_ids: [1, 999] },
      { token_ids: [1, 2, 3], labels: [1, 2] },
      { token_ids: [1, 2, 3], labels: [-100, 7, 600] },
      { token_ids: Array(65).fill(4) },
      { token_ids: [5, 6], labels: [5, -100] },
      { token_ids: [1, 2], text: 'both' },
      '',
      { token_ids: [7, 8, 9], labels: [-100, -100, 9], id: 'extra fields are ignored' },
      { token_ids: [7] },
      '{"token_ids": [1e400, 2]}',
      '{"token_ids": [1, 2], "labels": [-100, -1e400]}',
    ]);
    // A byte-order mark before the first line is not part of its JSON.
    fs.writeFileSync(file, '\uFEFF' + fs.readFileSync(file, 'utf8'));
    const d = await readDataset(file, idsOnly);
    expect([...d.sequences].map((s) => s.line)).toEqual([1, 13]);
    const byLine = Object.fromEntries(d.skipped.map((s) => [s.line, s.message]));
    expect(Object.keys(byLine).map(Number)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16]);
    for (const [line, message] of Object.entries(byLine)) expect(message.startsWith(`${file}:${line}: `)).toBe(true);
    expect(byLine[2]).toMatch(/not valid JSON/);
    expect(byLine[3]).toMatch(/expected a JSON object/);
    expect(byLine[4]).toMatch(/expected "text", "prompt" and "completion", "messages", or "token_ids"/);
    expect(byLine[5]).toMatch(/"token_ids"\[1\] = "x" is not a token id/);
    expect(byLine[6]).toMatch(/"token_ids"\[1\] = 999 is outside the model's vocabulary of 512/);
    expect(byLine[7]).toMatch(/"labels" has 2 entries, "token_ids" 3/);
    expect(byLine[8]).toMatch(/"labels"\[2\] = 600 is outside the model's vocabulary/);
    expect(byLine[9]).toMatch(/65 tokens, longer than the sequence length 64/);
    expect(byLine[10]).toMatch(/no targets/);
    expect(byLine[11]).toMatch(/mixes the fields of "text" and "token_ids"/);
    expect(byLine[14]).toMatch(/:14: 1 token: a sequence needs at least 2/);
    // (a number JavaScript reads as Infinity: JSON.stringify would print null)
    expect(byLine[15]).toMatch(/"token_ids"\[0\] = Infinity is not a token id/);
    expect(byLine[16]).toMatch(/"labels"\[1\] = -Infinity is neither a token id nor -100/);
    expect(labels(d.sequences.at(1)!)).toEqual([-100, -100, 9]);
  });

  // (each was printed, and every message held in RAM outside the plan: 100,000 bad lines flooded stderr)
  it('keeps the messages of the first 100 lines skipped, and counts them all', async () => {
    const d = await readDataset(writeLines([...Array.from({ length: 150 }, () => '{"token_ids": []}'), { token_ids: [1, 2, 3] }]), idsOnly);
    expect(d.sequences).toHaveLength(1);
    expect([d.skipped.length, d.skippedLines]).toEqual([100, 150]);
    expect(d.skipped.at(-1)!.line).toBe(100);
    const none = writeLines(Array.from({ length: 150 }, () => '{"token_ids": []}'));
    await expect(readDataset(none, idsOnly)).rejects.toThrow(/no usable line; all 150 were skipped:\n( {2}.*\n){5} {2}\(145 more\)$/);
  });

  it('a file with no usable line fails with a UserError listing why, before any compute', async () => {
    const file = writeLines(['{"token_ids": [1, 999]}', 'nope']);
    await expect(readDataset(file, idsOnly)).rejects.toThrow(/no usable line; all 2 were skipped:\n .*data\.jsonl:1: .*vocabulary of 512\n .*data\.jsonl:2: not valid JSON/);
    await expect(readDataset(writeLines(['']), idsOnly)).rejects.toThrow(/no data lines/);
    await expect(readDataset('/nonexistent/x.jsonl', idsOnly)).rejects.toThrow(/\/nonexistent\/x\.jsonl: cannot read the data file \(ENOENT\)/);
    // Text lines need a tokenizer; the error says so.
    await expect(readDataset(writeLines([{ text: 'hello' }]), idsOnly)).rejects.toThrow(/:1: "text" lines need the model's tokenizer\.json/);
  });
});

describe('text, prompt/completion and chat lines (with a tokenizer)', () => {
  const dir = tokenizerModelDir();
  const tok = TextTokenizer.load(dir)!;
  const ctx = (seqLen: number) => dataContextFor(dir, seqLen);

  it('reads vocabulary, EOS and tokenizer from the model directory', () => {
    const c = ctx(16);
    expect(c.vocabSize).toBe(32000);
    expect(c.eosTokenId).toBe(2);
    expect(c.tokenizer).not.toBeNull();
  });

  it('packs text documents into full seqLen chunks with EOS after each document', async () => {
    const docs = ['The quick brown fox jumps over the lazy dog.', 'Hello world', 'A third document, somewhat longer than the second one is.'];
    const d = await readDataset(writeLines(docs.map((text) => ({ text }))), ctx(8));
    const stream = docs.flatMap((t) => [...tok.encode(t), 2]);
    expect([...d.sequences].flatMap(ids)).toEqual(stream);
    const lengths = [...d.sequences].map((s) => s.ids.length);
    expect(lengths.slice(0, -1).every((n) => n === 8)).toBe(true);
    expect(lengths.at(-1)).toBe(stream.length - 8 * (lengths.length - 1));
    for (const s of d.sequences) expect(labels(s)).toEqual(ids(s));
    // Each chunk is attributed to the line its first token came from.
    expect(d.sequences.at(0)!.line).toBe(1);
    expect(d.sequences.at(-1)!.line).toBe(3);
    expect(d.counts.targets).toBe(stream.length - d.sequences.length);
  });

  // (trained on as U+FFFD without a word, where bytes that are not UTF-8 skip the line)
  it('skips text holding a lone surrogate, naming the field', async () => {
    const d = await readDataset(writeLines([
      '{"text": "fine"}',
      '{"text": "half a pair \\ud83d here"}',
      '{"prompt": "q", "completion": "\\udfe7"}',
      '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x\\ud800"}]}',
    ]), ctx(32));
    expect(d.sequences).toHaveLength(1);
    expect(d.skipped.map((x) => x.message.replace(/^.*?:(\d+): /, '$1: '))).toEqual([
      '2: "text" holds a lone surrogate U+D83D at character 12 (an unpaired "\\ud83d" escape): it is no character, and UTF-8 cannot carry it',
      '3: "completion" holds a lone surrogate U+DFE7 at character 0 (an unpaired "\\udfe7" escape): it is no character, and UTF-8 cannot carry it',
      '4: "messages[1].content" holds a lone surrogate U+D800 at character 1 (an unpaired "\\ud800" escape): it is no character, and UTF-8 cannot carry it',
    ]);
  });

  it('prompt/completion: loss on the completion and EOS only; too long is an error for the line', async () => {
    const d = await readDataset(writeLines([
      { prompt: 'Question: what is two plus two? Answer:', completion: ' four' },
      { prompt: 'x', completion: ' y'.repeat(40) },
      { prompt: 3, completion: 'a' },
    ]), ctx(32));
    expect(d.sequences).toHaveLength(1);
    const s = d.sequences.at(0)!;
    const whole = tok.encode('Question: what is two plus two? Answer: four');
    expect(ids(s)).toEqual([...whole, 2]);
    const prompt = tok.encode('Question: what is two plus two? Answer:');
    const kept = labels(s).map((l, t) => (l === IGNORE_INDEX ? null : t)).filter((t) => t !== null) as number[];
    expect(kept[0]).toBe(prompt.length);
    expect(kept.at(-1)).toBe(s.ids.length - 1);
    expect(tok.decode(kept.map((t) => s.ids[t]!)).trim()).toBe('four');
    expect(d.skipped.map((x) => x.line)).toEqual([2, 3]);
    expect(d.skipped[0]!.message).toMatch(/longer than the sequence length 32/);
    expect(d.skipped[1]!.message).toMatch(/"prompt" must be a string/);
  });

  it('messages: rendered with the chat template, loss only on the assistant turns', async () => {
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello there' },
      { role: 'user', content: 'Bye' },
      { role: 'assistant', content: 'See you' },
    ];
    const d = await readDataset(writeLines([
      { messages },
      { messages: [{ role: 'user', content: 'only a question' }] },
      { messages: [{ role: 'user', content: 5 }] },
    ]), ctx(128));
    const s = d.sequences.at(0)!;
    expect(ids(s)).toEqual(tok.encode(tok.applyChatTemplate(messages, false), false));
    // The kept positions form two runs: each assistant's content and its end-of-turn newline.
    const runs: number[][] = [];
    labels(s).forEach((l, t) => {
      if (l === IGNORE_INDEX) return;
      expect(l).toBe(s.ids[t]);
      if (runs.length && runs.at(-1)!.at(-1) === t - 1) runs.at(-1)!.push(t);
      else runs.push([t]);
    });
    expect(runs.map((r) => tok.decode(r.map((t) => s.ids[t]!)))).toEqual(['Hello there\n', 'See you\n']);
    expect(d.skipped[0]!.message).toMatch(/:2: "messages" has no assistant message/);
    expect(d.skipped[1]!.message).toMatch(/:3: "messages"\[0\]\.content must be a string/);
  });

  it('messages with a template that is not prefix-consistent are reported, not mislabelled', async () => {
    const odd = tmpDir('oddtemplate');
    for (const f of ['tokenizer.json', 'config.json']) fs.copyFileSync(path.join(dir, f), path.join(odd, f));
    const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    // Renders the number of messages first, so no prefix renders as the start of the whole.
    tc.chat_template = '{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}';
    fs.writeFileSync(path.join(odd, 'tokenizer_config.json'), JSON.stringify(tc));
    const file = writeLines([{ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }]);
    await expect(readDataset(file, dataContextFor(odd, 64))).rejects.toThrow(/:1: the chat template renders the conversation before message 1 differently/);
  });
});

describe('Batcher', () => {
  async function dataset(n: number): Promise<Dataset> {
    return readDataset(writeLines(Array.from({ length: n }, (_, i) => ({ token_ids: [i % 500, (i + 1) % 500, 7].slice(0, 2 + (i % 2)) }))), idsOnly);
  }

  it('shuffles each epoch differently, deterministically from the seed, in ragged batches', async () => {
    const d = await dataset(10);
    const b = new Batcher(d, { batchSize: 4, seed: 5 });
    expect(b.batchesPerEpoch).toBe(3);
    const epoch0 = [b.next(), b.next(), b.next()];
    expect(epoch0.map((x) => x.sequences.length)).toEqual([4, 4, 2]);
    const lines0 = epoch0.flatMap((x) => x.sequences.map((s) => s.line));
    expect([...lines0].sort((a, c) => a - c)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(lines0).not.toEqual([...lines0].sort((a, c) => a - c));
    const first = b.next();
    expect(first.epoch).toBe(1);
    expect(first.index).toBe(0);
    expect(first.sequences.map((s) => s.line)).not.toEqual(lines0.slice(0, 4));
    // The batch's counts are its sequences'.
    expect(first.tokens).toBe(first.sequences.reduce((n, s) => n + s.ids.length, 0));
    expect(first.targets).toBe(first.tokens - 4);
    // Same seed, same order; another seed, another.
    const again = new Batcher(d, { batchSize: 4, seed: 5 }).next();
    expect(again.sequences.map((s) => s.line)).toEqual(lines0.slice(0, 4));
    expect(Array.from(shuffled(10, 5))).toEqual(lines0.map((l) => l - 1));
    expect(Array.from(shuffled(10, 6))).not.toEqual(Array.from(shuffled(10, 5)));
  });

  it('resumes from a saved position with exactly the same sequences', async () => {
    const d = await dataset(9);
    const run = new Batcher(d, { batchSize: 2, seed: 1 });
    const seen = Array.from({ length: 12 }, () => run.next().sequences.map((s) => s.line));
    const probe = new Batcher(d, { batchSize: 2, seed: 1 });
    for (let i = 0; i < 7; i++) probe.next();
    const saved = JSON.parse(JSON.stringify(probe.position));
    expect(saved).toEqual({ epoch: 1, index: 4, fingerprint: d.fingerprint });
    const resumed = new Batcher(d, { batchSize: 2, seed: 1 }, saved);
    expect(Array.from({ length: 5 }, () => resumed.next().sequences.map((s) => s.line))).toEqual(seen.slice(7));
  });

  it('refuses a position from other data or outside the dataset', async () => {
    const d = await dataset(6);
    const other = await dataset(7);
    expect(() => new Batcher(d, { batchSize: 2, seed: 1 }, { epoch: 0, index: 2, fingerprint: other.fingerprint })).toThrow(/data differs from the run being resumed/);
    expect(() => new Batcher(d, { batchSize: 2, seed: 1 }, { epoch: 0, index: 7, fingerprint: d.fingerprint })).toThrow(/outside .*'s 6 sequences/);
    // The end of an epoch is the start of the next.
    const atEnd = new Batcher(d, { batchSize: 2, seed: 1 }, { epoch: 0, index: 6, fingerprint: d.fingerprint });
    expect(atEnd.position).toMatchObject({ epoch: 1, index: 0 });
  });

  it('evaluation batches are the file in order, once', async () => {
    const d = await dataset(5);
    const batches = evalBatches(d, 2);
    expect(batches.map((b) => b.sequences.map((s) => s.line))).toEqual([[1, 2], [3, 4], [5]]);
  });
});
