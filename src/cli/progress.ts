// A one-line progress bar on stderr, drawn only when stderr is a terminal.
export class Progress {
  private readonly tty = process.stderr.isTTY === true;
  private readonly start = performance.now();
  private last = 0;

  constructor(private readonly label: string) {}

  update(done: number, total: number | null, tokens: number): void {
    if (!this.tty) return;
    const now = performance.now();
    if (now - this.last < 200 && done !== total) return;
    this.last = now;
    const secs = (now - this.start) / 1000;
    const rate = secs > 0 ? (tokens / secs).toFixed(1) : '0';
    const width = 24;
    const bar = total ? '#'.repeat(Math.round((width * done) / Math.max(total, 1))).padEnd(width, '.') : '';
    process.stderr.write(`\r${this.label} ${total ? `[${bar}] ${done}/${total}` : `${done}`} requests, ${rate} tok/s `);
  }

  end(): void {
    if (this.tty) process.stderr.write('\n');
  }
}
