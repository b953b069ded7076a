/**
 * The control plane's internal event bus: how modules tell each other that something changed
 * (an agent was revoked, a bundle must be rebuilt, an approval was decided, audit arrived) without
 * knowing who listens. In-process now; a NATS JetStream implementation drops in behind the same
 * interface for multi-replica deployments, so every replica hears every event.
 */

/** Topics and their payloads. Payloads are plain JSON-serialisable data (they will cross NATS). */
export interface BusEvents {
  /** An agent's credential was revoked: cut its stream wherever it is connected. */
  "agent.revoked": { agentId: string; reason: string };
  /** Policies or identities changed: recompile and push bundles to these agents ("*" = all). */
  "bundle.changed": { agentIds: string[] | "*" };
  /** A human decided an approval request. */
  "approval.decided": { requestId: string; agentId: string; approved: boolean; decidedBy: string };
  /** Audit events were stored. */
  "audit.ingested": { agentId: string; count: number; lastSeq: string };
}

export type BusTopic = keyof BusEvents;
export type BusHandler<T extends BusTopic> = (event: BusEvents[T]) => void | Promise<void>;

export interface EventBus {
  /** Delivers `event` to every subscriber of `topic` (on every replica, for distributed buses). */
  publish<T extends BusTopic>(topic: T, event: BusEvents[T]): Promise<void>;
  /** Subscribes; returns the unsubscribe function. A handler's failure is reported, never thrown to the publisher. */
  subscribe<T extends BusTopic>(topic: T, handler: BusHandler<T>): () => void;
  close(): Promise<void>;
}

/** In-process bus (the embedded default). `onHandlerError` receives handler failures. */
export function createInProcessBus(onHandlerError: (topic: BusTopic, error: unknown) => void): EventBus {
  const handlers = new Map<BusTopic, Set<BusHandler<BusTopic>>>();
  return {
    async publish(topic, event) {
      const set = handlers.get(topic);
      if (!set) return;
      // Copy: a handler may unsubscribe while we iterate.
      for (const handler of [...set]) {
        try {
          await handler(event);
        } catch (error) {
          onHandlerError(topic, error);
        }
      }
    },
    subscribe(topic, handler) {
      let set = handlers.get(topic);
      if (!set) handlers.set(topic, (set = new Set()));
      set.add(handler as BusHandler<BusTopic>);
      return () => set.delete(handler as BusHandler<BusTopic>);
    },
    async close() {
      handlers.clear();
    },
  };
}
