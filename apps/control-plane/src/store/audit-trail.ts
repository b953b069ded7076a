/**
 * The audit trail's bulk paths and session summaries: batched, idempotent ingestion; the session
 * summaries ingestion keeps up to date; retention pruning in bounded batches, with the horizon
 * (the last pruned event of each chain) that verification starts from.
 *
 * Ingestion and pruning run as raw SQL through the driver (better-sqlite3 / pg), below Prisma:
 * through Prisma, even one multi-row `INSERT ... ON CONFLICT DO NOTHING` per batch stored about
 * 15 000 events/s on SQLite (its per-argument mapping dominates; and `createMany` cannot skip
 * duplicates on SQLite), against 50 000+ with a prepared statement on the driver. Reads go through
 * Prisma. It never touches the other tables, apart from moving `Agent.auditSeq` in the ingest
 * transaction.
 */
import { setImmediate as yieldToLoop, setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import pg from "pg";
import type { PrismaClient } from "./generated/sqlite/client.js";
import { CONTROL_PLANE_AGENT_ID, type AuditEventRow } from "./repositories.js";

/** An event to store: the row without its agent (a batch belongs to one agent). */
export type IngestRow = Omit<AuditEventRow, "agentId">;

/** Event types counted as statements in a session summary. */
export const STATEMENT_TYPES: ReadonlySet<string> = new Set(["db.query", "ssh.exec"]);

/** A session as summarised from its events. */
export interface AuditSessionRecord {
  agentId: string;
  sessionId: string;
  user: string;
  resource: string;
  startedAt: Date;
  endedAt: Date | null;
  lastEventAt: Date;
  eventCount: number;
  statementCount: number;
  deniedCount: number;
}

export interface AuditSessionFilter {
  agentId?: string;
  user?: string;
  resource?: string;
  /** Sessions with an event at or after this time. */
  since?: Date;
  /** Sessions that started before this time. */
  until?: Date;
  /** Keyset cursor: sessions after this one in (startedAt, sessionId, agentId) descending order. */
  before?: { startedAt: Date; sessionId: string; agentId: string };
}

/** Where an agent's chain starts after pruning: its last pruned event. */
export interface AuditHorizonRecord {
  agentId: string;
  seq: bigint;
  hash: string;
  time: Date;
  /** Events of this agent pruned so far. */
  pruned: bigint;
}

export interface PruneReport {
  /** Events deleted. */
  pruned: number;
  /** Agents (chains) that lost events. */
  agents: number;
  /** Session summaries deleted (sessions none of whose events remain). */
  sessions: number;
  /** Chains whose pruning stopped at their ceiling with older events left (see `prune`'s `ceiling`). */
  held: number;
}

/** What one batch of fresh events adds to a session's summary. */
export interface SessionDelta {
  sessionId: string;
  user: string;
  resource: string;
  startedAt: Date;
  endedAt: Date | null;
  lastEventAt: Date;
  eventCount: number;
  statementCount: number;
  deniedCount: number;
}

/** Summarises the session events among freshly stored rows, one delta per session (sorted by id). */
export function summariseSessions(rows: readonly IngestRow[]): SessionDelta[] {
  const byId = new Map<string, SessionDelta>();
  for (const r of rows) {
    if (r.sessionId === "") continue;
    let s = byId.get(r.sessionId);
    if (!s) {
      s = {
        sessionId: r.sessionId,
        user: "",
        resource: "",
        startedAt: r.time,
        endedAt: null,
        lastEventAt: r.time,
        eventCount: 0,
        statementCount: 0,
        deniedCount: 0,
      };
      byId.set(r.sessionId, s);
    }
    if (s.user === "") s.user = r.user;
    if (s.resource === "") s.resource = r.resource;
    if (r.time < s.startedAt) s.startedAt = r.time;
    if (r.time > s.lastEventAt) s.lastEventAt = r.time;
    if (r.type === "session.end" && (s.endedAt === null || r.time > s.endedAt)) s.endedAt = r.time;
    s.eventCount++;
    if (STATEMENT_TYPES.has(r.type)) s.statementCount++;
    if (r.verdict === "deny") s.deniedCount++;
  }
  // A fixed order, so concurrent upserts of the same sessions lock rows in the same order.
  return [...byId.values()].sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : 0));
}

/** One seq-ordered step of a chain, and whether its event is older than the retention cutoff. */
interface ChainStep {
  seq: bigint;
  old: boolean;
}

/** The operations pruning needs, bound to one connection (on PostgreSQL, the one holding the lock). */
interface PruneOps {
  agentsWithEvents(): Promise<string[]>;
  newest(agentId: string): Promise<bigint | undefined>;
  scan(agentId: string, afterSeq: bigint, limit: number, cutoff: Date): Promise<ChainStep[]>;
  /** Deletes the agent's events up to `upTo` and moves its horizon there, in one transaction. */
  pruneUpTo(agentId: string, upTo: bigint, at: Date): Promise<number>;
  /** Deletes up to `limit` summaries of the agent's sessions started before `cutoff` that have no event left. */
  dropEmptySessions(agentId: string, cutoff: Date, limit: number): Promise<number>;
}

/** The driver-level SQL of one provider. */
interface AuditSql {
  /** SQLite: sets this connection's automatic checkpoint interval (0: off). */
  walAutoCheckpoint(pages: number): void;
  ingest(agentId: string, rows: readonly IngestRow[], lastSeq: bigint, at: Date): Promise<number>;
  countCutoff(keep: number): Promise<Date | undefined>;
  /**
   * SQLite: bytes of the database file in use (its pages less the free ones). PostgreSQL: an
   * estimate of the events' live bytes, `events()` times the bytes an event takes (see there).
   */
  usedBytes(events: () => Promise<number>): Promise<number | undefined>;
  /** Runs `work` unless another pruner holds the lock (then resolves undefined). */
  withPruneLock<T>(work: (ops: PruneOps) => Promise<T>): Promise<T | undefined>;
  close(): Promise<void>;
}

const EVENT_COLUMNS = [
  "id",
  "agentId",
  "seq",
  "time",
  "type",
  "user",
  "resource",
  "sessionId",
  "verdict",
  "rule",
  "text",
  "bundleVersion",
  "prevHash",
  "hash",
  "payload",
  "receivedAt",
] as const;
const SESSION_COLUMNS = [
  "agentId",
  "sessionId",
  "user",
  "resource",
  "startedAt",
  "endedAt",
  "lastEventAt",
  "eventCount",
  "statementCount",
  "deniedCount",
] as const;
const quoted = (columns: readonly string[]) => columns.map((c) => `"${c}"`).join(", ");

/** Dates as Prisma stores them in SQLite (ISO 8601 text with "+00:00"), so both compare alike. */
const sqliteTime = (d: Date) => d.toISOString().replace("Z", "+00:00");

// ------------------------------------------------------------------------------------------------
// SQLite: a second connection to the store's file, beside Prisma's.

/** A batch waiting for the next group commit. */
interface PendingIngest {
  agentId: string;
  rows: readonly IngestRow[];
  lastSeq: bigint;
  at: string;
  resolve(stored: number): void;
  reject(error: unknown): void;
}

/** How long a read on the SQLite connection waits for a lock (writes never wait: see below). */
const BUSY_TIMEOUT_MS = 5000;

/** Most events stored in one SQLite transaction (whole batches: one batch may exceed it alone). */
const MAX_GROUP_ROWS = 4000;

/**
 * better-sqlite3 is synchronous: a transaction here runs within one event-loop turn, so it never
 * holds the write lock while Prisma's connection (same thread) waits for it. The reverse can happen
 * (a Prisma interactive transaction holds the lock across awaits), so writes do not busy-wait:
 * BEGIN IMMEDIATE runs with a zero busy timeout, fails at once with SQLITE_BUSY and is retried after
 * a short sleep. Reads (and preparing statements) keep a busy timeout: in WAL mode they wait only
 * for brief moments (recovery, the end of a TRUNCATE checkpoint).
 */
function createSqliteAuditSql(file: string, beforeWrite: () => Promise<void>): AuditSql {
  const db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
  db.defaultSafeIntegers(true);
  // Checkpoints run in a worker thread (wal-checkpointer.ts), not in this connection's commits.
  db.pragma("wal_autocheckpoint = 0");
  // When the log restarts after a checkpoint, its file is cut back to 64 MiB (it keeps its largest size otherwise).
  db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);

  const insertEvent = db.prepare(
    `INSERT INTO "AuditEvent" (${quoted(EVENT_COLUMNS)}) VALUES (${EVENT_COLUMNS.map(() => "?").join(", ")})
     ON CONFLICT ("agentId", "seq") DO NOTHING`,
  );
  const upsertSession = db.prepare(
    `INSERT INTO "AuditSession" (${quoted(SESSION_COLUMNS)}) VALUES (${SESSION_COLUMNS.map(() => "?").join(", ")})
     ON CONFLICT ("agentId", "sessionId") DO UPDATE SET
       "user" = CASE WHEN "AuditSession"."user" = '' THEN excluded."user" ELSE "AuditSession"."user" END,
       "resource" = CASE WHEN "AuditSession"."resource" = '' THEN excluded."resource" ELSE "AuditSession"."resource" END,
       "startedAt" = MIN("AuditSession"."startedAt", excluded."startedAt"),
       "endedAt" = CASE WHEN excluded."endedAt" IS NULL THEN "AuditSession"."endedAt"
                        WHEN "AuditSession"."endedAt" IS NULL THEN excluded."endedAt"
                        ELSE MAX("AuditSession"."endedAt", excluded."endedAt") END,
       "lastEventAt" = MAX("AuditSession"."lastEventAt", excluded."lastEventAt"),
       "eventCount" = "AuditSession"."eventCount" + excluded."eventCount",
       "statementCount" = "AuditSession"."statementCount" + excluded."statementCount",
       "deniedCount" = "AuditSession"."deniedCount" + excluded."deniedCount"`,
  );
  const advanceAgent = db.prepare(
    `UPDATE "Agent" SET "auditSeq" = ?, "updatedAt" = ? WHERE "id" = ? AND "auditSeq" < ?`,
  );

  const ingestOne = (agentId: string, rows: readonly IngestRow[], lastSeq: bigint, at: string): number => {
    const fresh: IngestRow[] = [];
    for (const r of rows) {
      const result = insertEvent.run(
        r.id,
        agentId,
        r.seq,
        sqliteTime(r.time),
        r.type,
        r.user,
        r.resource,
        r.sessionId,
        r.verdict,
        r.rule,
        r.text,
        r.bundleVersion,
        r.prevHash,
        r.hash,
        r.payload,
        at,
      );
      if (result.changes === 1) fresh.push(r);
    }
    for (const s of summariseSessions(fresh)) {
      upsertSession.run(
        agentId,
        s.sessionId,
        s.user,
        s.resource,
        sqliteTime(s.startedAt),
        s.endedAt ? sqliteTime(s.endedAt) : null,
        sqliteTime(s.lastEventAt),
        s.eventCount,
        s.statementCount,
        s.deniedCount,
      );
    }
    advanceAgent.run(lastSeq, at, agentId, lastSeq);
    return fresh.length;
  };
  const ingestGroupTx = db.transaction((group: readonly PendingIngest[]) =>
    group.map((p) => ingestOne(p.agentId, p.rows, p.lastSeq, p.at)),
  );

  // Group commit: batches that arrive while a transaction is being written (several agents'
  // streams) are stored in one transaction, which costs much less per event than one transaction
  // each. A lone batch waits one event-loop turn at most.
  let queue: PendingIngest[] = [];
  let scheduled = false;
  let flushing = false;
  const schedule = () => {
    if (scheduled || flushing) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      void flush();
    });
  };
  async function flush(): Promise<void> {
    flushing = true;
    try {
      while (queue.length > 0) {
        let rows = 0;
        let take = 0;
        while (
          take < queue.length &&
          (take === 0 || rows + (queue[take] as PendingIngest).rows.length <= MAX_GROUP_ROWS)
        )
          rows += (queue[take++] as PendingIngest).rows.length;
        const group = queue.slice(0, take);
        queue = queue.slice(take);
        try {
          await beforeWrite();
          const stored = await write(() => ingestGroupTx.immediate(group));
          group.forEach((p, i) => p.resolve(stored[i] as number));
        } catch (error) {
          if (group.length === 1) {
            group[0]?.reject(error);
            continue;
          }
          // One batch may be at fault (a duplicate event id, say): each on its own, so only it fails.
          for (const p of group) {
            try {
              p.resolve((await write(() => ingestGroupTx.immediate([p])))[0] as number);
            } catch (e) {
              p.reject(e);
            }
          }
        }
      }
    } finally {
      flushing = false;
      if (queue.length > 0) schedule();
    }
  }

  /** Runs a write transaction, retrying while another connection holds the write lock (up to 30 s). */
  async function write<T>(work: () => T): Promise<T> {
    const deadline = Date.now() + 30_000;
    for (let wait = 1; ; wait = Math.min(wait * 2, 10)) {
      db.pragma("busy_timeout = 0");
      try {
        return work();
      } catch (error) {
        const code = (error as { code?: unknown }).code;
        if ((code !== "SQLITE_BUSY" && code !== "SQLITE_LOCKED") || Date.now() > deadline) throw error;
      } finally {
        db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      }
      await sleep(wait);
    }
  }

  const newest = db.prepare(`SELECT MAX("seq") AS "seq" FROM "AuditEvent" WHERE "agentId" = ?`);
  const scan = db.prepare(
    `SELECT "seq", "time" < ? AS "old" FROM "AuditEvent" WHERE "agentId" = ? AND "seq" > ? ORDER BY "seq" LIMIT ?`,
  );
  const agents = db.prepare(
    `WITH RECURSIVE a(id) AS (
       SELECT MIN("agentId") FROM "AuditEvent"
       UNION ALL
       SELECT (SELECT MIN("agentId") FROM "AuditEvent" WHERE "agentId" > a.id) FROM a WHERE a.id IS NOT NULL
     ) SELECT id FROM a WHERE id IS NOT NULL`,
  );
  const moveHorizon = db.prepare(
    `INSERT INTO "AuditHorizon" ("agentId", "seq", "hash", "time", "pruned", "updatedAt")
       SELECT "agentId", "seq", "hash", "time", 0, ? FROM "AuditEvent"
       WHERE "agentId" = ? AND "seq" = (SELECT MAX("seq") FROM "AuditEvent" WHERE "agentId" = ? AND "seq" <= ?)
     ON CONFLICT ("agentId") DO UPDATE SET "seq" = excluded."seq", "hash" = excluded."hash",
       "time" = excluded."time", "updatedAt" = excluded."updatedAt"
     WHERE excluded."seq" > "AuditHorizon"."seq"`,
  );
  const deleteEvents = db.prepare(`DELETE FROM "AuditEvent" WHERE "agentId" = ? AND "seq" <= ?`);
  const countPruned = db.prepare(`UPDATE "AuditHorizon" SET "pruned" = "pruned" + ? WHERE "agentId" = ?`);
  const pruneTx = db.transaction((agentId: string, upTo: bigint, at: string) => {
    moveHorizon.run(at, agentId, agentId, upTo);
    const deleted = deleteEvents.run(agentId, upTo).changes;
    countPruned.run(deleted, agentId);
    return deleted;
  });
  const dropSessions = db.prepare(
    `DELETE FROM "AuditSession" WHERE "agentId" = ? AND "sessionId" IN (
       SELECT s."sessionId" FROM "AuditSession" s
       WHERE s."agentId" = ? AND s."startedAt" < ?
         AND NOT EXISTS (SELECT 1 FROM "AuditEvent" e WHERE e."sessionId" = s."sessionId" AND e."agentId" = s."agentId")
       LIMIT ?)`,
  );
  const nthNewest = db.prepare(`SELECT "time" FROM "AuditEvent" ORDER BY "time" DESC, "id" DESC LIMIT 1 OFFSET ?`);

  const ops: PruneOps = {
    agentsWithEvents: async () => (agents.all() as { id: string }[]).map((r) => r.id),
    newest: async (agentId) => (newest.get(agentId) as { seq: bigint | null }).seq ?? undefined,
    scan: async (agentId, afterSeq, limit, cutoff) =>
      (scan.all(sqliteTime(cutoff), agentId, afterSeq, limit) as { seq: bigint; old: bigint }[]).map((r) => ({
        seq: r.seq,
        old: r.old === 1n,
      })),
    pruneUpTo: async (agentId, upTo, at) => {
      await beforeWrite();
      return write(() => pruneTx.immediate(agentId, upTo, sqliteTime(at)));
    },
    dropEmptySessions: (agentId, cutoff, limit) =>
      write(() => dropSessions.run(agentId, agentId, sqliteTime(cutoff), limit).changes),
  };
  let pruning = false;

  return {
    walAutoCheckpoint: (pages) => void db.pragma(`wal_autocheckpoint = ${Math.max(0, Math.floor(pages))}`),
    ingest: (agentId, rows, lastSeq, at) =>
      new Promise<number>((resolve, reject) => {
        queue.push({ agentId, rows, lastSeq, at: sqliteTime(at), resolve, reject });
        schedule();
      }),
    countCutoff: async (keep) => {
      const row = nthNewest.get(keep) as { time: string } | undefined;
      return row ? new Date(row.time) : undefined;
    },
    usedBytes: async () => {
      const pages = Number(db.pragma("page_count", { simple: true }));
      const free = Number(db.pragma("freelist_count", { simple: true }));
      const size = Number(db.pragma("page_size", { simple: true }));
      return (pages - free) * size;
    },
    // One process owns a SQLite store: an in-process flag keeps two runs from overlapping.
    async withPruneLock(work) {
      if (pruning) return undefined;
      pruning = true;
      try {
        return await work(ops);
      } finally {
        pruning = false;
      }
    },
    close: async () => {
      // Batches already accepted are stored before the connection closes.
      while (scheduled || flushing || queue.length > 0) await sleep(1);
      db.close();
    },
  };
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL: a small pool of its own, beside Prisma's.

/** Retention's advisory lock key ("moat-ret"), apart from the migrations' key. */
const PRUNE_LOCK_KEY = "7885631198462338420";

/** Timestamps as text for `timestamp(3)` columns: UTC, as Prisma writes them (the zone is ignored). */
const pgTime = (d: Date) => d.toISOString();

function createPostgresAuditSql(connectionString: string): AuditSql {
  const pool = new pg.Pool({ connectionString, max: 4 });
  // An idle client's error (the server restarted) must not crash the process; the next query fails instead.
  pool.on("error", () => undefined);

  async function transaction<T>(client: pg.PoolClient, work: () => Promise<T>): Promise<T> {
    await client.query("BEGIN");
    try {
      const result = await work();
      await client.query("COMMIT");
      return result;
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    }
  }

  const insertEvents = `INSERT INTO "AuditEvent" (${quoted(EVENT_COLUMNS)})
    SELECT u."id", $1, u."seq", u."time", u."type", u."user", u."resource", u."sessionId", u."verdict", u."rule",
           u."text", u."bundleVersion", u."prevHash", u."hash", u."payload", $2::timestamp(3)
    FROM unnest($3::text[], $4::int8[], $5::timestamp(3)[], $6::text[], $7::text[], $8::text[], $9::text[],
                $10::text[], $11::text[], $12::text[], $13::int8[], $14::text[], $15::text[], $16::bytea[])
      AS u("id", "seq", "time", "type", "user", "resource", "sessionId", "verdict", "rule", "text",
           "bundleVersion", "prevHash", "hash", "payload")
    ON CONFLICT ("agentId", "seq") DO NOTHING
    RETURNING "seq"`;
  const upsertSessions = `INSERT INTO "AuditSession" (${quoted(SESSION_COLUMNS)})
    SELECT $1, u.* FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamp(3)[], $6::timestamp(3)[],
                               $7::timestamp(3)[], $8::int4[], $9::int4[], $10::int4[])
      AS u("sessionId", "user", "resource", "startedAt", "endedAt", "lastEventAt", "eventCount", "statementCount",
           "deniedCount")
    ON CONFLICT ("agentId", "sessionId") DO UPDATE SET
      "user" = CASE WHEN "AuditSession"."user" = '' THEN EXCLUDED."user" ELSE "AuditSession"."user" END,
      "resource" = CASE WHEN "AuditSession"."resource" = '' THEN EXCLUDED."resource" ELSE "AuditSession"."resource" END,
      "startedAt" = LEAST("AuditSession"."startedAt", EXCLUDED."startedAt"),
      "endedAt" = GREATEST("AuditSession"."endedAt", EXCLUDED."endedAt"),
      "lastEventAt" = GREATEST("AuditSession"."lastEventAt", EXCLUDED."lastEventAt"),
      "eventCount" = "AuditSession"."eventCount" + EXCLUDED."eventCount",
      "statementCount" = "AuditSession"."statementCount" + EXCLUDED."statementCount",
      "deniedCount" = "AuditSession"."deniedCount" + EXCLUDED."deniedCount"`;

  const opsOn = (client: pg.PoolClient): PruneOps => ({
    agentsWithEvents: async () =>
      (
        await client.query<{ id: string }>(
          `WITH RECURSIVE a(id) AS (
             SELECT MIN("agentId") FROM "AuditEvent"
             UNION ALL
             SELECT (SELECT MIN("agentId") FROM "AuditEvent" WHERE "agentId" > a.id) FROM a WHERE a.id IS NOT NULL
           ) SELECT id FROM a WHERE id IS NOT NULL`,
        )
      ).rows.map((r) => r.id),
    newest: async (agentId) => {
      const { rows } = await client.query<{ seq: string | null }>(
        `SELECT MAX("seq") AS "seq" FROM "AuditEvent" WHERE "agentId" = $1`,
        [agentId],
      );
      return rows[0]?.seq == null ? undefined : BigInt(rows[0].seq);
    },
    scan: async (agentId, afterSeq, limit, cutoff) =>
      (
        await client.query<{ seq: string; old: boolean }>(
          `SELECT "seq", "time" < $1::timestamp(3) AS "old" FROM "AuditEvent"
           WHERE "agentId" = $2 AND "seq" > $3 ORDER BY "seq" LIMIT $4`,
          [pgTime(cutoff), agentId, afterSeq.toString(), limit],
        )
      ).rows.map((r) => ({ seq: BigInt(r.seq), old: r.old })),
    pruneUpTo: (agentId, upTo, at) =>
      transaction(client, async () => {
        await client.query(
          `INSERT INTO "AuditHorizon" ("agentId", "seq", "hash", "time", "pruned", "updatedAt")
             SELECT "agentId", "seq", "hash", "time", 0, $1::timestamp(3) FROM "AuditEvent"
             WHERE "agentId" = $2 AND "seq" = (SELECT MAX("seq") FROM "AuditEvent" WHERE "agentId" = $2 AND "seq" <= $3)
           ON CONFLICT ("agentId") DO UPDATE SET "seq" = EXCLUDED."seq", "hash" = EXCLUDED."hash",
             "time" = EXCLUDED."time", "updatedAt" = EXCLUDED."updatedAt"
           WHERE EXCLUDED."seq" > "AuditHorizon"."seq"`,
          [pgTime(at), agentId, upTo.toString()],
        );
        const deleted =
          (
            await client.query(`DELETE FROM "AuditEvent" WHERE "agentId" = $1 AND "seq" <= $2`, [
              agentId,
              upTo.toString(),
            ])
          ).rowCount ?? 0;
        await client.query(`UPDATE "AuditHorizon" SET "pruned" = "pruned" + $1 WHERE "agentId" = $2`, [
          deleted,
          agentId,
        ]);
        return deleted;
      }),
    dropEmptySessions: async (agentId, cutoff, limit) =>
      (
        await client.query(
          `DELETE FROM "AuditSession" WHERE "agentId" = $1 AND "sessionId" IN (
             SELECT s."sessionId" FROM "AuditSession" s
             WHERE s."agentId" = $1 AND s."startedAt" < $2::timestamp(3)
               AND NOT EXISTS (SELECT 1 FROM "AuditEvent" e WHERE e."sessionId" = s."sessionId" AND e."agentId" = s."agentId")
             LIMIT $3)`,
          [agentId, pgTime(cutoff), limit],
        )
      ).rowCount ?? 0,
  });

  async function ingestNow(agentId: string, rows: readonly IngestRow[], lastSeq: bigint, at: Date): Promise<number> {
    const client = await pool.connect();
    try {
      return await transaction(client, async () => {
        const inserted = await client.query<{ seq: string }>(insertEvents, [
          agentId,
          pgTime(at),
          rows.map((r) => r.id),
          rows.map((r) => r.seq.toString()),
          rows.map((r) => pgTime(r.time)),
          rows.map((r) => r.type),
          rows.map((r) => r.user),
          rows.map((r) => r.resource),
          rows.map((r) => r.sessionId),
          rows.map((r) => r.verdict),
          rows.map((r) => r.rule),
          rows.map((r) => r.text),
          rows.map((r) => r.bundleVersion.toString()),
          rows.map((r) => r.prevHash),
          rows.map((r) => r.hash),
          rows.map((r) => Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength)),
        ]);
        const freshSeqs = new Set(inserted.rows.map((r) => String(r.seq)));
        const fresh = rows.filter((r) => freshSeqs.has(r.seq.toString()));
        const sessions = summariseSessions(fresh);
        if (sessions.length > 0) {
          await client.query(upsertSessions, [
            agentId,
            sessions.map((s) => s.sessionId),
            sessions.map((s) => s.user),
            sessions.map((s) => s.resource),
            sessions.map((s) => pgTime(s.startedAt)),
            sessions.map((s) => (s.endedAt ? pgTime(s.endedAt) : null)),
            sessions.map((s) => pgTime(s.lastEventAt)),
            sessions.map((s) => s.eventCount),
            sessions.map((s) => s.statementCount),
            sessions.map((s) => s.deniedCount),
          ]);
        }
        await client.query(
          `UPDATE "Agent" SET "auditSeq" = $1, "updatedAt" = $2::timestamp(3) WHERE "id" = $3 AND "auditSeq" < $1`,
          [lastSeq.toString(), pgTime(at), agentId],
        );
        return fresh.length;
      });
    } finally {
      client.release();
    }
  }

  // One agent's batches are written one at a time, in order (the agent channel pipelines them):
  // concurrent transactions on the same Agent and AuditSession rows would only wait for each other,
  // or deadlock when they touch the sessions in different orders.
  const agentWrites = new Map<string, Promise<unknown>>();
  const inOrder = <T>(agentId: string, work: () => Promise<T>): Promise<T> => {
    const result = (agentWrites.get(agentId) ?? Promise.resolve()).then(work, work);
    const tail = result.catch(() => undefined);
    agentWrites.set(agentId, tail);
    void tail.then(() => {
      if (agentWrites.get(agentId) === tail) agentWrites.delete(agentId);
    });
    return result;
  };

  return {
    walAutoCheckpoint: () => undefined,
    ingest: (agentId, rows, lastSeq, at) => inOrder(agentId, () => ingestNow(agentId, rows, lastSeq, at)),
    // Deleted rows leave space PostgreSQL reuses but does not give back, and nothing cheap (nor
    // available without an extension) says how much of a table is free: the live bytes are
    // estimated instead, as the event count times the bytes an event takes, from a sample of the
    // newest 1 000 rows (read by the time index). A row's size (its whole-row value carries its
    // TOASTed values) is split into what stays in the heap and the long texts and payloads stored
    // out of line (rows over PostgreSQL's 2 KB threshold move their large values to TOAST, where
    // they take their size plus chunk overhead). The heap part, with its line pointer and the pages'
    // slack, is scaled by the table's ratio of heap and indexes to heap: dead space inflates the heap
    // and the indexes alike, so the ratio holds after pruning.
    async usedBytes(events) {
      const { rows } = await pool.query<{ n: number; row: number; outside: number; heap: number; indexes: number }>(
        `SELECT count(*)::int AS n,
                coalesce(avg(pg_column_size(s.*)), 0)::float8 AS row,
                coalesce(avg(CASE WHEN pg_column_size(s.*) > 2032 THEN
                    (CASE WHEN pg_column_size(s."text") > 1000 THEN pg_column_size(s."text") - 18 ELSE 0 END) +
                    (CASE WHEN pg_column_size(s."payload") > 1000 THEN pg_column_size(s."payload") - 18 ELSE 0 END)
                  ELSE 0 END), 0)::float8 AS outside,
                pg_relation_size('"AuditEvent"')::float8 AS heap,
                pg_indexes_size('"AuditEvent"')::float8 AS indexes
           FROM (SELECT * FROM "AuditEvent" ORDER BY "time" DESC, "id" DESC LIMIT 1000) s`,
      );
      const r = rows[0];
      if (!r || r.n === 0 || r.heap <= 0) return 0;
      // Heap pages are filled to about 90% on average (tuples do not split across pages); TOAST
      // chunks (about 2 KB, four to a page) and their index add about a tenth.
      const inHeap = ((r.row - r.outside + 4) / 0.9) * ((r.heap + r.indexes) / r.heap);
      return Math.round((await events()) * (inHeap + r.outside * 1.1));
    },
    async countCutoff(keep) {
      const { rows } = await pool.query<{ t: string }>(
        `SELECT to_char("time", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS t FROM "AuditEvent"
         ORDER BY "time" DESC, "id" DESC LIMIT 1 OFFSET $1`,
        [keep],
      );
      return rows[0] ? new Date(rows[0].t) : undefined;
    },
    // Replicas share the database: a session-level advisory lock lets one of them prune at a time;
    // the others skip the run (the next one comes soon enough).
    async withPruneLock(work) {
      const client = await pool.connect();
      try {
        const { rows } = await client.query<{ locked: boolean }>("SELECT pg_try_advisory_lock($1::int8) AS locked", [
          PRUNE_LOCK_KEY,
        ]);
        if (!rows[0]?.locked) return undefined;
        try {
          return await work(opsOn(client));
        } finally {
          await client.query("SELECT pg_advisory_unlock($1::int8)", [PRUNE_LOCK_KEY]).catch(() => undefined);
        }
      } finally {
        client.release();
      }
    },
    close: () => pool.end(),
  };
}

// ------------------------------------------------------------------------------------------------

/** Where the store's SQL goes: a SQLite file or a PostgreSQL URL. */
export type AuditTrailTarget =
  | {
      provider: "sqlite";
      file: string;
      /** Awaited before each write transaction (the WAL checkpointer's `makeRoom`). */
      beforeWrite?: () => Promise<void>;
    }
  | { provider: "postgres"; url: string };

export function createAuditTrailRepository(db: PrismaClient, target: AuditTrailTarget) {
  const sql =
    target.provider === "sqlite"
      ? createSqliteAuditSql(target.file, target.beforeWrite ?? (() => Promise.resolve()))
      : createPostgresAuditSql(target.url);

  const trail = {
    /**
     * Stores a batch idempotently (an event already stored, by agent and seq, is skipped), adds the
     * fresh events to their sessions' summaries and advances the agent's stored sequence, in one
     * transaction; returns how many events were new.
     */
    ingest: (agentId: string, rows: readonly IngestRow[], lastSeq: bigint, at: Date): Promise<number> =>
      sql.ingest(agentId, rows, lastSeq, at),

    /**
     * The time of the newest event beyond the `keep` newest (events at or before it are the excess
     * over a maximum count); undefined when there are at most `keep`. Walks `keep` index entries.
     */
    countCutoff: (keep: number): Promise<Date | undefined> => sql.countCutoff(keep),

    /**
     * Deletes events older than `cutoff`, chain by chain from each chain's start, `batchSize` at a
     * time (each batch one transaction that also moves the chain's horizon). A chain is cut only as
     * a prefix: it stops at its first event not older than the cutoff, and its newest event always
     * stays (it anchors the chain for the next one). Then drops the summaries of sessions with no
     * event left. Resolves undefined when another replica is pruning.
     */
    prune: async (options: {
      cutoff: Date;
      batchSize: number;
      now: () => Date;
      /** Checked between batches: stop early (shutdown). */
      shouldStop?: () => boolean;
      /**
       * The highest sequence number of a chain that may go whatever its age (events a consumer has
       * not taken yet stay); undefined: no ceiling. Read once per chain, when its turn comes.
       */
      ceiling?: (agentId: string) => Promise<bigint | undefined>;
    }): Promise<PruneReport | undefined> =>
      sql.withPruneLock(async (ops) => {
        const report: PruneReport = { pruned: 0, agents: 0, sessions: 0, held: 0 };
        for (const agentId of await ops.agentsWithEvents()) {
          if (options.shouldStop?.()) break;
          const newest = await ops.newest(agentId);
          if (newest === undefined) continue;
          const ceiling = await options.ceiling?.(agentId);
          let pruned = 0;
          let held = false;
          for (let after = 0n; ;) {
            const steps = await ops.scan(agentId, after, options.batchSize, options.cutoff);
            let upTo: bigint | undefined;
            let done = steps.length < options.batchSize;
            for (const step of steps) {
              if (!step.old || step.seq >= newest) {
                done = true;
                break;
              }
              if (ceiling !== undefined && step.seq > ceiling) {
                held = done = true;
                break;
              }
              upTo = step.seq;
            }
            if (upTo === undefined) break;
            pruned += await ops.pruneUpTo(agentId, upTo, options.now());
            after = upTo;
            if (done || options.shouldStop?.()) break;
            await yieldToLoop();
          }
          if (held) report.held++;
          if (pruned === 0) continue;
          report.pruned += pruned;
          report.agents++;
          for (;;) {
            const dropped = await ops.dropEmptySessions(agentId, options.cutoff, options.batchSize);
            report.sessions += dropped;
            if (dropped < options.batchSize) break;
            await yieldToLoop();
          }
        }
        return report;
      }),

    /**
     * SQLite: bytes of the store in use (pages less free ones). PostgreSQL: an estimate of the
     * events' live bytes (the event count times the sampled bytes per event, indexes included).
     */
    usedBytes: (): Promise<number | undefined> => sql.usedBytes(() => trail.estimateEvents()),

    /**
     * About how many events are stored: for each chain, its highest sequence number less its
     * retention horizon (exact unless an agent dropped events). O(chains), not O(events).
     */
    estimateEvents: async (): Promise<number> => {
      const [agents, controlPlane, horizons] = await Promise.all([
        db.agent.findMany({ where: { auditSeq: { gt: 0n } }, select: { id: true, auditSeq: true } }),
        db.counter.findUnique({ where: { name: "audit.control-plane.seq" } }),
        db.auditHorizon.findMany({ select: { agentId: true, seq: true } }),
      ]);
      const cut = new Map(horizons.map((h) => [h.agentId, h.seq]));
      let events = 0n;
      for (const a of agents) events += a.auditSeq - (cut.get(a.id) ?? 0n);
      if (controlPlane) events += controlPlane.value - (cut.get(CONTROL_PLANE_AGENT_ID) ?? 0n);
      return Number(events);
    },

    /** The chain's retention horizon, if events of `agentId` were ever pruned. */
    horizon: async (agentId: string): Promise<AuditHorizonRecord | undefined> =>
      (await db.auditHorizon.findUnique({
        where: { agentId },
        select: { agentId: true, seq: true, hash: true, time: true, pruned: true },
      })) ?? undefined,

    /** Sessions, most recently started first, keyset-paginated. */
    sessions: (filter: AuditSessionFilter, limit: number): Promise<AuditSessionRecord[]> =>
      db.auditSession.findMany({
        where: {
          ...(filter.agentId ? { agentId: filter.agentId } : {}),
          ...(filter.user ? { user: filter.user } : {}),
          ...(filter.resource ? { resource: filter.resource } : {}),
          ...(filter.since ? { lastEventAt: { gte: filter.since } } : {}),
          ...(filter.until ? { startedAt: { lt: filter.until } } : {}),
          ...(filter.before
            ? {
                OR: [
                  { startedAt: { lt: filter.before.startedAt } },
                  { startedAt: filter.before.startedAt, sessionId: { lt: filter.before.sessionId } },
                  {
                    startedAt: filter.before.startedAt,
                    sessionId: filter.before.sessionId,
                    agentId: { lt: filter.before.agentId },
                  },
                ],
              }
            : {}),
        },
        orderBy: [{ startedAt: "desc" }, { sessionId: "desc" }, { agentId: "desc" }],
        take: limit,
      }),

    /** A session by its id (and agent, when given); the most recently started if several agents used the id. */
    session: async (sessionId: string, agentId?: string): Promise<AuditSessionRecord | undefined> =>
      (await db.auditSession.findFirst({
        where: { sessionId, ...(agentId ? { agentId } : {}) },
        orderBy: [{ startedAt: "desc" }, { agentId: "desc" }],
      })) ?? undefined,

    /** A session's events in sequence order, after `afterSeq`, at most `limit`. */
    sessionEvents: (agentId: string, sessionId: string, afterSeq: bigint, limit: number): Promise<AuditEventRow[]> =>
      db.auditEvent.findMany({
        where: { sessionId, agentId, seq: { gt: afterSeq } },
        orderBy: { seq: "asc" },
        take: limit,
      }),

    /** SQLite: this connection's automatic checkpoints (off while the checkpoint worker runs). */
    walAutoCheckpoint: (pages: number) => sql.walAutoCheckpoint(pages),
    close: () => sql.close(),
  };
  return trail;
}

export type AuditTrailRepository = Omit<ReturnType<typeof createAuditTrailRepository>, "close" | "walAutoCheckpoint">;
