// `tierlm generate`: a JSONL batch job (--prompts IN --out OUT), or one prompt printed (--prompt).
import fs from 'node:fs';
import type { Command } from 'commander';
import { loadModel } from '../engine/model.js';
import type { GenerateParams, GenerateStats } from '../engine/generate.js';
import type { GenerationRequest, GenerationResult, RequestError } from '../engine/requests.js';
import { readRequests, ResultWriter } from '../formats/jsonl.js';
import { UserError } from '../util/errors.js';
import { float, int, intList, oneOf } from './parse.js';
import { Progress } from './progress.js';
import { type PolicyFlags, type Workload, addPolicyOptions, loadOptions } from './policy-options.js';
import { readConfig } from '../models/registry.js';

interface GenerateOptions extends PolicyFlags {
  model: string;
  prompts?: string;
  out?: string;
  prompt?: string;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  batchSize?: number;
  precision: 'fp32' | 'bf16';
  logprobs?: boolean;
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  cacheDtype: 'f32' | 'f16';
  threads?: number;
}

export function addGenerateCommand(program: Command): void {
  const cmd = program
    .command('generate')
    .description('generate continuations for a JSONL file of prompts, or for one --prompt')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .option('--prompts <file>', 'input JSONL: {"id", "prompt"} or {"id", "prompt_token_ids"} or {"id", "messages"} per line')
    .option('--out <file>', 'output JSONL (results are appended; ids already there are skipped, so a rerun resumes)')
    .option('--prompt <text>', 'generate for one prompt and print the continuation')
    .option('--max-new-tokens <n>', 'tokens to generate per prompt', int('--max-new-tokens', 1), 32)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', float('--temperature', 0), 0)
    .option('--top-p <p>', 'nucleus sampling mass', float('--top-p', 0, 1), 1)
    .option('--top-k <k>', 'sample among the k most likely tokens (0 = all)', int('--top-k', 0), 0)
    .option('--seed <s>', 'random seed for sampling', int('--seed', 0), 0)
    .option('--batch-size <b>', 'sequences generated together (the policy\'s gpu batch size)', int('--batch-size', 1))
    .option('--precision <p>', 'fp32 (exact) or bf16 (faster, small drift)', oneOf('--precision', ['fp32', 'bf16'] as const), 'fp32')
    .option('--logprobs', "include each generated token's log-probability")
    .option('--stop-token-ids <ids>', 'comma-separated token ids that also end a sequence', intList('--stop-token-ids'))
    .option('--ignore-eos', 'do not stop at the end-of-sequence token')
    .option('--cache-dtype <d>', 'KV cache element type', oneOf('--cache-dtype', ['f32', 'f16'] as const), 'f32')
    .option('--threads <n>', 'compute threads (default: all cores)', int('--threads', 1));
  addPolicyOptions(cmd).action(async (o: GenerateOptions) => runGenerate(o));
}

function params(o: GenerateOptions): Partial<GenerateParams> {
  return {
    maxNewTokens: o.maxNewTokens,
    sampling: { temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed },
    stopTokenIds: o.stopTokenIds ?? [],
    stopAtEos: !o.ignoreEos,
    logprobs: o.logprobs === true,
    cacheDtype: o.cacheDtype,
  };
}

async function runGenerate(o: GenerateOptions): Promise<void> {
  if ((o.prompt === undefined) === (o.prompts === undefined)) throw new UserError('give either --prompt TEXT or --prompts FILE (with --out FILE)');
  if (o.prompts !== undefined && o.out === undefined) throw new UserError('--prompts needs --out FILE for the results');
  const scan = o.prompts !== undefined ? await scanPrompts(o.prompts) : { count: 1, longest: Math.ceil(o.prompt!.length / 3) + 2 };
  const work = { source: { model: o.model }, promptLen: Math.max(1, scan.longest), genLen: o.maxNewTokens };
  const model = await loadModel(o.model, await loadOptions(o, await fitWorkload(o.model, work), o.batchSize));
  if (o.prompt !== undefined) {
    for await (const r of model.generate([{ id: 'prompt', prompt: o.prompt }], params(o))) {
      if ('error' in r) throw new UserError(r.error);
      process.stdout.write((r.text ?? r.tokenIds.join(' ')) + '\n');
    }
    return;
  }
  await runBatchJob(model, o, scan.count);
}

async function runBatchJob(model: Awaited<ReturnType<typeof loadModel>>, o: GenerateOptions, total: number): Promise<void> {
  const writer = new ResultWriter(o.out!);
  const progress = new Progress('generate');
  const stats: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
  const seen = new Set<string>();
  const early: RequestError[] = [];
  let skipped = 0;
  let written = 0;
  let tokens = 0;
  // Requests that are already done, malformed or duplicated never reach the model.
  async function* requests(): AsyncGenerator<GenerationRequest> {
    for await (const item of readRequests(o.prompts!)) {
      const id = 'request' in item ? item.request.id : item.id;
      if (writer.done.has(id)) {
        skipped++;
        continue;
      }
      if ('error' in item) early.push({ id: item.id, error: item.error });
      else if (seen.has(id)) early.push({ id, error: `line ${item.line}: duplicate id "${id}"` });
      else {
        seen.add(id);
        yield item.request;
      }
    }
  }
  const write = (r: GenerationResult | RequestError) => {
    writer.write('error' in r ? r : toRecord(r));
    writer.done.add(r.id);
    written++;
    if (!('error' in r)) tokens += r.tokenIds.length;
  };
  try {
    for await (const r of model.generate(requests(), params(o), stats)) {
      for (const e of early.splice(0)) write(e);
      write(r);
      writer.sync();
      progress.update(written + skipped, total, tokens);
    }
    for (const e of early.splice(0)) write(e);
  } finally {
    writer.close();
    progress.end();
  }
  const secs = stats.prefillSeconds + stats.decodeSeconds;
  process.stderr.write(`${written} results written to ${o.out}${skipped ? ` (${skipped} already done)` : ''}; ` +
    `${stats.generatedTokens} tokens in ${secs.toFixed(1)} s (${secs > 0 ? (stats.generatedTokens / secs).toFixed(1) : '0'} tok/s)\n`);
}

function toRecord(r: GenerationResult): object {
  const rec: Record<string, unknown> = { id: r.id, token_ids: r.tokenIds };
  if (r.text !== undefined) rec.text = r.text;
  if (r.logprobs) rec.logprobs = r.logprobs;
  rec.finish_reason = r.finishReason;
  return rec;
}

/** One pass over the input: its request lines (for progress) and an estimate of the longest
 *  prompt in tokens (token ids counted, text at about 3 characters a token, for planning). */
async function scanPrompts(file: string): Promise<{ count: number; longest: number }> {
  let longest = 1;
  let count = 0;
  for await (const item of readRequests(file)) {
    count++;
    if (!('request' in item)) continue;
    const r = item.request;
    const n = Array.isArray(r.promptTokenIds) ? r.promptTokenIds.length
      : typeof r.prompt === 'string' ? Math.ceil(r.prompt.length / 3) + 2
        : Array.isArray(r.messages) ? Math.ceil(JSON.stringify(r.messages).length / 3) + 16 : 1;
    longest = Math.max(longest, n);
  }
  return { count, longest };
}

/** Keeps the planned prompt and generation lengths within the model's positions. */
async function fitWorkload(dir: string, work: Workload): Promise<Workload> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UserError(`model directory ${dir} does not exist`);
  const { config } = readConfig(dir);
  const max = config.maxPositions;
  const genLen = Math.min(work.genLen, max - 1);
  return { ...work, genLen, promptLen: Math.min(work.promptLen, max - genLen) };
}
