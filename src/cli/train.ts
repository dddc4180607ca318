// `tierlm train`: fine-tunes a model on a JSONL file. Thin: the run itself is train() in
// src/train/run.ts, which the API exports; this parses flags and reports.
import path from 'node:path';
import type { Command } from 'commander';
import { UserError } from '../util/errors.js';
import { formatSize } from '../tensor/tiers/size.js';
import { SKIPPED_KEPT } from '../train/dataset.js';
import { train } from '../train/run.js';
import { TRAIN_DEFAULTS as D, type TrainRunOptions } from '../train/run-options.js';
import { decimal, int, oneOf, rule } from './parse.js';
import { diskDir } from './paths.js';
import { DISK_OMITTED, diskLimitFromFreeSpace, freeBytes, sizeOption } from './policy-options.js';
import { StepProgress } from './progress.js';
import { worldComm } from '../dist/comm.js';
import { rankEnv } from '../dist/env.js';
import { abortOnError } from './abort.js';
import { removeStale } from '../schedule/spill-files.js';
import { PIECE_ALIGN } from '../train/offload/layout.js';

export function addTrainCommand(program: Command): void {
  program
    .command('train')
    .description('fine-tune a model on a JSONL file; OUT gets the trained model, checkpoints and metrics.jsonl')
    .requiredOption('--model <dir>', 'Hugging Face model directory to start from')
    .requiredOption('--data <file>', 'training data, JSONL: {"text"} | {"prompt","completion"} | {"messages"} | {"token_ids","labels"?} per line')
    .requiredOption('--out <dir>', 'output directory: model files of the latest checkpoint, checkpoint-N/, latest, metrics.jsonl')
    .option('--precision <p>', 'fp32, or bf16 (bf16 compute, fp32 master weights and Adam state)', oneOf('--precision', ['fp32', 'bf16'] as const), D.precision)
    .option('--seq-len <n>', 'tokens per sequence: text is packed to it, longer given sequences are skipped (default: 512, or the model\'s positions if fewer)', int('--seq-len', 2))
    .option('--batch-size <n>', 'sequences per micro-batch', int('--batch-size', 1), D.batchSize)
    .option('--grad-accum <n>', 'micro-batches per optimizer step', int('--grad-accum', 1), D.gradAccum)
    .option('--max-steps <n>', 'optimizer steps to run (instead of --epochs)', int('--max-steps', 1))
    .option('--epochs <n>', 'passes over the data (default 1 unless --max-steps)', int('--epochs', 1))
    .option('--lr <x>', 'peak learning rate', rule('lr'), D.lr)
    .option('--lr-schedule <s>', 'constant, linear or cosine (each after linear warmup)', oneOf('--lr-schedule', ['constant', 'linear', 'cosine'] as const), D.lrSchedule)
    .option('--warmup-steps <n>', 'steps of linear warmup from 0', int('--warmup-steps', 0), D.warmupSteps)
    .option('--weight-decay <x>', 'decoupled (AdamW) weight decay on every parameter', rule('weightDecay'), D.weightDecay)
    .option('--max-grad-norm <x>', 'clip the global gradient norm to this (0 = off)', rule('maxGradNorm'), D.maxGradNorm)
    .option('--seed <n>', 'seed of the data order (shuffled each epoch)', int('--seed', 0), D.seed)
    .option('--save-every <n>', 'save a checkpoint every n steps (0 = only at the end)', int('--save-every', 0), D.saveEvery)
    .option('--keep-checkpoints <n>', 'checkpoints kept in OUT (the newest)', int('--keep-checkpoints', 1), D.keepCheckpoints)
    .option('--resume', 'continue the run in OUT from its latest checkpoint (from the start if it has none)')
    .option('--eval-data <file>', 'evaluation data (JSONL, same shapes): loss and perplexity')
    .option('--eval-every <n>', 'evaluate every n steps (0 = after the last step only)', int('--eval-every', 0), D.evalEvery)
    .option('--threads <n>', 'compute threads (default: all cores)', rule('threads'))
    .option('--no-checkpoint-activations', 'keep every layer\'s activations instead of recomputing them in backward (faster, more memory)')
    .option('--ram <size>', 'RAM limit, a hard limit: the model states go on RAM and disk under it (needs --disk-dir; a size needs a unit: 4GiB)', sizeOption('--ram'))
    .option('--disk-dir <dir>', 'directory of the disk tier for the offloaded states (must exist and be writable)')
    .option('--disk <size>', 'disk tier capacity, with a unit (default: the free space in --disk-dir)', sizeOption('--disk', DISK_OMITTED))
    .option('--sub-group-size <n>', 'parameters per optimizer sub-group streamed disk → RAM → update → disk (default: planned from --ram)', int('--sub-group-size', 1))
    .option('--tile-size <size>', 'weight tile, with a unit: linear weights larger (the LM head and embedding too) are computed in tiles read in turn (default: planned from --ram)', sizeOption('--tile-size', 'to plan it from --ram'))
    .option('--profile <file>', 'hardware profile (as `tierlm profile --out FILE` writes it): its bf16 kernel, and an offloaded run\'s predicted step time (default: the saved one)')
    .option('--ram-percent <n...>', 'six percents kept in RAM: bf16 parameters, gradients, master weights, momentum, variance, activation checkpoints (default: planned from --ram)')
    .action(async (o: Omit<TrainRunOptions, 'onStart' | 'ramPercent'> & { ramPercent?: string[] }) => {
      if (o.diskDir !== undefined) diskDir(o.diskDir, o.ram);
      // Under mpirun (src/dist): an error on one rank ends every rank, and the last rank to finish
      // leaves MPI; rank 0 alone reports progress.
      const comm = worldComm();
      await abortOnError(comm, () => runTrain({ ...o, disk: diskLimit(o), ramPercent: o.ramPercent?.map((x) => percent(x)) }, comm.rank === 0));
      comm.finalize();
    });
}

/** --disk, or without it (an offloaded run: --ram and --disk-dir) the free space in --disk-dir,
 *  shared by the job's ranks on this machine: a run planned without it wrote states until the
 *  disk was full (ENOSPC) instead of being refused up front. (`tierlm plan --train` says it.) */
function diskLimit(o: { ram?: number; diskDir?: string; disk?: number }): number | undefined {
  if (o.disk !== undefined || o.ram === undefined || o.diskDir === undefined) return o.disk;
  // (killed runs' state files go first: the free space beside them refused every rerun)
  removeStale(o.diskDir);
  return diskLimitFromFreeSpace(o.diskDir, freeBytes(o.diskDir), null, rankEnv().localSize).bytes;
}

function percent(x: string): number {
  const v = decimal(x);
  if (x.trim() === '' || !Number.isFinite(v) || v < 0 || v > 100) throw new UserError(`--ram-percent takes six numbers in [0, 100], got "${x}"`);
  return v;
}

async function runTrain(o: Omit<TrainRunOptions, 'onStart'>, report: boolean): Promise<void> {
  const err = (s: string) => {
    if (report) process.stderr.write(s + '\n');
  };
  let progress: StepProgress | null = null;
  let last: { step: number; loss: number } | null = null;
  try {
    for await (const m of train({
      ...o,
      resume: o.resume === true,
      onStart: (info) => {
        for (const s of info.skipped) err(`skipped ${s}`);
        if (info.skippedLines > info.skipped.length) err(`skipped ${info.skippedLines - info.skipped.length} more lines (the first ${SKIPPED_KEPT} of each file are shown)`);
        const from = info.resumedFrom ? `resuming from ${info.resumedFrom}, ` : '';
        // (a run resumed from its last step has none left: it republishes the model)
        const steps = info.startStep < info.totalSteps ? `steps ${info.startStep + 1}..${info.totalSteps}`
          : info.startStep === info.totalSteps ? `no steps left (all ${info.totalSteps} done)`
          // (a resume asking fewer steps than its checkpoint has: "all 4 done" after 6)
          : `no steps left (${info.startStep} done, past the ${info.totalSteps} asked)`;
        err(`training ${(info.parameters / 1e6).toFixed(1)}M parameters on ${info.sequences} sequences (${info.tokens} tokens): ${from}${steps}`);
        if (info.offload) {
          err(`model states: ${formatSize(info.offload.ramBytes)} in RAM, ${formatSize(info.offload.diskBytes)} on disk; optimizer sub-groups of ${info.offload.subGroupSize} parameters` +
            // (a size given is run as a multiple of 2048: say so where it differs)
            (o.subGroupSize !== undefined && o.subGroupSize !== info.offload.subGroupSize ? ` (--sub-group-size ${o.subGroupSize} rounded to a multiple of ${PIECE_ALIGN})` : '') +
            (info.offload.tiledWeights > 0 ? `; ${info.offload.tiledWeights} weights computed in tiles of ${formatSize(info.offload.tileBytes)}` : ''));
          const p = info.predicted;
          err(p ? `predicted step ${p.seconds.toFixed(2)} s, bound by ${p.bound} (compute ${p.computeSeconds.toFixed(2)} s, forward/backward disk ${p.passIoSeconds.toFixed(2)} s, ${p.tileIoSeconds > 0 ? `weight tiles' disk ${p.tileIoSeconds.toFixed(2)} s, ` : ''}optimizer ${p.optimizerSeconds.toFixed(2)} s, ${p.optimizerHiddenSeconds.toFixed(2)} s of it under the next forward)`
            : info.unpredicted ?? 'no predicted step time');
        }
        if (report) progress = new StepProgress(info.startStep);
      },
    })) {
      (progress as StepProgress | null)?.update(m.step, m.totalSteps, m.loss, m.tokensPerSecond);
      if (m.evalLoss !== undefined) (progress as StepProgress | null)?.log(`step ${m.step}: eval loss ${m.evalLoss.toFixed(4)}, perplexity ${m.evalPerplexity!.toFixed(2)}`);
      last = { step: m.step, loss: m.loss };
    }
  } finally {
    (progress as StepProgress | null)?.end();
  }
  const done = last as { step: number; loss: number } | null;
  err(done ? `${o.out}: step ${done.step}, loss ${done.loss.toFixed(4)}; the model is in ${o.out} (checkpoints under it, metrics in ${path.join(o.out, 'metrics.jsonl')})`
    : `${o.out}: nothing left to train (the run is complete)`);
}
