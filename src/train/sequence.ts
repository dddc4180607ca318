// A training sequence: token ids with their labels in the Hugging Face convention. labels has the
// length of ids; labels[t] is the target predicted after token t-1 (so labels[0] is never a
// target), and -100 marks a position that carries no loss.

export const IGNORE_INDEX = -100;

export interface Sequence {
  ids: Int32Array;
  labels: Int32Array;
  /** The line of the data file the sequence (or, for packed text, its first token) came from. */
  line: number;
}

/** What the model reads to build sequences: its vocabulary, and the text tokenizer when it has one. */
export interface DataVocab {
  vocabSize: number;
  /** Appended after each text document and each completion; null when the model has none. */
  eosTokenId: number | null;
}

/** Targets of a sequence: positions 1.. whose label is not ignored. */
export function countTargets(labels: Int32Array): number {
  let n = 0;
  for (let t = 1; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) n++;
  return n;
}

/** Length of the common prefix of two token lists: where a rendered or tokenized prefix ends
 *  inside the whole. A token straddling the boundary belongs to the part after it. */
export function commonPrefix(whole: ArrayLike<number>, prefix: ArrayLike<number>): number {
  const n = Math.min(whole.length, prefix.length);
  let i = 0;
  while (i < n && whole[i] === prefix[i]) i++;
  return i;
}
