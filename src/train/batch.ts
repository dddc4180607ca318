// A training micro-batch: sequences of different lengths packed one after another without
// padding (seqStarts as in generation's prefill), with the target of every token.
//
// Labels follow the Hugging Face convention: labels[t + 1] is the target predicted after token t
// (the shift happens inside each sequence, never across two), −100 means no loss, and a
// sequence's last token has no target. Without labels the targets are the next tokens.

import { IGNORE_INDEX } from '../backend/kernels-train.js';
import { type ModelConfig, positionsNote } from '../models/config.js';
import { UserError } from '../util/errors.js';

/** One training sequence. */
export interface TrainSequence {
  tokenIds: ArrayLike<number>;
  /** Same length as tokenIds; −100 = no loss on that target. Default: tokenIds. */
  labels?: ArrayLike<number>;
}

export interface MicroBatch {
  ids: Int32Array; // [t]
  positions: Int32Array; // [t]
  seqStarts: Int32Array; // [sequences + 1]
  /** The target after each token [t], IGNORE_INDEX where there is none. */
  targets: Int32Array;
  /** Targets that count (not IGNORE_INDEX). */
  count: number;
}

/** Packs `seqs` for model `c` (an over-long sequence's error says where the positions limit comes
 *  from when not max_position_embeddings: config.ts positionsNote, a sliding window). `index`, the
 *  micro-batch's place in a step of several, is named in errors: "sequence 0" alone did not say
 *  which micro-batch held the bad one. */
export function packMicroBatch(seqs: readonly TrainSequence[], c: ModelConfig, index?: number): MicroBatch {
  const [vocab, maxPositions] = [c.vocabSize, c.maxPositions];
  const where = index === undefined ? '' : `micro-batch ${index}, `;
  if (seqs.length === 0) throw new UserError(`${index === undefined ? '' : `micro-batch ${index} is empty: `}a micro-batch needs at least one sequence`);
  const seqStarts = new Int32Array(seqs.length + 1);
  seqs.forEach((s, i) => {
    const n = s.tokenIds.length;
    if (n === 0) throw new UserError(`${where}sequence ${i} is empty`);
    if (n > maxPositions) throw new UserError(`${where}sequence ${i} has ${n} tokens, more than the model's ${maxPositions} positions${positionsNote(c)}`);
    if (s.labels && s.labels.length !== n) throw new UserError(`${where}sequence ${i}: labels has ${s.labels.length} entries, token_ids ${n}`);
    for (let p = 0; p < n; p++) {
      const id = s.tokenIds[p]!;
      if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new UserError(`${where}sequence ${i}: token ${p} = ${id} is outside the vocabulary of ${vocab}`);
    }
    seqStarts[i + 1] = seqStarts[i]! + n;
  });
  const t = seqStarts[seqs.length]!;
  const ids = new Int32Array(t), positions = new Int32Array(t), targets = new Int32Array(t);
  let count = 0;
  seqs.forEach((s, i) => {
    const o = seqStarts[i]!, n = s.tokenIds.length;
    const labels = s.labels ?? s.tokenIds;
    for (let p = 0; p < n; p++) {
      ids[o + p] = s.tokenIds[p]!;
      positions[o + p] = p;
      const target = p + 1 < n ? labels[p + 1]! : IGNORE_INDEX;
      if (target !== IGNORE_INDEX && !(Number.isInteger(target) && target >= 0 && target < vocab)) {
        throw new UserError(`${where}sequence ${i}: label ${p + 1} = ${target} is neither ${IGNORE_INDEX} nor a token id below ${vocab}`);
      }
      targets[o + p] = target;
      if (target !== IGNORE_INDEX) count++;
    }
  });
  return { ids, positions, seqStarts, targets, count };
}
