// `tierlm generate`: a JSONL batch job (--prompts IN --out OUT), or one prompt streamed (--prompt).
// `-` is standard input or output; a reader that closes the output early ends the job quietly.
import type { Command } from 'commander';
import { LanguageModel, type LongestRequest } from '../engine/model.js';
import { JOB_IDS, type JobSummary, idBytes, idsBytes, jobIdBytes, runJob, toRecord } from '../engine/job.js';
import type { GenerateOptions } from '../engine/generate.js';
import type { GenerationRequest } from '../engine/requests.js';
import { type PromptSource, openPrompts, readRequests, requestLineLimit, ResultWriter } from '../formats/jsonl.js';
import { TextTokenizer } from '../formats/tokenizer.js';
import { readConfig } from '../models/registry.js';
import { writeFully } from '../util/write-fully.js';
import { UserError } from '../util/errors.js';
import { cacheDtypeOf } from '../policy/policy.js';
import { intList, rule } from './parse.js';
import { Progress } from './progress.js';
import { type PolicyFlags, addPolicyOptions, checkPlanningPaths, fitWorkload, loadOptions } from './policy-options.js';
import { modelDir, outputFile } from './paths.js';
import { lockResults } from './results-lock.js';

interface GenerateFlags extends PolicyFlags {
  model: string;
  prompts?: string;
  out?: string;
  prompt?: string;
  chat?: boolean;
  system?: string;
  maxNewTokens: number;
  n: number;
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  seed: number;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  batchSize?: number;
  logprobs?: boolean;
  stopTokenIds?: number[];
  ignoreEos?: boolean;
}

export function addGenerateCommand(program: Command): void {
  const cmd = program
    .command('generate')
    .description('generate continuations for a JSONL file of prompts, or for one --prompt (streamed)')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .option('--prompts <file>', 'input JSONL ("-" = standard input): {"id", "prompt" | "prompt_token_ids" | "messages"} per line, with optional sampling fields')
    .option('--out <file>', 'output JSONL ("-" = standard output); a file is appended to, and ids already there are skipped, so a rerun resumes')
    .option('--prompt <text>', 'generate for one prompt and stream the continuation to standard output')
    .option('--chat', 'with --prompt: send it as a user message through the model\'s chat template')
    .option('--system <text>', 'with --chat: a system message before the prompt')
    .option('--max-new-tokens <n>', 'tokens to generate per prompt', rule('maxNewTokens'), 32)
    .option('--n <n>', 'samples per prompt, each with its own seeded generator', rule('n'), 1)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', rule('temperature'), 0)
    .option('--top-p <p>', 'nucleus sampling mass, in (0, 1]', rule('topP'), 1)
    .option('--top-k <k>', 'sample among the k most likely tokens (0 = all)', rule('topK'), 0)
    .option('--min-p <p>', 'keep tokens at least p times as likely as the most likely one (0 = off)', rule('minP'), 0)
    .option('--seed <s>', 'random seed for sampling', rule('seed'), 0)
    .option('--repetition-penalty <r>', 'divide positive logits (multiply negative ones) of tokens in the prompt or output by r (1 = off)', rule('repetitionPenalty'), 1)
    .option('--presence-penalty <p>', 'subtract p from the logit of every token generated so far (0 = off)', rule('presencePenalty'), 0)
    .option('--frequency-penalty <f>', 'subtract f × its count from the logit of every token generated so far (0 = off)', rule('frequencyPenalty'), 0)
    .option('--batch-size <b>', 'sequences generated together (the same as --gpu-batch-size; give one of them)', rule('batchSize'))
    .option('--logprobs', "include each generated token's log-probability")
    .option('--stop-token-ids <ids>', 'comma-separated token ids that also end a sequence', intList('--stop-token-ids'))
    .option('--ignore-eos', 'do not stop at the end-of-sequence token');
  addPolicyOptions(cmd).action(async (o: GenerateFlags) => runGenerate(o));
}

function params(o: GenerateFlags): GenerateOptions {
  return {
    maxNewTokens: o.maxNewTokens,
    n: o.n,
    sampling: {
      temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP, seed: o.seed,
      repetitionPenalty: o.repetitionPenalty, presencePenalty: o.presencePenalty, frequencyPenalty: o.frequencyPenalty,
    },
    stopTokenIds: o.stopTokenIds ?? [],
    stopAtEos: !o.ignoreEos,
    logprobs: o.logprobs === true,
  };
}

/** Refuses contradictory flags and bad paths before anything loads. */
function checkFlags(o: GenerateFlags): void {
  if ((o.prompt === undefined) === (o.prompts === undefined)) throw new UserError('give either --prompt TEXT or --prompts FILE (with --out FILE)');
  if (o.prompts !== undefined && o.out === undefined) throw new UserError('--prompts needs --out FILE for the results ("-" for standard output)');
  if (o.chat && o.prompt === undefined) throw new UserError('--chat works with --prompt (in a JSONL file, give "messages")');
  if (o.system !== undefined && !o.chat) throw new UserError('--system needs --chat');
  if (o.batchSize !== undefined && o.gpuBatchSize !== undefined) {
    throw new UserError(`--batch-size ${o.batchSize} and --gpu-batch-size ${o.gpuBatchSize} set the same thing; give one of them`);
  }
  if (o.out !== undefined) outputFile('--out', o.out);
}

async function runGenerate(o: GenerateFlags): Promise<void> {
  checkFlags(o);
  if (o.batchSize !== undefined) o.gpuBatchSize = o.batchSize;
  // The output is locked and checked (and a torn last line found) first, then every other path,
  // all before the model loads.
  const unlock = o.out !== undefined ? lockResults('--out', o.out) : () => {};
  let writer: ResultWriter | null = null;
  try {
    writer = o.out !== undefined ? new ResultWriter(o.out) : null;
    modelDir('--model', o.model);
    checkPlanningPaths(o);
    const limits = scanLimits(o.model);
    const source = o.prompts !== undefined ? await openPrompts(o.prompts, '--prompts', requestLineLimit(limits.maxPositions)) : null;
    const longest = new Longest(o.maxNewTokens);
    const scan = source ? await scanPrompts(source, writer?.done ?? new Set(), limits, (r) => longest.see(r, limits.maxPositions))
      : { count: 1, pending: 1, longest: Math.ceil((o.prompt!.length + (o.system?.length ?? 0)) / 3) + (o.chat ? 16 : 2), idBytes: 0 };
    const work = { source: { model: o.model }, promptLen: Math.max(1, scan.longest), genLen: o.maxNewTokens, heldBytes: jobIdBytes((writer?.done.size ?? 0) + scan.count, idsBytes(writer?.done ?? []) + scan.idBytes), heldWhat: JOB_IDS };
    // (the requests left to run, and the longest of them: a block shape given by hand, or by a
    // policy file, that holds none of them, or not the longest, is refused before the model loads)
    const model = await LanguageModel.load(o.model, { ...await loadOptions(o, fitWorkload(o.model, work)), requests: scan.pending || undefined },
      source ? longest.request ?? undefined : { id: 'prompt', promptTokens: 1, promptAtLeast: true, newTokens: o.maxNewTokens });
    await closingAfter(model, async () => {
      if (source) await runBatchJob(model, writer!, o, source, scan.count);
      else await runOnePrompt(model, writer, o);
    });
  } finally {
    try {
      writer?.close();
    } finally {
      unlock();
    }
  }
}

/** The longest request of a job, as far as the scan knows it before it runs: the one with the
 *  most positions, its prompt and its new tokens. A token-id prompt's tokens count, a text one's as
 *  one (its tokens are not known before it is encoded, and the planner's estimate may be too many:
 *  a policy that holds the job would be refused). Its new tokens are its line's max_new_tokens, at
 *  most --max-new-tokens: a line asking for fewer was refused for the flag's (a job of short
 *  answers that the policy held), and one asking for more is an odd one, run in a block of fewer
 *  rows. A line without max_new_tokens (or generating until the context ends) takes the flag's. */
class Longest {
  request: LongestRequest | null = null;

  constructor(private readonly maxNewTokens: number) {}

  see(r: GenerationRequest, maxPositions: number): void {
    const ids = Array.isArray(r.promptTokenIds) ? r.promptTokenIds.length : 1;
    // (a prompt past the positions fails before it runs)
    if (ids >= maxPositions) return;
    const newTokens = Math.min(r.maxNewTokens ?? this.maxNewTokens, this.maxNewTokens);
    const positions = Math.min(maxPositions, ids + newTokens);
    if (this.request && !this.longer(positions, ids, maxPositions)) return;
    this.request = { id: r.id, promptTokens: ids, newTokens, promptAtLeast: !Array.isArray(r.promptTokenIds) };
  }

  /** Whether a request of `positions` holds more than the longest so far (on a tie, a longer
   *  prompt: its prefill needs more at once). */
  private longer(positions: number, ids: number, maxPositions: number): boolean {
    const { promptTokens, newTokens } = this.request!;
    const known = Math.min(maxPositions, promptTokens + newTokens);
    return positions > known || (positions === known && ids > promptTokens);
  }
}

/** Runs `body`, then closes the model; an error of the close never hides one of the body. */
async function closingAfter(model: LanguageModel, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    await model.close().catch(() => undefined);
    throw e;
  }
  await model.close();
}

/** The request of --prompt, named `id`: "prompt", or the next free "prompt-N" in a results file
 *  that has it (one line per id). Its random stream is "prompt"'s whatever the id, so a rerun
 *  into the same file with the same --seed gives the same text. */
export function onePromptRequest(o: { chat?: boolean; system?: string; prompt?: string }, id: string): GenerationRequest {
  const req: GenerationRequest = o.chat
    ? { id, messages: [...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: o.prompt! }] }
    : { id, prompt: o.prompt! };
  req.seedKey = 'prompt';
  return req;
}

/** One prompt: its text streams to standard output token by token (unless the result itself goes
 *  there with --out -); --out also gets the result line, --logprobs its log-probabilities. */
async function runOnePrompt(model: LanguageModel, writer: ResultWriter | null, o: GenerateFlags): Promise<void> {
  if (!model.tokenizer) {
    throw new UserError(`--prompt needs the model's tokenizer.json, which ${o.model} does not have: give token ids in a --prompts file ("prompt_token_ids")`);
  }
  let id = 'prompt';
  for (let k = 2; writer?.done.has(id); k++) id = `prompt-${k}`;
  const req = onePromptRequest(o, id);
  const stream = o.out !== '-' && o.n === 1 ? new TextStream() : null;
  for await (const r of model.generate([req], { ...params(o), onToken: stream ? (_id, _token, _index, text) => stream.push(text) : undefined })) {
    if ('error' in r) throw new UserError(r.error);
    if (writer) writer.write(toRecord(r));
    if (o.out === '-') continue;
    if (stream) stream.end(r.text ?? '');
    else (r.samples ?? [r]).forEach((s, i) => writeFully(1, `[${i}] ${s.text ?? s.tokenIds.join(' ')}\n`, 'standard output'));
    if (o.logprobs) {
      for (const [i, s] of (r.samples ?? [r]).entries()) {
        process.stderr.write(`logprobs${o.n > 1 ? ` [${i}]` : ''}: ${s.tokenIds.map((t, j) => `${t}:${s.logprobs![j]!.toFixed(4)}`).join(' ')}\n`);
      }
    }
  }
}

/** Writes each token's text as it arrives (the engine holds back what might begin a stop
 *  sequence or an unfinished character, and decodes after the prompt's last tokens, so the
 *  pieces add up to the result's text). */
class TextStream {
  private printed = '';

  push(text: string): void {
    writeFully(1, text, 'standard output');
    this.printed += text;
  }

  end(text: string): void {
    writeFully(1, (text.startsWith(this.printed) ? text.slice(this.printed.length) : `\n${text}`) + '\n', 'standard output');
  }
}

async function runBatchJob(model: LanguageModel, writer: ResultWriter, o: GenerateFlags, prompts: PromptSource, total: number): Promise<void> {
  const progress = new Progress('generate');
  let summary: JobSummary;
  try {
    summary = await runJob(model, writer, { prompts, params: params(o), onProgress: (done, tokens) => progress.update(done, total, tokens) });
  } finally {
    progress.end();
  }
  const { stats, succeeded, failed, skipped } = summary;
  const secs = stats.prefillSeconds + stats.decodeSeconds;
  const out = o.out === '-' ? 'standard output' : o.out;
  process.stderr.write(`${out}: ${succeeded} results, ${failed} failed${skipped ? `, ${skipped} already done` : ''}; ` +
    `${stats.generatedTokens} tokens in ${secs.toFixed(1)} s (${secs > 0 ? (stats.generatedTokens / secs).toFixed(1) : '0'} tok/s), ` +
    `${shapesRun(model)}, ${cacheDtypeOf(model.policy)} cache, ${model.policy.precision}\n`);
  // Failed requests have their error lines in the output and are tried again by a rerun.
  if (failed > 0) {
    process.stderr.write(`tierlm: ${failed} request${failed > 1 ? 's' : ''} failed (error lines in ${out}${writer.stream ? '' : '; a rerun tries them again'})\n`);
    process.exitCode = 2;
  }
}

/** The block shapes the job ran, for its summary: "gpu batch R × B batches" when one shape ran
 *  (the policy's when none did), else each with its blocks, and how many had fewer rows than
 *  their call's shape. It printed the policy's shape while every block ran one batch of fewer rows. */
export function shapesRun(model: Pick<LanguageModel, 'policy' | 'blocksRun'>): string {
  const { shapes, smaller } = model.blocksRun;
  if (shapes.length === 0) return `gpu batch ${model.policy.gpuBatchSize} × ${model.policy.numGpuBatches} batches`;
  if (shapes.length === 1 && smaller === 0) return `gpu batch ${shapes[0]!.rows} × ${shapes[0]!.batches} batches`;
  const each = [...shapes].sort((a, b) => b.rows * b.batches - a.rows * a.batches).map((x) => `${x.rows} × ${x.batches} (${x.blocks} block${x.blocks > 1 ? 's' : ''})`);
  return `gpu batch × batches ${each.join(', ')}${smaller > 0 ? `; ${smaller} of fewer rows, for requests the full block did not hold within the limits` : ''}`;
}

/** The model's positions, and the least tokens a text encodes to (for lines that cannot fit). */
export interface ScanLimits {
  maxPositions: number;
  minTokens(text: string): number;
}

/** A model's limits for scanPrompts. Its tokenizer is loaded only for a text line that might
 *  not fit (most jobs never load it here), and dropped with the scan. */
function scanLimits(dir: string): ScanLimits {
  let tokenizer: TextTokenizer | null | undefined;
  return {
    maxPositions: readConfig(dir).config.maxPositions,
    minTokens: (text) => (tokenizer === undefined ? (tokenizer = TextTokenizer.load(dir)) : tokenizer)?.minTokens(text) ?? 0,
  };
}

/** One pass over the input: its request lines (for progress) and an estimate of the longest
 *  prompt in tokens (token ids counted, text at about 3 characters a token, for planning), at
 *  most the model's positions less one. A line that cannot fit the positions is left out of the
 *  estimate: it fails before it runs, and planned for it shrank every batch of the job. `seen`
 *  is given each request left to run. */
export async function scanPrompts(source: PromptSource, done: ReadonlySet<string>, limits: ScanLimits,
  seen?: (r: GenerationRequest) => void): Promise<{ count: number; longest: number; pending: number; idBytes: number }> {
  const cap = limits.maxPositions - 1;
  let longest = 1;
  let count = 0;
  let pending = 0;
  let ids = 0;
  for await (const item of readRequests(source)) {
    count++;
    ids += idBytes('request' in item ? item.request.id : item.id);
    if (!('request' in item)) continue;
    const r = item.request;
    // (a line a rerun skips is not planned for: a long one done already shrank the batch)
    if (done.has(r.id)) continue;
    pending++;
    seen?.(r);
    longest = Math.max(longest, Math.min(cap, promptEstimate(r, cap, limits)));
  }
  return { count, longest, pending, idBytes: ids };
}

/** A request's prompt length in tokens, estimated; 0 for one that surely does not fit. */
function promptEstimate(r: GenerationRequest, cap: number, limits: ScanLimits): number {
  if (Array.isArray(r.promptTokenIds)) return r.promptTokenIds.length > cap ? 0 : r.promptTokenIds.length;
  // (a rendered conversation holds its contents, so they are at least as many tokens)
  const text = typeof r.prompt === 'string' ? r.prompt
    : Array.isArray(r.messages) ? r.messages.map((m) => (typeof m?.content === 'string' ? m.content : '')).join('') : null;
  if (text === null) return 1;
  const n = typeof r.prompt === 'string' ? Math.ceil(r.prompt.length / 3) + 2 : Math.ceil(JSON.stringify(r.messages).length / 3) + 16;
  return n > cap && limits.minTokens(text) > cap ? 0 : n;
}
