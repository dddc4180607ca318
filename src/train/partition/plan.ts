// The RAM plan of one data-parallel rank that offloads (./offload.ts): its states are its slices,
// a 1/N share of every group (./layout.ts), placed on RAM and disk as one process places the whole
// model's (../offload/plan.ts), in the same order of preference; what it holds whole is what the
// collectives need — the gathered parameters of two layers and the globals, the full gradient
// buffers a backward adds into before they are reduce-scattered — and one layer's compute.
// Weights are not tiled and activation checkpoints stay in RAM under ranks.

import type { MemoryItem } from '../../policy/memory.js';
import { alignUp } from '../../tensor/disk/io.js';
import { Layout, type StateKind, type UnitTensor, kindBytes, stateBytesPerParam } from '../offload/layout.js';
import { type OffloadPlan, type OffloadPlanInput, placeStates, stepActivationBytes, withSubGroups } from '../offload/plan.js';
import { TENSOR_FILE_RAM_BYTES } from '../tensor-file.js';
import { type Layout as Partition, partitionLayout } from './layout.js';

/** This rank's slices as the tensors of an offload layout: group i's slice is "group<i>", fetched
 *  with unit L (the globals) for i = 0 and with layer i − 1 otherwise. Every rank's slices have the
 *  same sizes, so the plan is the same on every rank. */
export function sliceTensors(p: Partition): UnitTensor[] {
  const L = p.groups.length - 1;
  return p.groups.map((g, i) => ({ name: `group${i}`, shape: [g.slice], unit: i === 0 ? L : i - 1 }));
}

export function planRank(o: OffloadPlanInput & { ranks: number }): OffloadPlan {
  const perElem = stateBytesPerParam(o.precision);
  // Three sets of sub-group buffers take a 16th of the limit by default.
  return withSubGroups(o, Math.floor(o.ram / 16 / (3 * perElem)), (subGroupSize) => planRankOnce({ ...o, subGroupSize }));
}

function planRankOnce(o: OffloadPlanInput & { ranks: number; subGroupSize: number }): OffloadPlan {
  const c = o.config, t = o.maxTokens, N = o.ranks;
  const part = partitionLayout(c, o.names, N, 0);
  const none = { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 };
  const probe = new Layout(c, sliceTensors(part), o.precision, none);
  const computeKind: StateKind = o.precision === 'bf16' ? 'param' : 'master';
  const whole = (g: number) => part.groups[g]!.slice * N;
  const layerMax = Math.max(0, ...part.groups.slice(1).map((_, j) => whole(j + 1)));
  const sliceMax = Math.max(0, ...part.groups.map((g) => g.slice));
  const layerSlice = Math.max(0, ...part.groups.slice(1).map((g) => g.slice));
  const kb = kindBytes(computeKind);
  const perElem = stateBytesPerParam(o.precision);
  const total = part.groups.reduce((n, g) => n + g.slice, 0);
  const subGroupSize = o.subGroupSize;
  const subGroupBytes = 3 * (Math.max(2048, Math.min(subGroupSize, total)) * perElem + probe.kinds.length * 4096);
  const items: MemoryItem[] = [
    { what: 'gathered parameters (two layers, the globals)', ram: kb * (2 * layerMax + whole(0)), disk: 0 },
    { what: 'sent parameter slices (two layers, the globals)', ram: 2 * alignUp(kb * layerSlice) + alignUp(kb * part.groups[0]!.slice), disk: 0 },
    // Full buffers the backward adds into (two layers, the globals), and the slices they reduce to.
    { what: 'gradient buffers and reduced slices', ram: 4 * (2 * layerMax + whole(0)) + 4 * 4 * sliceMax, disk: 0 },
    { what: 'packed weights', ram: 2 * 4 * (2 * layerMax + whole(0)), disk: 0 },
    { what: 'optimizer sub-group buffers (three)', ram: subGroupBytes, disk: 0 },
    { what: o.checkpointActivations ? 'activations and gradients of one layer, head, logits' : 'every layer\'s activations, gradients, head, logits',
      ram: stepActivationBytes(c, t, o.checkpointActivations), disk: 0 },
    // Saving gathers each group's masters whole (rank 0 writes them).
    { what: 'checkpoint save and resume', ram: TENSOR_FILE_RAM_BYTES + TENSOR_FILE_RAM_BYTES / 4 + 4 * Math.max(whole(0), layerMax), disk: 0 },
    // ...and, offloaded, spills the whole model's fp32 masters to its disk directory while it
    // writes them (checkpoint.ts MasterSpill; saveParams alike): 4 bytes a parameter of the whole
    // model, not of a rank's share. (The same plan on every rank: only rank 0 writes it.)
    { what: 'checkpoint save: the gathered fp32 masters, spilled', ram: 0, disk: 4 * total * N },
  ];
  return placeStates(o, probe, items, { subGroupSize, optimizerSets: 3, maxDepth: 1, tileBytes: 0, tiled: new Set(), actInRam: true,
    actTotal: o.checkpointActivations ? (c.layers + 1) * 4 * t * c.hidden : 0 });
}
