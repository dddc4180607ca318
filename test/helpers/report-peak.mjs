// Preloaded into a CLI run by cli(…, { peak: true }): prints the process's peak RSS (the kernel's
// high-water mark, VmHWM) as the last stderr line when it exits, so a test measures it from
// outside the engine's own reporting.
process.on('exit', () => {
  process.stderr.write(`\ntest-peak-rss-bytes ${process.resourceUsage().maxRSS * 1024}\n`);
});
