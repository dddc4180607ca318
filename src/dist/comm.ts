// Collectives between data-parallel ranks on typed arrays, over OpenMPI (the optional addon
// build/Release/tierlm_mpi.node, native/mpi/). Every collective is started at once and runs on
// the addon's communication thread in the order started; `wait()` blocks the JavaScript thread
// only until that collective is done, so a trainer starts one (gathering the next layer) and
// computes meanwhile. All ranks must start the same collectives in the same order.
//
// One process (no launcher) gets SoloComm: the same interface with one rank, MPI never loaded.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../util/errors.js';
import { type RankEnv, rankEnv } from './env.js';

export type Numeric = Float32Array | Float64Array | Int32Array | Uint32Array | Uint16Array | Uint8Array;
export type ReduceOp = 'sum' | 'max' | 'min';

/** A started collective; its arrays must stay untouched until wait() returns. */
export interface Pending {
  wait(): void;
  /** Whether it has finished (without blocking). */
  done(): boolean;
}

export interface Comm {
  readonly rank: number;
  readonly size: number;
  /** recv = every rank's send, in rank order (recv.length = size · send.length). */
  allGather<T extends Numeric>(send: T, recv: T): Pending;
  /** recv = Σ over ranks of this rank's block of send (send.length = size · recv.length). */
  reduceScatter(send: Float32Array, recv: Float32Array): Pending;
  /** buf = op over ranks of buf, in place. */
  allReduce(buf: Numeric, op?: ReduceOp): Pending;
  /** buf = rank root's buf. */
  broadcast(buf: Numeric, root?: number): Pending;
  barrier(): Pending;
  /** Ends every rank of the job with `code` (after an error here, so that no rank waits forever). */
  abort(code: number): never;
  /** Waits for what was started, then leaves MPI (once, at the end of the process's work). */
  finalize(): void;
}

const DONE: Pending = { wait() {}, done: () => true };

/** One rank alone: every collective is a copy or nothing. */
export class SoloComm implements Comm {
  readonly rank = 0;
  readonly size = 1;
  allGather<T extends Numeric>(send: T, recv: T): Pending {
    if (recv.length !== send.length) throw new RangeError('allGather: recv must be size times send');
    recv.set(send as never);
    return DONE;
  }
  reduceScatter(send: Float32Array, recv: Float32Array): Pending {
    if (send.length !== recv.length) throw new RangeError('reduceScatter: send must be size times recv');
    recv.set(send);
    return DONE;
  }
  allReduce(): Pending {
    return DONE;
  }
  broadcast(): Pending {
    return DONE;
  }
  barrier(): Pending {
    return DONE;
  }
  abort(code: number): never {
    process.exit(code);
  }
  finalize(): void {}
}

interface MpiAddon {
  init(): { rank: number; size: number };
  allGather(send: Numeric, recv: Numeric): number;
  reduceScatter(send: Float32Array, recv: Float32Array): number;
  allReduce(buf: Numeric, op: ReduceOp): number;
  broadcast(buf: Numeric, root: number): number;
  barrier(): number;
  wait(id: number): void;
  test(id: number): boolean;
  abort(code: number): never;
  finalize(): void;
}

class MpiComm implements Comm {
  readonly rank: number;
  readonly size: number;
  private finalized = false;

  constructor(private readonly mpi: MpiAddon) {
    ({ rank: this.rank, size: this.size } = mpi.init());
  }

  /** Keeps the arrays referenced until the collective is waited for. */
  private pending(id: number, ...keep: Numeric[]): Pending {
    const mpi = this.mpi;
    let held: Numeric[] | null = keep;
    return {
      wait() {
        if (held === null) return;
        mpi.wait(id);
        held = null;
      },
      done: () => held === null || mpi.test(id),
    };
  }

  allGather<T extends Numeric>(send: T, recv: T): Pending {
    return this.pending(this.mpi.allGather(send, recv), send, recv);
  }
  reduceScatter(send: Float32Array, recv: Float32Array): Pending {
    return this.pending(this.mpi.reduceScatter(send, recv), send, recv);
  }
  allReduce(buf: Numeric, op: ReduceOp = 'sum'): Pending {
    return this.pending(this.mpi.allReduce(buf, op), buf);
  }
  broadcast(buf: Numeric, root = 0): Pending {
    return this.pending(this.mpi.broadcast(buf, root), buf);
  }
  barrier(): Pending {
    return this.pending(this.mpi.barrier());
  }
  abort(code: number): never {
    return this.mpi.abort(code);
  }
  finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    this.mpi.finalize();
  }
}

let world: Comm | null = null;

/** The path of the MPI addon (present only when `npm install` found OpenMPI's development files). */
export function mpiAddonPath(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../build/Release/tierlm_mpi.node');
}

/** The ranks of this job: MPI's world when a launcher started several, else SoloComm. Loads and
 *  initialises MPI once, on first use. */
export function worldComm(env: RankEnv = rankEnv()): Comm {
  if (world) return world;
  if (env.size === 1) return (world = new SoloComm());
  let mpi: MpiAddon;
  try {
    mpi = createRequire(import.meta.url)(mpiAddonPath()) as MpiAddon;
  } catch (e) {
    throw new UserError(`this process is rank ${env.rank} of ${env.size}, but tierlm was built without MPI (${(e as Error).message.split('\n')[0]}); ` +
      'install OpenMPI\'s packages (apt-get install openmpi-bin libopenmpi-dev) and run `npm install` again');
  }
  const comm = new MpiComm(mpi);
  if (comm.size !== env.size || comm.rank !== env.rank) {
    throw new UserError(`MPI says rank ${comm.rank} of ${comm.size}, the launcher's environment rank ${env.rank} of ${env.size}`);
  }
  return (world = comm);
}

/** Sums numbers over every rank (f64, in place of a small array). */
export function sumOverRanks(comm: Comm, values: number[]): number[] {
  if (comm.size === 1) return values;
  const buf = Float64Array.from(values);
  comm.allReduce(buf, 'sum').wait();
  return Array.from(buf);
}
