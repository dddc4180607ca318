// Where each model state of each parameter lives when training offloads: in RAM (a tensor of its
// own) or at an aligned offset of the state kind's file in the disk tier.
//
// State kinds (ZeRO's model states, src/optim/state.ts): 'param' (the bf16 copy compute reads; in
// fp32 precision compute reads the master, so there is no 'param'), 'grad' (f32), 'master', 'm',
// 'v' (f32). A share per kind says how much of it stays in RAM: the parameters are taken in their
// listed order and the first ones whose bytes fit in share × total stay, the rest go to the kind's
// file. So within any run of consecutive parameters (a layer, an optimizer sub-group) the disk
// ones are consecutive in the file too, and one read or write moves them all.
//
// Parameters are grouped in units, the granule the forward and backward fetch: unit j < L is
// layer j, unit L the globals (embeddings, final norm, projections, LM head). The files (and the
// RAM shares) take the parameters unit by unit (`order`), so that each unit's disk part is one
// range: the globals are not consecutive in the parameters' listed order.

import type { ModelConfig } from '../../models/config.js';
import { type LayerSlot, type NameTable, expectedShape } from '../../models/architecture.js';
import type { Precision } from '../../optim/state.js';
import { alignUp } from '../../tensor/disk/io.js';
import { paramList } from '../params.js';

export type StateKind = 'param' | 'grad' | 'master' | 'm' | 'v';
export const STATE_KINDS: readonly StateKind[] = ['param', 'grad', 'master', 'm', 'v'];

/** The kinds a run at this precision keeps (fp32 has no separate compute copy), and their bytes per parameter. */
export const stateKinds = (precision: Precision): StateKind[] => STATE_KINDS.filter((k) => k !== 'param' || precision === 'bf16');
export const stateBytesPerParam = (precision: Precision): number => stateKinds(precision).reduce((n, k) => n + kindBytes(k), 0);

/** Pieces of a parameter the optimizer streams start at multiples of this many elements: 4096-byte
 *  aligned in f32 and bf16 alike, so that each piece's disk range is one aligned transfer. */
export const PIECE_ALIGN = 2048;

/** The sub-group size the optimizer runs with for `n` asked: a multiple of PIECE_ALIGN, at least one. */
export const roundSubGroup = (n: number): number => Math.max(PIECE_ALIGN, Math.floor(n / PIECE_ALIGN) * PIECE_ALIGN);

/** Share of each kind kept in RAM (0 = all on disk, 1 = all in RAM); 'act' is the activation
 *  checkpoints (the layer inputs kept for the backward's recompute). */
export type Shares = Record<StateKind | 'act', number>;

export interface ParamInfo {
  index: number;
  name: string;
  shape: number[];
  size: number;
  /** Unit: layer index, or L for the globals. */
  unit: number;
  /** How a training pass uses it, for the traffic of a tiled one (./cost.ts). */
  use: TensorUse;
}

/** 'layer': a layer's tensor (its linears run twice a pass: forward and recompute); 'global': the
 *  globals' others (project_in/out: once); 'head': the LM head (once per chunk of logits rows);
 *  'embed': the token embedding (rows gathered); 'tied': both of the last two. */
export type TensorUse = 'layer' | 'global' | 'head' | 'embed' | 'tied';

export class Layout {
  readonly params: ParamInfo[] = [];
  /** Param indices of each unit (ascending). */
  readonly units: number[][];
  /** Parameter indices unit by unit: the order of the files. */
  readonly order: number[];
  /** Per kind, per parameter: byte offset in the kind's file, or -1 when in RAM. */
  readonly offsets: Record<StateKind, number[]>;
  /** Per kind: the file's length in bytes. */
  readonly fileBytes: Record<StateKind, number>;
  readonly kinds: StateKind[];
  /** The kind compute reads: the bf16 copy, or in fp32 precision the master itself. */
  readonly computeKind: StateKind;

  /** Per unit, the parameters fetched with it (all but the tiled ones). */
  readonly fetched: number[][];

  /** `tiled`: linear weights computed in tiles (./tiles.ts), never fetched whole with their unit.
   *  `names`: the model's tensors; or, under data-parallel ranks, this rank's slices as the
   *  "parameters" (src/train/partition/offload.ts: one per group, in unit order). */
  constructor(readonly config: ModelConfig, names: NameTable | readonly UnitTensor[], readonly precision: Precision, readonly shares: Shares,
    readonly tiled: ReadonlySet<string> = new Set()) {
    this.units = Array.from({ length: config.layers + 1 }, () => []);
    const list: readonly UnitTensor[] = Array.isArray(names) ? (names as readonly UnitTensor[]) : modelTensors(config, names as NameTable);
    for (const { name, shape, unit, use } of list) {
      const p = { index: this.params.length, name, shape: [...shape], size: shape.reduce((a, b) => a * b, 1), unit,
        use: use ?? (unit < config.layers ? 'layer' : 'global') };
      this.params.push(p);
      this.units[unit]!.push(p.index);
    }
    // Within a unit the tiled weights come last, so the fetched ones are one range.
    this.fetched = this.units.map((u) => u.filter((i) => !tiled.has(this.params[i]!.name)));
    this.order = this.units.flatMap((u, j) => [...this.fetched[j]!, ...u.filter((i) => tiled.has(this.params[i]!.name))]);
    this.kinds = stateKinds(precision);
    this.computeKind = precision === 'bf16' ? 'param' : 'master';
    this.offsets = {} as Record<StateKind, number[]>;
    this.fileBytes = {} as Record<StateKind, number>;
    for (const k of STATE_KINDS) {
      const total = this.params.reduce((n, p) => n + p.size * kindBytes(k), 0);
      let inRam = 0, offset = 0, spilled = false;
      const offsets = new Array<number>(this.params.length).fill(-1);
      for (const i of this.order) {
        const bytes = this.params[i]!.size * kindBytes(k);
        if (!this.kinds.includes(k)) continue;
        if (!spilled && inRam + bytes <= shares[k] * total) {
          inRam += bytes;
          continue;
        }
        // Once one parameter is on disk every later one is: the disk part is a suffix.
        spilled = true;
        offsets[i] = offset;
        offset += alignUp(bytes);
      }
      this.offsets[k] = offsets;
      this.fileBytes[k] = offset;
    }
  }

  isTiled(index: number): boolean {
    return this.tiled.has(this.params[index]!.name);
  }

  onDisk(kind: StateKind, index: number): boolean {
    return this.offsets[kind][index]! >= 0;
  }

  /** Whether a tiled weight gets a transposed copy on disk for its input gradient (./tiles.ts): one
   *  whose compute copy is on disk, but an untied embedding (its rows are gathered, never
   *  multiplied). */
  hasTransposedCopy(index: number): boolean {
    return this.isTiled(index) && this.onDisk(this.computeKind, index) && this.params[index]!.use !== 'embed';
  }

  /** The file range [start, end) holding the disk-resident `kind` of the given consecutive
   *  parameters, or null when all are in RAM. */
  range(kind: StateKind, indices: readonly number[]): { start: number; end: number } | null {
    let start = Infinity, end = -1;
    for (const i of indices) {
      const o = this.offsets[kind][i]!;
      if (o < 0) continue;
      start = Math.min(start, o);
      end = Math.max(end, o + alignUp(this.params[i]!.size * kindBytes(kind)));
    }
    return end < 0 ? null : { start, end };
  }

  /** Bytes of `kind` in RAM and on disk. */
  bytes(kind: StateKind): { ram: number; disk: number } {
    if (!this.kinds.includes(kind)) return { ram: 0, disk: 0 };
    let ram = 0, disk = 0;
    for (const p of this.params) {
      if (this.onDisk(kind, p.index)) disk += p.size * kindBytes(kind);
      else ram += p.size * kindBytes(kind);
    }
    return { ram, disk };
  }
}

/** A tensor and the unit it is fetched with. */
export interface UnitTensor {
  name: string;
  shape: readonly number[];
  unit: number;
  /** Default: 'layer' in a layer's unit, else 'global'. */
  use?: TensorUse;
}

/** The model's tensors in paramList's order, each with its unit (layer j, or L for the globals). */
function modelTensors(config: ModelConfig, names: NameTable): UnitTensor[] {
  const layerOf = new Map<string, number>();
  for (let j = 0; j < config.layers; j++) {
    for (const t of Object.values(names.layer)) if (t) for (const part of ['weight', 'bias']) layerOf.set(`${t.replace('{L}', String(j))}.${part}`, j);
  }
  const g = names.global, head = `${g.lm_head}.weight`, embed = `${g.embed}.weight`;
  const use = (name: string): TensorUse | undefined => name === head ? (head === embed ? 'tied' : 'head') : name === embed ? 'embed' : undefined;
  return paramList(config, names).map(({ name, slot, part }) => ({ name, shape: expectedShape(config, slot as LayerSlot, part), unit: layerOf.get(name) ?? config.layers, use: use(name) }));
}

export function kindBytes(k: StateKind): number {
  return k === 'param' ? 2 : 4;
}
