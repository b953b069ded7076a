/**
 * Audit on the control plane: idempotent, batched ingestion of the batches agents ship (events
 * keyed by agent and sequence number; a resent batch stores nothing twice), search with keyset
 * pagination, sessions, a streamed export, and hash-chain verification (each event carries the
 * SHA-256 of the bytes of the agent's previous event, so a removed or altered event breaks the
 * chain at a known place; after retention pruned a chain's start, it starts at the recorded horizon).
 */
import { hash } from "node:crypto";
import { AppError, createUlidFactory } from "@moat/common";
import {
  AuditEventSchema,
  create,
  fromBinary,
  timestampDate,
  timestampFromDate,
  toBinary,
  Verdict,
  type AuditEvent,
} from "@moat/proto";
import type {
  AuditEventRow,
  AuditFilter,
  AuditHorizonRecord,
  AuditSessionFilter,
  AuditSessionRecord,
  IngestRow,
  Store,
} from "../store/index.js";
import {
  advance,
  decodeCursor as decodeSourceCursor,
  encodeCursor as encodeSourceCursor,
  positionOf,
  selectDeliverable,
} from "../audit-sinks/cursor.js";
import { decodeAuditFields, type DecodedAuditFields } from "./audit-decode.js";

const VERDICTS: Record<number, string> = {
  [Verdict.ALLOW]: "allow",
  [Verdict.DENY]: "deny",
  [Verdict.REVIEW]: "review",
};
const MAX_TEXT = 4096;

export const sha256 = (bytes: Uint8Array) => hash("sha256", bytes, "hex");

/** The stored fields through protobuf-es, for events the direct reader leaves to it. */
function decodeWithProtobuf(bytes: Uint8Array): DecodedAuditFields {
  let event: AuditEvent;
  try {
    event = fromBinary(AuditEventSchema, bytes);
  } catch (error) {
    throw new AppError("bad_request", "an audit event is not a valid AuditEvent", { cause: error });
  }
  const d = event.detail;
  return {
    id: event.id,
    seq: event.seq,
    timeMs: event.time ? timestampDate(event.time).getTime() : 0,
    type: event.type,
    user: event.actor?.user ?? "",
    resource: event.resource,
    sessionId: event.sessionId,
    verdict: event.verdict,
    rule: event.rule,
    message: event.message,
    bundleVersion: event.bundleVersion,
    prevHash: event.prevHash,
    detailCase: d.case ?? "",
    detailText: d.case === "dbQuery" ? d.value.text : d.case === "sshExec" ? d.value.command : "",
  };
}

/** Decodes one shipped event into a row; throws AppError("bad_request") for a malformed one. */
export function toRow(bytes: Uint8Array): IngestRow {
  const event = decodeAuditFields(bytes) ?? decodeWithProtobuf(bytes);
  if (event.seq === 0n || !/^[0-9A-HJKMNP-TV-Z]{26}$/.test(event.id) || !event.type) {
    throw new AppError("bad_request", "an audit event lacks an id, a sequence number or a type");
  }
  const time = new Date(event.timeMs);
  if (Number.isNaN(time.getTime())) throw new AppError("bad_request", "an audit event's time is out of range");
  const text = event.detailCase === "dbQuery" || event.detailCase === "sshExec" ? event.detailText : event.message;
  return {
    id: event.id,
    seq: event.seq,
    time,
    type: event.type.slice(0, 64),
    user: event.user.slice(0, 320),
    resource: event.resource.slice(0, 63),
    sessionId: event.sessionId.slice(0, 64),
    verdict: VERDICTS[event.verdict] ?? "",
    rule: event.rule.slice(0, 200),
    text: text.slice(0, MAX_TEXT),
    bundleVersion: event.bundleVersion,
    prevHash: Buffer.from(event.prevHash.buffer, event.prevHash.byteOffset, event.prevHash.byteLength).toString("hex"),
    hash: sha256(bytes),
    payload: bytes,
  };
}

export interface AuditView {
  id: string;
  agentId: string;
  seq: string;
  time: Date;
  type: string;
  user: string;
  resource: string;
  sessionId: string;
  verdict: string;
  rule: string;
  message: string;
  bundleVersion: string;
  detail: unknown;
}

export function toView(row: AuditEventRow): AuditView {
  const event = fromBinary(AuditEventSchema, row.payload);
  const detail = event.detail.case
    ? {
        kind: event.detail.case,
        ...JSON.parse(
          JSON.stringify(event.detail.value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)),
        ),
      }
    : null;
  delete (detail as Record<string, unknown> | null)?.$typeName;
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
    message: event.message,
    bundleVersion: row.bundleVersion.toString(),
    detail,
  };
}

export interface ChainReport {
  agentId: string;
  checked: number;
  ok: boolean;
  /** The first problem: a missing sequence number or an event whose predecessor's hash does not match. */
  firstBreak?: { seq: string; id?: string; problem: string };
  /** Present once retention pruned the chain's start: the last pruned event, where checking starts. */
  horizon?: { seq: string; time: Date; pruned: string };
}

/** A session as summarised from its events (GET /api/v1/audit/sessions). */
export interface SessionView {
  sessionId: string;
  agentId: string;
  user: string;
  resource: string;
  startedAt: Date;
  /** When its session.end event was recorded; null while it runs (or if that event is not stored). */
  endedAt: Date | null;
  lastEventAt: Date;
  eventCount: number;
  /** db.query and ssh.exec events. */
  statementCount: number;
  deniedCount: number;
}

/** An action taken on the control plane, recorded in its own audit chain. */
export interface ControlPlaneAction {
  type: string;
  /** Who did it (email or service-account name). */
  actor: string;
  /** What it concerned: a policy, agent, user or token, in words. */
  message: string;
  sourceAddress?: string;
}

/** Events per store query when exporting (each one page of the keyset). */
export const EXPORT_BATCH = 500;

const encodeCursor = (parts: string[]) => Buffer.from(JSON.stringify(parts)).toString("base64url");

function decodeCursorParts(cursor: string, count: number): string[] {
  let parts: unknown;
  try {
    parts = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    parts = undefined;
  }
  if (!Array.isArray(parts) || parts.length !== count || !parts.every((p) => typeof p === "string"))
    throw new AppError("bad_request", "the cursor is not valid");
  return parts as string[];
}

function toSessionView(s: AuditSessionRecord): SessionView {
  return {
    sessionId: s.sessionId,
    agentId: s.agentId,
    user: s.user,
    resource: s.resource,
    startedAt: s.startedAt,
    endedAt: s.endedAt,
    lastEventAt: s.lastEventAt,
    eventCount: s.eventCount,
    statementCount: s.statementCount,
    deniedCount: s.deniedCount,
  };
}

/** How long `follow` waits for a missing sequence number before passing it (a hole that stays). */
const FOLLOW_HOLE_GRACE_MS = 10_000;

/** Whether `row` matches `filter` (what the store's search does, for rows read by sequence number). */
function matches(row: AuditEventRow, filter: Omit<AuditFilter, "before" | "after">): boolean {
  return (
    (!filter.agentId || row.agentId === filter.agentId) &&
    (!filter.user || row.user === filter.user) &&
    (!filter.resource || row.resource === filter.resource) &&
    (!filter.type || row.type === filter.type) &&
    (!filter.verdict || row.verdict === filter.verdict) &&
    (!filter.since || row.time >= filter.since) &&
    (!filter.until || row.time < filter.until) &&
    (!filter.text || row.text.includes(filter.text))
  );
}

export function createAuditService(deps: {
  store: Pick<Store, "auditEvents" | "auditTrail" | "auditSinks">;
  now?: () => Date;
  /** Events per store query when exporting (default EXPORT_BATCH). */
  exportBatch?: number;
}) {
  const { store } = deps;
  const now = deps.now ?? (() => new Date());
  const ulid = createUlidFactory(() => now().getTime());
  const exportBatch = deps.exportBatch ?? EXPORT_BATCH;

  function eventCursor(row: AuditEventRow): string {
    return Buffer.from(`${row.time.toISOString()}|${row.id}`).toString("base64url");
  }

  return {
    /** Records a control-plane action (policy change, token issued or revoked, user or agent change). */
    async recordControlPlane(action: ControlPlaneAction): Promise<void> {
      const at = now();
      await store.auditEvents.appendControlPlane((seq, prevHash) =>
        toRow(
          toBinary(
            AuditEventSchema,
            create(AuditEventSchema, {
              id: ulid(),
              seq,
              time: timestampFromDate(at),
              type: action.type,
              actor: { user: action.actor, sourceAddress: action.sourceAddress ?? "" },
              message: action.message.slice(0, 1000),
              prevHash,
            }),
          ),
        ),
      );
    },

    /**
     * Stores an agent's batch: every event decoded and checked first (one malformed event refuses
     * the whole batch), then one transaction. Returns how many were new and the highest sequence
     * number in the batch (what the agent may forget).
     */
    async ingest(agentId: string, batch: Uint8Array[]): Promise<{ stored: number; lastSeq: bigint }> {
      const rows = batch.map(toRow);
      const lastSeq = rows.reduce((max, r) => (r.seq > max ? r.seq : max), 0n);
      const stored = rows.length > 0 ? await store.auditTrail.ingest(agentId, rows, lastSeq, now()) : 0;
      return { stored, lastSeq };
    },

    /**
     * One page of events, newest first (`order: "asc"`: oldest first); `nextCursor` continues in the
     * same order. With "asc", `filter.after` is the cursor; with "desc", `filter.before`.
     */
    async search(
      filter: AuditFilter,
      limit: number,
      order: "asc" | "desc" = "desc",
    ): Promise<{ items: AuditView[]; nextCursor?: string }> {
      const rows = await store.auditEvents.search(filter, limit + 1, order);
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      return {
        items: page.map(toView),
        ...(rows.length > limit && last ? { nextCursor: eventCursor(last) } : {}),
      };
    },

    decodeCursor(cursor: string): { time: Date; id: string } {
      const [time, id] = Buffer.from(cursor, "base64url").toString("utf8").split("|");
      const date = new Date(time ?? "");
      if (!id || Number.isNaN(date.getTime())) throw new AppError("bad_request", "the cursor is not valid");
      return { time: date, id };
    },

    /**
     * Every event matching `filter`, oldest first, as JSON Lines: one chunk (string) per store page
     * of `exportBatch` events, fetched only when the consumer asks for the next chunk, so memory
     * stays at about one page whatever the result's size.
     */
    async *exportLines(filter: Omit<AuditFilter, "before" | "after">): AsyncGenerator<string> {
      let after: { time: Date; id: string } | undefined;
      for (;;) {
        const rows = await store.auditEvents.search({ ...filter, ...(after ? { after } : {}) }, exportBatch, "asc");
        if (rows.length === 0) return;
        let chunk = "";
        for (const row of rows) chunk += `${JSON.stringify(toView(row))}\n`;
        yield chunk;
        if (rows.length < exportBatch) return;
        const last = rows[rows.length - 1] as AuditEventRow;
        after = { time: last.time, id: last.id };
      }
    },

    /**
     * Following the trail as it is stored (`moat audit tail -f`): the events stored after `cursor`,
     * each source's in sequence order, so an event stored late with an older time (an agent's spool
     * draining after an outage) is not passed over. Without a cursor: nothing, and a cursor at the
     * end of every source. The cursor (opaque) holds each source's last sequence number read; a
     * sequence number still missing while later ones were stored more than FOLLOW_HOLE_GRACE_MS ago
     * (events an agent dropped, or pruned) is passed. Filters apply to what is returned; the cursor
     * moves past everything read.
     */
    async follow(
      filter: Omit<AuditFilter, "before" | "after">,
      limit: number,
      cursorText?: string,
    ): Promise<{ items: AuditView[]; cursor: string }> {
      const highs = await store.auditSinks.highs();
      const encode = (c: Map<string, bigint>) => Buffer.from(encodeSourceCursor(c)).toString("base64url");
      if (cursorText === undefined) return { items: [], cursor: encode(highs) };
      let cursor: Map<string, bigint>;
      try {
        cursor = decodeSourceCursor(Buffer.from(cursorText, "base64url").toString("utf8"));
      } catch {
        throw new AppError("bad_request", "the cursor is not valid");
      }
      const sources = [...highs]
        .filter(([source, high]) => (!filter.agentId || source === filter.agentId) && high > positionOf(cursor, source))
        .map(([agentId]) => ({ agentId, after: positionOf(cursor, agentId) }))
        .sort((a, b) => (a.agentId < b.agentId ? -1 : a.agentId > b.agentId ? 1 : 0))
        .slice(0, 100);
      if (sources.length === 0) return { items: [], cursor: cursorText };
      const span = BigInt(limit);
      let rows = await store.auditSinks.eventsAfter(sources, span, limit);
      let selected = selectDeliverable(rows, cursor);
      if (selected.length === 0 && rows.length > 0) {
        // Stored out of sequence order (transactions committed out of order): read in sequence order.
        rows = await store.auditSinks.eventsAfter(sources, span, limit, true);
        selected = selectDeliverable(rows, cursor);
      }
      const next = advance(cursor, selected);
      // A source with nothing to give although it is behind: a hole, passed once it has lasted.
      const served = new Set(selected.map((r) => r.agentId));
      for (const source of sources) {
        if (served.has(source.agentId)) continue;
        const first = await store.auditSinks.firstAfter(source.agentId, source.after);
        if (first === undefined || first === source.after + 1n) continue;
        const [row] = await store.auditSinks.eventsAfter([{ agentId: source.agentId, after: first - 1n }], 1n, 1);
        if (row && now().getTime() - row.receivedAt.getTime() >= FOLLOW_HOLE_GRACE_MS)
          next.set(source.agentId, first - 1n);
      }
      return { items: selected.filter((r) => matches(r, filter)).map(toView), cursor: encode(next) };
    },

    /** Sessions, most recently started first, keyset-paginated. */
    async sessions(
      filter: Omit<AuditSessionFilter, "before">,
      limit: number,
      cursor?: string,
    ): Promise<{ items: SessionView[]; nextCursor?: string }> {
      let before: AuditSessionFilter["before"];
      if (cursor) {
        const [startedAt, sessionId, agentId] = decodeCursorParts(cursor, 3) as [string, string, string];
        const date = new Date(startedAt);
        if (Number.isNaN(date.getTime())) throw new AppError("bad_request", "the cursor is not valid");
        before = { startedAt: date, sessionId, agentId };
      }
      const rows = await store.auditTrail.sessions({ ...filter, ...(before ? { before } : {}) }, limit + 1);
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      return {
        items: page.map(toSessionView),
        ...(rows.length > limit && last
          ? { nextCursor: encodeCursor([last.startedAt.toISOString(), last.sessionId, last.agentId]) }
          : {}),
      };
    },

    /** A session and one page of its events in order; not_found when no agent recorded it. */
    async session(
      sessionId: string,
      options: { agentId?: string; limit: number; cursor?: string },
    ): Promise<{ session: SessionView; items: AuditView[]; nextCursor?: string }> {
      const session = await store.auditTrail.session(sessionId, options.agentId);
      if (!session) throw new AppError("not_found", `no session with id "${sessionId}" in the audit trail`);
      let afterSeq = 0n;
      if (options.cursor) {
        const [seq] = decodeCursorParts(options.cursor, 1) as [string];
        if (!/^\d{1,20}$/.test(seq)) throw new AppError("bad_request", "the cursor is not valid");
        afterSeq = BigInt(seq);
      }
      const rows = await store.auditTrail.sessionEvents(session.agentId, sessionId, afterSeq, options.limit + 1);
      const page = rows.slice(0, options.limit);
      const last = page[page.length - 1];
      return {
        session: toSessionView(session),
        items: page.map(toView),
        ...(rows.length > options.limit && last ? { nextCursor: encodeCursor([last.seq.toString()]) } : {}),
      };
    },

    /**
     * Recomputes an agent's chain from its first stored event. Without a retention horizon the chain
     * must start at sequence number 1; with one, at the event after the last pruned one, which must
     * carry that event's hash. Pruning may run meanwhile: a gap at the start is checked again
     * against the horizon as it is then.
     */
    async verify(agentId: string): Promise<ChainReport> {
      let horizon = await store.auditTrail.horizon(agentId);
      const report = (extra: Partial<ChainReport> & { checked: number; ok: boolean }): ChainReport => ({
        agentId,
        ...extra,
        ...(horizon
          ? { horizon: { seq: horizon.seq.toString(), time: horizon.time, pruned: horizon.pruned.toString() } }
          : {}),
      });
      /** The expected start: the event after the horizon (whose hash it must carry), else seq 1. */
      const startOf = (h: AuditHorizonRecord | undefined) => ({ seq: h ? h.seq + 1n : 1n, prevHash: h?.hash });
      let previous: AuditEventRow | undefined;
      let checked = 0;
      for (let from = 0n; ;) {
        const rows = await store.auditEvents.chain(agentId, from, 1000);
        for (const row of rows) {
          checked++;
          // Stored bytes must still be what the agent sent: the row's hash and fields derive from them.
          if (sha256(row.payload) !== row.hash) {
            return report({
              checked,
              ok: false,
              firstBreak: {
                seq: row.seq.toString(),
                id: row.id,
                problem: "the stored event was altered (its bytes no longer match its hash)",
              },
            });
          }
          const decoded = toRow(row.payload);
          if (
            decoded.seq !== row.seq ||
            decoded.id !== row.id ||
            decoded.type !== row.type ||
            decoded.user !== row.user ||
            decoded.text !== row.text ||
            decoded.verdict !== row.verdict
          ) {
            return report({
              checked,
              ok: false,
              firstBreak: { seq: row.seq.toString(), id: row.id, problem: "the stored event's fields were altered" },
            });
          }
          let expected = previous ? { seq: previous.seq + 1n, prevHash: previous.hash } : startOf(horizon);
          if (row.seq !== expected.seq) {
            // Pruning may have moved the horizon past what was read so far: the chain then restarts there.
            const now = await store.auditTrail.horizon(agentId);
            if (now && now.seq + 1n === row.seq && (!horizon || now.seq > horizon.seq)) {
              horizon = now;
              expected = startOf(now);
            }
          }
          if (row.seq !== expected.seq) {
            return report({
              checked,
              ok: false,
              firstBreak:
                row.seq > expected.seq
                  ? { seq: expected.seq.toString(), problem: `events ${expected.seq}..${row.seq - 1n} are missing` }
                  : {
                      seq: row.seq.toString(),
                      id: row.id,
                      problem: "the event is at or before the retention horizon, which should have removed it",
                    },
            });
          }
          if (expected.prevHash !== undefined && row.prevHash !== expected.prevHash) {
            return report({
              checked,
              ok: false,
              firstBreak: {
                seq: row.seq.toString(),
                id: row.id,
                problem: previous
                  ? "the previous event does not match the hash this event carries"
                  : "the last pruned event (the retention horizon) does not match the hash this event carries",
              },
            });
          }
          previous = row;
        }
        if (rows.length < 1000) break;
        from = (rows[rows.length - 1] as AuditEventRow).seq + 1n;
      }
      return report({ checked, ok: true });
    },
  };
}

export type AuditService = ReturnType<typeof createAuditService>;
