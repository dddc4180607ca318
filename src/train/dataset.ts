// A training (or evaluation) data file read whole into sequences before any compute: every line
// parsed and tokenized (data-line.ts), text documents packed into seqLen chunks, bad lines
// skipped and reported with the file and line. The sequences are in file order; the batcher
// shuffles them. A fingerprint of the sequences lets a resumed run check that it reads the
// same data as the run that saved the checkpoint.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { type LineLimit, fileLines, unreadableLine } from '../formats/jsonl.js';
import { formatSize } from '../tensor/tiers/size.js';
import { TextTokenizer } from '../formats/tokenizer.js';
import { readConfig } from '../models/registry.js';
import { UserError } from '../util/errors.js';
import { type LineContext, parseDataLine } from './data-line.js';
import { type Sequence, countTargets } from './sequence.js';

export interface DataCounts {
  sequences: number;
  tokens: number;
  /** Positions whose next token carries loss (what the loss is a mean over). */
  targets: number;
}

export interface SkippedLine {
  line: number;
  /** "FILE:LINE: reason" */
  message: string;
}

export interface Dataset {
  file: string;
  sequences: SequenceList;
  /** The first SKIPPED_KEPT lines skipped. */
  skipped: SkippedLine[];
  /** Every line skipped. */
  skippedLines: number;
  counts: DataCounts;
  /** sha256 of every sequence's ids and labels, in order. */
  fingerprint: string;
}

export type DataOptions = LineContext;

/** What a model directory gives the data reader: vocabulary size, tokenizer and EOS
 *  (tokenizer_config.json's eos_token, else config.json's first eos_token_id). */
export function dataContextFor(modelDir: string, seqLen: number): DataOptions {
  if (!Number.isSafeInteger(seqLen) || seqLen < 2) throw new RangeError(`seqLen must be an integer of at least 2, got ${seqLen}`);
  const { config } = readConfig(modelDir);
  const tokenizer = TextTokenizer.load(modelDir);
  return { vocabSize: config.vocabSize, eosTokenId: tokenizer?.eosTokenId ?? config.eosTokenIds[0] ?? null, tokenizer, seqLen };
}

/** RAM reading a line takes, a byte of it: its bytes, its string, its parsed values (a token id
 *  of two bytes an 8-byte number) or a text's tokens while they are encoded, and its sequence. */
const LINE_RAM_PER_BYTE = 16;

/** The longest data line a run under a RAM limit of `ram` bytes reads: a longer one is skipped
 *  without being held whole (a 16 MB line of 4,000,000 ids, skipped as longer than --seq-len after
 *  it was parsed, took a --ram 24MiB run to 197 MB). */
export function dataLineLimit(ram: number): LineLimit {
  const bytes = Math.floor(ram / LINE_RAM_PER_BYTE);
  return { bytes, why: `more than a line may be under --ram ${formatSize(ram)} (reading one takes about ${LINE_RAM_PER_BYTE} bytes of RAM a byte: at most ` +
    `${formatSize(bytes)}); split it into shorter lines, or raise --ram` };
}

/** Reads `file`; throws a UserError when it cannot be read or has no usable line. Lines past
 *  `limit` are skipped as bad lines. */
export async function readDataset(file: string, o: DataOptions, limit?: LineLimit): Promise<Dataset> {
  const sequences = new SequenceList(o.seqLen);
  const skipped: SkippedLine[] = [];
  let skippedLines = 0;
  const packer = new Packer(o.seqLen, (ids, line) => sequences.push(ids, ids, line));
  let n = 0;
  // (fileLines drops the byte-order mark some editors start UTF-8 files with)
  for await (const text of lines(file, limit)) {
    n++;
    if (text.trim() === '') continue;
    // (a line that is not valid UTF-8 is skipped as a bad line, not trained on with U+FFFD in it)
    const unreadable = unreadableLine(text);
    const item = unreadable !== null ? { kind: 'error' as const, error: unreadable } : parseDataLine(text, o);
    if (item.kind === 'error') {
      if (skippedLines++ < SKIPPED_KEPT) skipped.push({ line: n, message: `${file}:${n}: ${item.error}` });
    }
    else if (item.kind === 'document') packer.push(item.ids, n);
    else sequences.push(item.ids, item.labels, n);
  }
  packer.finish();
  if (sequences.length === 0) {
    throw new UserError(skippedLines === 0 ? `${file}: no data lines` : `${file}: no usable line; all ${skippedLines} were skipped:\n${skippedSummary(skipped, skippedLines)}`);
  }
  return { file, sequences, skipped, skippedLines, counts: countSequences(sequences), fingerprint: fingerprint(sequences) };
}

/**
 * A dataset's sequences in a few large arrays: their tokens (with the labels after the ids where
 * they differ) in pools of up to 2^18, and five numbers a sequence (pool, offset, length,
 * whether its labels differ, line) in one array grown by half; a sequence is made as it is asked
 * for, its ids and labels views of its pool. An object and one or two Int32Arrays a sequence
 * took ~580 bytes of RAM a short sequence beside its tokens, ~1000 with labels of its own (Node
 * 20), more than the 450/700 the plan counted: 400,000 lines of 4 tokens went 37 MiB past --ram.
 */
export class SequenceList {
  private readonly pools: Int32Array[] = [];
  private used = 0;
  private meta = new Int32Array(5 * 1024);
  private count = 0;
  /** Tokens of the next pool: from 4096 (or two sequences) doubling to 2^18, so that a small
   *  dataset holds little more than its tokens. */
  private poolTokens: number;
  private readonly maxPoolTokens: number;

  constructor(seqLen: number) {
    this.poolTokens = Math.max(1 << 12, 2 * seqLen);
    this.maxPoolTokens = Math.max(1 << 18, 2 * seqLen);
  }

  get length(): number {
    return this.count;
  }

  /** Adds a sequence (labels equal to ids element for element are stored once). */
  push(ids: ArrayLike<number>, labels: ArrayLike<number>, line: number): void {
    let same = labels === ids;
    if (!same) {
      same = true;
      for (let t = 0; t < ids.length && same; t++) same = labels[t] === ids[t];
    }
    const need = ids.length * (same ? 1 : 2);
    let pool = this.pools[this.pools.length - 1];
    if (!pool || this.used + need > pool.length) {
      this.pools.push((pool = new Int32Array(this.poolTokens)));
      this.poolTokens = Math.min(this.maxPoolTokens, 2 * this.poolTokens);
      this.used = 0;
    }
    pool.set(ids, this.used);
    if (!same) pool.set(labels, this.used + ids.length);
    if (5 * (this.count + 1) > this.meta.length) {
      const grown = new Int32Array(Math.ceil(this.meta.length * 1.5 / 5) * 5);
      grown.set(this.meta);
      this.meta = grown;
    }
    this.meta.set([this.pools.length - 1, this.used, ids.length, same ? 0 : 1, line], 5 * this.count++);
    this.used += need;
  }

  /** Sequence i (from the end when negative, as Array.prototype.at). */
  at(i: number): Sequence | undefined {
    if (i < 0) i += this.count;
    if (!(i >= 0 && i < this.count)) return undefined;
    const [p, at, len, own, line] = this.meta.subarray(5 * i, 5 * i + 5);
    const ids = this.pools[p!]!.subarray(at!, at! + len!);
    return { ids, labels: own ? this.pools[p!]!.subarray(at! + len!, at! + 2 * len!) : ids, line: line! };
  }

  *[Symbol.iterator](): IterableIterator<Sequence> {
    for (let i = 0; i < this.count; i++) yield this.at(i)!;
  }

  /** RAM the list holds: its arrays, whole. */
  get bytes(): number {
    return this.pools.reduce((n, p) => n + p.byteLength, this.meta.byteLength);
  }
}

/** RAM a dataset holds while it trains (a run's --ram counts it). */
export function datasetBytes(d: Dataset): number {
  return d.sequences.bytes;
}

/** Skipped lines whose messages a dataset keeps (the rest are counted): a file of 100,000 bad
 *  lines printed each, and held every message in RAM outside the plan. */
export const SKIPPED_KEPT = 100;

/** The first `max` skipped lines' messages, one per indented line, and how many more there are. */
export function skippedSummary(skipped: SkippedLine[], total = skipped.length, max = 5): string {
  const shown = skipped.slice(0, max).map((s) => `  ${s.message}`);
  if (total > max) shown.push(`  (${total - max} more)`);
  return shown.join('\n');
}

export function countSequences(sequences: Iterable<Sequence>): DataCounts {
  let n = 0;
  let tokens = 0;
  let targets = 0;
  for (const s of sequences) {
    n++;
    tokens += s.ids.length;
    targets += countTargets(s.labels);
  }
  return { sequences: n, tokens, targets };
}

/**
 * Concatenates documents (each already ending in EOS) and cuts the stream into seqLen chunks:
 * every chunk full but the last. Labels are the tokens themselves. A last chunk of a single
 * token has no target and is dropped.
 */
class Packer {
  private pending: number[] = [];
  private line = 0;

  constructor(
    private readonly seqLen: number,
    private readonly emit: (ids: number[], line: number) => void,
  ) {}

  push(ids: number[], line: number): void {
    if (this.pending.length === 0) this.line = line;
    for (const id of ids) {
      this.pending.push(id);
      if (this.pending.length === this.seqLen) {
        this.flush();
        // What follows is the rest of this document.
        this.line = line;
      }
    }
  }

  finish(): void {
    if (this.pending.length >= 2) this.flush();
    this.pending = [];
  }

  private flush(): void {
    // (labels are the ids themselves)
    this.emit(this.pending, this.line);
    this.pending = [];
  }
}

function fingerprint(sequences: Iterable<Sequence>): string {
  const h = createHash('sha256');
  const len = new Int32Array(1);
  for (const s of sequences) {
    len[0] = s.ids.length;
    h.update(new Uint8Array(len.buffer));
    h.update(new Uint8Array(s.ids.buffer, s.ids.byteOffset, s.ids.byteLength));
    h.update(new Uint8Array(s.labels.buffer, s.labels.byteOffset, s.labels.byteLength));
  }
  return h.digest('hex');
}

async function* lines(file: string, limit?: LineLimit): AsyncGenerator<string> {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
    fs.accessSync(file, fs.constants.R_OK);
  } catch (e) {
    throw new UserError(`${file}: cannot read the data file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (stat.isDirectory()) throw new UserError(`${file}: is a directory (data needs a JSONL file)`);
  yield* fileLines(file, limit);
}
