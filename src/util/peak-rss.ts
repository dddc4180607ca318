// This process's peak resident memory, as a user's `--ram` limit is judged.
//
// The kernel's high-water mark of this address space (VmHWM) where Linux gives it, not getrusage's
// maxRSS: Linux carries ru_maxrss over exec from the forked copy of the parent, so a run started
// by a process that once held 400 MB reported 400 MB whatever it used itself.
import fs from 'node:fs';

export function peakRssBytes(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // Not Linux: maxRSS is the best there is.
  }
  return process.resourceUsage().maxRSS * 1024;
}
