// An error on one rank must not leave the others waiting in a collective for it: the failing rank
// prints its message (as the CLI does, naming the rank) and aborts the whole MPI job.

import { reportFailure } from './main.js';
import type { Comm } from '../dist/comm.js';

/** Runs `work`; when it throws under several ranks, reports the error and aborts every rank (exit
 *  code 1, or mpirun's). With one rank the error propagates as usual. */
export async function abortOnError(comm: Comm, work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (e) {
    if (comm.size === 1) throw e;
    if (e instanceof Error) e.message = `rank ${comm.rank} of ${comm.size}: ${e.message}`;
    reportFailure(e);
    comm.abort(1);
  }
}
