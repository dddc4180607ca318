// `tierlm generate`: a JSONL batch job (--prompts IN --out OUT), or one prompt printed (--prompt).
import fs from 'node:fs';
import type { Command } from 'commander';
import { type LanguageModel, loadModel } from '../engine/model.js';
import { type JobSummary, runJob } from '../engine/job.js';
import type { GenerateParams } from '../engine/generate.js';
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
  // The output is checked (and a torn last line found) before the model loads.
  const writer = o.out !== undefined ? new ResultWriter(o.out) : null;
  try {
    const scan = o.prompts !== undefined ? await scanPrompts(o.prompts) : { count: 1, longest: Math.ceil(o.prompt!.length / 3) + 2 };
    const work = { source: { model: o.model }, promptLen: Math.max(1, scan.longest), genLen: o.maxNewTokens };
    const model = await loadModel(o.model, await loadOptions(o, await fitWorkload(o.model, work), o.batchSize));
    await closingAfter(model, async () => {
      if (o.prompt !== undefined) {
        for await (const r of model.generate([{ id: 'prompt', prompt: o.prompt }], params(o))) {
          if ('error' in r) throw new UserError(r.error);
          process.stdout.write((r.text ?? r.tokenIds.join(' ')) + '\n');
        }
      } else {
        await runBatchJob(model, writer!, o, scan.count);
      }
    });
  } finally {
    writer?.close();
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

async function runBatchJob(model: LanguageModel, writer: ResultWriter, o: GenerateOptions, total: number): Promise<void> {
  const progress = new Progress('generate');
  let summary: JobSummary;
  try {
    summary = await runJob(model, writer, { prompts: o.prompts!, params: params(o), onProgress: (done, tokens) => progress.update(done, total, tokens) });
  } finally {
    progress.end();
  }
  const { stats, succeeded, failed, skipped } = summary;
  const secs = stats.prefillSeconds + stats.decodeSeconds;
  process.stderr.write(`${o.out}: ${succeeded} results, ${failed} failed${skipped ? `, ${skipped} already done` : ''}; ` +
    `${stats.generatedTokens} tokens in ${secs.toFixed(1)} s (${secs > 0 ? (stats.generatedTokens / secs).toFixed(1) : '0'} tok/s)\n`);
  // Failed requests have their error lines in the output and are tried again by a rerun.
  if (failed > 0) {
    process.stderr.write(`tierlm: ${failed} request${failed > 1 ? 's' : ''} failed (error lines in ${o.out}; a rerun tries them again)\n`);
    process.exitCode = 2;
  }
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
