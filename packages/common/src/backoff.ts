/**
 * Reconnect delays: exponential backoff with full jitter (AWS architecture blog's "full jitter").
 * Pure: the random source is an argument.
 */

export interface BackoffOptions {
  /** First delay ceiling in milliseconds. */
  initialMs: number;
  /** Largest delay ceiling in milliseconds. */
  maxMs: number;
  /** Growth factor per attempt. */
  multiplier?: number;
}

/** Delay before reconnect attempt `attempt` (0-based): uniform in [ceiling/2, ceiling]. */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  const multiplier = options.multiplier ?? 2;
  const ceiling = Math.min(options.maxMs, options.initialMs * multiplier ** Math.max(0, attempt));
  // Half fixed, half jitter: never hammer (0 ms) yet still spread a herd of agents out.
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
