// A JSONL batch job: requests from a file, one result line per request appended to the output as
// it finishes (in input order). The output is the job's record: ids with a result are skipped on a rerun,
// ids with only an error line are tried again, so a stopped or failed job resumes where it stopped.

import { type PromptSource, openPrompts, readRequests, type ResultWriter } from '../formats/jsonl.js';
import { type GenerateOptions, type GenerateStats, emptyStats } from './generate.js';
import type { LanguageModel } from './model.js';
import type { GenerationRequest, GenerationResult, RequestError, SampleResult } from './requests.js';

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

/** RAM a job holds for its request ids: the finished ones read from its output (to skip them) and
 *  every input line's (to refuse duplicates). Measured at 125 bytes an id resident (400,000 ids
 *  of 11 characters: 50 MiB on a rerun's peak RSS; V8 heap 59–82 bytes for 11–40 characters, and
 *  the heap's slack); 160 leaves room for longer ids. */
export function jobIdBytes(finished: number, lines: number): number {
  return 160 * (finished + lines);
}

/** Runs every request of `o.prompts` not yet answered in `writer`'s file. Throws on a failure
 *  of the run itself (I/O, memory); what was written until then stays. */
export async function runJob(model: LanguageModel, writer: ResultWriter, o: JobOptions): Promise<JobSummary> {
  const summary: JobSummary = { succeeded: 0, failed: 0, skipped: 0, stats: emptyStats() };
  const source = typeof o.prompts === 'string' ? await openPrompts(o.prompts) : o.prompts;
  const seen = new Set<string>();
  // The lines read and not yet written, in input order: a request sent to the model (its line,
  // for its error) or a line refused on reading. The model answers requests in input order, so
  // each of its results is the first request here, and the refusals before it go first.
  const order: ({ line: number } | { refused: RequestError })[] = [];
  let tokens = 0;
  // Requests that are already done, malformed or duplicated never reach the model.
  async function* requests(): AsyncGenerator<GenerationRequest> {
    for await (const item of readRequests(source)) {
      const id = 'request' in item ? item.request.id : item.id;
      if (writer.done.has(id) && !seen.has(id)) {
        summary.skipped++;
        continue;
      }
      if ('error' in item) order.push({ refused: { id: item.id, error: item.error } });
      else if (seen.has(id)) order.push({ refused: { id, error: `${source.name}:${item.line}: duplicate id "${id}"` } });
      else {
        seen.add(id);
        order.push({ line: item.line });
        yield item.request;
      }
    }
  }
  const writeRefused = (all: boolean) => {
    while (order.length > 0 && 'refused' in order[0]!) write((order.shift() as { refused: RequestError }).refused);
    if (all && order.length > 0) throw new Error('internal: a request of the job got no result');
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
  for await (const r of model.generateNamed(requests(), o.params, summary.stats, 'json')) {
    writeRefused(false);
    const at = order.shift() as { line: number };
    // The model's refusals name the line as the reader's do.
    write('error' in r ? { id: r.id, error: `${source.name}:${at.line}: ${r.error}` } : r);
    writer.sync();
    progress();
  }
  writeRefused(true);
  writer.sync();
  progress();
  return summary;
}

/** A result as its JSONL line: snake_case fields, id first (a torn line is recognised by it).
 *  With n > 1 the line holds every sample, in order, under "samples". */
export function toRecord(r: GenerationResult): { id: string; prompt_tokens: number; [field: string]: unknown } {
  if (r.samples) return { id: r.id, prompt_tokens: r.promptTokens, samples: r.samples.map(sampleRecord) };
  return { id: r.id, prompt_tokens: r.promptTokens, ...sampleRecord(r) };
}

function sampleRecord(s: SampleResult): Record<string, unknown> {
  const rec: Record<string, unknown> = { token_ids: s.tokenIds };
  if (s.text !== undefined) rec.text = s.text;
  if (s.logprobs) rec.logprobs = s.logprobs;
  if (s.topLogprobs) rec.top_logprobs = s.topLogprobs;
  rec.finish_reason = s.finishReason;
  return rec;
}
