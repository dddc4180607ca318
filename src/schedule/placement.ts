// Placement by bytes. A group of tensors (one layer's weights, the whole KV cache, ...) is laid
// out in a fixed order and cut into a device prefix, a RAM middle and a disk suffix at byte
// offsets, so each tier holds its share to within one granule, whatever the tensor sizes.
// FlexGen placed whole tensors by where their midpoints fell, so nearby percentages could
// differ by several times in bytes; cutting inside tensors avoids that.

import type { Shares } from '../policy/policy.js';

/** Bytes of one item on each tier: [0, device) on the device, [device, device + ram) in RAM, the rest on disk. */
export interface ItemSplit {
  device: number;
  ram: number;
  disk: number;
}

/**
 * Splits items of the given sizes in order. Cut points are rounded to a multiple of the item's
 * granule (1 = any byte), so a tier's share is met within one granule.
 */
export function splitByBytes(sizes: readonly number[], shares: Shares, granules?: readonly number[]): ItemSplit[] {
  const total = sizes.reduce((a, b) => a + b, 0);
  const cutDevice = Math.round(total * shares.device);
  const cutRam = Math.round(total * (shares.device + shares.ram));
  const out: ItemSplit[] = [];
  let start = 0;
  sizes.forEach((size, i) => {
    const g = Math.max(1, granules?.[i] ?? 1);
    const clampCut = (cut: number) => {
      const local = Math.min(size, Math.max(0, cut - start));
      if (local === 0 || local === size) return local;
      return Math.min(size, Math.round(local / g) * g);
    };
    const a = clampCut(cutDevice);
    const b = Math.max(a, clampCut(cutRam));
    out.push({ device: a, ram: b - a, disk: size - b });
    start += size;
  });
  return out;
}

/** Rows of `rows` items (for example cache rows of equal size) on each tier. */
export function splitRows(rows: number, shares: Shares): { device: number; ram: number; disk: number } {
  const device = Math.round(rows * shares.device);
  const ram = Math.min(rows - device, Math.round(rows * (shares.device + shares.ram)) - device);
  return { device, ram, disk: rows - device - ram };
}

/** RAM rows (device included) of each of `blocks` blocks of `rows` rows under `shares`: the rows
 *  splitRows keeps in RAM, to the first blocks first (the cache and activation stores place them
 *  so, and the memory plan counts them so). */
export function blockRamRows(blocks: number, rows: number, shares: Shares): number[] {
  const split = splitRows(blocks * rows, shares);
  let left = split.device + split.ram;
  return Array.from({ length: blocks }, () => {
    const r = Math.min(rows, left);
    left -= r;
    return r;
  });
}

export const IO_ALIGN = 4096;

export function alignUp(n: number, a = IO_ALIGN): number {
  return Math.ceil(n / a) * a;
}

export function alignDown(n: number, a = IO_ALIGN): number {
  return Math.floor(n / a) * a;
}
