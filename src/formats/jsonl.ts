// JSONL batch files: requests in, one result line per request out. The output file is the job's
// record of finished work: results are appended (and flushed) as each batch finishes, and a rerun
// skips every id already there, so a crashed or stopped job resumes where it stopped.

import fs from 'node:fs';
import readline from 'node:readline';
import type { GenerationRequest } from '../engine/requests.js';
import { UserError } from '../util/errors.js';

export type InputLine = { line: number; request: GenerationRequest } | { line: number; id: string; error: string };

/** Parses request lines; a malformed line becomes an error item instead of stopping the job. */
export async function* readRequests(file: string): AsyncGenerator<InputLine> {
  let stream: fs.ReadStream;
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

/** Appends result lines to a JSONL file, after reading which ids it already holds. */
export class ResultWriter {
  readonly done = new Set<string>();
  private fd: number;

  constructor(readonly file: string) {
    this.recover();
    try {
      this.fd = fs.openSync(file, 'a');
    } catch (e) {
      throw new UserError(`${file}: cannot open for writing (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }

  /** Reads finished ids; a torn last line (a crash mid-write) is cut off so the file stays valid. */
  private recover(): void {
    if (!fs.existsSync(this.file)) return;
    const text = fs.readFileSync(this.file, 'utf8');
    let keep = 0;
    let pos = 0;
    while (pos < text.length) {
      const end = text.indexOf('\n', pos);
      if (end < 0) break; // no newline: torn
      const line = text.slice(pos, end);
      try {
        const v = JSON.parse(line) as { id?: unknown };
        if (typeof v.id === 'string') this.done.add(v.id);
      } catch {
        break;
      }
      pos = end + 1;
      keep = pos;
    }
    if (keep < text.length) fs.truncateSync(this.file, Buffer.byteLength(text.slice(0, keep)));
  }

  write(record: object): void {
    fs.writeSync(this.fd, JSON.stringify(record) + '\n');
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
