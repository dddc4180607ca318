// The whole model's training pass over one micro-batch: embeddings, the layers (src/train/layer.ts),
// the final norm, OPT's project_out and the LM head with its loss, then everything backward.
//
// Order of work for a micro-batch with L layers (j counts layers):
//   forward   embed → layer 0 … layer L−1, keeping each layer's input (checkpointing on) or each
//             layer's whole tape (off)
//   head      final norm, project_out, chunked LM head + cross-entropy and its backward
//   backward  layer L−1 … 0: with checkpointing the layer is first run forward again from its
//             kept input, then backward; then the embeddings' backward
// Each layer's parameters are fetched from the ParamSource right before the layer runs and
// released right after (twice per step with checkpointing, as ZeRO-3 gathers them); gradients
// accumulate into the source's buffers, so micro-batches of one step simply add up.

import type { Backend } from '../backend/index.js';
import { normBackward, normForward } from '../models/ops.js';
import { Workspace } from '../models/workspace.js';
import { Tensor } from '../tensor/tensor.js';
import type { MicroBatch } from './batch.js';
import { type LayerTape, TrainLayer } from './layer.js';
import type { GlobalGrads, GlobalParams, ParamSource } from './params.js';
import { headChunkRows } from './head-chunk.js';

type F32 = Tensor<'f32'>;

export interface LossSum {
  /** Σ cross-entropy over the counted targets. */
  loss: number;
  /** Targets counted (not −100). */
  count: number;
}

export class TrainModel {
  private readonly layer: TrainLayer;
  /** Gradients flowing between and inside layers. */
  private readonly grads = new Workspace();
  /** Embeddings, head and the kept layer inputs. */
  private readonly globals = new Workspace();
  /** One tape workspace shared by all layers (checkpointing), or one per layer. */
  private readonly tapes: Workspace[];

  constructor(
    readonly source: ParamSource,
    private readonly b: Backend,
    readonly checkpoint = true,
  ) {
    this.layer = new TrainLayer(source.config, b, source.mode, this.grads);
    this.tapes = Array.from({ length: checkpoint ? 1 : source.config.layers }, () => new Workspace());
  }

  /**
   * Forward and backward over one micro-batch: adds scale · ∂(Σ losses)/∂θ into the source's
   * gradient buffers (scale = 1 / the step's total target count gives the step's mean loss).
   */
  async lossAndGrad(batch: MicroBatch, scale: number): Promise<LossSum> {
    const c = this.source.config;
    const src = this.source;
    // A source that takes the kept inputs off RAM (activation checkpoints on disk): the model
    // then needs only two input slots, used in turn.
    const away = this.checkpoint && src.keepInput !== undefined && src.recallInput !== undefined;
    await src.prepareGlobals?.(true);
    const gp = src.fetchGlobals(true);
    const gg = src.globalGrads();
    let x = this.embed(gp, batch);
    const kept: (LayerTape | F32)[] = [];
    for (let j = 0; j < c.layers; j++) {
      await src.prepareLayer?.(j, false);
      const p = src.fetchLayer(j, false);
      if (away) await src.keepInput!(j, x);
      const tape = this.layer.forward(p, x, batch, this.tapes[this.checkpoint ? 0 : j]!);
      src.releaseLayer(j);
      kept.push(this.checkpoint ? x : tape);
      x = tape.mlp.out;
      // The shared tape is overwritten by the next layer: keep the output as that layer's input.
      if (this.checkpoint) x = this.copy(x, away ? `in${(j + 1) % 2}` : `in${j + 1}`);
    }
    const { loss, count, dx } = this.head(gp, gg, x, batch, scale);
    let dOut = dx;
    for (let j = c.layers - 1; j >= 0; j--) {
      await src.prepareLayer?.(j, true);
      const k = away ? await src.recallInput!(j, this.globals.get('recalled', x.shape)) : kept[j]!;
      const p = src.fetchLayer(j, true);
      const g = src.layerGrads(j);
      const tape = k instanceof Tensor ? this.layer.forward(p, k, batch, this.tapes[0]!) : k;
      dOut = this.layer.backward(p, g, tape, batch, dOut, this.grads.get(`d${j % 2}`, dOut.shape));
      src.releaseLayerGrads(j);
      src.releaseLayer(j);
    }
    this.embedBackward(gp, gg, batch, dOut);
    src.releaseGlobalGrads();
    src.releaseGlobals();
    return { loss, count };
  }

  /** The loss alone (no gradient): for evaluation. */
  async loss(batch: MicroBatch): Promise<LossSum> {
    const c = this.source.config;
    await this.source.prepareGlobals?.(false);
    const gp = this.source.fetchGlobals(false);
    let x = this.embed(gp, batch);
    for (let j = 0; j < c.layers; j++) {
      await this.source.prepareLayer?.(j, false);
      const p = this.source.fetchLayer(j, false);
      x = this.copy(this.layer.forward(p, x, batch, this.tapes[0]!).mlp.out, `in${(j + 1) % 2}`);
      this.source.releaseLayer(j);
    }
    const h = this.headInput(gp, x);
    const vocab = c.vocabSize, rows = h.shape[0]!;
    const chunk = this.headChunk(rows);
    let loss = 0, count = 0;
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const r1 = Math.min(rows, r0 + chunk);
      const logits = this.b.matmul(h.rows(r0, r1), gp.head.w, null, this.globals.get('logits', [r1 - r0, vocab]));
      const part = this.b.train.softmaxCrossEntropy(logits, new Tensor('i32', [r1 - r0], batch.targets.subarray(r0, r1)), 0);
      loss += part.loss;
      count += part.count;
    }
    this.source.releaseGlobals();
    return { loss, count };
  }

  private copy(x: F32, slot: string): F32 {
    const out = this.globals.get(slot, x.shape);
    out.data.set(x.data);
    return out;
  }

  // ---- embeddings -------------------------------------------------------------------------------

  /** Token embeddings (through project_in) plus learned positions: x0 [t, hidden]. */
  private embed(gp: GlobalParams, batch: MicroBatch): F32 {
    const c = this.source.config;
    const t = batch.ids.length;
    const ids = new Tensor('i32', [t], batch.ids), into = this.globals.get('e', [t, c.embedDim]);
    const e = gp.embed instanceof Tensor ? this.b.embedding(gp.embed, ids, into) : gp.embed.gather(ids, into);
    const x = this.globals.get('in0', [t, c.hidden]);
    if (gp.projectIn) this.b.matmul(e, gp.projectIn.w, gp.projectIn.b, x);
    else x.data.set(e.data);
    if (gp.posEmbed) this.b.add(x, this.b.embedding(gp.posEmbed, this.posIds(batch), this.globals.get('pos', x.shape)), x);
    return x;
  }

  private posIds(batch: MicroBatch): Tensor<'i32'> {
    const c = this.source.config;
    const offset = c.positions.kind === 'learned' ? c.positions.offset : 0;
    return new Tensor('i32', [batch.positions.length], batch.positions.map((p) => p + offset));
  }

  private embedBackward(gp: GlobalParams, gg: GlobalGrads, batch: MicroBatch, dx: F32): void {
    const t = batch.ids.length;
    if (gg.posEmbed) this.b.train.embeddingBackward(dx, this.posIds(batch), gg.posEmbed);
    const de = gp.projectIn
      ? this.layer.linearBackward(this.globals.get('e', [t, this.source.config.embedDim]), dx, gp.projectIn, gg.projectIn!,
        this.grads.get('de', [t, this.source.config.embedDim]))
      : dx;
    this.b.train.embeddingBackward(de, new Tensor('i32', [t], batch.ids), gg.embed);
  }

  // ---- head -------------------------------------------------------------------------------------

  /** Rows of logits made at once (./head-chunk.ts). */
  private headChunk(rows: number): number {
    return headChunkRows(rows, this.source.config.vocabSize);
  }

  /** What the LM head multiplies: project_out(finalNorm(x)) [t, embedDim]. */
  private headInput(gp: GlobalParams, x: F32): F32 {
    const c = this.source.config;
    const h = gp.finalNorm ? normForward(this.b, c, x, gp.finalNorm, this.globals.get('final', x.shape)) : x;
    return gp.projectOut ? this.b.matmul(h, gp.projectOut.w, gp.projectOut.b, this.globals.get('proj', [x.shape[0]!, c.embedDim])) : h;
  }

  /** Loss of the last layer's output x and its gradient dx; head and final-norm gradients accumulate. */
  private head(gp: GlobalParams, gg: GlobalGrads, x: F32, batch: MicroBatch, scale: number): LossSum & { dx: F32 } {
    const c = this.source.config;
    const t = x.shape[0]!;
    const hP = this.headInput(gp, x);
    const dhP = this.grads.get('dproj', hP.shape);
    const { loss, count } = this.b.train.lmHeadLoss({
      hidden: hP, head: gp.head.w, headT: gp.head.wT!, labels: new Tensor('i32', [t], batch.targets), scale, dHidden: dhP,
      dWeight: gg.head, mode: this.source.mode, chunkRows: this.headChunk(t), logits: this.globals.get('logits', [this.headChunk(t), c.vocabSize]),
    });
    const hF = gp.finalNorm ? this.globals.get('final', x.shape) : x;
    const dhF = gp.projectOut ? this.layer.linearBackward(hF, dhP, gp.projectOut, gg.projectOut!, this.grads.get('dfinal', x.shape)) : dhP;
    const dx = gp.finalNorm ? normBackward(this.b, c, x, dhF, gp.finalNorm, gg.finalNorm!, this.grads.get('dlast', x.shape)) : dhF;
    return { loss, count, dx };
  }
}
