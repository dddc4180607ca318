// Docs that cannot drift: docs/cli.md lists exactly the flags each command's --help lists, every
// flag the README mentions exists, and package.json says only what exists.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../src/cli/main.js';
import { repoRoot } from './helpers/fixtures.js';

const read = (f: string) => fs.readFileSync(path.join(repoRoot, f), 'utf8');
const flagsIn = (text: string) => [...text.matchAll(/--[a-z][a-z0-9-]*/g)].map((m) => m[0]);

/** Flags per command from --help, as commander defines them. */
function helpFlags(): Map<string, Set<string>> {
  return new Map(buildProgram().commands.map((c) => [c.name(), new Set(c.options.map((o) => o.long!))]));
}

/** Flags per command from docs/cli.md: the first column of the tables in `## tierlm CMD`, and in
 *  shared sections titled `## … flags (cmd, cmd)`. */
function documentedFlags(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const section of read('docs/cli.md').split(/^## /m).slice(1)) {
    const title = section.split('\n', 1)[0]!;
    const own = /^tierlm (\S+)/.exec(title);
    const shared = /flags \(([^)]*)\)/.exec(title);
    const commands = own ? [own[1]!] : shared ? shared[1]!.split(',').map((s) => s.trim()) : [];
    const flags = section.split('\n').filter((l) => l.startsWith('| `--')).flatMap((l) => flagsIn(l.split(' | ')[0]!));
    for (const c of commands) {
      const set = out.get(c) ?? new Set<string>();
      flags.forEach((f) => set.add(f));
      out.set(c, set);
    }
  }
  return out;
}

describe('docs', () => {
  it('docs/cli.md lists every flag of every command, and no flag a command lacks', () => {
    const help = helpFlags();
    const docs = documentedFlags();
    expect([...docs.keys()].sort()).toEqual([...help.keys()].sort());
    for (const [cmd, flags] of help) {
      const documented = docs.get(cmd)!;
      expect([...flags].filter((f) => !documented.has(f)), `tierlm ${cmd}: in --help, not in docs/cli.md`).toEqual([]);
      expect([...documented].filter((f) => !flags.has(f)), `tierlm ${cmd}: in docs/cli.md, not in --help`).toEqual([]);
    }
  });

  it('every tierlm flag the README mentions is a flag of some command', () => {
    const all = new Set(['--help', '--version', ...[...helpFlags().values()].flatMap((s) => [...s])]);
    // Code spans and blocks about tierlm (not `node --import tsx …`), and bare flags in prose.
    const code = [...read('README.md').matchAll(/```[\s\S]*?```|`[^`\n]+`/g)].map((m) => m[0]).filter((c) => c.includes('tierlm') || c.startsWith('`--'));
    const flags = code.flatMap(flagsIn);
    expect(flags.length).toBeGreaterThan(30);
    expect(flags.filter((f) => !all.has(f))).toEqual([]);
  });

  it("package.json's description claims only what exists", () => {
    const pkg = JSON.parse(read('package.json'));
    if (!fs.existsSync(path.join(repoRoot, 'src/train'))) expect(pkg.description).not.toMatch(/train/i);
    expect(pkg.description).toMatch(/larger than memory/);
  });
});
