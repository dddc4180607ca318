// JSONL batch files: requests in, one result line per request out. The output file is the job's
// record of finished work: results are appended (and flushed) as each batch finishes, and a rerun
// skips every id already there, so a crashed or stopped job resumes where it stopped.

import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import type { GenerationRequest } from '../engine/requests.js';
import { UserError } from '../util/errors.js';

export type InputLine = { line: number; request: GenerationRequest } | { line: number; id: string; error: string };

/** Parses request lines; a malformed line becomes an error item instead of stopping the job. */
export async function* readRequests(file: string): AsyncGenerator<InputLine> {
  let stream: fs.ReadStream;
  if (statOrNull(file)?.isDirectory()) throw new UserError(`${file}: is a directory (prompts need a JSONL file)`);
  try {
    fs.accessSync(file, fs.constants.R_OK);
    stream = fs.createReadStream(file, { encoding: 'utf8' });
  } catch (e) {
    throw new UserError(`${file}: cannot read prompts (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
  let n = 0;
  for await (const text of lines) {
    n++;
    if (text.trim() === '') continue;
    yield parseLine(text, n, file);
  }
}

function parseLine(text: string, line: number, file: string): InputLine {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { line, id: `line-${line}`, error: `${file}:${line}: not valid JSON (${(e as Error).message})` };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { line, id: `line-${line}`, error: `${file}:${line}: expected a JSON object` };
  const o = v as Record<string, unknown>;
  const id = typeof o.id === 'string' && o.id.length > 0 ? o.id : typeof o.id === 'number' ? String(o.id) : null;
  if (id === null) return { line, id: `line-${line}`, error: `${file}:${line}: missing "id" (a non-empty string)` };
  return {
    line,
    request: {
      id,
      prompt: o.prompt as string | undefined,
      promptTokenIds: o.prompt_token_ids as number[] | undefined,
      messages: o.messages as GenerationRequest['messages'],
    },
  };
}

/**
 * Appends result lines to a JSONL file, after reading what it already holds. The file is the
 * job's record of finished work, so nothing in it is ever dropped: blank lines are skipped, a
 * torn last line (a crash in the middle of a write: no trailing newline) is the only thing
 * repaired, and any other line that is not a result stops the job with the file left as it was.
 */
export class ResultWriter {
  /** Ids with a result line: a rerun skips them. */
  readonly done = new Set<string>();
  /** Ids with only error lines: a rerun tries them again (the newest line per id wins). */
  readonly failed = new Set<string>();
  private fd: number;

  constructor(readonly file: string) {
    const repair = this.recover();
    try {
      this.fd = fs.openSync(file, 'a');
      if (repair) repair(this.fd);
    } catch (e) {
      throw new UserError(`${file}: cannot open for writing (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }

  /** Reads the finished and failed ids; returns the repair of a torn last line, if one is needed. */
  private recover(): ((fd: number) => void) | null {
    const stat = statOrNull(this.file);
    if (stat?.isDirectory()) throw new UserError(`${this.file}: is a directory (the results need a file)`);
    const parent = path.dirname(path.resolve(this.file));
    if (!statOrNull(parent)?.isDirectory()) throw new UserError(`${this.file}: directory ${parent} does not exist`);
    if (!stat || stat.size === 0) return null;
    const text = fs.readFileSync(this.file, 'utf8');
    const lines = text.split('\n');
    // With a trailing newline the last element is empty; without one the last line is torn.
    const torn = lines.pop()!;
    let first = true;
    lines.forEach((line, i) => {
      if (line.trim() === '') return;
      const rec = resultRecord(line);
      if (!rec) throw this.notAResult(i + 1, first);
      first = false;
      this.note(rec);
    });
    if (torn.trim() === '') return null;
    const rec = resultRecord(torn);
    if (rec) {
      // Whole but for its newline: keep it.
      this.note(rec);
      return (fd) => fs.writeSync(fd, '\n');
    }
    // Results are written id first, so a torn one starts like this; anything else is not ours.
    if (!torn.startsWith('{"id":')) throw this.notAResult(lines.length + 1, first);
    const keep = Buffer.byteLength(text) - Buffer.byteLength(torn);
    return (fd) => {
      fs.ftruncateSync(fd, keep);
      fs.fsyncSync(fd);
    };
  }

  private notAResult(line: number, first: boolean): UserError {
    return new UserError(first
      ? `${this.file}:${line}: is not a tierlm result line; refusing to append results to this file`
      : `${this.file}:${line}: is not a result line; fix or remove it (the file was left as it was)`);
  }

  private note(rec: { id: string; ok: boolean }): void {
    if (rec.ok) {
      this.done.add(rec.id);
      this.failed.delete(rec.id);
    } else if (!this.done.has(rec.id)) {
      this.failed.add(rec.id);
    }
  }

  write(record: { id: string; error?: string }): void {
    fs.writeSync(this.fd, JSON.stringify(record) + '\n');
    this.note({ id: record.id, ok: record.error === undefined });
  }

  /** Makes what was written survive a crash of the machine, not just of the process. */
  sync(): void {
    fs.fsyncSync(this.fd);
  }

  close(): void {
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
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
  if (Array.isArray(o.token_ids)) return { id: o.id, ok: true };
  if (typeof o.error === 'string') return { id: o.id, ok: false };
  return null;
}

function statOrNull(file: string): fs.Stats | null {
  try {
    return fs.statSync(file);
  } catch {
    return null;
  }
}
