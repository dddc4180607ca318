// One sample of a request while it generates: its sampler state, its per-request limits (new
// tokens, stop ids and stop strings, log-probabilities) and incremental detokenization for
// streaming. Everything here depends on the sample alone, never on the batch it runs in, so a
// request gets the same tokens however it was batched.

import type { TextTokenizer } from '../formats/tokenizer.js';
import type { Tensor } from '../tensor/tensor.js';
import type { FinishReason, GenerationRequest, GenerationResult, SampleResult, TokenLogprob } from './requests.js';
import { Rng, type SamplingParams, TokenHistory, sample, topKIndices } from './sampling.js';

/** A sample's limits, resolved from its request over the call's params. */
export interface SequenceLimits {
  maxNewTokens: number;
  /** Runs until the context ends (GenerationRequest.untilContext): the engine sets maxPositions
   *  to the positions its block can give the sample. */
  untilContext: boolean;
  /** Token ids that end the sample (EOS included when stopAtEos). */
  stopIds: Set<number>;
  /** Text stop sequences. */
  stop: string[];
  logprobs: boolean;
  topLogprobs: number;
  /** Each prompt token's log-probability given the tokens before it, with this many most likely
   *  alternatives (0: the token's own only); null when not asked for. */
  promptLogprobs: number | null;
  /** Cache positions the sample may fill (the model's positions, or fewer: see untilContext). */
  maxPositions: number;
}

/** Streaming: each token with the text it completes. */
export type TokenHook = (sample: number, token: number, text: string) => void;

export class Sequence {
  readonly tokens: number[] = [];
  readonly logprobs: number[] = [];
  /** Per generated token, its k (limits.topLogprobs) most likely tokens and their log-probabilities,
   *  k a token, most likely first: typed, since as objects n = 128 samples of 200 tokens with 20
   *  alternatives held ~50 MB outside the plan until the request ended. Objects are made at the
   *  end, for the result. */
  private topIds = new Int32Array(0);
  private topLp = new Float32Array(0);
  /** Prompt scores (promptLogprobs asked), filled in order as the prompt's chunks run: the
   *  log-probability of each prompt token from 1 on, and its k alternatives' tokens and
   *  log-probabilities. Typed arrays made at the first score: a row holds 8 + 12k bytes a prompt
   *  token, not k objects (an 8000-token prompt at k = 20 held ~10 MB as objects, and four rows of
   *  them took a `--ram 200MiB` run 42 MB past its limit). */
  private scores: { lp: Float64Array; topTokens: Int32Array; topLp: Float64Array } | null = null;
  /** Prompt tokens with a log-probability so far, the first (null) counted. */
  private scored = 1;
  finish: FinishReason | null = null;
  /** Why the sample could not run (its request then answers with this error), or null. */
  error: string | null = null;
  private readonly rng: Rng;
  private readonly history: TokenHistory;
  // Incremental detokenization (as vLLM), over the prompt's last tokens and then the sample's:
  // the text of [prefix, read) of that sequence was emitted already.
  private prefix = 0;
  private read: number;
  /** The prompt's last tokens, decoded ahead of the sample's so that its first token's text is
   *  what that token adds after the prompt: SentencePiece strips the space a text starts with,
   *  and "▁Solar" alone decodes to "Solar", the prompt and completion then read "…isSolar". */
  private readonly context: number[] = [];
  private readonly contextText: string = '';
  /** Text decoded so far (the concatenation of the emitted pieces, and what is held back). */
  private text = '';
  /** Length of `text` already given to the hook (the rest might begin a stop sequence). */
  private emitted = 0;

  constructor(
    readonly req: GenerationRequest,
    readonly ids: number[],
    readonly index: number,
    readonly sampling: SamplingParams,
    readonly limits: SequenceLimits,
    private readonly tokenizer: TextTokenizer | null,
    private readonly hook?: TokenHook,
  ) {
    // Sample 0 keeps the request's own stream, so n = 1 draws what it always drew. The stream is
    // the seedKey's when given: a caller whose ids change between runs (the CLI's "prompt-2") or
    // name a list's place (the API's prompt index) keeps a prompt's tokens with its seed.
    const key = req.seedKey ?? req.id;
    this.rng = new Rng(sampling.seed, index === 0 ? key : `${key}\0${index}`);
    this.history = new TokenHistory(ids);
    if (tokenizer) [this.context, this.contextText] = detokenizeContext(tokenizer, ids);
    this.read = this.context.length;
  }

  /** Chooses the next token from row `at` of `logits` (logSoftmax(logits) from `logp` when
   *  log-probabilities are asked for); returns whether the sample has finished. */
  next(logits: Tensor<'f32'>, at: number, logp: () => Tensor<'f32'>): boolean {
    const vocab = logits.shape[1]!;
    const row = logits.data.subarray(at * vocab, (at + 1) * vocab);
    const token = sample(row, this.sampling, this.rng, this.history);
    // A NaN or infinite logit chosen (a row all NaN gives token 0): the request fails saying so,
    // rather than answer with tokens the model did not compute (one check a token, not a scan).
    if (!Number.isFinite(row[token]!)) {
      this.refuse(`the model's logits are not finite (${row[token]} for the token chosen at new token ${this.tokens.length + 1}): ` +
        'its weights or activations hold NaN or infinity (a broken model file, or a model that diverged)');
      return true;
    }
    this.history.add(token);
    this.tokens.push(token);
    const l = this.limits;
    if (l.logprobs || l.topLogprobs > 0) {
      const lp = logp().data.subarray(at * vocab, (at + 1) * vocab);
      if (l.logprobs) this.logprobs.push(lp[token]!);
      if (l.topLogprobs > 0) this.keepTop(topKIndices(lp, l.topLogprobs), lp);
    }
    if (l.stopIds.has(token)) this.finish = 'stop';
    else if (this.tokens.length >= l.maxNewTokens || this.ids.length + this.tokens.length >= l.maxPositions) this.finish = 'length';
    if ((this.hook || l.stop.length > 0) && this.tokenizer) this.detokenize();
    if (this.hook) {
      const piece = this.releasable();
      this.hook(this.index, token, piece);
    }
    return this.finish !== null;
  }

  /** Stores the alternatives of the token just sampled (the tokens' count includes it). */
  private keepTop(ids: readonly number[], lp: Float32Array): void {
    const k = this.limits.topLogprobs;
    const at = (this.tokens.length - 1) * k;
    if (at + k > this.topIds.length) {
      const grown = Math.max(at + k, 2 * this.topIds.length, 16 * k);
      const ids2 = new Int32Array(grown);
      const lp2 = new Float32Array(grown);
      ids2.set(this.topIds);
      lp2.set(this.topLp);
      this.topIds = ids2;
      this.topLp = lp2;
    }
    for (let j = 0; j < k; j++) {
      this.topIds[at + j] = ids[j]!;
      this.topLp[at + j] = lp[ids[j]!]!;
    }
  }

  /** Prompt positions whose logits the next step should score for this sample, among those it
   *  feeds from `start` on (`count` tokens): the ones before the prompt's last token (its logits
   *  are the first sample's) not scored yet (a row computed again feeds its prompt again).
   *  Sample 0 alone scores: every sample of a request has the same prompt. */
  scoredIn(start: number, count: number): [from: number, to: number] {
    if (this.limits.promptLogprobs === null || this.index > 0) return [0, 0];
    const from = Math.max(start, this.scored - 1);
    return [from, Math.max(from, Math.min(start + count, this.ids.length - 1))];
  }

  /** Takes the logits at prompt position `p` (< the prompt's last): the log-probability of the
   *  prompt's token p + 1, and its most likely alternatives. The log-sum-exp runs in float64 over
   *  the row (as logSoftmax, up to rounding). A non-finite result fails the request, as a chosen
   *  token's would. */
  scorePrompt(p: number, row: Float32Array): void {
    if (p + 1 !== this.scored || this.done) return;
    let max = -Infinity;
    for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
    let sum = 0;
    for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
    const lse = max + Math.log(sum);
    const target = this.ids[p + 1]!;
    const lp = row[target]! - lse;
    if (!Number.isFinite(lp)) {
      this.refuse(`the model's logits are not finite (log-probability ${lp} for prompt token ${p + 1}): ` +
        'its weights or activations hold NaN or infinity (a broken model file, or a model that diverged)');
      return;
    }
    const k = this.limits.promptLogprobs!;
    const n = this.ids.length;
    const sc = (this.scores ??= { lp: new Float64Array(n), topTokens: new Int32Array(n * k), topLp: new Float64Array(n * k) });
    sc.lp[p + 1] = lp;
    if (k > 0) {
      topKIndices(row, k).forEach((t, j) => {
        sc.topTokens[(p + 1) * k + j] = t;
        sc.topLp[(p + 1) * k + j] = row[t]! - lse;
      });
    }
    this.scored++;
  }

  /** The prompt's scores as results give them: a log-probability per prompt token (null for the
   *  first) and, with k > 0, each token's k alternatives, most likely first. */
  promptScores(): { logprobs: (number | null)[]; top?: (TokenLogprob[] | null)[] } {
    const k = this.limits.promptLogprobs ?? 0;
    const sc = this.scores;
    const logprobs: (number | null)[] = [null];
    for (let i = 1; i < this.scored; i++) logprobs.push(sc!.lp[i]!);
    if (k === 0) return { logprobs };
    const top: (TokenLogprob[] | null)[] = [null];
    for (let i = 1; i < this.scored; i++) top.push(alternativesAt(sc!.topTokens, sc!.topLp, k, i));
    return { logprobs, top };
  }

  /** Ends the sample before its limits (an aborted request). */
  cancel(): void {
    this.finish ??= 'stop';
  }

  /** Ends the sample without running it: its request answers with `message`. */
  refuse(message: string): void {
    this.error ??= message;
    this.finish ??= 'stop';
  }

  get done(): boolean {
    return this.finish !== null;
  }

  result(): SampleResult {
    const res: SampleResult = { tokenIds: this.tokens, finishReason: this.finish ?? 'length' };
    if (this.tokenizer) {
      const whole = decode(this.tokenizer, this.window(0));
      const text = whole.startsWith(this.contextText) ? whole.slice(this.contextText.length) : decode(this.tokenizer, this.tokens);
      const cut = this.stopAt(text);
      res.text = cut >= 0 ? text.slice(0, cut) : text;
    }
    if (this.limits.logprobs) res.logprobs = this.logprobs;
    if (this.limits.topLogprobs > 0) lazyTop(res, { k: this.limits.topLogprobs, count: this.tokens.length, ids: this.topIds, lp: this.topLp });
    return res;
  }

  /** Appends the text the new token completes, and ends the sample at a stop sequence. */
  private detokenize(): void {
    const t = this.tokenizer!;
    const before = decode(t, this.window(this.prefix, this.read));
    const now = decode(t, this.window(this.prefix));
    // A multi-byte character still incomplete decodes to U+FFFD: wait for its next token (unless
    // the sample has ended: its text ends so, and the pieces must add up to it).
    if (now.length > before.length && (!now.endsWith('\ufffd') || this.done)) {
      const from = Math.max(0, this.text.length - this.longestStop());
      this.text += now.slice(before.length);
      this.prefix = this.read;
      this.read = this.context.length + this.tokens.length;
      const at = this.stopAt(this.text, from);
      if (at >= 0) {
        this.text = this.text.slice(0, at);
        this.finish = 'stop';
      }
    }
  }

  /** Text not yet given to the hook that cannot be the start of a stop sequence (all of it once
   *  the sample has finished). */
  private releasable(): string {
    // The longest end of the unreleased text that begins some stop sequence, each stop measured
    // against all of that text (as ChunkStream.heldBack): bounding a later stop by what an
    // earlier one left released "z" of "…zC" for stops ["C#", "zCl"], and "zCl" then cut the
    // text before the "z" already given to the hook.
    let hold = 0;
    if (!this.done) {
      for (const s of this.limits.stop) {
        for (let n = Math.min(s.length - 1, this.text.length - this.emitted); n > hold; n--) {
          if (this.text.endsWith(s.slice(0, n))) {
            hold = n;
            break;
          }
        }
      }
    }
    const end = this.text.length - hold;
    const piece = this.text.slice(this.emitted, end);
    this.emitted = Math.max(this.emitted, end);
    return piece;
  }

  /** Ids [from, to) of the prompt's context followed by the sample's tokens. */
  private window(from: number, to = this.context.length + this.tokens.length): number[] {
    const c = this.context.length;
    return [...this.context.slice(Math.min(from, c), Math.min(to, c)), ...this.tokens.slice(Math.max(0, from - c), Math.max(0, to - c))];
  }

  private longestStop(): number {
    return this.limits.stop.reduce((n, s) => Math.max(n, s.length), 0);
  }

  /** Where the first stop sequence begins in `text` (searching from `from`), or -1. */
  private stopAt(text: string, from = 0): number {
    let best = -1;
    for (const s of this.limits.stop) {
      const i = text.indexOf(s, from);
      if (i >= 0 && (best < 0 || i < best)) best = i;
    }
    return best;
  }
}

/** A finished request's result from its samples: the first sample's fields, every sample's with
 *  n > 1, and the prompt's log-probabilities where asked for (sample 0 scored them). */
export function requestResult(id: string, promptTokens: number, seqs: readonly Sequence[]): GenerationResult {
  const samples = seqs.map((s) => s.result());
  // The first sample's fields as they are (a spread would make its lazy topLogprobs).
  const res = { id, promptTokens } as GenerationResult;
  Object.defineProperties(res, Object.getOwnPropertyDescriptors(samples[0]!));
  const top = compactTop(samples[0]!);
  if (top) compactTops.set(res, top);
  if (samples.length > 1) res.samples = samples;
  const first = seqs[0]!;
  if (first.limits.promptLogprobs !== null) {
    const { logprobs, top } = first.promptScores();
    res.promptLogprobs = logprobs;
    if (top) res.promptTopLogprobs = top;
  }
  return res;
}

/** A sample's alternatives as stored while it ran: `count` tokens of k each. */
export interface CompactTop {
  k: number;
  count: number;
  ids: Int32Array;
  lp: Float32Array;
}

const compactTops = new WeakMap<object, CompactTop>();

/** The stored alternatives behind a result's (or sample's) topLogprobs, for a writer that turns
 *  them into text a token at a time (job.ts) without making every object at once. */
export function compactTop(s: SampleResult): CompactTop | undefined {
  return compactTops.get(s);
}

/** Token i's alternatives as objects. */
export function topAt(c: CompactTop, i: number): TokenLogprob[] {
  return alternativesAt(c.ids, c.lp, c.k, i);
}

/** Place i's k alternatives, stored k a place in `ids` and `lp`, as objects. */
function alternativesAt(ids: Int32Array, lp: Float32Array | Float64Array, k: number, i: number): TokenLogprob[] {
  return Array.from({ length: k }, (_, j) => ({ token: ids[i * k + j]!, logprob: lp[i * k + j]! }));
}

/** topLogprobs made on first use (then kept): the objects of 128 samples × 200 tokens × 20
 *  alternatives took ~85 MiB beside the 4 MB stored, and a results file needs none of them. */
function lazyTop(res: SampleResult, c: CompactTop): void {
  let made: TokenLogprob[][] | undefined;
  Object.defineProperty(res, 'topLogprobs', {
    enumerable: true,
    configurable: true,
    get: () => (made ??= Array.from({ length: c.count }, (_, i) => topAt(c, i))),
    set: (v: TokenLogprob[][]) => {
      made = v;
    },
  });
  compactTops.set(res, c);
}

/** Prompt tokens decoded ahead of a sample's (vLLM uses 5; 4 covers a SentencePiece word start). */
const DETOKENIZE_CONTEXT = 4;

/** The prompt's last tokens a sample's text is decoded after, and their text. Tokens that begin
 *  inside a character (the rest of one that started before the window: the last 4 tokens of
 *  "I love 🦙 it" are 3 of the llama's 4 bytes and "▁it") are left out, the window then starting
 *  at a whole character; none when the window ends inside a character (the sample's first token
 *  would be decoded into it). Dropping the whole window whenever its text held U+FFFD (a character
 *  cut at its start, or a U+FFFD the prompt holds) lost the first token's leading space:
 *  "▁Something" alone decodes to "Something". The OpenAI layer's logprob tokens use the same
 *  context, so that they add up to the text. */
export function detokenizeContext(t: TextTokenizer, prompt: readonly number[]): [number[], string] {
  let context = prompt.slice(-DETOKENIZE_CONTEXT);
  // Each token's bytes (a special token's none: decoding skips it), or null where the vocabulary's
  // spelling is not known here; then the text alone tells, U+FFFD standing for a cut character.
  const bytes = context.map((id) => t.tokenBytes(id) ?? (decode(t, [id]) === '' ? Buffer.alloc(0) : null));
  if (bytes.every((b) => b !== null)) {
    const from = (k: number) => Buffer.concat(bytes.slice(k) as Buffer[]);
    let k = 0;
    while (k < context.length && isContinuation(from(k)[0])) k++;
    context = context.slice(k);
    if (endsInsideCharacter(from(k))) return [[], ''];
  } else {
    while (context.length > 0 && decode(t, context).startsWith('\ufffd')) context = context.slice(1);
    if (decode(t, context).endsWith('\ufffd')) return [[], ''];
  }
  return context.length === 0 ? [[], ''] : [context, decode(t, context)];
}

/** Whether `b` is a UTF-8 continuation byte (10xxxxxx): one that never begins a character. */
function isContinuation(b: number | undefined): boolean {
  return b !== undefined && b >= 0x80 && b < 0xc0;
}

/** Whether `b` ends with the start of a multi-byte character that more bytes could complete (the
 *  Unicode standard's table 3-7: a lead byte C2-F4 and fewer than its continuation bytes, each in
 *  range). A tail no byte can complete already decodes to U+FFFD, whatever follows. */
function endsInsideCharacter(b: Uint8Array): boolean {
  for (let k = 1; k <= Math.min(3, b.length); k++) {
    const c = b[b.length - k]!;
    if (isContinuation(c)) continue;
    const need = c >= 0xc2 && c < 0xe0 ? 1 : c >= 0xe0 && c < 0xf0 ? 2 : c >= 0xf0 && c < 0xf5 ? 3 : 0;
    if (need < k) return false;
    // The second byte's range is narrower after E0, ED, F0 and F4 (as firstBadSequence).
    const second = b[b.length - k + 1];
    const lo = c === 0xe0 ? 0xa0 : c === 0xf0 ? 0x90 : 0x80;
    const hi = c === 0xed ? 0x9f : c === 0xf4 ? 0x8f : 0xbf;
    return second === undefined || (second >= lo && second <= hi);
  }
  return false;
}

/** The tokenizer's decode, which refuses an empty list. */
function decode(t: TextTokenizer, ids: number[]): string {
  return ids.length === 0 ? '' : t.decode(ids);
}
