/**
 * Ships spooled audit events to the control plane over the agent stream: batches in sequence order,
 * a few in flight, trimmed from the spool only when acknowledged. On (re)connect it starts again
 * after what the control plane says it has stored, so unacknowledged events are resent (ingestion is
 * idempotent) and nothing is skipped.
 */
import { create, ConnectRequestSchema, type ConnectRequest } from "@moat/proto";
import type { AuditSpool } from "./spool.js";

export interface AuditShipper {
  /** The stream is up and the control plane has stored everything up to `storedSeq`. */
  connected(storedSeq: bigint): void;
  disconnected(): void;
  acknowledged(seq: bigint): void;
  /** New events were spooled. */
  wake(): void;
}

/**
 * How long a partial batch waits for more events: the store's cost per batch (a transaction, an
 * fsync, a message and an ack) is paid once for what arrives meanwhile, for at most this much lag.
 */
export const DEFAULT_LINGER_MS = 20;

export function createAuditShipper(deps: {
  spool: AuditSpool;
  send: (message: ConnectRequest) => boolean;
  batchEvents?: number;
  batchBytes?: number;
  maxInFlight?: number;
  /** How long at most a partial batch waits for more events (ms). */
  lingerMs?: number;
}): AuditShipper {
  const batchEvents = deps.batchEvents ?? 500;
  const batchBytes = deps.batchBytes ?? 1024 * 1024;
  const maxInFlight = deps.maxInFlight ?? 4;
  const lingerMs = deps.lingerMs ?? DEFAULT_LINGER_MS;
  let up = false;
  let nextSeq = 1n;
  let inFlight = 0;
  /** When the partial batch waiting now may go (0: none waiting). */
  let lingerUntil = 0;
  let lingerTimer: NodeJS.Timeout | undefined;

  function armLinger(ms: number): void {
    if (lingerTimer) return;
    lingerTimer = setTimeout(() => {
      lingerTimer = undefined;
      pump();
    }, ms);
    lingerTimer.unref();
  }

  function pump(): void {
    while (up && inFlight < maxInFlight) {
      const available = deps.spool.peekNextSeq() - nextSeq;
      if (available <= 0n) return;
      if (available < BigInt(batchEvents)) {
        // A partial batch waits for more events, up to lingerMs from its first one, and while
        // another batch is in flight (Nagle: the ack pumps again): a steady stream of statements
        // goes in batches, not one message, one store transaction and one ack per statement.
        const now = Date.now();
        if (lingerUntil === 0) lingerUntil = now + lingerMs;
        if (inFlight > 0) return;
        if (now < lingerUntil) {
          armLinger(lingerUntil - now);
          return;
        }
      }
      const events = deps.spool.read(nextSeq, batchEvents, batchBytes);
      if (events.length === 0) return;
      const sent = deps.send(
        create(ConnectRequestSchema, { kind: { case: "auditBatch", value: { events: events.map((e) => e.payload) } } }),
      );
      if (!sent) {
        up = false;
        return;
      }
      nextSeq = (events[events.length - 1]?.seq ?? nextSeq) + 1n;
      inFlight++;
      lingerUntil = 0;
    }
  }

  return {
    connected(storedSeq) {
      deps.spool.ack(storedSeq);
      up = true;
      inFlight = 0;
      nextSeq = deps.spool.ackedSeq + 1n;
      pump();
    },
    disconnected() {
      up = false;
    },
    acknowledged(seq) {
      deps.spool.ack(seq);
      inFlight = Math.max(0, inFlight - 1);
      pump();
    },
    wake: pump,
  };
}
