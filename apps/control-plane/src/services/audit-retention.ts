/**
 * Audit retention: a periodic job (and one run at start) that deletes events older than
 * `audit.retention.days` and beyond the newest `audit.retention.maxEvents`, in bounded batches,
 * through the store's `auditTrail.prune` (which keeps each chain a verifiable suffix and records
 * its horizon). Each run that deletes something records an `audit.retention` event in the control
 * plane's own chain. With PostgreSQL and several replicas, one replica prunes at a time (an
 * advisory lock); the others skip that run.
 *
 * Events a configured audit sink has not delivered yet are kept whatever their age (unless
 * `holdForSinks` is off): each chain is pruned no further than the lowest of the sinks' cursors for
 * it, read at the start of the run (cursors only move forward, so an older reading is the safe one).
 */
import type { Logger } from "@moat/common";
import { decodeCursor, positionOf, type Cursor } from "../audit-sinks/cursor.js";
import type { PruneReport, Store } from "../store/index.js";
import type { AuditService } from "./audit.js";

export interface AuditRetentionConfig {
  /** Delete events older than this many days (unset: no age limit). */
  days?: number;
  /** Keep about this many events at most, the newest (unset: no count limit). */
  maxEvents?: number;
  /** Keep the audit data under about this many bytes (SQLite: exact, PostgreSQL: estimated), pruning the oldest (unset: no size limit). */
  maxBytes?: number;
  /** Minutes between runs. */
  intervalMinutes: number;
  /** Events deleted per transaction. */
  batchSize: number;
  /** Keep events the configured sinks have not delivered yet, whatever their age. */
  holdForSinks: boolean;
}

/** The outcome of one run: undefined when no limit is set or another replica was pruning. */
export type RetentionRun = (PruneReport & { cutoff: Date }) | undefined;

const DAY_MS = 24 * 3600 * 1000;

export function createAuditRetention(deps: {
  store: Pick<Store, "auditTrail" | "auditSinks">;
  audit: Pick<AuditService, "recordControlPlane">;
  logger: Logger;
  config: AuditRetentionConfig;
  /** Ids of the configured audit sinks (`webhook.<name>`, `nats`): see audit-sinks/. */
  sinkIds?: readonly string[];
  now?: () => Date;
}) {
  const { store, audit, logger, config } = deps;
  const sinkIds = config.holdForSinks ? (deps.sinkIds ?? []) : [];
  const now = deps.now ?? (() => new Date());
  const enabled = config.days !== undefined || config.maxEvents !== undefined || config.maxBytes !== undefined;
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
    if (config.maxBytes !== undefined) {
      const keep = await keepForSize(config.maxBytes);
      const newestExcess = keep === undefined ? undefined : await store.auditTrail.countCutoff(keep);
      const bySize = newestExcess && new Date(newestExcess.getTime() + 1);
      if (bySize && (!cutoff || bySize > cutoff)) cutoff = bySize;
    }
    return cutoff;
  }

  /**
   * How many of the newest events fit in `maxBytes`, from the store's used size and its event
   * count (bytes per event as stored: row, indexes, summaries); undefined when under the limit.
   * Freed pages are reused by later events (on PostgreSQL once autovacuum has seen them), so the
   * store stops growing at about the limit (it keeps its largest size on disk: VACUUM on SQLite,
   * VACUUM FULL on PostgreSQL gives the space back).
   */
  async function keepForSize(maxBytes: number): Promise<number | undefined> {
    const used = await store.auditTrail.usedBytes();
    if (used === undefined || used <= maxBytes) return undefined;
    const events = await store.auditTrail.estimateEvents();
    if (events <= 0) return undefined;
    return Math.floor((events * maxBytes) / used);
  }

  function describeLimits(): string {
    return [
      config.days !== undefined ? `${config.days} days` : "",
      config.maxEvents !== undefined ? `${config.maxEvents} events` : "",
      config.maxBytes !== undefined ? `${config.maxBytes} bytes` : "",
    ]
      .filter(Boolean)
      .join(", ");
  }

  /**
   * Each sink's cursor (undefined: the sink has not started, or its cursor is unreadable: it holds
   * every chain at 0, i.e. nothing of any chain goes until it has delivered).
   */
  async function sinkCursors(): Promise<{ id: string; cursor: Cursor | undefined }[]> {
    return Promise.all(
      sinkIds.map(async (id) => {
        const stored = await store.auditSinks.getState(`audit.sink.${id}.cursor`);
        try {
          return { id, cursor: stored === undefined ? undefined : decodeCursor(stored) };
        } catch {
          return { id, cursor: undefined };
        }
      }),
    );
  }

  async function run(): Promise<RetentionRun> {
    if (!enabled) return undefined;
    const cutoff = await cutoffNow();
    if (!cutoff) return { pruned: 0, agents: 0, sessions: 0, held: 0, cutoff: new Date(0) };
    const started = Date.now();
    const cursors = await sinkCursors();
    const report = await store.auditTrail.prune({
      cutoff,
      batchSize: config.batchSize,
      now,
      shouldStop: () => stopping,
      ...(cursors.length > 0
        ? {
            ceiling: (agentId: string) => {
              let ceiling: bigint | undefined;
              for (const { cursor } of cursors) {
                const delivered = cursor ? positionOf(cursor, agentId) : 0n;
                if (ceiling === undefined || delivered < ceiling) ceiling = delivered;
              }
              return Promise.resolve(ceiling);
            },
          }
        : {}),
    });
    if (!report) {
      logger.debug("audit retention skipped: another replica is pruning");
      return undefined;
    }
    if (report.held > 0) {
      logger.warn(
        { chains: report.held, sinks: sinkIds, cutoff: cutoff.toISOString() },
        "audit retention kept events older than the cutoff that audit sinks have not delivered yet",
      );
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
            `chain(s) recorded before ${cutoff.toISOString()}, and ${report.sessions} session summaries` +
            (report.held > 0 ? `; ${report.held} chain(s) kept older events audit sinks had not delivered yet` : ""),
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
