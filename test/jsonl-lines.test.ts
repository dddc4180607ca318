// How input files are split into lines (--prompts, batch inputs, training data): at "\n" only,
// a "\r" before it dropped, a byte order mark at the start of the file dropped, each line decoded
// as strict UTF-8 (a line that is not is reported by file and line, not read with U+FFFD in it),
// and in time linear in the file (a 64 MB line took 19 s when the pending line was searched again
// with every chunk).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MAX_LINE_CONTAINERS, containersPast, fileLines, firstBadSequence, openPrompts, readRequests, splitLines, unreadableLine } from '../src/formats/jsonl.js';
import { parseBatchLine } from '../src/openai/batch-lines.js';
import { dataContextFor, readDataset } from '../src/train/dataset.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

async function collect(lines: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const l of lines) out.push(l);
  return out;
}

async function* chunked(parts: (string | Buffer)[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

/** The lines fileLines should give for `text`: its "\n"-separated pieces, an empty last one
 *  (after a final newline) left out, each piece's final "\r" and the first one's BOM dropped. */
function expected(text: string): string[] {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return lines.map((l, i) => (i === 0 && l.startsWith('\uFEFF') ? l.slice(1) : l)).map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
}

const BOM_CRLF = '\uFEFF{"id": "a", "prompt_token_ids": [5, 6]}\r\n\r\n{"id": "b", "prompt_token_ids": [7]}\r\n';

describe('a byte order mark at the start of a file', () => {
  it('is dropped from line 1 of a --prompts file (with CRLF line ends): line 1 parses', async () => {
    const file = path.join(tmpDir('jsonl-bom'), 'in.jsonl');
    fs.writeFileSync(file, BOM_CRLF);
    const out = [];
    for await (const x of readRequests(file)) out.push(x);
    expect(out).toEqual([
      { line: 1, request: { id: 'a', promptTokenIds: [5, 6] } },
      { line: 3, request: { id: 'b', promptTokenIds: [7] } },
    ]);
  });

  it('is dropped from line 1 of a batch input file', async () => {
    const file = path.join(tmpDir('jsonl-bom'), 'batch.jsonl');
    const body = { model: 'm', prompt: 'hi' };
    fs.writeFileSync(file, `\uFEFF${JSON.stringify({ custom_id: 'one', method: 'POST', url: '/v1/completions', body })}\r\n`);
    const [line] = await collect((await openPrompts(file)).lines());
    expect(parseBatchLine(line!, 1, new Set())).toMatchObject({ line: 1, customId: 'one', endpoint: '/v1/completions', body });
  });

  it('is dropped from line 1 of a pipe (read once), too', async () => {
    const dir = tmpDir('jsonl-bom-fifo');
    const fifo = path.join(dir, 'in.fifo');
    const src = path.join(dir, 'in.jsonl');
    fs.writeFileSync(src, BOM_CRLF);
    await new Promise<void>((resolve, reject) => spawn('mkfifo', [fifo]).on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`mkfifo: ${c}`)))));
    const writer = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', src, fifo]);
    const written = new Promise((resolve) => writer.on('exit', resolve));
    const out = [];
    for await (const x of readRequests(await openPrompts(fifo))) out.push(x);
    expect(await written).toBe(0);
    expect(out).toEqual([
      { line: 1, request: { id: 'a', promptTokenIds: [5, 6] } },
      { line: 3, request: { id: 'b', promptTokenIds: [7] } },
    ]);
  });

  it('is kept anywhere else (only the file\'s first character is a BOM)', async () => {
    expect(await collect(splitLines(chunked(['\uFEFFa\n\uFEFFb\n'])))).toEqual(['a', '\uFEFFb']);
    expect(await collect(splitLines(chunked(['', '\uFEFF', '\n', 'x'])))).toEqual(['', 'x']);
  });
});

describe('splitting lines across chunks', () => {
  it('lines longer than a chunk, "\\n" and "\\r\\n" at chunk edges, empty lines and chunks, no final newline', async () => {
    const cases: string[][] = [
      ['abc', 'def\n', 'ghi'], // a line across chunks; no final newline
      ['abc\n', '\n', 'def\n'], // "\n" at each chunk's end; an empty line alone in a chunk
      ['\nabc', '\n\n', '\nx\n'], // "\n" at chunk starts; empty lines
      ['ab\r', '\ncd\r\n', '\r', '\n'], // "\r\n" split by an edge; an empty CRLF line split too
      ['a\rb\n'], // a lone "\r" is inside the line
      ['', 'x'.repeat(100), '', 'y'.repeat(100), '\n', ''], // empty chunks
      ['tail\r'], // a last line of just its "\r"
      [], ['\n'], ['\r\n'],
    ];
    for (const parts of cases) expect(await collect(splitLines(chunked(parts))), JSON.stringify(parts)).toEqual(expected(parts.join('')));
  });

  it('gives the same lines however the bytes are cut, characters (and the BOM) too (seeded random cuts)', async () => {
    let seed = 12345;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2147483648) % n);
    const pieces = ['a', 'é', '🦜', '€', ' ', '\r', '\n', '\r\n', '\n\n'];
    for (let trial = 0; trial < 200; trial++) {
      const text = (trial % 3 === 0 ? '\uFEFF' : '') + Array.from({ length: rand(300) }, () => pieces[rand(pieces.length)]).join('');
      const bytes = Buffer.from(text);
      const parts: Buffer[] = [];
      for (let at = 0; at < bytes.length;) {
        const n = rand(4) === 0 ? 0 : 1 + rand(rand(2) ? 3 : 60);
        parts.push(bytes.subarray(at, at + n));
        at += n;
      }
      expect(await collect(splitLines(chunked(parts))), JSON.stringify(text)).toEqual(expected(text));
    }
  });

  it('a file: a multi-megabyte line between short ones, with and without a final newline', async () => {
    const file = path.join(tmpDir('jsonl-lines'), 'long.txt');
    const long = 'é'.repeat(300_000) + 'x'.repeat(500_000);
    for (const text of [`a\r\n${long}\r\nb\n\nc`, `${long}\n${long}\n`]) {
      fs.writeFileSync(file, text);
      expect(await collect(fileLines(file))).toEqual(expected(text));
    }
  });

  // A line past the reader's limit is never held whole: its bytes are dropped as they come, and
  // it is read as an unreadable line saying its size (a 22 MB prompt was parsed whole first, and
  // took a --ram 80MiB run to 287 MB before its "does not fit" error).
  it('a line longer than the limit is an unreadable line of its size, however its chunks fall', async () => {
    const limit = { bytes: 10, why: 'more than ten' };
    const text = 'short\n0123456789\n01234567890\nok\n' + 'y'.repeat(25) + '\nlast\n' + 'z'.repeat(11);
    const want = ['short', '0123456789', '\uDC0011 bytes, more than ten', 'ok', '\uDC0025 bytes, more than ten', 'last', '\uDC0011 bytes, more than ten'];
    for (const size of [1, 2, 3, 7, 11, 64]) {
      const parts = Array.from({ length: Math.ceil(text.length / size) }, (_, i) => text.slice(i * size, (i + 1) * size));
      const lines = await collect(splitLines(chunked(parts), limit));
      expect(lines, String(size)).toEqual(want);
      expect(lines.map((l) => unreadableLine(l))).toEqual([null, null, '11 bytes, more than ten', null, '25 bytes, more than ten', null, '11 bytes, more than ten']);
    }
    // without a limit, as before
    expect(await collect(splitLines(chunked([text])))).toEqual(expected(text));
  });

  // A line within the byte limit may still parse into far more than its bytes: `{}` is 3 bytes and
  // an object of ~60 bytes of RAM (a 4 MiB training line of them took `--ram 64MiB` 15 MiB past its limit).
  it('a line of more objects and arrays than MAX_LINE_CONTAINERS is unreadable, counted outside strings', async () => {
    const many = '{"token_ids": [5], "x": [' + '{},'.repeat(MAX_LINE_CONTAINERS) + '{}]}';
    const arrays = '[' + '[],'.repeat(MAX_LINE_CONTAINERS) + '[]]';
    const inText = JSON.stringify({ text: '{['.repeat(MAX_LINE_CONTAINERS) + '\\"{' });  // brackets and escapes in a string
    const justUnder = '[' + '{},'.repeat(MAX_LINE_CONTAINERS - 3) + '{}]';  // the outer [ and MAX - 2 objects: MAX - 1
    const limit = { bytes: 1 << 24, why: 'x' };
    for (const size of [4096, 1 << 20]) {
      const text = [many, arrays, inText, justUnder].join('\n');
      const parts = Array.from({ length: Math.ceil(text.length / size) }, (_, i) => text.slice(i * size, (i + 1) * size));
      const got = (await collect(splitLines(chunked(parts), limit))).map((l) => unreadableLine(l) ?? l);
      expect(got[0]).toBe(`${many.length} bytes holding more than ${MAX_LINE_CONTAINERS} objects and arrays, more than a line may hold ` +
        '(each takes tens of bytes of RAM when parsed); split it into shorter lines');
      expect(got[1]).toMatch(/^\d+ bytes holding more than 65536 objects and arrays/);
      expect(got.slice(2)).toEqual([inText, justUnder]);
    }
    // without a limit (no RAM promise), read as they are
    expect(await collect(splitLines(chunked([many])))).toEqual([many]);
    expect(containersPast(Buffer.from('{"a": "[{\\"}", "b": [[1], {}]}'), 4)).toBe(false);
    expect(containersPast(Buffer.from('{"a": "[{\\"}", "b": [[1], {}]}'), 3)).toBe(true);
    expect(containersPast(Buffer.from('"\\"[[[["'), 0)).toBe(false);
  });

  it('searches each character of a file once: a 4 MB line is not searched again with each 64 KiB chunk', async () => {
    const file = path.join(tmpDir('jsonl-lines'), 'oneline.txt');
    const size = 4_000_000;
    fs.writeFileSync(file, 'x'.repeat(size) + '\nshort\n');
    // Counts the characters of long strings searched for "\n" (by indexOf or split, as a splitter
    // would search); the old splitter searched the pending line again with every chunk: 33 times
    // the file's size here.
    const { indexOf, split } = String.prototype;
    let searched = 0;
    const count = (s: { length: number }, from = 0) => (s.length > 4096 ? (searched += s.length - from) : 0);
    String.prototype.indexOf = function (this: string, what: string, from?: number) {
      if (what === '\n') count(this, from);
      return indexOf.call(this, what, from);
    };
    String.prototype.split = function (this: string, ...args: unknown[]) {
      if (args[0] === '\n' || (args[0] instanceof RegExp && args[0].source.includes('\\n'))) count(this);
      return (split as (...a: unknown[]) => string[]).apply(this, args);
    } as typeof split;
    // (and the bytes of long buffers searched for a newline: lines are split before decoding)
    const bufIndexOf = Buffer.prototype.indexOf;
    Buffer.prototype.indexOf = function (this: Buffer, what: unknown, from?: number, ...rest: unknown[]) {
      if (what === 10 || what === '\n') count(this, from);
      return (bufIndexOf as (...a: unknown[]) => number).call(this, what, from, ...rest);
    } as typeof bufIndexOf;
    let lines: string[];
    try {
      lines = await collect(fileLines(file));
    } finally {
      Object.assign(String.prototype, { indexOf, split });
      Buffer.prototype.indexOf = bufIndexOf;
    }
    expect(lines.map((l) => l.length)).toEqual([size, 5]);
    // (the count sees the search: the splitter is not searching some other way)
    expect(searched).toBeGreaterThan(size / 2);
    expect(searched).toBeLessThan(2 * size);
  });
});

/** Makes a fifo in `dir` and writes `bytes` into it from another process. */
async function fifoWith(dir: string, bytes: Buffer): Promise<{ fifo: string; written: Promise<unknown> }> {
  const fifo = path.join(dir, 'in.fifo');
  const src = path.join(dir, 'in.jsonl');
  fs.writeFileSync(src, bytes);
  await new Promise<void>((resolve, reject) => spawn('mkfifo', [fifo]).on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`mkfifo: ${c}`)))));
  const writer = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', src, fifo]);
  return { fifo, written: new Promise((resolve) => writer.on('exit', resolve)) };
}

describe('a line that is not valid UTF-8', () => {
  // Line 2 holds 0xFF 0xFE at byte 26 of the line; line 3 a real U+FFFD (EF BF BD), which is valid.
  const requests = Buffer.concat([
    Buffer.from('{"id": "a", "prompt": "café"}\n'),
    Buffer.from('{"id": "b", "prompt": "ok \xff\xfe bytes"}\r\n', 'latin1'),
    Buffer.from('{"id": "c", "prompt": "\uFFFD"}\n'),
  ]);
  const good = [{ line: 1, request: { id: 'a', prompt: 'café' } }, { line: 3, request: { id: 'c', prompt: '\uFFFD' } }];
  const bad = (file: string) => ({ line: 2, id: 'line-2', madeUpId: true, error: `${file}:2: not valid UTF-8 (byte offset 26 of the line)` });

  it('is an error item naming file and line in generate\'s requests; the other lines are read', async () => {
    const file = path.join(tmpDir('jsonl-utf8'), 'in.jsonl');
    fs.writeFileSync(file, requests);
    const out = [];
    for await (const x of readRequests(file)) out.push(x);
    expect(out).toEqual([good[0], bad(file), good[1]]);
  });

  it('is an error item from a pipe (read once), too', async () => {
    const { fifo, written } = await fifoWith(tmpDir('jsonl-utf8-fifo'), requests);
    const out = [];
    for await (const x of readRequests(await openPrompts(fifo))) out.push(x);
    expect(await written).toBe(0);
    expect(out).toEqual([good[0], bad(fifo), good[1]]);
  });

  it('fails as not JSON in a batch input (an error line for it), the other lines parse', async () => {
    const file = path.join(tmpDir('jsonl-utf8'), 'batch.jsonl');
    const body = { model: 'm', prompt: 'hi' };
    const line = (id: string, prompt: string) => JSON.stringify({ custom_id: id, method: 'POST', url: '/v1/completions', body: { ...body, prompt } });
    fs.writeFileSync(file, Buffer.concat([Buffer.from(`${line('one', 'hi')}\n`), Buffer.from(`${line('two', 'caf\xc3')}\n`, 'latin1'), Buffer.from(`${line('three', 'é')}\n`)]));
    const seen = new Set<string>();
    const parsed = (await collect((await openPrompts(file)).lines())).map((l, i) => parseBatchLine(l, i + 1, seen));
    expect(parsed[0]).toMatchObject({ line: 1, customId: 'one', body: { prompt: 'hi' } });
    expect(parsed[1]).toMatchObject({ line: 2, customId: null, error: { code: 'invalid_json', message: expect.stringMatching(/^line 2: not valid UTF-8 \(byte offset \d+ of the line\)$/) } });
    expect(parsed[2]).toMatchObject({ line: 3, customId: 'three', body: { prompt: 'é' } });
  });

  it('is skipped by the training data reader and reported by file and line, like its other bad lines', async () => {
    const file = path.join(tmpDir('jsonl-utf8'), 'train.jsonl');
    fs.writeFileSync(file, Buffer.concat([
      Buffer.from('{"text": "A first document."}\n'),
      Buffer.from('{"text":"ok \xff\xfe bytes"}\n{"prompt":"caf\xc3","completion":" x"}\n', 'latin1'),
      Buffer.from('{"prompt": "café", "completion": " x"}\n'),
    ]));
    const d = await readDataset(file, dataContextFor(tokenizerModelDir(), 64));
    expect(d.skipped).toEqual([
      { line: 2, message: `${file}:2: not valid UTF-8 (byte offset 12 of the line)` },
      { line: 3, message: `${file}:3: not valid UTF-8 (byte offset 14 of the line)` },
    ]);
    expect([...d.sequences].map((s) => s.line).sort()).toEqual([1, 4]);
  });

  it('is told from any line that decodes: every kind of bad sequence, where it starts', async () => {
    const cases: [number[], number][] = [
      [[0x61, 0x80], 1], // a continuation byte alone
      [[0x61, 0xc3], 1], // cut short by the line's end
      [[0x61, 0xc3, 0x0d], 1], // cut short by the "\r" of a CRLF
      [[0xc0, 0x80], 0], // an overlong form
      [[0xe0, 0x9f, 0xbf], 0], // an overlong three-byte form
      [[0x61, 0xed, 0xa0, 0x80], 1], // an encoded surrogate (CESU-8)
      [[0xf4, 0x90, 0x80, 0x80], 0], // past U+10FFFF
      [[0xf0, 0x9f, 0xa6, 0x61], 0], // a four-byte character missing its last byte
      [[0xe2, 0x82, 0xac, 0xff], 3], // after a valid "€"
    ];
    const lines = await collect(splitLines(chunked(cases.map(([b]) => Buffer.from([...b, 0x0a])))));
    expect(lines.map(unreadableLine)).toEqual(cases.map(([, at]) => `not valid UTF-8 (byte offset ${at} of the line)`));
    // Whatever the bytes, a line either decodes as it would strictly or is unreadable, with the
    // first bad sequence where the strict decoder finds one.
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2147483648) % n);
    const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
    for (let trial = 0; trial < 2000; trial++) {
      const b = Buffer.from(Array.from({ length: 1 + rand(8) }, () => [0x61, 0x80, 0xbf, 0xc3, 0xe0, 0xed, 0xf0, 0xf4, 0xff, 0x90, 0xa0][rand(11)]!));
      const [line] = await collect(splitLines(chunked([Buffer.from('x'), b])));
      let text: string | null = null;
      try {
        text = strict.decode(Buffer.concat([Buffer.from('x'), b]));
      } catch { /* not valid UTF-8 */ }
      if (text !== null) expect(line, b.toString('hex')).toBe(text.endsWith('\r') ? text.slice(0, -1) : text);
      else expect(unreadableLine(line!), b.toString('hex')).toBe(`not valid UTF-8 (byte offset ${1 + firstBadSequence(b)} of the line)`);
      expect(firstBadSequence(b) < 0, b.toString('hex')).toBe(text !== null);
    }
  });

  it('a character cut by the end of a 64 KiB read still decodes, after each of its bytes', async () => {
    const file = path.join(tmpDir('jsonl-utf8'), 'edge.txt');
    for (const [ch, size] of [['é', 2], ['€', 3], ['🦜', 4]] as const) {
      for (let cut = 1; cut < size; cut++) {
        const text = `${'a'.repeat(65536 - cut)}${ch}b\n${ch}\n`;
        fs.writeFileSync(file, text);
        expect(await collect(fileLines(file)), `${ch} cut after byte ${cut}`).toEqual(expected(text));
      }
    }
  });
});
