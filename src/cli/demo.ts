// `tierlm demo`: the main job end to end on this machine, nothing to download.
import type { Command } from 'commander';
import { demoReport, runDemo } from '../engine/demo.js';
import { int } from './parse.js';
import { sizeOption } from './policy-options.js';

export function addDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('make a model larger than a RAM limit, profile, plan and generate under the limit, and report')
    .option('--dir <dir>', 'where the demo keeps its model and disk tier (default ~/.cache/tierlm/demo)')
    .option('--ram <size>', 'the RAM limit to run under, with a unit (default 320MiB)', sizeOption('--ram', 'for the default, 320 MiB'))
    .option('--prompt-len <n>', 'prompt tokens (default 32)', int('--prompt-len', 1))
    .option('--gen-len <n>', 'new tokens (default 16)', int('--gen-len', 1))
    .option('--config <name>', 'model shape (default opt-demo-1b)')
    .action(async (o: { dir?: string; ram?: number; promptLen?: number; genLen?: number; config?: string }) => {
      const d = await runDemo({ dir: o.dir, ramBytes: o.ram, promptLen: o.promptLen, genLen: o.genLen, config: o.config, log: (l) => process.stdout.write(l + '\n') });
      process.stdout.write(demoReport(d));
    });
}
