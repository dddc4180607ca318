// The addon loads on every x86-64 CPU only if nothing compiled for AVX2 or AVX-512 runs before the
// run-time dispatch (native/core/cpu.cpp) has chosen the instruction set. Two ways code of those
// objects runs unasked, both invisible on a CPU that has the instructions:
// - a dynamic initializer at namespace scope (`_GLOBAL__sub_I_…`): it runs when the addon is opened,
//   and GCC vectorises it for the object's target (an AMX tile configuration built with zmm stores
//   killed every process on AVX2-only CPUs with SIGILL);
// - an inline or template function emitted as a weak symbol (W, V, u): the linker keeps one copy of
//   it for the whole addon, possibly the AVX-512 one, and generic code then calls that copy.
// This reads the objects' symbol tables with `nm`, which the C++ toolchain that built them provides.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const objRoot = path.resolve('build/Release/obj.target');

function objects(target: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.o')) out.push(p);
    }
  };
  walk(path.join(objRoot, target));
  return out;
}

describe('objects built for one instruction set', () => {
  for (const target of ['kernels_avx2', 'kernels_avx512']) {
    it(`${target}: no static initializers and no weak symbols`, () => {
      const files = objects(target);
      expect(files.length, `no objects under ${objRoot}/${target}: was the addon built?`).toBeGreaterThan(0);
      const offending: string[] = [];
      for (const file of files) {
        const table = execFileSync('nm', ['--defined-only', file], { encoding: 'utf8' });
        for (const line of table.split('\n')) {
          const [, type, name] = line.trim().split(/\s+/);
          if (name === undefined) continue;
          if (name.startsWith('_GLOBAL__sub_I') || /^[WVu]$/.test(type)) {
            offending.push(`${path.relative(objRoot, file)}: ${type} ${name}`);
          }
        }
      }
      expect(offending).toEqual([]);
    });
  }
});
