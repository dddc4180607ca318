// `tierlm init`: a model directory with random weights of a named shape.
import type { Command } from 'commander';
import { initModel } from '../models/init.js';
import { presetNames } from '../models/presets.js';
import { int, oneOf } from './parse.js';
import { newDir } from './paths.js';

export function addInitCommand(program: Command): void {
  program
    .command('init')
    .description(`write a model directory with random weights of a named shape (${presetNames().join(', ')})`)
    .requiredOption('--config <name>', 'model shape')
    .requiredOption('--out <dir>', 'directory to write: new (in a directory that exists) or empty')
    .option('--dtype <d>', 'weight dtype', oneOf('--dtype', ['f16', 'bf16', 'f32'] as const), 'f16')
    .option('--layers <n>', 'n layers of the shape (fewer than its own cut it, more grow it)', int('--layers', 1))
    .option('--seed <s>', 'random seed', int('--seed', 0), 0)
    .option('--force', 'write into a directory that is not empty (files of the same name are replaced)')
    .action((o: { config: string; out: string; dtype: 'f16' | 'bf16' | 'f32'; layers?: number; seed: number; force?: boolean }) => {
      newDir('--out', o.out, o.force === true);
      const start = performance.now();
      const { bytes, tensors } = initModel(o);
      const secs = (performance.now() - start) / 1000;
      process.stderr.write(`wrote ${o.out}: ${tensors} tensors, ${(bytes / 1e9).toFixed(2)} GB in ${secs.toFixed(1)} s\n`);
    });
}
