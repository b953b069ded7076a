/**
 * Audit retention: a periodic job (and one run at start) that deletes events older than
 * `audit.retention.days` and beyond the newest `audit.retention.maxEvents`, in bounded batches,
 * through the store's `auditTrail.prune` (which keeps each chain a verifiable suffix and records
 * its horizon). Each run that deletes something records an `audit.retention` event in the control
 * plane's own chain. With PostgreSQL and several replicas, one replica prunes at a time (an
 * advisory lock); the others skip that run.
 */
import type { Logger } from "@moat/common";
import type { PruneReport, Store } from "../store/index.js";
import type { AuditService } from "./audit.js";

export interface AuditRetentionConfig {
  /** Delete events older than this many days (unset: no age limit). */
  days?: number;
  /** Keep about this many events at most, the newest (unset: no count limit). */
  maxEvents?: number;
  /** Minutes between runs. */
  intervalMinutes: number;
  /** Events deleted per transaction. */
  batchSize: number;
}

/** The outcome of one run: undefined when no limit is set or another replica was pruning. */
export type RetentionRun = (PruneReport & { cutoff: Date }) | undefined;

const DAY_MS = 24 * 3600 * 1000;

export function createAuditRetention(deps: {
  store: Pick<Store, "auditTrail">;
  audit: Pick<AuditService, "recordControlPlane">;
  logger: Logger;
  config: AuditRetentionConfig;
  now?: () => Date;
}) {
  const { store, audit, logger, config } = deps;
  const now = deps.now ?? (() => new Date());
  const enabled = config.days !== undefined || config.maxEvents !== undefined;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<RetentionRun> | undefined;
  let stopping = false;

  /** The time before which events go: the later of the age limit and the count limit. */
  async function cutoffNow(): Promise<Date | undefined> {
    let cutoff = config.days !== undefined ? new Date(now().getTime() - config.days * DAY_MS) : undefined;
    if (config.maxEvents !== undefined) {
      const newestExcess = await store.auditTrail.countCutoff(config.maxEvents);
      // Events at or before the newest excess event go (ties at that millisecond included).
      const byCount = newestExcess && new Date(newestExcess.getTime() + 1);
      if (byCount && (!cutoff || byCount > cutoff)) cutoff = byCount;
    }
    return cutoff;
  }

  function describeLimits(): string {
    return [
      config.days !== undefined ? `${config.days} days` : "",
      config.maxEvents !== undefined ? `${config.maxEvents} events` : "",
    ]
      .filter(Boolean)
      .join(", ");
  }

  async function run(): Promise<RetentionRun> {
    if (!enabled) return undefined;
    const cutoff = await cutoffNow();
    if (!cutoff) return { pruned: 0, agents: 0, sessions: 0, cutoff: new Date(0) };
    const started = Date.now();
    const report = await store.auditTrail.prune({
      cutoff,
      batchSize: config.batchSize,
      now,
      shouldStop: () => stopping,
    });
    if (!report) {
      logger.debug("audit retention skipped: another replica is pruning");
      return undefined;
    }
    if (report.pruned > 0) {
      logger.info(
        { ...report, cutoff: cutoff.toISOString(), ms: Date.now() - started },
        "audit retention pruned old events",
      );
      try {
        await audit.recordControlPlane({
          type: "audit.retention",
          actor: "moat-control-plane",
          message:
            `retention (${describeLimits()}) pruned ${report.pruned} audit events of ${report.agents} ` +
            `chain(s) recorded before ${cutoff.toISOString()}, and ${report.sessions} session summaries`,
        });
      } catch (error) {
        logger.error({ err: error }, "could not record the audit.retention event");
      }
    }
    return { ...report, cutoff };
  }

  /** One run now (or the one in progress); resolves with what it pruned. */
  function runOnce(): Promise<RetentionRun> {
    running ??= run().finally(() => (running = undefined));
    return running;
  }

  return {
    enabled,
    runOnce,

    /** Runs once now and then every `intervalMinutes`, never two runs at a time; failures are logged. */
    start(): void {
      if (!enabled || timer) return;
      const tick = () => {
        if (running || stopping) return;
        runOnce().catch((error: unknown) => logger.error({ err: error }, "audit retention run failed"));
      };
      tick();
      timer = setInterval(tick, config.intervalMinutes * 60_000);
      timer.unref();
    },

    /** Stops the timer and waits for a run in progress (it stops after its current batch). */
    async stop(): Promise<void> {
      stopping = true;
      if (timer) clearInterval(timer);
      timer = undefined;
      await running?.catch(() => undefined);
    },
  };
}

export type AuditRetention = ReturnType<typeof createAuditRetention>;
