// The LM head's logits in training are made a chunk of rows at a time (src/train/model.ts): at
// most HEAD_CHUNK_VALUES values (64 MB), whatever the micro-batch's tokens. The memory planners
// charge this chunk, not a row of logits per token (which refused runs that fit: 396 MiB charged
// for a 32000-token vocabulary at 1024 tokens, ~3 GB for Llama 3's at 2048).

export const HEAD_CHUNK_VALUES = 16 << 20;

/** Rows of logits made at once for `rows` tokens over a vocabulary of `vocab`. */
export function headChunkRows(rows: number, vocab: number): number {
  return Math.max(1, Math.min(rows, Math.floor(HEAD_CHUNK_VALUES / vocab)));
}
