// Whether and how to build the optional MPI addon (binding.gyp asks this at configure time).
//   node native/mpi/probe.mjs          prints 1 when OpenMPI's development files are present, else 0
//   node native/mpi/probe.mjs cflags   the compiler flags of `mpicc --showme:compile`
//   node native/mpi/probe.mjs libs     the linker flags of `mpicc --showme:link`, plus an rpath
// Without MPI (no mpicc, or no mpi.h where it says) the default build is unchanged.
// TIERLM_NO_MPI=1 builds without it even when it is installed.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

function showme(what) {
  try {
    return execFileSync('mpicc', [`--showme:${what}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function present() {
  if (process.env.TIERLM_NO_MPI === '1') return false;
  const dirs = showme('incdirs');
  return dirs !== null && dirs.split(/\s+/).some((d) => d !== '' && fs.existsSync(path.join(d, 'mpi.h')));
}

const what = process.argv[2];
if (what === undefined) process.stdout.write(present() ? '1' : '0');
else if (what === 'cflags') process.stdout.write(present() ? showme('compile') ?? '' : '');
else if (what === 'libs') {
  const libdirs = (showme('libdirs') ?? '').split(/\s+/).filter((d) => d !== '');
  process.stdout.write(present() ? [showme('link') ?? '', ...libdirs.map((d) => `-Wl,-rpath,${d}`)].join(' ') : '');
} else {
  process.stderr.write(`probe.mjs: unknown request ${what}\n`);
  process.exit(2);
}
