// How input files are split into lines (--prompts, batch inputs, training data): at "\n" only,
// a "\r" before it dropped, a byte order mark at the start of the file dropped, and in time
// linear in the file (a 64 MB line took 19 s when the pending line was searched again with
// every chunk).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileLines, openPrompts, readRequests, splitLines } from '../src/formats/jsonl.js';
import { parseBatchLine } from '../src/openai/batch-lines.js';
import { tmpDir } from './helpers/fixtures.js';

async function collect(lines: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const l of lines) out.push(l);
  return out;
}

async function* chunked(parts: string[]): AsyncGenerator<string> {
  yield* parts;
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

  it('is dropped from line 1 of a pipe (read whole), too', async () => {
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

  it('gives the same lines however the text is cut (seeded random cuts)', async () => {
    let seed = 12345;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2147483648) % n);
    const pieces = ['a', 'é', '🦜', ' ', '\r', '\n', '\r\n', '\n\n'];
    for (let trial = 0; trial < 200; trial++) {
      const text = (trial % 3 === 0 ? '\uFEFF' : '') + Array.from({ length: rand(300) }, () => pieces[rand(pieces.length)]).join('');
      const parts: string[] = [];
      for (let at = 0; at < text.length;) {
        const n = rand(4) === 0 ? 0 : 1 + rand(rand(2) ? 3 : 60);
        parts.push(text.slice(at, at + n));
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

  it('searches each character of a file once: a 4 MB line is not searched again with each 64 KiB chunk', async () => {
    const file = path.join(tmpDir('jsonl-lines'), 'oneline.txt');
    const size = 4_000_000;
    fs.writeFileSync(file, 'x'.repeat(size) + '\nshort\n');
    // Counts the characters of long strings searched for "\n" (by indexOf or split, as a splitter
    // would search); the old splitter searched the pending line again with every chunk: 33 times
    // the file's size here.
    const { indexOf, split } = String.prototype;
    let searched = 0;
    const count = (s: string, from = 0) => (s.length > 4096 ? (searched += s.length - from) : 0);
    String.prototype.indexOf = function (this: string, what: string, from?: number) {
      if (what === '\n') count(this, from);
      return indexOf.call(this, what, from);
    };
    String.prototype.split = function (this: string, ...args: unknown[]) {
      if (args[0] === '\n' || (args[0] instanceof RegExp && args[0].source.includes('\\n'))) count(this);
      return (split as (...a: unknown[]) => string[]).apply(this, args);
    } as typeof split;
    let lines: string[];
    try {
      lines = await collect(fileLines(file));
    } finally {
      Object.assign(String.prototype, { indexOf, split });
    }
    expect(lines.map((l) => l.length)).toEqual([size, 5]);
    // (the count sees the search: the splitter is not searching some other way)
    expect(searched).toBeGreaterThan(size / 2);
    expect(searched).toBeLessThan(2 * size);
  });
});
