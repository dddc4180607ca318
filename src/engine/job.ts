// A JSONL batch job: requests from a file, one result line per request appended to the output as
// soon as it finishes (in the order they finish: a long request holds back no other's result).
// The output is the job's record: ids with a result are skipped on a rerun, ids with only an
// error line are tried again, so a stopped or failed job resumes where it stopped.

import { type PromptSource, openPrompts, readRequests, requestLineLimit, type ResultWriter } from '../formats/jsonl.js';
import { type GenerateOptions, type GenerateStats, emptyStats } from './generate.js';
import type { LanguageModel } from './model.js';
import type { GenerationRequest, GenerationResult, RequestError, SampleResult } from './requests.js';
import { compactTop, topAt } from './sequence.js';

export interface JobSummary {
  /** Results written by this run. */
  succeeded: number;
  /** Error lines written by this run (bad lines, duplicates, requests that could not run). */
  failed: number;
  /** Requests skipped because the output already had their result. */
  skipped: number;
  stats: GenerateStats;
}

export interface JobOptions {
  /** A file, or a source already opened (standard input is read once, so it is opened once). */
  prompts: string | PromptSource;
  params: GenerateOptions;
  /** Called after each result line with the requests done so far (skipped included) and tokens generated. */
  onProgress?: (done: number, tokens: number) => void;
}

/** What jobIdBytes is, as a refusal of the limits names it. */
export const JOB_IDS = "the job's request ids";

/** RAM a job holds for `ids` request ids of `chars` bytes of text in all (idBytes): the finished
 *  ones read from its output (to skip them) and every input line's (to refuse duplicates).
 *  Measured at 125 bytes an 11-character id resident (400,000 of them: 50 MiB on a rerun's peak
 *  RSS; V8 heap 59–82 bytes for 11–40 characters, and the heap's slack): 120 an id; and twice its
 *  text, as Node 24 holds it (60,000 ids of 1 KB answered and read again: 215 MB peak on Node 20,
 *  401 MB on Node 24, 327 with its heap capped at 200 MB). (A flat 160 an id let 100,000 ids of
 *  1 KB, a URL each, take a --ram 64MiB rerun to 307 MiB.) */
export function jobIdBytes(ids: number, chars: number): number {
  return 120 * ids + 2 * chars;
}

/** Bytes of an id's text as V8 holds it: one a character, two where one is past U+00FF. */
export function idBytes(id: string): number {
  for (let i = 0; i < id.length; i++) if (id.charCodeAt(i) > 0xff) return 2 * id.length;
  return id.length;
}

/** Σ idBytes of the ids. */
export function idsBytes(ids: Iterable<string>): number {
  let n = 0;
  for (const id of ids) n += idBytes(id);
  return n;
}

/** Error lines held back to keep their place after the requests before them (see runJob). Past
 *  this many the oldest are written at once: memory stays bounded behind a long request. */
export const HELD_REFUSALS = 1024;

/** Runs every request of `o.prompts` not yet answered in `writer`'s file. Throws on a failure
 *  of the run itself (I/O, memory); what was written until then stays. */
export async function runJob(model: LanguageModel, writer: ResultWriter, o: JobOptions): Promise<JobSummary> {
  const summary: JobSummary = { succeeded: 0, failed: 0, skipped: 0, stats: emptyStats() };
  const source = typeof o.prompts === 'string' ? await openPrompts(o.prompts, 'prompts', requestLineLimit(model.config.maxPositions)) : o.prompts;
  const seen = new Set<string>();
  // Requests sent to the model and not yet answered, id → line, in input order (ids are unique:
  // duplicates never reach the model). Results are written as they come, in the order the
  // requests finish; an error line (a line refused on reading, or a request the model refused)
  // waits until every request before it has been written, so that a job whose requests finish
  // in input order writes its lines in input order. `held` is those error lines, by line.
  const running = new Map<string, number>();
  const held: { line: number; refused: RequestError; madeUp: boolean }[] = [];
  let tokens = 0;
  // Requests that are already done, malformed or duplicated never reach the model.
  async function* requests(): AsyncGenerator<GenerationRequest> {
    for await (const item of readRequests(source)) {
      const id = 'request' in item ? item.request.id : item.id;
      if (writer.done.has(id) && !seen.has(id)) {
        // (taken, so that a later line with the id is refused as a duplicate again: a run killed
        // after writing a result, while a duplicate's error line still waited, had none of it)
        seen.add(id);
        summary.skipped++;
        continue;
      }
      if ('error' in item && (item.madeUpId || !seen.has(id))) {
        // A malformed line's own id is taken too, so that a later line with it is refused as a
        // duplicate: it would answer for this line, whose fix a rerun would then skip. (An id
        // the reader made up, line-N, belongs to no line of the input; a real id of that form,
        // a line's own number, is one of the input's: it was let through twice.)
        if (!item.madeUpId) seen.add(id);
        hold(item.line, { id, error: item.error }, item.madeUpId === true);
      } else if (seen.has(id)) {
        // Under the line's own name, not the id (a malformed line's too): as the newest line for
        // the id, the error hid the first line's result, so the id read as failed and was
        // computed again (or its error written again) on every rerun.
        hold(item.line, { id: `line-${item.line}`, error: `${source.name}:${item.line}: duplicate id "${id}"` }, true);
      }
      else if ('request' in item) {
        seen.add(id);
        running.set(id, item.line);
        yield item.request;
      }
    }
  }
  const hold = (line: number, refused: RequestError, madeUp = false) => {
    let at = held.length;
    while (at > 0 && held[at - 1]!.line > line) at--;
    held.splice(at, 0, { line, refused, madeUp });
    writeHeld();
  };
  // Writes the held error lines that no running request comes before (all of them at the end).
  const writeHeld = (all = false) => {
    const first = all ? Infinity : running.values().next().value ?? Infinity;
    while (held.length > 0 && (held[0]!.line < first || held.length > HELD_REFUSALS)) {
      const { line, refused, madeUp } = held.shift()!;
      write(madeUp ? { ...refused, id: freeLineName(line) } : refused);
    }
  };
  // A line with no id of its own (unreadable, or repeating an id) is reported as line-N; where the
  // input has a request with that very id (read so far, or answered by an earlier run), as
  // line-N-2, line-N-3, ...: the error line must never be the newest line of a real request's id,
  // which would then read as failed. A request with the id further on writes its result after.
  const freeLineName = (line: number) => {
    let name = `line-${line}`;
    for (let k = 2; seen.has(name) || writer.done.has(name); k++) name = `line-${line}-${k}`;
    return name;
  };
  const write = (r: GenerationResult | RequestError) => {
    if ('error' in r) {
      writer.write(r);
      summary.failed++;
    } else {
      writer.write(toRecord(r));
      summary.succeeded++;
      tokens += (r.samples ?? [r]).reduce((n, x) => n + x.tokenIds.length, 0);
    }
  };
  const progress = () => o.onProgress?.(summary.succeeded + summary.failed + summary.skipped, tokens);
  for await (const r of model.generateNamed(requests(), { ...o.params, order: 'finish' }, summary.stats, 'json')) {
    const line = running.get(r.id);
    if (line === undefined) throw new Error(`internal: the model answered request "${r.id}", which the job has not sent or has written`);
    running.delete(r.id);
    // The model's refusals name the line as the reader's do.
    if ('error' in r) hold(line, { id: r.id, error: `${source.name}:${line}: ${r.error}` });
    else {
      write(r);
      writeHeld();
    }
    writer.sync();
    progress();
  }
  if (running.size > 0) throw new Error(`internal: ${running.size} request(s) of the job got no result (the first: "${running.keys().next().value}")`);
  writeHeld(true);
  writer.sync();
  progress();
  return summary;
}

/** A result as its JSONL line: snake_case fields, id first (a torn line is recognised by it).
 *  With n > 1 the line holds every sample, in order, under "samples". */
export function toRecord(r: GenerationResult): { id: string; prompt_tokens: number; [field: string]: unknown } {
  const prompt: Record<string, unknown> = {};
  if (r.promptLogprobs) prompt.prompt_logprobs = r.promptLogprobs;
  if (r.promptTopLogprobs) prompt.prompt_top_logprobs = r.promptTopLogprobs;
  if (r.samples) return { id: r.id, prompt_tokens: r.promptTokens, ...prompt, samples: r.samples.map(sampleRecord) };
  return { id: r.id, prompt_tokens: r.promptTokens, ...prompt, ...sampleRecord(r) };
}

function sampleRecord(s: SampleResult): Record<string, unknown> {
  const rec: Record<string, unknown> = { token_ids: s.tokenIds };
  if (s.text !== undefined) rec.text = s.text;
  if (s.logprobs) rec.logprobs = s.logprobs;
  // A token's alternatives become objects only as its text is written (JSON.stringify and the
  // result writer's pieces both call toJSON), so a line of thousands of them is never all objects.
  const top = compactTop(s);
  if (top) rec.top_logprobs = Array.from({ length: top.count }, (_, i) => ({ toJSON: () => topAt(top, i) }));
  else if (s.topLogprobs) rec.top_logprobs = s.topLogprobs;
  rec.finish_reason = s.finishReason;
  return rec;
}
