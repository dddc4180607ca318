// The `tierlm` command line. Commands are thin: they parse options and call the engine.
import { Command } from 'commander';
import { UserError } from '../util/errors.js';
import { addGenerateCommand } from './generate.js';
import { addInitCommand } from './init.js';
import { addBenchCommand } from './bench.js';
import { addPlanCommand } from './plan.js';
import { addDemoCommand } from './demo.js';
import { addProfileCommand } from './profile.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program.name('tierlm').description('Run language models larger than memory, at batch throughput').version('0.1.0');
  addGenerateCommand(program);
  addInitCommand(program);
  addBenchCommand(program);
  addPlanCommand(program);
  addDemoCommand(program);
  addProfileCommand(program);
  try {
    await program.parseAsync(argv);
  } catch (e) {
    // Problems with the user's input get their message alone; anything else is a bug.
    if (e instanceof UserError || e instanceof RangeError || e instanceof TypeError) {
      process.stderr.write(`tierlm: ${(e as Error).message}\n`);
      process.exitCode = 1;
      return;
    }
    throw e;
  }
}
