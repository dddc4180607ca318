// A GGUF file of a Llama shape with random weights, for llama.cpp in bench/peers (never committed:
// written under .bench/). Only what llama.cpp needs to load and run a "llama" model: the
// hyperparameters, a SentencePiece-style vocabulary of placeholder pieces (llama.cpp refuses a model
// without one), norms in F32 and matrices in BF16 or Q4_0. Random values are as good as the real
// ones for speed, so they are made here rather than converted from our safetensors.
import fs from 'node:fs';

export interface LlamaShape { hidden: number; layers: number; heads: number; kvHeads: number; ffn: number; vocab: number }
type Format = 'bf16' | 'q4_0';

const T = { u32: 4, i32: 5, f32: 6, str: 8, arr: 9 } as const;
const GGML = { f32: 0, q4_0: 2, bf16: 30 } as const;
const ALIGN = 32;

class Buf {
  parts: Buffer[] = [];
  size = 0;
  push(b: Buffer) { this.parts.push(b); this.size += b.length; }
  u32(v: number) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  i32(v: number) { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
  f32(v: number) { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
  u64(v: number) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  str(s: string) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
}

/** Random bytes from a fixed seed (xorshift32), fast enough for a gigabyte. */
function fillRandom(u8: Uint8Array, seed: number): void {
  const u32 = new Uint32Array(u8.buffer, u8.byteOffset, u8.byteLength >>> 2);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < u32.length; i++) { s ^= s << 13; s ^= s >>> 17; s ^= s << 5; u32[i] = s >>> 0; }
}

/** Bytes of one matrix [rows, cols] (cols the inner, contiguous dimension). */
function matrix(rows: number, cols: number, format: Format, seed: number): Buffer {
  const n = rows * cols;
  if (format === 'bf16') {
    // bf16 of uniform values in ±0.03: sign and low mantissa bits random, exponent fixed near 2^-6.
    const b = Buffer.alloc(n * 2);
    fillRandom(b, seed);
    const u16 = new Uint16Array(b.buffer, b.byteOffset, n);
    for (let i = 0; i < n; i++) u16[i] = (u16[i]! & 0x807f) | 0x3c80;
    return b;
  }
  // Q4_0: blocks of 32 values, an f16 scale then 16 bytes of 4-bit codes.
  const blocks = n / 32;
  const b = Buffer.alloc(blocks * 18);
  fillRandom(b, seed);
  for (let i = 0; i < blocks; i++) b.writeUInt16LE(0x2000 /* f16 ≈ 0.0078 */, i * 18);
  return b;
}

export function writeLlamaGguf(file: string, s: LlamaShape, format: Format): void {
  const kv = new Buf();
  let kvCount = 0;
  const key = (k: string, type: number) => { kv.str(k); kv.u32(type); kvCount++; };
  const u32 = (k: string, v: number) => { key(k, T.u32); kv.u32(v); };
  key('general.architecture', T.str); kv.str('llama');
  key('general.name', T.str); kv.str('tierlm-bench-random');
  u32('general.file_type', format === 'bf16' ? 32 : 2);
  u32('general.alignment', ALIGN);
  u32('llama.context_length', 4096);
  u32('llama.embedding_length', s.hidden);
  u32('llama.block_count', s.layers);
  u32('llama.feed_forward_length', s.ffn);
  u32('llama.rope.dimension_count', s.hidden / s.heads);
  u32('llama.attention.head_count', s.heads);
  u32('llama.attention.head_count_kv', s.kvHeads);
  u32('llama.vocab_size', s.vocab);
  key('llama.attention.layer_norm_rms_epsilon', T.f32); kv.f32(1e-5);
  key('tokenizer.ggml.model', T.str); kv.str('llama');
  const piece = (i: number) => (i === 0 ? '<unk>' : i === 1 ? '<s>' : i === 2 ? '</s>' : i < 259 ? `<0x${(i - 3).toString(16).toUpperCase().padStart(2, '0')}>` : `▁t${i}`);
  key('tokenizer.ggml.tokens', T.arr); kv.u32(T.str); kv.u64(s.vocab);
  for (let i = 0; i < s.vocab; i++) kv.str(piece(i));
  key('tokenizer.ggml.scores', T.arr); kv.u32(T.f32); kv.u64(s.vocab);
  for (let i = 0; i < s.vocab; i++) kv.f32(-i);
  // Token types: 1 normal, 2 unknown, 3 control, 6 byte.
  key('tokenizer.ggml.token_type', T.arr); kv.u32(T.i32); kv.u64(s.vocab);
  for (let i = 0; i < s.vocab; i++) kv.i32(i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
  u32('tokenizer.ggml.bos_token_id', 1);
  u32('tokenizer.ggml.eos_token_id', 2);
  u32('tokenizer.ggml.unknown_token_id', 0);

  // Tensors: name, [inner, outer] dims, kind.
  const kvDim = (s.hidden / s.heads) * s.kvHeads;
  const tensors: [string, number[], 'norm' | 'matrix'][] = [['token_embd.weight', [s.hidden, s.vocab], 'matrix']];
  for (let j = 0; j < s.layers; j++) {
    const p = `blk.${j}.`;
    tensors.push([p + 'attn_norm.weight', [s.hidden], 'norm'], [p + 'attn_q.weight', [s.hidden, s.hidden], 'matrix'],
      [p + 'attn_k.weight', [s.hidden, kvDim], 'matrix'], [p + 'attn_v.weight', [s.hidden, kvDim], 'matrix'],
      [p + 'attn_output.weight', [s.hidden, s.hidden], 'matrix'], [p + 'ffn_norm.weight', [s.hidden], 'norm'],
      [p + 'ffn_gate.weight', [s.hidden, s.ffn], 'matrix'], [p + 'ffn_up.weight', [s.hidden, s.ffn], 'matrix'],
      [p + 'ffn_down.weight', [s.ffn, s.hidden], 'matrix']);
  }
  tensors.push(['output_norm.weight', [s.hidden], 'norm'], ['output.weight', [s.hidden, s.vocab], 'matrix']);

  const info = new Buf();
  const sizes: number[] = [];
  let offset = 0;
  for (const [name, dims, kind] of tensors) {
    const n = dims.reduce((x, y) => x * y, 1);
    const bytes = kind === 'norm' ? n * 4 : format === 'bf16' ? n * 2 : (n / 32) * 18;
    info.str(name); info.u32(dims.length); for (const d of dims) info.u64(d);
    info.u32(kind === 'norm' ? GGML.f32 : GGML[format]); info.u64(offset);
    sizes.push(bytes);
    offset += Math.ceil(bytes / ALIGN) * ALIGN;
  }
  const head = new Buf();
  head.push(Buffer.from('GGUF', 'ascii')); head.u32(3); head.u64(tensors.length); head.u64(kvCount);
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  let pos = 0;
  const write = (b: Buffer) => { fs.writeSync(fd, b); pos += b.length; };
  const pad = () => { if (pos % ALIGN) write(Buffer.alloc(ALIGN - (pos % ALIGN))); };
  for (const b of [...head.parts, ...kv.parts, ...info.parts]) write(b);
  pad();
  tensors.forEach(([, dims, kind], i) => {
    if (kind === 'norm') { const f = new Float32Array(dims[0]!).fill(1); write(Buffer.from(f.buffer)); }
    else write(matrix(dims[1]!, dims[0]!, format, i + 1));
    void sizes;
    pad();
  });
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}
