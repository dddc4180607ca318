// The `tierlm` command line. Commands are thin: they parse options and call the engine.
import { Command } from 'commander';
import { UserError } from '../util/errors.js';
import { useFlagNames } from '../util/names.js';
import { rankEnv } from '../dist/env.js';
import { withDiskLimitNote } from './policy-options.js';
import { addGenerateCommand } from './generate.js';
import { addInitCommand } from './init.js';
import { addBenchCommand } from './bench.js';
import { addPlanCommand } from './plan.js';
import { addDemoCommand } from './demo.js';
import { addProfileCommand } from './profile.js';
import { addTrainCommand } from './train.js';
import { addBatchCommand } from './batch.js';
import { addServeCommand } from './serve.js';
import { RUNTIME_OVERHEAD_BYTES } from '../policy/memory.js';
import { setRssCeiling } from '../util/memory-guard.js';

/** What the ceiling under --ram leaves of the runtime's allowance (see buildProgram). */
const MEMORY_GUARD_MARGIN = 40 * 2 ** 20;

/** Every command and its flags (docs/cli.md lists the same ones; test/docs.test.ts checks). */
export function buildProgram(): Command {
  const program = new Command();
  program.name('tierlm').description('Run and train language models larger than memory').version('0.1.0');
  // Commander's own refusals (a bad flag value, an unknown option) end as every failure does:
  // `tierlm: message` (its "error: " prefix replaced); subcommands inherit this.
  program.configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, `tierlm: ${rankPrefix('')}`)) });
  addGenerateCommand(program);
  addInitCommand(program);
  addBenchCommand(program);
  addPlanCommand(program);
  addDemoCommand(program);
  addProfileCommand(program);
  addTrainCommand(program);
  addBatchCommand(program);
  addServeCommand(program);
  // Under --ram, garbage is collected before it takes the process past the limit (memory-guard.ts):
  // the ceiling leaves MEMORY_GUARD_MARGIN of the runtime's allowance for what is allocated
  // between two checks (a line, a result, a step).
  program.hook('preAction', (_program, action) => {
    const ram = (action.opts() as { ram?: unknown }).ram;
    if (typeof ram === 'number') setRssCeiling(ram + RUNTIME_OVERHEAD_BYTES - MEMORY_GUARD_MARGIN);
  });
  return program;
}

export async function main(argv: string[]): Promise<void> {
  useFlagNames();
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    reportFailure(e);
  }
}

/** Under mpirun every rank prints its own failure: one raised before the ranks connect (a bad
 *  flag, a missing file) says which rank it comes from too, as those after do (./abort.ts). */
function rankPrefix(message: string): string {
  let r: { rank: number; size: number };
  try {
    r = rankEnv();
  } catch {
    return '';
  }
  return r.size > 1 && !message.startsWith(`rank ${r.rank} of ${r.size}: `) ? `rank ${r.rank} of ${r.size}: ` : '';
}

/** Every failure ends as `tierlm: message` and exit code 1. Problems with the user's input and
 *  the system's (a full disk, an I/O error naming its file) are the message alone; anything else
 *  is a bug, whose stack TIERLM_DEBUG=1 prints. */
export function reportFailure(e: unknown): void {
  const err = e instanceof Error ? e : new Error(String(e));
  // The reader of standard output went away (`| head`): what it wanted it has; end quietly.
  if ((err as NodeJS.ErrnoException).code === 'EPIPE') return;
  const known = err instanceof UserError || err instanceof RangeError || err instanceof TypeError || 'code' in err;
  const message = withDiskLimitNote(err.message);
  process.stderr.write(`tierlm: ${rankPrefix(message)}${message}${known ? '' : ' (internal error)'}\n`);
  if (!known || process.env.TIERLM_DEBUG) process.stderr.write(`${process.env.TIERLM_DEBUG ? err.stack : 'run with TIERLM_DEBUG=1 for details'}\n`);
  process.exitCode = 1;
}
