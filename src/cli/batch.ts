// `tierlm batch`: an OpenAI Batch API input file run offline. Output lines are what OpenAI's
// Batch API writes (src/openai/batch-run.ts, the same code the server's batch jobs run); a rerun
// skips every custom_id already answered in --output or --errors, so a stopped job resumes.
import type { Command } from 'commander';
import { loadModel } from '../engine/model.js';
import { JOB_IDS, idBytes, idsBytes, jobIdBytes } from '../engine/job.js';
import { openPrompts, requestLineLimit, ResultWriter } from '../formats/jsonl.js';
import { readConfig } from '../models/registry.js';
import { UserError } from '../util/errors.js';
import { servedName } from './model-name.js';
import { modelDir, outputFile } from './paths.js';
import { type PolicyFlags, addPolicyOptions, checkPlanningPaths, loadOptions } from './policy-options.js';
import { Progress } from './progress.js';
import { lockResults, sameResultsFile } from './results-lock.js';
import { serverWorkload } from './serve.js';

interface BatchFlags extends PolicyFlags {
  model: string;
  input: string;
  output: string;
  errors?: string;
  servedModelName?: string;
}

export function addBatchCommand(program: Command): void {
  const cmd = program
    .command('batch')
    .description('run an OpenAI Batch API input file (/v1/completions and /v1/chat/completions lines) offline')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .requiredOption('--input <file>', 'Batch API input JSONL: {"custom_id", "method": "POST", "url", "body"} per line')
    .requiredOption('--output <file>', 'output JSONL, as OpenAI writes it; appended to, and custom_ids already answered are skipped')
    .option('--errors <file>', 'error lines go here instead of --output (as OpenAI\'s error file)')
    .option('--served-model-name <name>', 'the name bodies give as "model" (default: the model directory\'s name)');
  addPolicyOptions(cmd).action(async (o: BatchFlags) => runBatchCommand(o));
}

async function runBatchCommand(o: BatchFlags): Promise<void> {
  // The OpenAI modules (Ajv and the schemas) load only for this command (see serve.ts).
  const { batchRecord } = await import('../openai/batch-lines.js');
  const { runBatch } = await import('../openai/batch-run.js');
  const { batchConcurrency, engineFor } = await import('../openai/complete.js');
  outputFile('--output', o.output);
  if (o.errors !== undefined) outputFile('--errors', o.errors);
  if (o.output === '-' || o.errors === '-') throw new UserError('--output and --errors must be files (a batch job resumes from them)');
  // (by what the names name: `DIR/./f`, a symbolic link or a hard link to --output is the same file,
  // which the second lock would refuse as "another run is writing it")
  if (o.errors !== undefined && sameResultsFile(o.errors, o.output)) throw new UserError('--errors must be another file than --output');
  // Both files are locked and read (a torn last line repaired) before the model loads.
  const unlockOut = lockResults('--output', o.output);
  let unlockErrors = () => {};
  let out: ResultWriter | null = null;
  let errors: ResultWriter | null = null;
  try {
    unlockErrors = o.errors !== undefined ? lockResults('--errors', o.errors) : () => {};
    out = new ResultWriter(o.output, batchRecord);
    errors = o.errors !== undefined ? new ResultWriter(o.errors, batchRecord) : null;
    modelDir('--model', o.model);
    checkPlanningPaths(o);
    const source = await openPrompts(o.input, '--input', requestLineLimit(readConfig(o.model).config.maxPositions));
    const scan = await scanBatch(source.lines(), (id) => out!.done.has(id) || errors?.done.has(id) === true);
    // The block is planned as `tierlm serve` plans it (serverWorkload), so answers are the server's.
    const done = out.done.size + (errors?.done.size ?? 0), doneBytes = idsBytes(out.done) + idsBytes(errors?.done ?? []);
    const work = serverWorkload(o.model, jobIdBytes(done + scan.lines, doneBytes + scan.idBytes), JOB_IDS);
    // (the lines left to run: a block shape given by hand that holds none of them is refused
    // before the model loads, not after)
    const model = await loadModel(o.model, { ...await loadOptions(o, work), requests: scan.pending || undefined });
    const progress = new Progress('batch');
    let counts;
    try {
      counts = await runBatch(engineFor(model, servedName(o)), {
        lines: () => source.lines(), out, errors, concurrency: batchConcurrency(model),
        onProgress: (c) => progress.update(c.completed + c.failed + c.skipped, scan.lines, c.tokens),
      });
    } finally {
      progress.end();
      await model.close();
    }
    process.stderr.write(`${o.output}: ${counts.completed} answered, ${counts.failed} failed${o.errors !== undefined ? ` (in ${o.errors})` : ''}` +
      `${counts.skipped ? `, ${counts.skipped} already answered${counts.skippedFailed ? ` (${counts.skippedFailed} of them failed)` : ''}` : ''}; ` +
      `${counts.tokens} tokens generated\n`);
    // The exit code is the file's, not this run's: a line that failed before still failed.
    if (counts.failed + counts.skippedFailed > 0) process.exitCode = 2;
  } finally {
    try {
      out?.close();
      errors?.close();
    } finally {
      unlockErrors();
      unlockOut();
    }
  }
}

/** Request lines, and those not answered yet (`answered` says which ids are): the ids the job
 *  holds, and the requests the smallest block must hold (LoadOptions.requests). */
async function scanBatch(lines: AsyncIterable<string>, answered: (id: string) => boolean): Promise<{ lines: number; pending: number; idBytes: number }> {
  const { parseBatchLine } = await import('../openai/batch-lines.js');
  const s = { lines: 0, pending: 0, idBytes: 0 };
  const seen = new Set<string>();
  let n = 0;
  for await (const text of lines) {
    n++;
    if (text.trim() === '') continue;
    s.lines++;
    const line = parseBatchLine(text, n, seen);
    // (the run holds each line's id and its custom_id, for duplicates)
    s.idBytes += idBytes(line.id) + (line.customId === null ? 0 : idBytes(line.customId));
    if (!('error' in line) && !answered(line.id)) s.pending++;
  }
  return s;
}
