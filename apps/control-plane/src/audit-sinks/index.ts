/**
 * Audit sinks: deliver every stored audit event to each configured destination (signed webhooks,
 * a NATS JetStream stream), fed from the store rather than from ingestion, so delivery survives
 * restarts and works with several replicas (one delivers each sink, by lease). Wired by server.ts;
 * `/readyz` does not depend on any of this.
 */
import { randomId, type Logger } from "@moat/common";
import type { Registry } from "prom-client";
import type { EventBus } from "../bus.js";
import type { Store } from "../store/index.js";
import type { ResolvedAuditSinks } from "./config.js";
import { createSinkMetrics } from "./metrics.js";
import { createNatsSink, NATS_SINK_ID } from "./nats.js";
import type { AuditSink } from "./sink.js";
import { createWebhookSink, webhookSinkId } from "./webhook.js";
import { createSinkWorker, type SinkWorker } from "./worker.js";

export { AuditSinksSchema, resolveAuditSinks, type ResolvedAuditSinks } from "./config.js";
export { signWebhookBody, verifyWebhookSignature } from "./webhook.js";

/** The ids of the sinks `config` configures (each sink's cursor is stored under its id). */
export function auditSinkIds(config: ResolvedAuditSinks): string[] {
  return [...config.webhooks.map((w) => webhookSinkId(w.name)), ...(config.nats ? [NATS_SINK_ID] : [])];
}

export interface AuditSinks {
  workers: SinkWorker[];
  close(): Promise<void>;
}

export function startAuditSinks(deps: {
  config: ResolvedAuditSinks;
  store: Pick<Store, "auditSinks">;
  bus: Pick<EventBus, "subscribe">;
  logger: Logger;
  registry: Registry;
  replicaId: string;
  now?: () => Date;
}): AuditSinks {
  const { config } = deps;
  const logger = deps.logger.child({ module: "audit-sinks" });
  const sinks: {
    sink: AuditSink;
    settings: ResolvedAuditSinks["webhooks"][number] | NonNullable<ResolvedAuditSinks["nats"]>;
  }[] = [
    ...config.webhooks.map((settings) => ({
      sink: createWebhookSink(settings, deps.now ? { now: deps.now } : {}),
      settings,
    })),
    ...(config.nats ? [{ sink: createNatsSink(config.nats, { logger }), settings: config.nats }] : []),
  ];
  if (sinks.length === 0) return { workers: [], close: async () => undefined };

  const metrics = createSinkMetrics(deps.registry);
  // Unique per process, so that a restarted replica with the same id never mistakes an old lease for its own.
  const holder = `${deps.replicaId}/${randomId(8)}`;
  const workers = sinks.map(({ sink, settings }) =>
    createSinkWorker({
      sink,
      repo: deps.store.auditSinks,
      holder,
      batchSize: settings.batchSize,
      minBackoffMs: settings.minBackoffMs,
      maxBackoffMs: settings.maxBackoffMs,
      startFrom: settings.startFrom,
      pollMs: config.pollMs,
      leaseMs: config.leaseSeconds * 1000,
      gapGraceMs: config.gapGraceSeconds * 1000,
      logger,
      metrics,
      ...(deps.now ? { now: deps.now } : {}),
    }),
  );
  const unsubscribe = deps.bus.subscribe("audit.ingested", () => {
    for (const worker of workers) worker.wake();
  });
  for (const worker of workers) worker.start();
  logger.info({ sinks: workers.map((w) => w.id) }, "audit sinks started");
  return {
    workers,
    async close() {
      unsubscribe();
      await Promise.all(workers.map((w) => w.stop()));
    },
  };
}
