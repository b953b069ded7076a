/**
 * What audit sinks need from the store: the highest stored sequence number of every event source
 * (each agent, and the control plane's own chain), the stored events after a per-source cursor,
 * and two kinds of `Setting` rows: a sink's cursor and its lease (which replica delivers it).
 *
 * It never writes audit events. Used by src/audit-sinks/ only.
 */
import type { PrismaClient } from "./generated/sqlite/client.js";
import { CONTROL_PLANE_AGENT_ID, type AuditEventRow } from "./repositories.js";

/** A stored event with the time the control plane stored it. */
export interface SinkEventRow extends AuditEventRow {
  receivedAt: Date;
}

/** Where a source's cursor stands: events of `agentId` with `seq > after` are not yet delivered. */
export interface SourcePosition {
  agentId: string;
  after: bigint;
}

interface Lease {
  holder: string;
  /** Epoch milliseconds. */
  until: number;
}

function parseLease(value: string | undefined): Lease | undefined {
  if (!value) return undefined;
  try {
    const lease = JSON.parse(value) as Partial<Lease>;
    return typeof lease.holder === "string" && typeof lease.until === "number"
      ? { holder: lease.holder, until: lease.until }
      : undefined;
  } catch {
    return undefined;
  }
}

function isUniqueViolation(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { code?: unknown }).code === "P2002";
}

export function createAuditSinkRepository(db: PrismaClient) {
  return {
    /**
     * The highest stored sequence number of every source that has events: `Agent.auditSeq` (moved in
     * the ingest transaction) and the control-plane chain's counter (moved in the append transaction).
     */
    highs: async (): Promise<Map<string, bigint>> => {
      const [agents, controlPlane] = await Promise.all([
        db.agent.findMany({ where: { auditSeq: { gt: 0n } }, select: { id: true, auditSeq: true } }),
        db.counter.findUnique({ where: { name: "audit.control-plane.seq" } }),
      ]);
      const highs = new Map(agents.map((a) => [a.id, a.auditSeq]));
      if (controlPlane && controlPlane.value > 0n) highs.set(CONTROL_PLANE_AGENT_ID, controlPlane.value);
      return highs;
    },

    /**
     * Events of `sources` with `after < seq <= after + span`, oldest stored first (ties by source and
     * sequence), at most `limit`. `bySeq` orders by source and sequence instead.
     */
    eventsAfter: async (
      sources: SourcePosition[],
      span: bigint,
      limit: number,
      bySeq = false,
    ): Promise<SinkEventRow[]> => {
      if (sources.length === 0) return [];
      return db.auditEvent.findMany({
        where: { OR: sources.map((s) => ({ agentId: s.agentId, seq: { gt: s.after, lte: s.after + span } })) },
        orderBy: bySeq
          ? [{ agentId: "asc" }, { seq: "asc" }]
          : [{ receivedAt: "asc" }, { agentId: "asc" }, { seq: "asc" }],
        take: limit,
      });
    },

    /** Which of `keys` ("agentId seq") are stored. */
    present: async (keys: { agentId: string; seq: bigint }[]): Promise<Set<string>> => {
      if (keys.length === 0) return new Set();
      const rows = await db.auditEvent.findMany({
        where: { OR: keys.map((k) => ({ agentId: k.agentId, seq: k.seq })) },
        select: { agentId: true, seq: true },
      });
      return new Set(rows.map((r) => `${r.agentId} ${r.seq}`));
    },

    /** The lowest stored sequence number of `agentId` above `after`, if any. */
    firstAfter: async (agentId: string, after: bigint): Promise<bigint | undefined> =>
      (
        await db.auditEvent.findFirst({
          where: { agentId, seq: { gt: after } },
          orderBy: { seq: "asc" },
          select: { seq: true },
        })
      )?.seq,

    getState: async (key: string): Promise<string | undefined> =>
      (await db.setting.findUnique({ where: { key } }))?.value,

    /**
     * Writes `value` at `key` while `holder` holds the lease at `leaseKey` (checked in the same
     * transaction); false when it does not.
     */
    putStateAsHolder: async (key: string, value: string, leaseKey: string, holder: string): Promise<boolean> =>
      db.$transaction(async (tx) => {
        const lease = parseLease((await tx.setting.findUnique({ where: { key: leaseKey } }))?.value);
        if (lease?.holder !== holder) return false;
        await tx.setting.upsert({ where: { key }, create: { key, value }, update: { value } });
        return true;
      }),

    /**
     * Takes or renews the lease at `key` for `holder` until `now + ttlMs`: succeeds when the row is
     * absent, expired, or already held by `holder`. Compare-and-set on the row's value, so two
     * replicas racing for an expired lease cannot both win.
     */
    acquireLease: async (key: string, holder: string, ttlMs: number, now: Date): Promise<boolean> => {
      const value = JSON.stringify({ holder, until: now.getTime() + ttlMs } satisfies Lease);
      const row = await db.setting.findUnique({ where: { key } });
      if (!row) {
        try {
          await db.setting.create({ data: { key, value } });
          return true;
        } catch (error) {
          if (isUniqueViolation(error)) return false;
          throw error;
        }
      }
      const lease = parseLease(row.value);
      if (lease && lease.holder !== holder && lease.until > now.getTime()) return false;
      const { count } = await db.setting.updateMany({ where: { key, value: row.value }, data: { value } });
      return count === 1;
    },

    /** Gives the lease up (only if `holder` still holds it), so another replica can take over at once. */
    releaseLease: async (key: string, holder: string): Promise<void> => {
      const row = await db.setting.findUnique({ where: { key } });
      if (parseLease(row?.value)?.holder !== holder || !row) return;
      await db.setting.deleteMany({ where: { key, value: row.value } });
    },
  };
}

export type AuditSinkRepository = ReturnType<typeof createAuditSinkRepository>;
