// Preloaded into a CLI run by cli(…, { peak: true }): prints the process's peak RSS (the kernel's
// high-water mark, VmHWM) as the last stderr line when it exits, so a test measures it from
// outside the engine's own reporting.
//
// VmHWM, not getrusage's maxRSS: Linux carries ru_maxrss over exec from the forked copy of the
// parent, so a CLI started by a test worker that once held 400 MB reported 400 MB whatever it
// used itself. VmHWM belongs to the address space the CLI runs in.
import fs from 'node:fs';

process.on('exit', () => {
  let bytes = process.resourceUsage().maxRSS * 1024;
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) bytes = Number(m[1]) * 1024;
  } catch {
    // Not Linux: maxRSS is the best there is.
  }
  process.stderr.write(`\ntest-peak-rss-bytes ${bytes}\n`);
});
