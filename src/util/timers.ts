// Limits of Node's timers.

/** The longest delay a Node timer keeps: setTimeout takes a longer one (Infinity too) as 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
