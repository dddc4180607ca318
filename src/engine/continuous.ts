// The continuous generation engine: one running block of slots (rows × batches) that sequences
// take and leave between steps. Each step:
//   1. sweep: sequences that finished or were cancelled leave their slots (no compute on them);
//   2. admit: waiting sequences (interactive before batch, in arrival order) take free slots,
//      until one does not fit the block (then nothing after it is admitted, so it is not starved:
//      once the block empties it is reopened in a shape that fits); an interactive one finding
//      the block full takes a batch sequence's slot (that one, once at most, waits first in line
//      and is computed again);
//   3. build one step per batch: a decode token for every row past its prompt, and prompt
//      chunks within the batch's prefill budget (oldest first), so prefill never stalls decode;
//      when weights stream, in one mixed step (one load serves both), else taking turns (see plan);
//   4. run it through the runner's schedule, then sample each row whose prompt is complete.
// The order makes a step's rows exactly the sequences still running, and a new request's first
// chunk runs in the first step after it arrives when the budget has room for it.
//
// A prompt's first chunk is always min(prompt, prefillChunk) tokens, computed as prefill; every
// later token (prompt chunks and generated ones) attends to its row's cache as decode does. So a
// sequence's tokens depend only on itself and prefillChunk, never on what it was batched with.

import type { GenerateStats } from './generate.js';
import type { Sequence } from './sequence.js';
import type { BlockShape } from '../policy/memory.js';
import type { BlockRunner } from '../schedule/runner.js';
import type { RunningBlock } from '../schedule/running-block.js';
import type { CacheDType } from '../backend/index.js';
import type { Backend } from '../backend/index.js';
import { type Segment, type Step, segmentStep } from '../models/transformer.js';
import type { Tensor } from '../tensor/tensor.js';
import { UserError } from '../util/errors.js';
import { relieve } from '../util/memory-guard.js';

/** A block an engine opened, as its RunnerLock hears of it. */
export interface OpenedBlock {
  rows: number;
  batches: number;
  /** Set when the block has fewer slots than the call's shape because its first request did not
   *  fit a block of that shape within the memory limits: the request, and that shape. */
  smaller: { id: string; positions: number; shape: string } | null;
}

/** Serialises the blocks of the engines that share one runner: one block is open at a time. It
 *  also hears of each block opened (`onOpen`): it is the one object a model shares with every
 *  engine its calls make, so the model can say which shapes ran. */
export class RunnerLock {
  private tail: Promise<void> = Promise.resolve();
  /** Holders and waiters. */
  private count = 0;
  /** The holder's callback for a waiter's arrival. */
  private contended: (() => void) | null = null;

  constructor(private readonly onOpen?: (b: OpenedBlock) => void) {}

  /** An engine opened a block (while holding the lock). */
  opened(b: OpenedBlock): void {
    this.onOpen?.(b);
  }

  /** Resolves, once every earlier holder has released, to this holder's release. While it holds
   *  the lock, `onContended` is called whenever another caller starts waiting for it. */
  acquire(onContended?: () => void): Promise<() => void> {
    if (this.count++ > 0) this.contended?.();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const ready = this.tail.then(() => {
      this.contended = onContended ?? null;
      // A waiter that came while an earlier holder had the lock is still waiting.
      if (this.count > 1) onContended?.();
      return () => {
        this.contended = null;
        this.count--;
        release();
      };
    });
    this.tail = this.tail.then(() => held);
    return ready;
  }
}

export interface EngineSetup {
  runner: BlockRunner;
  backend: Backend;
  lock: RunnerLock;
  maxPositions: number;
  cacheBytesPerElement: number;
  /** Throws when a block of this shape would not fit the memory limits (with `machine`, and no
   *  RAM limit set: within most of this machine's memory). */
  checkBlock(shape: BlockShape, machine?: boolean): void;
  /** Whether a step loads (some) weights: then prompt chunks and decode rows share each step, so
   *  that one load serves both. Otherwise they take turns (see plan). */
  weightsStream: boolean;
  /** Whether the model was closed: a block opened after would run on closed files. */
  closed?: () => boolean;
}

export interface EngineParams {
  batchSize: number;
  numGpuBatches: number;
  cacheDtype: CacheDType;
  /** Prompt tokens per batch and step (and the length of a prompt's first chunk). */
  prefillChunk: number;
  /** Open the block in its full shape (a server); else in the shape the waiting sequences need. */
  fullShape: boolean;
}

/** A sequence the engine runs, with what to call when it leaves. */
export interface Admission {
  seq: Sequence;
  /** 0 interactive, 1 batch. */
  priority: number;
  /** Called once, when the sequence has finished (or was cancelled) and left the block. */
  done: (seq: Sequence) => void;
  /** Called instead when the engine fails. */
  fail?: (e: unknown) => void;
}

interface Slot {
  a: Admission;
  /** Tokens of the sequence (prompt, then generated ones) already in the row's cache. */
  fed: number;
  /** Admission order (older prompts get the prefill budget first). */
  order: number;
}

interface Open {
  block: RunningBlock;
  release: () => void;
  rows: number;
  batches: number;
  capacity: number;
  /** Tokens one batch may hold in a step: its decode rows', and prompt chunks in what is left. */
  maxTokens: number;
  /** For a block of fewer rows: the sequence it was opened for (the call's shape did not hold it). */
  oddOne: Admission | null;
}

/** How the error of a request refused for the memory limits begins (servers answer it as a
 *  context length exceeded). */
export const TOO_LARGE_FOR_LIMITS = 'the request needs';

const tooLargeForLimits = (need: number, prompt: number, why: string) =>
  `${TOO_LARGE_FOR_LIMITS} ${need} positions (a prompt of ${prompt} tokens and up to ${need - prompt} new ones), ` +
  `and a block with that many does not fit the memory limits: ${why}`;

/** Positions per row a server's block holds at least, memory permitting. */
const SERVER_POSITIONS = 1024;

export class ContinuousEngine {
  readonly stats: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
  /** Steps run so far. */
  steps = 0;
  private waiting: Admission[] = [];
  private slots: (Slot | null)[][] = [];
  private open: Open | null = null;
  private admitted = 0;
  /** Per batch: whether its last step ran prompt chunks alone (resident weights; see plan). */
  private promptsLast: boolean[] = [];
  /** Sequences taken out of a block that was given up, to be computed again (counted once). */
  private readonly replayed = new WeakSet<Admission>();
  /** Whether the caller that steps this engine is away (a generate() iterator suspended at a
   *  yield, maybe abandoned): the block is then given up as soon as another engine waits. */
  private parked = false;
  private contended = false;
  private givingUp: Promise<void> | null = null;

  constructor(private readonly s: EngineSetup, private readonly p: EngineParams) {}

  /** Interactive sequences go ahead of the batch ones waiting, but not ahead of one that gave its
   *  slot up (it takes the next one, see preemptFor), nor of one that has let a block's rows of
   *  them pass already: under a steady interactive load a batch line not yet started otherwise
   *  waited for a lull that never came. Only the first batch sequence passed counts a pass, so
   *  under such a load one batch sequence is admitted for every block's rows of interactive ones
   *  (counting every one passed aged a whole batch job at once, and the interactive ones then
   *  waited behind all of it). */
  add(a: Admission): void {
    let at = this.waiting.length;
    while (at > 0) {
      const w = this.waiting[at - 1]!;
      if (w.priority <= a.priority || this.holdsItsPlace(w)) break;
      at--;
    }
    if (at < this.waiting.length) {
      const first = this.waiting[at]!;
      this.passes.set(first, (this.passes.get(first) ?? 0) + 1);
    }
    this.waiting.splice(at, 0, a);
  }

  /** For a batch sequence waiting: how many interactive ones went ahead of it (see add). */
  private readonly passes = new WeakMap<Admission, number>();

  /** Whether no interactive sequence may pass this batch one in line, nor take its slot (see
   *  preemptFor): it gave its slot up once, or has let a block's rows of them pass already. */
  private holdsItsPlace(a: Admission): boolean {
    return this.gaveUp.has(a) || (this.passes.get(a) ?? 0) >= this.p.batchSize * this.p.numGpuBatches;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** Requests with a sequence waiting (their samples counted once). */
  get queuedRequests(): number {
    return new Set(this.waiting.map((a) => a.seq.req)).size;
  }

  get running(): number {
    return this.slots.reduce((n, b) => n + b.filter(Boolean).length, 0);
  }

  get busy(): boolean {
    return this.waiting.length > 0 || this.running > 0;
  }

  /** The caller is going away (to yield a result); another engine waiting for the runner, now or
   *  while away, makes this engine give up its block (see giveUp). */
  async park(): Promise<void> {
    this.parked = true;
    if (this.contended) await this.giveUp();
  }

  unpark(): void {
    this.parked = false;
  }

  private onContended(): void {
    this.contended = true;
    if (this.parked) void this.giveUp().catch(() => undefined);
  }

  /** Closes the block (releasing the runner) with its running sequences put back, first in line:
   *  they are computed again from their tokens when a block is next open (a first chunk as
   *  before, the rest as later chunks, which attend as decode did: the same results). */
  private giveUp(): Promise<void> {
    this.givingUp ??= (async () => {
      const back = this.slots.flatMap((rows) => rows.filter((x): x is Slot => x !== null)).sort((a, b) => a.order - b.order);
      for (const x of back) this.replayed.add(x.a);
      this.waiting.unshift(...back.map((x) => x.a));
      await this.close();
    })();
    return this.givingUp;
  }

  /** Runs one step; false when there was nothing to run (the block is then closed). */
  async step(): Promise<boolean> {
    relieve();
    if (this.givingUp) await this.givingUp;
    this.sweep();
    if (!this.busy) {
      await this.close();
      return false;
    }
    this.open ??= await this.openFitting();
    if (this.open && !this.admit() && this.running === 0) {
      // The first waiting sequence does not fit the block's shape: reopen it in one that does.
      await this.close();
      this.open = await this.openFitting();
      if (this.open && !this.admit() && this.running === 0) throw new Error('internal: a sequence does not fit a block opened for it');
    }
    // Every waiting sequence was refused: nothing to run.
    if (!this.open) return false;
    const o = this.open;
    const plan = this.slots.map((rows, k) => this.plan(rows, o.maxTokens, k));
    const steps = plan.map((segs) => (segs.length > 0 ? scoring(segmentStep(segs.map((g) => g.seg)), segs) : null));
    let [prompt, decode] = [0, 0];
    for (const g of plan.flat()) {
      if (g.prompt) prompt += g.seg.ids.length;
      else decode += g.seg.ids.length;
    }
    const t0 = performance.now();
    const logits = await o.block.step(steps);
    const secs = (performance.now() - t0) / 1000;
    // A mixed step's time goes to each phase by its share of the step's tokens (the weights'
    // loads and the per-token work are shared; prompt and decode tokens cost about the same).
    this.stats.prefillSeconds += (secs * prompt) / (prompt + decode);
    this.stats.decodeSeconds += (secs * decode) / (prompt + decode);
    this.steps++;
    plan.forEach((segs, k) => this.sample(k, segs, logits[k]!));
    return true;
  }

  /** Waits for the block's transfers and frees it (and the runner, for other engines). */
  async close(): Promise<void> {
    const o = this.open;
    if (!o) return;
    this.open = null;
    this.slots = [];
    try {
      await o.block.close();
    } finally {
      this.contended = false;
      this.givingUp = null;
      o.release();
    }
  }

  /** After a failure: every sequence the engine held (waiting or running), and the block closed. */
  async abandon(): Promise<Admission[]> {
    const all = [...this.slots.flatMap((b) => b.flatMap((x) => (x ? [x.a] : []))), ...this.waiting];
    this.waiting = [];
    await this.close().catch(() => undefined);
    return all;
  }

  /** Sequences that finished or were cancelled leave (their slots free for the next). */
  private sweep(): void {
    this.slots.forEach((rows, k) => rows.forEach((x, r) => {
      if (x?.a.seq.done) this.leave(k, r);
    }));
    const gone = this.waiting.filter((a) => a.seq.done);
    if (gone.length > 0) {
      this.waiting = this.waiting.filter((a) => !a.seq.done);
      for (const a of gone) a.done(a.seq);
    }
  }

  private leave(k: number, r: number): void {
    const x = this.slots[k]![r]!;
    this.slots[k]![r] = null;
    this.open?.block.release(k, r);
    this.stats.generatedTokens += x.a.seq.tokens.length;
    x.a.done(x.a.seq);
  }

  private need(seq: Sequence): number {
    if (seq.limits.untilContext) return Math.min(this.s.maxPositions, Math.max(seq.ids.length + 1, this.contextUnderLimits(seq)));
    return Math.min(this.s.maxPositions, seq.ids.length + seq.limits.maxNewTokens);
  }

  /** The most positions (up to the model's) a block of the full shape holds within the memory
   *  limits, with room for seq's first prompt chunk: what a sample that runs until the context
   *  ends may use. 0 when none fits. Without a RAM limit, within most of the machine's memory:
   *  Llama 3's 131072 positions in a server block of 64 rows are ~34 GB of cache a layer. */
  private contextUnderLimits(seq: Sequence): number {
    const p = this.p;
    const maxTokens = p.fullShape ? p.prefillChunk + p.batchSize : Math.max(this.firstChunk(seq), p.batchSize);
    const known = this.contexts.get(maxTokens);
    if (known !== undefined) return known;
    const context = this.largestCapacity(maxTokens, true);
    this.contexts.set(maxTokens, context);
    return context;
  }

  /** The most positions (up to the model's) a row of a block of the call's shape, taking
   *  `maxTokens` a step, can have within the memory limits (`machine`: and within most of the
   *  machine's memory); 0 when none fits. */
  private largestCapacity(maxTokens: number, machine: boolean): number {
    const p = this.p;
    return largestFitting(0, this.s.maxPositions, (capacity) => this.withinLimits({
      rows: p.batchSize, batches: p.numGpuBatches, capacity, cacheBytesPerElement: this.s.cacheBytesPerElement, maxTokens,
    }, machine));
  }

  /** contextUnderLimits by the block's tokens per step (the limits never change). */
  private readonly contexts = new Map<number, number>();

  /** A server's (the full shape's): the most positions a row of its block can have within the
   *  memory limits; a request needing more is refused (refuseFirst). 0 when no block fits, null
   *  for a generate() call's engine (its blocks take the shape their sequences need). The API
   *  refuses a prompt surely longer before encoding it (src/openai/translate.ts). */
  positionsUnderLimits(): number | null {
    const p = this.p;
    if (!p.fullShape) return null;
    this.serverPositions ??= this.largestCapacity(p.prefillChunk + p.batchSize, false);
    return this.serverPositions;
  }

  private serverPositions: number | undefined;

  private firstChunk(seq: Sequence): number {
    return Math.min(seq.ids.length, this.p.prefillChunk);
  }

  private fits(seq: Sequence, o: Open): boolean {
    return this.need(seq) <= o.capacity && this.firstChunk(seq) <= o.maxTokens;
  }

  /** Waiting sequences into free slots (the batch with the fewest rows first); whether every
   *  waiting sequence that had room went in (false when the first one left does not fit). */
  private admit(): boolean {
    const o = this.open!;
    while (this.waiting.length > 0) {
      // A block of fewer rows takes others only while the sequence it was opened for runs; then
      // it drains, and the next opens in the call's shape (the rest of a job ran in it, slower).
      if (o.oddOne?.seq.done) return false;
      const a = this.waiting[0]!;
      if (!this.fits(a.seq, o)) {
        // One no block could hold is answered now, not when the running rows have finished (and
        // every request behind it waited as long).
        if (this.refuseIfTooLarge()) continue;
        return false;
      }
      let best = -1;
      let fewest = Infinity;
      this.slots.forEach((rows, k) => {
        const used = rows.filter(Boolean).length;
        if (used < rows.length && used < fewest) [best, fewest] = [k, used];
      });
      let next = a;
      if (best < 0) {
        // The block is full: the first interactive sequence waiting may take a batch one's slot.
        const at = this.waiting.findIndex((w) => w.priority === 0);
        if (at < 0 || !this.fits(this.waiting[at]!.seq, o)) return true;
        [next] = this.waiting.splice(at, 1) as [Admission];
        best = this.preemptFor();
        if (best < 0) {
          this.waiting.splice(at, 0, next);
          return true;
        }
      } else {
        this.waiting.shift();
      }
      // A sample that runs until the context ends stops where the limits' context does (the
      // same whatever block it lands in).
      if (next.seq.limits.untilContext) next.seq.limits.maxPositions = this.need(next.seq);
      const rows = this.slots[best]!;
      rows[rows.indexOf(null)] = { a: next, fed: 0, order: this.admitted++ };
      if (!this.replayed.has(next)) this.stats.promptTokens += next.seq.ids.length;
    }
    return true;
  }

  /** For an interactive sequence waiting for a full block: a batch sequence's slot, freed. That
   *  one waits first in line (ahead of interactive ones too) and is computed again from its tokens
   *  when it has a slot again (as a given-up block's are: the same results). Without it an
   *  interactive request waited for a whole batch line to finish (a 3-token completion took 48 s
   *  beside a batch job). A sequence gives its slot up once at most, and takes the next that
   *  frees: a steady stream of interactive requests evicted it again and again, and it never
   *  finished. The batch sequence with the fewest tokens in its cache goes, the cheapest to
   *  compute again. One that has let a block's rows of interactive ones pass it in line keeps its
   *  slot (else one more passed it, and it was admitted only to leave in the same step). The freed
   *  slot's batch, or -1 when there is none to take. */
  private preemptFor(): number {
    let victim: { k: number; r: number; fed: number } | null = null;
    this.slots.forEach((rows, k) => rows.forEach((x, r) => {
      if (x && x.a.priority > 0 && !x.a.seq.done && !this.holdsItsPlace(x.a) && (!victim || x.fed < victim.fed)) victim = { k, r, fed: x.fed };
    }));
    if (!victim) return -1;
    const { k, r } = victim;
    const x = this.slots[k]![r]!;
    this.slots[k]![r] = null;
    this.open?.block.release(k, r);
    this.replayed.add(x.a);
    this.gaveUp.add(x.a);
    this.waiting.unshift(x.a);
    return k;
  }

  /** Batch sequences that gave their slot up to an interactive one (never asked twice). */
  private readonly gaveUp = new WeakSet<Admission>();

  /** Segments of batch k's step, by row: a decode token for every row past its prompt, and
   *  prompt chunks in the tokens left (at most prefillChunk), oldest prompt first. A row computed
   *  again (its block given up) feeds its prompt and generated tokens as a prompt.
   *
   *  With every weight resident a step loads nothing, so a mixed step saves nothing: its time is
   *  the prompt chunks' plus the decode rows'. A request arriving during decode would then wait
   *  for the step in flight and for a step carrying the others' decode work beside its prefill.
   *  So prompt chunks and decode rows take turns instead (prompts first): a one-chunk prompt's
   *  first token comes after at most the step in flight plus its own prefill, decode rows still
   *  advance every other step while a long prompt goes in chunks, and the work done is the same.
   *  Prompts of fewer tokens than the decode rows still ride along: a step of their own would
   *  cost a pass over the weights for little compute. */
  private plan(rows: (Slot | null)[], maxTokens: number, k: number): { seg: Segment; slot: Slot; prompt: boolean; samples: boolean }[] {
    const take = new Map<Slot, number>();
    const total = (x: Slot) => x.a.seq.ids.length + x.a.seq.tokens.length;
    const prompting = (x: Slot) => x.fed < x.a.seq.ids.length || total(x) - x.fed > 1;
    const prefilling = rows.filter((x): x is Slot => x !== null && prompting(x)).sort((a, b) => a.order - b.order);
    let decoding = rows.filter((x) => x !== null).length - prefilling.length;
    // Taking turns: 'prompts' runs only prompt chunks, 'decode' only decode rows.
    let turn: 'both' | 'prompts' | 'decode' = 'both';
    const promptTokens = Math.min(this.p.prefillChunk, prefilling.reduce((n, x) => n + total(x) - x.fed, 0));
    if (!this.s.weightsStream && decoding > 0 && promptTokens > decoding) turn = this.promptsLast[k] ? 'decode' : 'prompts';
    if (turn === 'prompts') decoding = 0;
    let budget = turn === 'decode' ? 0 : Math.min(this.p.prefillChunk, maxTokens - decoding);
    for (const x of prefilling) {
      const left = total(x) - x.fed;
      // A first chunk is whole or waits (its length decides how its tokens are computed), and
      // younger prompts wait behind it, so that it is not starved: the batch's decode rows
      // finish and leave it room.
      const n = x.fed === 0 ? Math.min(this.firstChunk(x.a.seq), budget) : Math.min(left, budget);
      if (x.fed === 0 && n < this.firstChunk(x.a.seq)) break;
      if (n > 0) take.set(x, n);
      budget -= n;
    }
    const segs: { seg: Segment; slot: Slot; prompt: boolean; samples: boolean }[] = [];
    rows.forEach((x, r) => {
      if (!x) return;
      const seq = x.a.seq;
      const at = (i: number) => (i < seq.ids.length ? seq.ids[i]! : seq.tokens[i - seq.ids.length]!);
      const prompt = prompting(x);
      const n = prompt ? take.get(x) : turn === 'prompts' ? 0 : 1;
      if (!n) return;
      segs.push({ seg: { row: r, ids: Array.from({ length: n }, (_, j) => at(x.fed + j)), start: x.fed }, slot: x, prompt, samples: x.fed + n === total(x) });
      x.fed += n;
    });
    this.promptsLast[k] = segs.length > 0 && segs.every((g) => g.prompt);
    return segs;
  }

  /** Samples the rows of batch k whose prompts are complete; finished ones leave. */
  private sample(k: number, segs: { slot: Slot; samples: boolean }[], logits: Tensor<'f32'>): void {
    let logp: Tensor<'f32'> | null = null;
    segs.forEach((g, at) => {
      const seq = g.slot.a.seq;
      if (!g.samples || seq.done) return;
      seq.next(logits, at, () => (logp ??= this.s.backend.logSoftmax(logits)));
    });
    for (const g of segs) {
      if (!g.slot.a.seq.done) continue;
      const r = this.slots[k]!.indexOf(g.slot);
      if (r >= 0) this.leave(k, r);
    }
  }

  /** A block for the waiting sequences within the memory limits. When none fits them, one in
   *  the same shape with room for the first alone, then (a generate() call's, when its shape
   *  fits the limits at all) one of fewer rows for it, down to a row alone (for the odd sequence); when none fits, the
   *  first sequence is too large for the limits: it is refused
   *  (its request answered with the reason) and the next one tried, so that one request too large
   *  for the limits never fails the others. A shape that fits no sequence at all is the limits'
   *  (or the policy's) fault: its UserError is thrown. Null when every waiting sequence was refused. */
  private async openFitting(): Promise<Open | null> {
    while (this.waiting.length > 0) {
      try {
        return await this.openBlock(false);
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
      }
      try {
        return await this.openBlock(true);
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
      }
      // Does the call's shape fit at all, with room for one position and a token a row (a
      // server's block keeps its step size)? If not, the limits (or the policy) are at fault.
      this.s.checkBlock(this.smallestBlock());
      // (a sequence that fit a block of fewer rows was refused for the rows the queue behind it
      // asked for: which requests ran depended on where they stood in the file)
      const rows = this.fewerRows();
      // Fewer rows are for the odd request too long for the call's shape. (A shape that holds
      // none of a job's requests makes every block smaller and the job far slower: the CLI refuses
      // such a policy before loading where it knows the requests' lengths, and every call says
      // how many blocks ran smaller. Planned shapes rest on estimated lengths, so running slower
      // here, and saying so, beats refusing a job that the limits do hold.)
      if (rows !== null) return await this.openBlock(true, rows);
      this.refuseFirst(this.whyTooLarge() ?? 'no block within the memory limits holds it');
    }
    return null;
  }

  /** Rows of the largest block of one batch, fewer than the call's, that holds the first waiting
   *  sequence within the limits; null when none does (or for a server, whose block keeps its shape). */
  private fewerRows(): number | null {
    if (this.p.fullShape) return null;
    const seq = this.waiting[0]!.seq;
    for (let r = this.blockShape(true).rows; r >= 1; r--) {
      const { shape } = this.blockShape(true, r);
      if (this.withinLimits(shape(this.need(seq)))) return r;
    }
    return null;
  }

  /** Why no block holds the first waiting sequence (the limits' words for the smallest that
   *  could: the call's shape for a server, a row alone otherwise), or null when one does. */
  private whyTooLarge(): string | null {
    return this.whyNotHeld(this.need(this.waiting[0]!.seq));
  }

  /** Why no block holds a sequence of `need` positions (the limits' words for the smallest that
   *  could: the call's shape for a server, a row alone otherwise), or null when one does. */
  private whyNotHeld(need: number): string | null {
    const { shape } = this.blockShape(true, this.p.fullShape ? undefined : 1);
    try {
      this.s.checkBlock(shape(need));
      return null;
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      return e.message;
    }
  }

  /** The call's block shape with room for one position and a token a row (a server's keeps its step size). */
  private smallestBlock(): BlockShape {
    const { rows, shape } = this.blockShape(true);
    return { ...shape(1), maxTokens: this.p.fullShape ? shape(1).maxTokens : rows };
  }

  /** Answers the first waiting sequence: no block within the memory limits holds it (`why`). */
  private refuseFirst(why: string): void {
    const a = this.waiting.shift()!;
    const seq = a.seq;
    seq.refuse(tooLargeForLimits(this.need(seq), seq.ids.length, why));
    a.done(seq);
  }

  /** A server's (the full shape's) refusal, in refuseFirst's words, of a sequence of `prompt`
   *  tokens that needs `positions` positions, when no block of its shape holds that many within
   *  the memory limits; null when one does, and for a generate() call's engine. The API refuses
   *  such a request on arrival: the engine answers one only at the queue's front, once every
   *  request ahead of it was admitted (minutes behind a long queue, by when a stream's heartbeat
   *  had opened it with a 200). */
  refusalFor(prompt: number, positions: number): string | null {
    const need = Math.min(positions, this.s.maxPositions);
    const most = this.positionsUnderLimits();  // (null but for a server's full shape)
    if (!most || need <= most) return null;
    const why = this.whyNotHeld(need);
    return why === null ? null : tooLargeForLimits(need, prompt, why);
  }

  /** Refuses the first waiting sequence when no block the call could open would hold it within
   *  the limits (while a block is open); whether it did. */
  private refuseIfTooLarge(): boolean {
    const why = this.whyTooLarge();
    // (a shape too large even for one position is the limits' fault, reported when a block opens)
    if (why === null || !this.withinLimits(this.smallestBlock())) return false;
    this.refuseFirst(why);
    return true;
  }

  /** The shape of a block for the waiting sequences (or the full shape), with room for the
   *  longest of them, or for the first alone (its positions and prompt chunk: a short sequence
   *  is not refused for the longer ones behind it; the rows and batches stay the call's). */
  private blockShape(firstOnly: boolean, maxRows?: number) {
    const p = this.p;
    const ahead = this.waiting.slice(0, p.batchSize * p.numGpuBatches);
    let rows = p.fullShape ? p.batchSize : Math.min(p.batchSize, Math.max(1, ahead.length));
    let batches = p.fullShape ? p.numGpuBatches : Math.min(p.numGpuBatches, Math.ceil(Math.max(1, ahead.length) / rows));
    // A smaller block for the first sequence (a generate() call's): `maxRows` rows, one batch.
    if (maxRows !== undefined && !p.fullShape) [rows, batches] = [Math.min(rows, maxRows), 1];
    // Room for the sequences at hand: the longest of them, and prompt tokens per step as the
    // old blocks had (a batch's prompts at once) unless prefillChunk cuts them.
    const sized = firstOnly ? ahead.slice(0, 1) : ahead;
    const capacity = Math.max(...sized.map((a) => this.need(a.seq)), 1);
    const perBatch = Math.max(...Array.from({ length: batches }, (_, k) => sized.filter((_, i) => i % batches === k).reduce((n, a) => n + this.firstChunk(a.seq), 0)), 1);
    // A server's batch always has prefillChunk tokens for prompts beside its decode rows; a
    // generate() call's has what its first prompts need (as the old whole-block prefill had).
    const maxTokens = p.fullShape ? p.prefillChunk + rows : Math.max(Math.min(p.prefillChunk, perBatch), rows);
    const shape = (c: number): BlockShape => ({ rows, batches, capacity: c, cacheBytesPerElement: this.s.cacheBytesPerElement, maxTokens });
    return { rows, batches, capacity, maxTokens, shape };
  }

  /** Whether a block of `shape` fits the memory limits (`machine`: see EngineSetup.checkBlock). */
  private withinLimits(shape: BlockShape, machine = false): boolean {
    try {
      this.s.checkBlock(shape, machine);
      return true;
    } catch (e) {
      if (e instanceof UserError) return false;
      throw e;
    }
  }

  /** What a block of fewer rows is for: the first waiting sequence, which the call's shape (as
   *  the waiting ones fill it) does not hold within the limits. */
  private smaller(): NonNullable<OpenedBlock['smaller']> {
    const { rows, batches } = this.blockShape(true);
    const seq = this.waiting[0]!.seq;
    return { id: seq.req.id, positions: this.need(seq), shape: `${rows} × ${batches}` };
  }

  /** A block (see blockShape), checked against the memory limits (a UserError when it does not fit). */
  private async openBlock(firstOnly: boolean, maxRows?: number): Promise<Open> {
    const p = this.p;
    const { rows, batches, maxTokens, shape, capacity: needed } = this.blockShape(firstOnly, maxRows);
    this.s.checkBlock(shape(needed));
    const smaller = maxRows === undefined ? null : this.smaller();
    const oddOne = maxRows === undefined ? null : this.waiting[0]!;
    // A server's block leaves room for longer requests to come: SERVER_POSITIONS per row, or as
    // many as the memory limits allow. A request that does not fit waits until the block empties,
    // and everything behind it with it (for seconds: the running rows finish first), so a block
    // sized only for the requests at hand would stall the server whenever a longer one came.
    // The same with the cache on disk, where the capacity sizes the staging blocks in RAM.
    let capacity = needed;
    // A block of the last one's rows but a shorter longest sequence takes the last one's
    // capacity, when that fits the limits too: its cache blocks (one per layer and batch) are
    // then the size of the last block's, whose buffers it reuses (src/schedule/cache-buffers.ts)
    // rather than faulting in new memory. Attention reads only filled positions, so the room
    // costs memory the last block held, not compute.
    const kept = this.s.runner.keptCacheShape;
    const reuse = kept && kept.rows === rows && kept.cacheDtype === p.cacheDtype && kept.capacity > needed
      && kept.capacity <= this.s.maxPositions ? kept.capacity : null;
    if (reuse !== null && !p.fullShape && this.withinLimits(shape(reuse))) capacity = reuse;
    // The largest capacity in [needed, hi] that fits (needed does).
    if (p.fullShape) capacity = largestFitting(capacity, Math.min(this.s.maxPositions, Math.max(needed, SERVER_POSITIONS)), (c) => this.withinLimits(shape(c)));
    const release = await this.s.lock.acquire(() => this.onContended());
    if (this.s.closed?.()) {
      release();
      throw new Error('the model was closed (close()) while generate() was running: load it again');
    }
    try {
      const block = this.s.runner.open({ rows, batches, capacity, maxTokens, cacheDtype: p.cacheDtype });
      this.slots = Array.from({ length: batches }, () => new Array<Slot | null>(rows).fill(null));
      this.promptsLast = [];
      this.s.lock.opened({ rows, batches, smaller });
      return { block, release, rows, batches, capacity, maxTokens, oddOne };
    } catch (e) {
      release();
      throw e;
    }
  }
}

/** The largest n in [lo, hi] with fits(n), fits being monotone (true up to some n, false after)
 *  and lo taken to fit; by bisection, as block capacities are thousands of positions apart. */
function largestFitting(lo: number, hi: number, fits: (n: number) => boolean): number {
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** `step` with the prompt tokens its segments' samples score (Sequence.scoredIn), if any. */
function scoring(step: Step, segs: { seg: Segment; slot: Slot }[]): Step {
  const tokens: number[] = [];
  const owners: { seq: Sequence; p: number }[] = [];
  segs.forEach((g, s) => {
    const seq = g.slot.a.seq;
    const [from, to] = seq.scoredIn(g.seg.start, g.seg.ids.length);
    for (let p = from; p < to; p++) {
      tokens.push(step.seqStarts[s]! + p - g.seg.start);
      owners.push({ seq, p });
    }
  });
  if (tokens.length === 0) return step;
  return { ...step, score: { tokens: Int32Array.from(tokens), sink: (at, row) => owners[at]!.seq.scorePrompt(owners[at]!.p, row) } };
}
