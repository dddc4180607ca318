// JSONL batch files: requests in, one result line per request out. The output file is the job's
// record of finished work: results are appended (and flushed) as each batch finishes, and a rerun
// skips every id already there, so a crashed or stopped job resumes where it stopped.
// Standard input and output (`-`), and pipes named by path, are streams: the input is read once
// into a temporary file (a job reads it twice, to plan and to run), and an output stream has
// nothing to resume, so results are only written to it, each as it comes.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TextDecoder } from 'node:util';
import type { GenerationRequest } from '../engine/requests.js';
import { MAX_TOP_LOGPROBS, RULES, type RuleName, checkValue, isTopCount } from '../util/options.js';
import { UserError } from '../util/errors.js';
import { writeFully } from '../util/write-fully.js';
import { statOrNull } from '../util/stat.js';
import { excerpt } from '../util/text.js';
import { relieve } from '../util/memory-guard.js';
import { stringifyInPieces } from './json-pieces.js';

/** A request, or a line that cannot be one: its error, under its own id, or under `line-N` where
 *  it has none the reader can use (madeUpId). */
export type InputLine = { line: number; request: GenerationRequest } | { line: number; id: string; error: string; madeUpId?: true };

/** Where prompts come from: a file read again on each pass, or a stream read once into a file. */
export interface PromptSource {
  name: string;
  lines(): AsyncIterable<string>;
}

/** The longest line a reader takes, and why (for the message): a longer one is yielded as
 *  unreadable (see unreadableLine) without its bytes ever being held whole. */
export interface LineLimit {
  bytes: number;
  why: string;
}

/** The most objects and arrays (`{` and `[` outside strings) a line read under a LineLimit may
 *  hold: a limit on bytes alone counts a byte as a token id's or a text's, but `{}` is 3 bytes
 *  that parse into an object of ~60 bytes of RAM, and a 4 MiB training line of them, under the
 *  byte limit of `--ram 64MiB`, took the run 15 MiB past its limit (79 MiB more than without it).
 *  A request or training example needs a handful (its messages, its id lists); this many cost
 *  ~4 MB at most. */
export const MAX_LINE_CONTAINERS = 65536;

/** Bytes of a request line per position of the model it runs on: a prompt's token ids or text
 *  (a CJK character escaped as \uXXXX is 6 bytes, a token one or two of them), with room. */
const LINE_BYTES_PER_POSITION = 64;

/** The longest request line a model of `maxPositions` positions can need: a longer one cannot
 *  fit it, and was parsed whole first (a 22 MB prompt took a `--ram 80MiB` run to 287 MB, a 48 MB
 *  list of token ids to 456 MB, before its "does not fit" error). */
export function requestLineLimit(maxPositions: number): LineLimit {
  const bytes = LINE_BYTES_PER_POSITION * maxPositions + (1 << 20);
  return { bytes, why: `more than a request to this model can need (${LINE_BYTES_PER_POSITION} bytes a position of its ${maxPositions}, and 1 MiB for the other fields)` };
}

/** Opens a prompts file, or standard input for `-`; refuses a missing, directory or unreadable one,
 *  naming it by `option`: the caller's flag (--prompts, --input) or API option. Lines past
 *  `limit` are read as unreadable lines. */
export async function openPrompts(file: string, option = 'prompts', limit?: LineLimit): Promise<PromptSource> {
  if (file === '-') return bufferedSource('standard input', process.stdin, limit);
  // (named as the caller's flag or option, as --model and --policy are: "nofile.jsonl: cannot read
  // prompts (ENOENT)" named neither `tierlm batch --input` nor what was wrong)
  const stat = statOrNull(file);
  if (!stat) throw new UserError(`${option} ${file}: does not exist`);
  if (stat.isDirectory()) throw new UserError(`${option} ${file}: is a directory, not a JSONL file`);
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch (e) {
    throw new UserError(`${option} ${file}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (!stat.isFile()) return bufferedSource(file, fs.createReadStream(file), limit);
  return { name: file, lines: () => fileLines(file, limit) };
}

/** The lines of a text file, streamed: split at "\n" (a "\r" before it dropped) and nowhere else.
 *  (readline also ends a line at a lone "\r", which JSON allows as whitespace inside one: a
 *  valid request became two invalid ones.) A last line without "\n" is yielded too, a byte order
 *  mark at the start of the file is dropped, and a line that is not valid UTF-8 is yielded as
 *  unreadable (see unreadableLine). */
export async function* fileLines(file: string, limit?: LineLimit): AsyncGenerator<string> {
  yield* splitLines(fs.createReadStream(file) as AsyncIterable<Buffer>, limit);
}

/** Starts the line yielded in place of one that is not valid UTF-8, before the reason. A lone
 *  surrogate: strictly decoded text never holds one, and JSON.parse refuses it, so a reader that
 *  does not ask unreadableLine still fails the line, as one that is not JSON. */
const UNREADABLE = '\uDC00';

/** Why a line from fileLines or openPrompts could not be read ("not valid UTF-8 (...)"), or null
 *  for a line that was read. (Decoding replaced bad bytes with U+FFFD: a request or training line
 *  with broken text was run or trained on without a word.) */
export function unreadableLine(text: string): string | null {
  return text.startsWith(UNREADABLE) ? text.slice(UNREADABLE.length) : null;
}

/** The lines of a byte stream, as fileLines gives them. Bytes are split at 0x0A, which is never
 *  part of a multi-byte character, so a character cut by a chunk's end is whole in its line; each
 *  line is decoded once, when it ends. Each chunk is searched for 0x0A once, and a line's pieces
 *  are joined once: searching the pending line again with every 64 KiB chunk made a 64 MB line
 *  take 19 s. */
export async function* splitLines(chunks: AsyncIterable<Buffer> | Iterable<Buffer>, limit?: LineLimit): AsyncGenerator<string> {
  // (ignoreBOM: a BOM is dropped from the file's first line only, below, not from every line)
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  let pending: Buffer[] = [];
  // The line's bytes so far; once past the limit, they are dropped as they come (pending empty).
  let pendingBytes = 0;
  let dropping = false;
  const maxBytes = limit?.bytes ?? Infinity;
  const tooLong = (bytes: number) => `${UNREADABLE}${bytes} bytes, ${limit!.why}`;
  const tooDeep = (bytes: number) => `${UNREADABLE}${bytes} bytes holding more than ${MAX_LINE_CONTAINERS} objects and arrays, ` +
    'more than a line may hold (each takes tens of bytes of RAM when parsed); split it into shorter lines';
  let first = true;
  const line = (bytes: Buffer) => {
    let text = decodeLine(decoder, bytes);
    if (first) {
      first = false;
      // (Windows editors save UTF-8 with a BOM; JSON.parse refused line 1 for it)
      if (text.startsWith('\uFEFF')) text = text.slice(1);
    }
    return text.endsWith('\r') ? text.slice(0, -1) : text;
  };
  // A line within the byte limit, unless it holds too many objects and arrays.
  const read = (bytes: Buffer) => (limit && containersPast(bytes, MAX_LINE_CONTAINERS) ? tooDeep(bytes.length) : line(bytes));
  for await (const chunk of chunks) {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl);
      const bytes = pendingBytes + piece.length;
      relieve(bytes);
      if (dropping || bytes > maxBytes) yield tooLong(bytes);
      else yield read(pending.length > 0 ? Buffer.concat([...pending, piece]) : piece);
      pending = [];
      pendingBytes = 0;
      dropping = false;
      start = nl + 1;
    }
    if (start < chunk.length) {
      pendingBytes += chunk.length - start;
      if (pendingBytes > maxBytes) {
        dropping = true;
        pending = [];
      } else pending.push(chunk.subarray(start));
    }
  }
  if (dropping) yield tooLong(pendingBytes);
  else if (pending.length > 0) yield read(Buffer.concat(pending));
}

/** Whether the JSON text `b` opens more than `most` objects and arrays (`{` and `[` outside
 *  strings; a backslash in a string escapes the next byte). Counted on the bytes, before the line
 *  is decoded or parsed. */
export function containersPast(b: Uint8Array, most: number): boolean {
  if (b.length <= most) return false;  // (each takes a byte at least: most lines are not scanned)
  let n = 0;
  let inString = false;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if ((c === 0x7b || c === 0x5b) && ++n > most) return true;
  }
  return false;
}

/** A line's text, or the unreadable mark with where its first bad byte is. */
function decodeLine(decoder: TextDecoder, bytes: Buffer): string {
  try {
    return decoder.decode(bytes);
  } catch {
    return `${UNREADABLE}not valid UTF-8 (byte offset ${firstBadSequence(bytes)} of the line)`;
  }
}

/** Where the first byte sequence of `b` that is not well-formed UTF-8 starts (the Unicode
 *  standard's table 3-7, as the strict decoder checks), or -1 if there is none. */
export function firstBadSequence(b: Uint8Array): number {
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    const n = c < 0x80 ? 0 : c < 0xc2 ? -1 : c < 0xe0 ? 1 : c < 0xf0 ? 2 : c < 0xf5 ? 3 : -1;
    if (n < 0) return i;
    // The second byte's range is narrower after E0 and F0 (no overlong forms), ED (no
    // surrogates) and F4 (nothing past U+10FFFF).
    const lo = c === 0xe0 ? 0xa0 : c === 0xf0 ? 0x90 : 0x80;
    const hi = c === 0xed ? 0x9f : c === 0xf4 ? 0x8f : 0xbf;
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || d < (k === 1 ? lo : 0x80) || d > (k === 1 ? hi : 0xbf)) return i;
    }
    i += n + 1;
  }
  return -1;
}

/** Calls `each` with every line of `file` that ends in a newline (decoded, without it) and its
 *  number, reading a megabyte at a time, so that no file is ever whole in memory (a rerun's 210 MiB
 *  results file peaked at 479 MiB under --ram 100MiB). Returns what follows the last newline, the
 *  byte offset where that begins, and the number of lines passed to `each`. */
export function eachLineSync(file: string, each: (line: string, n: number) => void): { rest: string; restStart: number; lines: number } {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let pending: Buffer[] = [];
    let at = 0, restStart = 0, lines = 0;
    for (let got; (got = fs.readSync(fd, buf, 0, buf.length, at)) > 0; at += got) {
      let start = 0;
      for (let nl = buf.indexOf(10, 0); nl >= 0 && nl < got; nl = buf.indexOf(10, start)) {
        const piece = buf.subarray(start, nl);
        relieve(piece.length + pending.reduce((n, b) => n + b.length, 0));
        each((pending.length > 0 ? Buffer.concat([...pending, piece]) : piece).toString('utf8'), ++lines);
        pending = [];
        start = nl + 1;
        restStart = at + start;
      }
      if (start < got) pending.push(Buffer.from(buf.subarray(start, got)));
    }
    return { rest: Buffer.concat(pending).toString('utf8'), restStart, lines };
  } finally {
    fs.closeSync(fd);
  }
}

/** A stream (standard input, a pipe) spooled to a temporary file, unlinked at once, whose lines
 *  are then read as a file's, on each pass: held in memory it took 359 MB of a `--ram 120MiB` run
 *  for a 63 MB input (the chunks, their copy joined, and every line's string), where the same
 *  file given by name peaked at 151 MB. */
async function bufferedSource(name: string, input: NodeJS.ReadableStream, limit?: LineLimit): Promise<PromptSource> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tierlm-input-'));
  const fd = fs.openSync(path.join(dir, 'input.jsonl'), 'w+');
  // (unlinked while open: nothing is left behind, whatever ends the run)
  fs.rmSync(dir, { recursive: true, force: true });
  try {
    let at = 0;
    for await (const chunk of input) {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      writeFully(fd, bytes, `${name} (spooled to ${os.tmpdir()})`, at);
      at += bytes.length;
    }
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  // (split and decoded as fileLines does it: a byte order mark dropped, a bad line unreadable;
  // each pass reads from the start, by position, with the file kept open)
  return { name, lines: () => splitLines(fs.createReadStream('', { fd, start: 0, autoClose: false }) as AsyncIterable<Buffer>, limit) };
}

/** Parses request lines; a malformed line becomes an error item instead of stopping the job. */
export async function* readRequests(source: PromptSource | string): AsyncGenerator<InputLine> {
  const src = typeof source === 'string' ? await openPrompts(source) : source;
  let n = 0;
  for await (const text of src.lines()) {
    n++;
    if (text.trim() === '') continue;
    yield parseLine(text, n, src.name);
  }
}

/** A request line's sampling fields (snake_case, as OpenAI's and vLLM's requests name them). */
const SAMPLING_FIELDS = (['temperature', 'topK', 'topP', 'minP', 'seed', 'repetitionPenalty', 'presencePenalty', 'frequencyPenalty'] as const)
  .map((k) => [k, RULES[k].json] as const);
/** A line's own limits, as the API's request fields (stop, stopTokenIds, logprobs, topLogprobs,
 *  promptLogprobs). */
const LIMIT_FIELDS = ['max_new_tokens', 'stop', 'stop_token_ids', 'logprobs', 'top_logprobs', 'prompt_logprobs'];
const LINE_KEYS = ['id', 'prompt', 'prompt_token_ids', 'messages', 'n', ...SAMPLING_FIELDS.map(([, j]) => j), ...LIMIT_FIELDS];

/** Moves a line's limit fields into the request; what is wrong with one, naming it, or null. */
function lineLimits(o: Record<string, unknown>, request: GenerationRequest): string | null {
  if (o.max_new_tokens !== undefined) {
    const bad = checkValue('maxNewTokens', o.max_new_tokens, 'json');
    if (bad) return bad;
    request.maxNewTokens = o.max_new_tokens as number;
  }
  if (o.stop !== undefined) {
    const stop = typeof o.stop === 'string' ? [o.stop] : o.stop;
    if (!Array.isArray(stop) || stop.length > 4 || !stop.every((x) => typeof x === 'string' && x.length > 0)) {
      return `stop must be a non-empty string or an array of at most 4 of them, got ${excerpt(o.stop)}`;
    }
    request.stop = stop as string[];
  }
  if (o.stop_token_ids !== undefined) {
    const ids = o.stop_token_ids;
    if (!Array.isArray(ids) || !ids.every((t) => Number.isSafeInteger(t) && (t as number) >= 0)) {
      return `stop_token_ids must be an array of non-negative integers, got ${excerpt(ids)}`;
    }
    request.stopTokenIds = ids as number[];
  }
  if (o.logprobs !== undefined) {
    if (typeof o.logprobs !== 'boolean') return `logprobs must be true or false, got ${excerpt(o.logprobs)}`;
    request.logprobs = o.logprobs;
  }
  if (o.top_logprobs !== undefined) {
    const k = o.top_logprobs;
    if (!isTopCount(k)) return `top_logprobs must be an integer in [0, ${MAX_TOP_LOGPROBS}], got ${excerpt(k)}`;
    request.topLogprobs = k;
  }
  if (o.prompt_logprobs !== undefined) {
    const k = o.prompt_logprobs;
    if (!isTopCount(k)) return `prompt_logprobs must be an integer in [0, ${MAX_TOP_LOGPROBS}], got ${excerpt(k)}`;
    request.promptLogprobs = k;
  }
  return null;
}

function parseLine(text: string, line: number, file: string): InputLine {
  const unreadable = unreadableLine(text);
  if (unreadable !== null) return { line, id: `line-${line}`, madeUpId: true, error: `${file}:${line}: ${unreadable}` };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { line, id: `line-${line}`, madeUpId: true, error: `${file}:${line}: not valid JSON (${(e as Error).message})` };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { line, id: `line-${line}`, madeUpId: true, error: `${file}:${line}: expected a JSON object` };
  const o = v as Record<string, unknown>;
  // (a number only where it is exactly the integer written: 12345678901234567891 reads as
  // 12345678901234567000, and two such ids were one)
  if (typeof o.id === 'number' && !Number.isSafeInteger(o.id)) {
    return { line, id: `line-${line}`, madeUpId: true, error: `${file}:${line}: "id" ${String(o.id)} is not an integer JSON numbers hold exactly (|id| < 2^53): send it as a string` };
  }
  const id = typeof o.id === 'string' && o.id.length > 0 ? o.id : typeof o.id === 'number' ? String(o.id) : null;
  if (id === null) return { line, id: `line-${line}`, madeUpId: true, error: `${file}:${line}: missing "id" (a non-empty string)` };
  const fail = (error: string): InputLine => ({ line, id, error: `${file}:${line}: ${error}` });
  const unknown = Object.keys(o).filter((k) => !LINE_KEYS.includes(k));
  if (unknown.length > 0) return fail(`unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => excerpt(k)).join(', ')} (known: ${LINE_KEYS.join(', ')})`);
  const request: GenerationRequest = {
    id,
    prompt: o.prompt as string | undefined,
    promptTokenIds: o.prompt_token_ids as number[] | undefined,
    messages: o.messages as GenerationRequest['messages'],
  };
  const sampling: Record<string, number> = {};
  for (const [key, json] of [['n', 'n'] as const, ...SAMPLING_FIELDS]) {
    if (o[json] === undefined) continue;
    const bad = checkValue(key as RuleName, o[json], 'json');
    if (bad) return fail(bad);
    if (key === 'n') request.n = o[json] as number;
    else sampling[key] = o[json] as number;
  }
  if (Object.keys(sampling).length > 0) request.sampling = sampling;
  const bad = lineLimits(o, request);
  if (bad) return fail(bad);
  return { line, request };
}

/** What a results file's line is: its id, whether it counts as done, whether it is a failure. */
export interface RecordKind {
  id: string;
  ok: boolean;
  failed?: boolean;
}

/**
 * Appends result lines to a JSONL file, after reading what it already holds. The file is the
 * job's record of finished work, so nothing in it is ever dropped: blank lines are skipped, a
 * torn last line (a crash in the middle of a write: no trailing newline) is the only thing
 * repaired, and any other line that is not a result stops the job with the file left as it was.
 */
export class ResultWriter {
  /** Ids with a result line: a rerun skips them (ids with only error lines are tried again). */
  readonly done = new Set<string>();
  /** Ids of `done` whose line, read from the file, answers with a failure (a Batch API error
   *  line is final: a rerun skips it, and still counts it as failed). */
  readonly failedBefore = new Set<string>();
  /** Open from the first write on (-1 before): a run refused before any result creates no file. */
  private fd = -1;
  private readonly repair: ((fd: number) => void) | null = null;
  /** Standard output, a pipe or a device: written to, never read back or synced. */
  readonly stream: boolean;

  /** `recognize` tells a line of this file's kind (its id, whether it is a result, and whether
   *  that result is a failure) from anything else; by default, generate's result and error lines. */
  constructor(readonly file: string, private readonly recognize: (line: string) => RecordKind | null = resultRecord) {
    const stat = file === '-' ? null : statOrNull(file);
    this.stream = file === '-' || (stat !== null && !stat.isFile() && !stat.isDirectory());
    if (file === '-') {
      this.fd = 1;
      return;
    }
    this.repair = this.stream ? null : this.recover();
    // Checked now, before the work, without creating the file.
    this.forWriting(() => fs.accessSync(stat ? file : path.dirname(path.resolve(file)), fs.constants.W_OK));
  }

  private open(): number {
    if (this.fd < 0) {
      this.forWriting(() => {
        this.fd = fs.openSync(this.file, 'a');
        this.repair?.(this.fd);
      });
    }
    return this.fd;
  }

  private forWriting(f: () => void): void {
    try {
      f();
    } catch (e) {
      throw new UserError(`${this.file}: cannot open for writing (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }

  /** Reads the finished and failed ids; returns the repair of a torn last line, if one is needed. */
  private recover(): ((fd: number) => void) | null {
    const stat = statOrNull(this.file);
    if (stat?.isDirectory()) throw new UserError(`${this.file}: is a directory (the results need a file)`);
    const parent = path.dirname(path.resolve(this.file));
    if (!statOrNull(parent)?.isDirectory()) throw new UserError(`${this.file}: directory ${parent} does not exist`);
    if (!stat || stat.size === 0) return null;
    let first = true;
    // With a trailing newline nothing follows the last one; without one the last line is torn.
    const { rest: torn, restStart, lines } = eachLineSync(this.file, (line, n) => {
      if (line.trim() === '') return;
      const rec = this.recognize(line);
      if (!rec) throw this.notAResult(n, first);
      first = false;
      this.note(rec);
    });
    if (torn.trim() === '') return null;
    const rec = this.recognize(torn);
    if (rec) {
      // Whole but for its newline: keep it.
      this.note(rec);
      return (fd) => fs.writeSync(fd, '\n');
    }
    // Results are written id first, so a torn one starts like this (or is a start of it: a write
    // cut after a byte or two); anything else, and any whole JSON value (an input line of the
    // same shape: the file may be the user's prompts), is not ours to cut.
    const prefix = '{"id":';
    if (!(torn.startsWith(prefix) || prefix.startsWith(torn)) || parses(torn)) throw this.notAResult(lines + 1, first);
    return (fd) => {
      fs.ftruncateSync(fd, restStart);
      fs.fsyncSync(fd);
    };
  }

  private notAResult(line: number, first: boolean): UserError {
    return new UserError(first
      ? `${this.file}:${line}: is not a tierlm result line; refusing to append results to this file`
      : `${this.file}:${line}: is not a result line; fix or remove it (the file was left as it was)`);
  }

  private note(rec: RecordKind): void {
    if (rec.ok) this.done.add(rec.id);
    if (rec.failed) this.failedBefore.add(rec.id);
  }

  /** Appends a line; `ok` says whether it counts as done (by default: it is not an error line). */
  write(record: { id: string; error?: unknown }, ok = record.error === undefined): void {
    relieve();
    // In pieces (a line may be tens of MB), each written as the next is made; the last one with
    // the newline, so a line of one piece is one write, as before.
    const fd = this.open();
    const name = this.file === '-' ? 'standard output' : this.file;
    let pending = '';
    stringifyInPieces(record, (piece) => {
      if (pending) {
        writeFully(fd, pending, name);
        // the pieces written are garbage, as are the objects their text was made from
        relieve();
      }
      pending = piece;
    });
    writeFully(fd, pending + '\n', name);
    this.note({ id: record.id, ok });
  }

  /** Makes what was written survive a crash of the machine, not just of the process. */
  sync(): void {
    if (!this.stream && this.fd >= 0) fs.fsyncSync(this.fd);
  }

  close(): void {
    this.sync();
    if (this.fd >= 0 && this.fd !== 1) fs.closeSync(this.fd);
  }
}

/** A result line's id and whether it is a result (true) or an error (false); null if it is neither. */
function resultRecord(line: string): { id: string; ok: boolean } | null {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.id !== 'string') return null;
  if (Array.isArray(o.token_ids) || Array.isArray(o.samples)) return { id: o.id, ok: true };
  if (typeof o.error === 'string') return { id: o.id, ok: false };
  return null;
}

function parses(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}
