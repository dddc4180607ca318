// Which data-parallel rank this process is, from the environment a launcher sets: OpenMPI's
// mpirun sets OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE} (PMI_/PMIX_ ones from other
// launchers are read too). Without them the process is the only rank and MPI is never loaded.

import os from 'node:os';
import { UserError } from '../util/errors.js';

export interface RankEnv {
  rank: number;
  size: number;
  /** Ranks on this machine, and this one's index among them (for sharing its cores). */
  localRank: number;
  localSize: number;
}

function intVar(env: NodeJS.ProcessEnv, names: string[]): number | undefined {
  for (const n of names) {
    const v = env[n];
    if (v === undefined || v === '') continue;
    if (!/^\d+$/.test(v)) throw new UserError(`environment variable ${n}=${JSON.stringify(v)} is not a non-negative integer`);
    return Number(v);
  }
  return undefined;
}

/** The rank environment of this process (one rank when no launcher set one). */
export function rankEnv(env: NodeJS.ProcessEnv = process.env): RankEnv {
  const size = intVar(env, ['OMPI_COMM_WORLD_SIZE', 'PMIX_SIZE', 'PMI_SIZE']) ?? 1;
  const rank = intVar(env, ['OMPI_COMM_WORLD_RANK', 'PMIX_RANK', 'PMI_RANK']) ?? 0;
  if (size < 1 || rank >= size) throw new UserError(`rank ${rank} of ${size} ranks: the launcher's environment is inconsistent`);
  const localSize = intVar(env, ['OMPI_COMM_WORLD_LOCAL_SIZE', 'MPI_LOCALNRANKS']) ?? size;
  const localRank = intVar(env, ['OMPI_COMM_WORLD_LOCAL_RANK', 'MPI_LOCALRANKID']) ?? rank;
  return { rank, size, localRank, localSize };
}

/** Compute threads for one rank when `localSize` ranks share this machine's cores. */
export function threadsPerRank(localSize: number): number {
  return Math.max(1, Math.floor(os.availableParallelism() / Math.max(1, localSize)));
}
