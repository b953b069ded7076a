/**
 * The delivery worker of one sink: holds the sink's lease (one replica delivers a sink at a time),
 * reads the next events after the sink's cursor from the store, hands them to the sink, and moves
 * the cursor only past what the sink acknowledged. Failures are retried with exponential backoff
 * and jitter, forever: audit is never dropped because a receiver misbehaves. Delivery is therefore
 * at-least-once (a batch whose acknowledgement was lost, or that was in flight when a replica
 * stopped or lost its lease, is delivered again), in order per source (see cursor.ts).
 *
 * It must not write audit events, and it never logs event contents or the sink's secrets.
 */
import { backoffDelay, type Logger } from "@moat/common";
import { toView, type AuditView } from "../services/audit.js";
import type { AuditSinkRepository, SinkEventRow, SourcePosition } from "../store/index.js";
import { advance, decodeCursor, encodeCursor, positionOf, selectDeliverable, type Cursor } from "./cursor.js";
import type { SinkMetrics } from "./metrics.js";
import { SinkError, type AuditSink } from "./sink.js";

/** Most sources read in one round; more pending sources are served in turn. */
const MAX_SOURCES_PER_READ = 200;
/** How long `stop` waits for a delivery in flight before giving up on it (it will be delivered again). */
const STOP_WAIT_MS = 2000;

export interface SinkWorkerOptions {
  sink: AuditSink;
  repo: Pick<
    AuditSinkRepository,
    | "highs"
    | "eventsAfter"
    | "present"
    | "firstAfter"
    | "getState"
    | "putStateAsHolder"
    | "acquireLease"
    | "releaseLease"
  >;
  /** Unique per process: who holds the lease. */
  holder: string;
  batchSize: number;
  minBackoffMs: number;
  maxBackoffMs: number;
  startFrom: "earliest" | "latest";
  pollMs: number;
  leaseMs: number;
  gapGraceMs: number;
  logger: Logger;
  metrics: SinkMetrics;
  now?: () => Date;
  random?: () => number;
}

export interface SinkWorker {
  readonly id: string;
  start(): void;
  /** New events were stored: look now instead of at the next poll. */
  wake(): void;
  /** Stops delivering, gives the lease up and closes the sink. */
  stop(): Promise<void>;
  /** True while this worker holds the sink's lease. */
  isLeading(): boolean;
}

/** The public view of a stored event; an event whose bytes no longer decode is sent with its stored fields only. */
function viewOf(row: SinkEventRow): AuditView {
  try {
    return toView(row);
  } catch {
    return {
      id: row.id,
      agentId: row.agentId,
      seq: row.seq.toString(),
      time: row.time,
      type: row.type,
      user: row.user,
      resource: row.resource,
      sessionId: row.sessionId,
      verdict: row.verdict,
      rule: row.rule,
      message: "",
      bundleVersion: row.bundleVersion.toString(),
      detail: null,
    };
  }
}

export function createSinkWorker(options: SinkWorkerOptions): SinkWorker {
  const { sink, repo, holder, metrics } = options;
  const now = options.now ?? (() => new Date());
  const random = options.random ?? Math.random;
  const labels = { sink: sink.id };
  const logger = options.logger.child({ sink: sink.id });
  const cursorKey = `audit.sink.${sink.id}.cursor`;
  const leaseKey = `audit.sink.${sink.id}.lease`;
  const backoff = { initialMs: options.minBackoffMs, maxMs: options.maxBackoffMs };

  let stopped = false;
  let leading = false;
  let leaseUntil = 0;
  let cursor: Cursor = new Map();
  /** Sources whose next sequence number is missing: which one, and since when (ms). */
  const gaps = new Map<string, { seq: bigint; since: number }>();
  let rotation = 0;
  let renewTimer: NodeJS.Timeout | undefined;
  let loop: Promise<void> | undefined;

  // One pause at a time; `wake` ends a wakeable pause, `stop` ends any.
  let pending: { resolve: () => void; wakeable: boolean } | undefined;
  let woken = false;
  const pause = (ms: number, wakeable: boolean) =>
    new Promise<void>((resolve) => {
      if (stopped || (wakeable && woken)) {
        woken = false;
        resolve();
        return;
      }
      const done = () => {
        clearTimeout(timer);
        pending = undefined;
        if (wakeable) woken = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      pending = { resolve: done, wakeable };
    });

  const loseLead = (why: string) => {
    if (!leading) return;
    leading = false;
    clearInterval(renewTimer);
    metrics.leader.set(labels, 0);
    metrics.lagEvents.remove(labels);
    metrics.lagSeconds.remove(labels);
    logger.warn({ why }, "audit sink: this replica stopped delivering (lease lost)");
  };

  const renew = async () => {
    try {
      if (await repo.acquireLease(leaseKey, holder, options.leaseMs, now())) {
        leaseUntil = now().getTime() + options.leaseMs;
      } else loseLead("another replica holds the lease");
    } catch (error) {
      if (now().getTime() >= leaseUntil) loseLead("the lease could not be renewed before it expired");
      else logger.warn({ err: error }, "audit sink: could not renew the lease (will retry)");
    }
  };

  /** Takes the lease and loads (or creates) the cursor; false when another replica holds it. */
  const lead = async (): Promise<boolean> => {
    const at = now();
    if (!(await repo.acquireLease(leaseKey, holder, options.leaseMs, at))) return false;
    leaseUntil = at.getTime() + options.leaseMs;
    const stored = await repo.getState(cursorKey);
    if (stored !== undefined) {
      cursor = decodeCursor(stored);
    } else {
      // First start of this sink. "earliest" begins every source at sequence number 1, never at the
      // lowest one stored: a transaction still in flight may hold lower ones. Sources whose first
      // events were pruned are moved past like any other hole.
      cursor = new Map(options.startFrom === "latest" ? await repo.highs() : []);
      if (!(await repo.putStateAsHolder(cursorKey, encodeCursor(cursor), leaseKey, holder))) return false;
    }
    gaps.clear();
    leading = true;
    metrics.leader.set(labels, 1);
    clearInterval(renewTimer);
    renewTimer = setInterval(() => void renew(), Math.max(200, Math.floor(options.leaseMs / 3)));
    renewTimer.unref();
    logger.info({ startFrom: stored === undefined ? options.startFrom : "cursor" }, "audit sink: delivering");
    return true;
  };

  const saveCursor = async () => {
    try {
      if (!(await repo.putStateAsHolder(cursorKey, encodeCursor(cursor), leaseKey, holder)))
        loseLead("the lease is held by another replica");
    } catch (error) {
      // Kept in memory and written with the next batch; a crash before that re-delivers (at-least-once).
      logger.warn({ err: error }, "audit sink: could not save the cursor (will retry)");
    }
  };

  /** Moves past a hole that outlived the grace period, to the next stored event (or the newest sequence). */
  const skipGap = async (source: string, after: bigint, high: bigint) => {
    const next = await repo.firstAfter(source, after);
    const to = next !== undefined ? next - 1n : high;
    gaps.delete(source);
    if (to <= after) return;
    cursor = new Map(cursor).set(source, to);
    await saveCursor();
    metrics.skipped.inc(labels, Number(to - after));
    logger.warn(
      { source, from: (after + 1n).toString(), to: to.toString() },
      "audit sink: moved past sequence numbers that never arrived (dropped by the agent or deleted before delivery)",
    );
  };

  /** The next events to deliver (each source's next ones, oldest stored first), or undefined when there are none yet. */
  const nextBatch = async (): Promise<SinkEventRow[] | undefined> => {
    const highs = await repo.highs();
    let lag = 0n;
    const behind = new Map<string, bigint>();
    for (const [source, high] of highs) {
      const at = positionOf(cursor, source);
      if (high > at) {
        behind.set(source, high);
        lag += high - at;
      }
    }
    metrics.lagEvents.set(labels, Number(lag));
    for (const [source, gap] of gaps)
      if (!behind.has(source) || gap.seq !== positionOf(cursor, source) + 1n) gaps.delete(source);
    if (behind.size === 0) {
      metrics.lagSeconds.set(labels, 0);
      return undefined;
    }

    // Known holes: filled meanwhile, or past the grace period?
    if (gaps.size > 0) {
      const present = await repo.present([...gaps].map(([agentId, g]) => ({ agentId, seq: g.seq })));
      for (const [source, gap] of [...gaps]) {
        if (present.has(`${source} ${gap.seq}`)) gaps.delete(source);
        else if (now().getTime() - gap.since >= options.gapGraceMs)
          await skipGap(source, gap.seq - 1n, behind.get(source) ?? gap.seq - 1n);
      }
    }

    let sources: SourcePosition[] = [...behind.keys()]
      .filter((s) => !gaps.has(s) && (behind.get(s) ?? 0n) > positionOf(cursor, s))
      .sort()
      .map((agentId) => ({ agentId, after: positionOf(cursor, agentId) }));
    if (sources.length > MAX_SOURCES_PER_READ) {
      rotation = (rotation + MAX_SOURCES_PER_READ) % sources.length;
      sources = [...sources.slice(rotation), ...sources.slice(0, rotation)].slice(0, MAX_SOURCES_PER_READ);
    }
    if (sources.length === 0) return undefined;

    const span = BigInt(options.batchSize);
    let rows = await repo.eventsAfter(sources, span, options.batchSize);
    let selected = selectDeliverable(rows, cursor);
    if (selected.length === 0 && rows.length > 0) {
      // Storage order disagrees with sequence order (transactions committed out of order): read in sequence order.
      const seen = new Set(rows.map((r) => r.agentId));
      rows = await repo.eventsAfter(
        sources.filter((s) => seen.has(s.agentId)),
        span,
        options.batchSize,
        true,
      );
      selected = selectDeliverable(rows, cursor);
    }

    // A source that got nothing although it is behind: is its next event missing (a hole)?
    const served = new Set(selected.map((r) => r.agentId));
    const inRows = new Set(rows.map((r) => r.agentId));
    const complete = rows.length < options.batchSize;
    const suspects = sources.filter((s) => !served.has(s.agentId) && (complete || inRows.has(s.agentId)));
    if (suspects.length > 0) {
      const present = await repo.present(suspects.map((s) => ({ agentId: s.agentId, seq: s.after + 1n })));
      const at = now().getTime();
      for (const s of suspects) {
        if (present.has(`${s.agentId} ${s.after + 1n}`)) continue;
        gaps.set(s.agentId, { seq: s.after + 1n, since: at });
        logger.info(
          { source: s.agentId, missing: (s.after + 1n).toString() },
          "audit sink: waiting for a missing event",
        );
      }
    }
    const first = selected[0];
    metrics.lagSeconds.set(labels, first ? Math.max(0, (now().getTime() - first.receivedAt.getTime()) / 1000) : 0);
    return selected.length > 0 ? selected : undefined;
  };

  const commit = async (rows: SinkEventRow[]) => {
    if (rows.length === 0) return;
    cursor = advance(cursor, rows);
    metrics.delivered.inc(labels, rows.length);
    metrics.cursorTimestamp.set(labels, (rows[rows.length - 1] as SinkEventRow).receivedAt.getTime() / 1000);
    await saveCursor();
  };

  /** Delivers `batch` completely, retrying; returns early only when stopping or no longer leading. */
  const deliver = async (batch: SinkEventRow[]) => {
    let rows = batch;
    let views = rows.map(viewOf);
    let limit = rows.length;
    let attempt = 0;
    while (rows.length > 0 && !stopped && leading) {
      try {
        const n = Math.max(1, Math.min(await sink.deliver(views.slice(0, limit)), limit));
        await commit(rows.slice(0, n));
        rows = rows.slice(n);
        views = views.slice(n);
        attempt = 0;
      } catch (error) {
        const failure = error instanceof SinkError ? error : new SinkError(String(error), "error", { cause: error });
        const done = Math.min(failure.delivered, limit);
        if (done > 0) {
          await commit(rows.slice(0, done));
          rows = rows.slice(done);
          views = views.slice(done);
        }
        metrics.failures.inc({ ...labels, reason: failure.reason });
        if (failure.tooLarge && limit > 1) {
          limit = Math.ceil(limit / 2);
          logger.warn({ events: limit }, "audit sink: the receiver refused the batch as too large; sending fewer");
          continue;
        }
        const delay = backoffDelay(attempt++, backoff, random);
        logger.warn(
          { reason: failure.reason, error: failure.message, attempt, retryInMs: delay, pending: rows.length },
          "audit sink: delivery failed; retrying",
        );
        await pause(delay, false);
      }
    }
  };

  const run = async () => {
    let attempt = 0;
    while (!stopped) {
      try {
        if (!leading && !(await lead())) {
          await pause(Math.max(200, Math.floor(options.leaseMs / 3)), false);
          continue;
        }
        const batch = await nextBatch();
        attempt = 0;
        if (batch) await deliver(batch);
        else await pause(options.pollMs, true);
      } catch (error) {
        const delay = backoffDelay(attempt++, backoff, random);
        logger.error({ err: error, retryInMs: delay }, "audit sink: could not read the store or the cursor");
        await pause(delay, false);
      }
    }
  };

  return {
    id: sink.id,
    start() {
      loop ??= run();
    },
    wake() {
      if (pending?.wakeable) pending.resolve();
      else woken = true;
    },
    isLeading: () => leading,
    async stop() {
      if (stopped) return;
      stopped = true;
      pending?.resolve();
      clearInterval(renewTimer);
      if (loop) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([loop, new Promise<void>((r) => (timer = setTimeout(r, STOP_WAIT_MS)))]);
        clearTimeout(timer);
      }
      if (leading) {
        leading = false;
        await repo.releaseLease(leaseKey, holder).catch(() => undefined);
      }
      metrics.leader.set(labels, 0);
      await sink.close();
    },
  };
}
