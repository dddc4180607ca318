// A one-line progress bar on stderr, drawn only when stderr is a terminal.
export class Progress {
  private readonly tty = process.stderr.isTTY === true;
  private readonly start = performance.now();
  private last = 0;
  /** Requests done before this run (a resumed job's skipped ones), for the time left. */
  private first: number | null = null;

  constructor(private readonly label: string) {}

  update(done: number, total: number | null, tokens: number): void {
    if (!this.tty) return;
    const now = performance.now();
    if (now - this.last < 200 && done !== total) return;
    this.last = now;
    this.first ??= done;
    const secs = (now - this.start) / 1000;
    const rate = secs > 0 ? (tokens / secs).toFixed(1) : '0';
    const width = 24;
    const bar = total ? '#'.repeat(Math.round((width * done) / Math.max(total, 1))).padEnd(width, '.') : '';
    const eta = total && done > this.first ? `, ETA ${clock(((total - done) * secs) / (done - this.first))}` : '';
    process.stderr.write(`\r${this.label} ${total ? `[${bar}] ${done}/${total}` : `${done}`} requests, ${rate} tok/s${eta} `);
  }

  end(): void {
    if (this.tty) process.stderr.write('\n');
  }
}

/** Training's bar on stderr (a terminal only): step, loss, tokens/s and the time left, estimated
 *  from this process's mean step time (evaluation and saves included). */
export class StepProgress {
  private readonly tty = process.stderr.isTTY === true;
  private readonly start = performance.now();
  /** Whether the cursor is at the end of a drawn bar. */
  private drawn = false;

  constructor(private readonly firstStep: number) {}

  update(step: number, total: number, loss: number, tokensPerSecond: number): void {
    if (!this.tty) return;
    const perStep = (performance.now() - this.start) / 1000 / Math.max(1, step - this.firstStep);
    const width = 24;
    const bar = '#'.repeat(Math.round((width * step) / Math.max(total, 1))).padEnd(width, '.');
    process.stderr.write(`\rtrain [${bar}] step ${step}/${total}, loss ${loss.toFixed(4)}, ${tokensPerSecond.toFixed(0)} tok/s, ETA ${clock((total - step) * perStep)} `);
    this.drawn = true;
  }

  /** A line of its own above the bar (the bar is redrawn by the next update). */
  log(line: string): void {
    process.stderr.write(`${this.tty ? '\r\x1b[K' : ''}${line}\n`);
    this.drawn = false;
  }

  end(): void {
    if (this.drawn) process.stderr.write('\n');
    this.drawn = false;
  }
}

/** Seconds as h:mm:ss or m:ss. */
export function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const [h, m, r] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const mm = h > 0 ? String(m).padStart(2, '0') : String(m);
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(r).padStart(2, '0')}`;
}
