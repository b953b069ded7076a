/**
 * The contract between the delivery worker and a destination (webhook, NATS JetStream). A sink
 * only delivers what it is given, in the order given; reading the store, cursors, retries and
 * leases are the worker's.
 */
import { createHash } from "node:crypto";
import type { AuditView } from "../services/audit.js";

export interface AuditSink {
  /** "webhook.<name>" or "nats": the metrics label and the key of the sink's cursor. */
  readonly id: string;
  /**
   * Delivers a prefix of `events` (at least one) in order and resolves with its length; throws
   * `SinkError` when nothing more could be delivered (its `delivered` says how many were).
   */
  deliver(events: AuditView[]): Promise<number>;
  close(): Promise<void>;
}

/** Why a delivery failed, as a metrics label. */
export type FailureReason = "timeout" | "unavailable" | "rejected" | "http_4xx" | "http_5xx" | "http_other" | "error";

export class SinkError extends Error {
  constructor(
    message: string,
    readonly reason: FailureReason,
    options: {
      cause?: unknown;
      /** Events delivered (a prefix) before the failure. */
      delivered?: number;
      /** The batch was too large for the receiver: try again at once with fewer events. */
      tooLarge?: boolean;
    } = {},
  ) {
    super(message, options.cause === undefined ? {} : { cause: options.cause });
    this.name = "SinkError";
    this.delivered = options.delivered ?? 0;
    this.tooLarge = options.tooLarge ?? false;
  }
  readonly delivered: number;
  readonly tooLarge: boolean;
}

/** A delivery id that is the same whenever the same events are delivered (receivers may dedupe on it). */
export function deliveryId(events: readonly Pick<AuditView, "id">[]): string {
  const hash = createHash("sha256");
  for (const e of events) hash.update(e.id).update("\n");
  return hash.digest("hex").slice(0, 32);
}
