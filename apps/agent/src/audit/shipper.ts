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

export function createAuditShipper(deps: {
  spool: AuditSpool;
  send: (message: ConnectRequest) => boolean;
  batchEvents?: number;
  batchBytes?: number;
  maxInFlight?: number;
}): AuditShipper {
  const batchEvents = deps.batchEvents ?? 500;
  const batchBytes = deps.batchBytes ?? 1024 * 1024;
  const maxInFlight = deps.maxInFlight ?? 4;
  let up = false;
  let nextSeq = 1n;
  let inFlight = 0;

  function pump(): void {
    while (up && inFlight < maxInFlight) {
      // A partial batch waits while another one is in flight (Nagle): acks pace the batches, so a
      // steady trickle of events goes in a few full batches, not one message (one store transaction
      // and one ack) per event. With nothing in flight, whatever there is goes at once.
      if (inFlight > 0 && deps.spool.peekNextSeq() - nextSeq < BigInt(batchEvents)) return;
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
