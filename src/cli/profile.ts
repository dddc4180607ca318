// `tierlm profile`: measures this machine once and saves it for every later command.
import os from 'node:os';
import type { Command } from 'commander';
import { BF16_KERNEL_LABELS, type HardwareProfile, checkProfileFile, defaultProfilePath, hugePageStatus, measureProfile, profileJson, saveProfile } from '../policy/profile.js';
import { formatSize } from '../tensor/tiers/size.js';
import { rule } from './parse.js';
import { diskDir, outputFile } from './paths.js';

interface ProfileFlags {
  quick?: boolean;
  out?: string;
  diskDir?: string;
  threads?: number;
  json?: boolean;
}

export function addProfileCommand(program: Command): void {
  program
    .command('profile')
    .description('measure this machine (GEMM, attention, memory and disk rates) and save it for the cost model')
    .option('--quick', 'smaller shapes and shorter timing (seconds instead of a minute or two)')
    .option('--out <file>', 'where to save it, in a directory that exists (default $TIERLM_PROFILE, else ~/.cache/tierlm/hardware.json)')
    .option('--disk-dir <dir>', 'directory whose disk is measured (must exist and be writable; default the system temp directory)')
    .option('--threads <n>', 'compute threads (default: what the engine uses)', rule('threads'))
    .option('--json', 'print the profile as one JSON line (snake_case, as the file holds it)')
    .action(async (o: ProfileFlags) => {
      // Paths are checked before the measurement, which takes seconds to minutes.
      if (o.out !== undefined) outputFile('--out', o.out);
      if (o.diskDir !== undefined) diskDir(o.diskDir);
      const file = o.out ?? defaultProfilePath();
      // Saving it is what the command is for: a file it cannot write is refused before measuring.
      checkProfileFile(file, o.out !== undefined ? '--out' : process.env.TIERLM_PROFILE ? 'TIERLM_PROFILE' : 'hardware profile');
      const log = (msg: string) => {
        if (process.stderr.isTTY) process.stderr.write(`${msg}\n`);
      };
      const p = await measureProfile({ quick: o.quick ?? false, diskDir: o.diskDir ?? os.tmpdir(), threads: o.threads, log });
      saveProfile(p, file);
      const pages = hugePageStatus();
      process.stdout.write(o.json ? profileJson(p) + '\n' : formatProfile(p) + (pages ? `${pages}\n` : '') + `saved to ${file}\n`);
    });
}

const g = (x: number) => (x / 1e9).toFixed(x >= 1e11 ? 0 : x >= 1e10 ? 1 : 2);

/** A readable table of a profile. */
export function formatProfile(p: HardwareProfile): string {
  const m = p.machine;
  const out: string[] = [];
  out.push(`machine  ${m.cpuModel}, ${m.cores} cores, ${formatSize(m.ramBytes)} RAM, isa ${m.isa.active}${m.isa.features.amxBf16 ? ' (AMX-BF16)' : ''}, ${m.threads} compute threads`);
  out.push(`         node ${m.node} ${m.platform}/${m.arch}, measured ${p.createdAt}${p.quick ? ' (--quick)' : ''}${p.sizes === 'tiny' ? ' (tiny sizes)' : ''}`);
  out.push('');
  out.push(`GEMM GFLOP/s, y[M,${p.gemm.n}] = x[M,${p.gemm.k}] · Wᵀ`);
  out.push(`weights mode ${p.gemm.ms.map((v) => `M=${v}`.padStart(8)).join('')}`);
  for (const r of p.gemm.rows) out.push(`${r.format.padEnd(7)} ${r.mode.padEnd(4)} ${r.flopsPerSecond.map((v) => g(v).padStart(8)).join('')}`);
  if (p.kernels) {
    const rows = p.kernels.onePassRows, widen = p.kernels.widenPanels;
    out.push(`kernels  bf16 mode: ${BF16_KERNEL_LABELS[p.kernels.bf16]}` +
      (rows ? `; 15-16-row products in one row block: ${rows.length ? rows.join(', ') : 'none'}` : '') +
      (widen ? `; weight panels widened once for many rows: ${widen.length ? widen.join(', ') : 'none'}` : ''));
  }
  out.push('');
  out.push('attention decode (K+V cache bytes read)');
  for (const e of p.attention.decode) {
    out.push(`  ${e.cacheDtype} cache, batch ${e.batch}, ${e.heads} heads × ${e.headDim}, ${e.len} positions (${formatSize(e.bytes)}): ${g(e.bytesPerSecond)} GB/s`);
  }
  const pf = p.attention.prefill;
  out.push(`attention prefill, ${pf.tokens} tokens, ${pf.heads} heads × ${pf.headDim}: ${g(pf.flopsPerSecond)} GFLOP/s`);
  out.push('');
  out.push(`memory copy (${formatSize(p.memory.bytes)}): ${g(p.memory.copyBytesPerSecond)} GB/s${p.memory.readBytesPerSecond ? `, read ${g(p.memory.readBytesPerSecond)} GB/s` : ''}`);
  const d = p.disk;
  out.push(`disk ${d.dir} (${d.direct ? 'O_DIRECT' : 'buffered, cache dropped'}, ${formatSize(d.fileBytes)} in ${formatSize(d.blockBytes)} blocks, ${d.inflight} in flight):`);
  out.push(`  read ${g(d.readBytesPerSecond)} GB/s (best of two passes), write ${g(d.writeBytesPerSecond)} GB/s (with fsync)`);
  out.push(p.gpu ? `gpu ${p.gpu.name}` : 'gpu      none measured');
  out.push('');
  return out.join('\n');
}
