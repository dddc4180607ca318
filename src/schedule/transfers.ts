// The ordering rules of a schedule, enforced rather than assumed: every store is recorded under
// the key of the data it writes (which batch's activations after which unit, which layer's
// cache block of which batch at which token), and a load that reads that data waits for that
// store by key. A load may be started before the store it depends on has even been issued (with
// one batch in a block, the next unit's load is started before this unit computes); it then
// waits for the store to be issued and to finish. A failed store fails the loads that depend on it.
//
// Every transfer is tracked until it settles, so that on any failure the runner can wait for
// what is still in flight before files close, and report the error that happened first.

interface Pending {
  promise: Promise<void>;
  issue(store: Promise<void>): void;
  issued: boolean;
}

export class Transfers {
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Stores by token, then by key (the data they write). */
  private readonly stores = new Map<number, Map<string, Pending>>();

  /** Follows a transfer until it settles; returns it unchanged. */
  track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    const forget = () => this.inFlight.delete(p);
    p.then(forget, forget);
    return p;
  }

  /** Records the store that writes `key` at token step `token`. */
  stored(token: number, key: string, store: Promise<void>): void {
    const s = this.pending(token, key);
    if (s.issued) throw new Error(`internal: a second store of ${key} at token ${token}`);
    s.issued = true;
    s.issue(this.track(store));
  }

  /** Resolves when the store of `key` at `token` has been issued and has finished. */
  after(token: number, key: string): Promise<void> {
    return this.pending(token, key).promise;
  }

  /** Forgets the stores of tokens before `token` (nothing can depend on them any more). */
  forgetBefore(token: number): void {
    for (const t of this.stores.keys()) if (t < token) this.stores.delete(t);
  }

  /** Waits until every tracked transfer has settled, successful or not. */
  async settle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  private pending(token: number, key: string): Pending {
    let byKey = this.stores.get(token);
    if (!byKey) this.stores.set(token, (byKey = new Map()));
    let s = byKey.get(key);
    if (!s) {
      let issue!: (store: Promise<void>) => void;
      const promise = new Promise<void>((resolve) => (issue = resolve));
      // A failed store that no load waits for must not become an unhandled rejection: the
      // runner reports it through the store's own promise.
      promise.catch(() => undefined);
      s = { promise, issue, issued: false };
      byKey.set(key, s);
    }
    return s;
  }
}

/** Like Promise.all, but settles only when every transfer has: a buffer is never reused, nor a
 *  file closed, while a sibling transfer still reads or writes it. Rejects with the first error. */
export async function settleAll(transfers: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(transfers);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
