// Prometheus text exposition (format 0.0.4) of the scheduler's state: queue depth, running
// sequences, token totals, generation tokens/s over the last 10 s, time to first token (recent
// quantiles), HTTP requests by status, and errors told inside streams.
import type { Scheduler } from '../engine/scheduler.js';

const WINDOW_MS = 10_000;

export class Metrics {
  private readonly samples: { at: number; tokens: number }[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly statuses = new Map<number, number>();
  private readonly streamErrors = new Map<number, number>();

  constructor(private readonly scheduler: Scheduler) {
    // Sampled once a second, so the rate covers the last window whenever it is scraped.
    this.timer = setInterval(() => this.sample(), 1000).unref();
    this.sample();
  }

  private sample(): void {
    const at = performance.now();
    this.samples.push({ at, tokens: this.scheduler.stats.generatedTokens });
    while (this.samples.length > 2 && at - this.samples[1]!.at > WINDOW_MS) this.samples.shift();
  }

  countResponse(status: number): void {
    this.statuses.set(status, (this.statuses.get(status) ?? 0) + 1);
  }

  /** An error told as an event in a stream already answered 200 (its headers had gone with a
   *  token or a heartbeat), by the status it would otherwise have had: the responses count it as 200. */
  countStreamError(status: number): void {
    this.streamErrors.set(status, (this.streamErrors.get(status) ?? 0) + 1);
  }

  close(): void {
    clearInterval(this.timer);
  }

  text(): string {
    const s = this.scheduler.stats;
    const first = this.samples[0]!;
    const secs = (performance.now() - first.at) / 1000;
    const rate = secs > 0 ? (s.generatedTokens - first.tokens) / secs : 0;
    const ttft = [...s.timeToFirstTokenSeconds].sort((a, b) => a - b);
    const q = (p: number) => (ttft.length ? ttft[Math.min(ttft.length - 1, Math.floor(p * ttft.length))]! : NaN);
    const lines = [
      metric('tierlm_queue_depth', 'gauge', 'Requests waiting to be admitted to the running block.', s.queued),
      metric('tierlm_running_sequences', 'gauge', 'Sequences in the running block.', s.running),
      metric('tierlm_prompt_tokens_total', 'counter', 'Prompt tokens processed since start.', s.promptTokens),
      metric('tierlm_generation_tokens_total', 'counter', 'Tokens generated since start.', s.generatedTokens),
      metric('tierlm_generation_tokens_per_second', 'gauge', `Tokens generated per second over the last ${WINDOW_MS / 1000} s.`, rate),
      '# HELP tierlm_time_to_first_token_seconds Time from a request\'s submission to its first token (the last 1000 requests).',
      '# TYPE tierlm_time_to_first_token_seconds summary',
      ...[0.5, 0.9, 0.99].map((p) => `tierlm_time_to_first_token_seconds{quantile="${p}"} ${num(q(p))}`),
      `tierlm_time_to_first_token_seconds_sum ${num(ttft.reduce((a, b) => a + b, 0))}`,
      `tierlm_time_to_first_token_seconds_count ${ttft.length}`,
      '# HELP tierlm_http_responses_total HTTP responses sent, by status code.',
      '# TYPE tierlm_http_responses_total counter',
      ...[...this.statuses].sort(([a], [b]) => a - b).map(([code, n]) => `tierlm_http_responses_total{code="${code}"} ${n}`),
      '# HELP tierlm_stream_errors_total Errors told as events in streams already answered 200 (counted there as 200), by the status they would have had.',
      '# TYPE tierlm_stream_errors_total counter',
      ...[...this.streamErrors].sort(([a], [b]) => a - b).map(([code, n]) => `tierlm_stream_errors_total{code="${code}"} ${n}`),
    ];
    return lines.join('\n') + '\n';
  }
}

const num = (v: number) => (Number.isNaN(v) ? 'NaN' : String(v));

function metric(name: string, type: string, help: string, value: number): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${num(value)}`;
}
