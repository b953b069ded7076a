/**
 * Records audit events: gives each a ULID, the next sequence number, the time, the bundle version
 * in force and the SHA-256 of the previous event (the hash chain), spools it durably, and wakes
 * the shipper. `record` resolves once the event is on disk.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, AuditEventSchema, timestampFromDate, toBinary } from "@moat/proto";
import type { AuditSpool, Gap } from "./spool.js";
import { createUlidFactory } from "@moat/common";
import { encodeQueryEvent, encodeQuerySession, type QueryEventFields, type QuerySessionFields } from "./fast-encode.js";

export type AuditEventInit = Omit<
  Exclude<MessageInitShape<typeof AuditEventSchema>, { $typeName: string }>,
  "id" | "seq" | "time" | "prevHash" | "bundleVersion"
>;

export interface AuditRecorder {
  /** Records an event and resolves once it is fsynced. */
  record(event: AuditEventInit): Promise<{ seq: bigint; id: string }>;
  /**
   * Whether an event of up to `bytes` can be recorded now (false only when the spool is full and
   * fail-closed). Enforcers ask before running what they would have to audit.
   */
  hasRoom(bytes?: number): boolean;
  /**
   * A recorder of one session's `db.query` events (the high-rate path: one per statement), with the
   * session's own fields (actor, resource, session id) encoded once.
   */
  queries(session: Omit<QuerySessionFields, "type">): QueryRecorder;
}

/** One statement's `db.query` event: what QueryRecorder.recordSoon adds to the session's fields. */
export type QueryRecord = Pick<QueryEventFields, "verdict" | "rule" | "message" | "query">;

export interface QueryRecorder {
  /**
   * Records a statement without waiting: written to the spool file at the end of this event-loop
   * turn, fsynced within milliseconds (AuditSpool.appendSoon). Throws SpoolFullError when the spool
   * is full and fail-closed.
   */
  recordSoon(record: QueryRecord): void;
}

/**
 * Bounds on a `db.query` event's fields (the session's too: actor, groups, resource), so that every
 * event fits in a spool frame (MAX_EVENT_BYTES, 1 MiB): a statement naming thousands of tables
 * under a long search path, or a server error quoting a huge value, would otherwise make an event
 * the spool refuses, and the statement, already answered, would go unrecorded (review 16). What is
 * cut ends with "…" (lists: "… N more").
 */
export const QUERY_EVENT_LIMITS = { text: 64 * 1024, message: 4096, rule: 512, listEntries: 256, name: 256 };

const cut = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n)}…` : s);

function boundedList(list: readonly string[]): readonly string[] {
  const { listEntries, name } = QUERY_EVENT_LIMITS;
  let fits = list.length <= listEntries;
  for (let i = 0; fits && i < list.length; i++) fits = (list[i] as string).length <= name;
  if (fits) return list;
  const kept = list.slice(0, listEntries).map((x) => cut(x, name));
  if (list.length > listEntries) kept.push(`… ${list.length - listEntries} more`);
  return kept;
}

/** `r` within QUERY_EVENT_LIMITS (itself when it already is: the usual case costs no copy). */
function bounded(r: QueryRecord): QueryRecord {
  const L = QUERY_EVENT_LIMITS;
  const q = r.query;
  const tables = boundedList(q.tables);
  const maskedColumns = boundedList(q.maskedColumns);
  if (
    q.text.length <= L.text &&
    r.message.length <= L.message &&
    r.rule.length <= L.rule &&
    q.fingerprint.length <= L.name &&
    q.statementClass.length <= L.name &&
    tables === q.tables &&
    maskedColumns === q.maskedColumns
  )
    return r;
  return {
    verdict: r.verdict,
    rule: cut(r.rule, L.rule),
    message: cut(r.message, L.message),
    query: {
      ...q,
      text: cut(q.text, L.text),
      fingerprint: cut(q.fingerprint, L.name),
      statementClass: cut(q.statementClass, L.name),
      tables,
      maskedColumns,
    },
  };
}

export function createAuditRecorder(deps: {
  spool: AuditSpool;
  bundleVersion: () => bigint;
  now?: () => Date;
  onRecorded?: () => void;
}): AuditRecorder {
  const nowMs = deps.now ? () => (deps.now as () => Date)().getTime() : Date.now;
  const ulid = createUlidFactory(nowMs);
  // Occasional events (session start and end, gaps): protobuf-es. Statements: QueryRecorder.
  const encode = (event: AuditEventInit, id: string, seq: bigint): Uint8Array => {
    return toBinary(
      AuditEventSchema,
      create(AuditEventSchema, {
        ...event,
        id,
        seq,
        time: timestampFromDate(new Date(nowMs())),
        prevHash: deps.spool.lastHash,
        bundleVersion: deps.bundleVersion(),
      }),
    );
  };
  // The shipper is woken once per turn, after the turn's statements are written.
  deps.spool.onWritten = deps.onRecorded;
  const recorder: AuditRecorder = {
    hasRoom: (bytes) => deps.spool.hasRoom(bytes),
    async record(event) {
      const id = ulid();
      const result = await deps.spool.append((seq) => encode(event, id, seq));
      if (result.gap) await recordGap(result.gap, "the audit spool was full: the oldest unshipped events were dropped");
      deps.onRecorded?.();
      return { seq: result.seq, id };
    },
    queries(session) {
      // Bounded like the statement's fields (the groups come from the token: many are possible).
      const n = QUERY_EVENT_LIMITS.name;
      const a = session.actor;
      const fields = encodeQuerySession({
        type: "db.query",
        actor: {
          user: cut(a.user, n),
          groups: boundedList(a.groups),
          sourceAddress: cut(a.sourceAddress, n),
          tokenId: cut(a.tokenId, n),
        },
        resource: cut(session.resource, n),
        sessionId: cut(session.sessionId, n),
      });
      return {
        recordSoon(given) {
          const r = bounded(given);
          const id = ulid();
          const result = deps.spool.appendSoon((seq) =>
            encodeQueryEvent(fields, {
              id,
              seq,
              time: nowMs(),
              verdict: r.verdict,
              rule: r.rule,
              message: r.message,
              bundleVersion: deps.bundleVersion(),
              prevHash: deps.spool.lastHashLatin1,
              query: r.query,
            }),
          );
          if (result.gap)
            void recordGap(result.gap, "the audit spool was full: the oldest unshipped events were dropped").catch(
              () => undefined,
            );
        },
      };
    },
  };
  async function recordGap(gap: Gap, reason: string): Promise<void> {
    await recorder.record({
      type: "audit.gap",
      message: reason,
      detail: { case: "auditGap", value: { firstMissingSeq: gap.firstSeq, lastMissingSeq: gap.lastSeq, reason } },
    });
  }
  return recorder;
}
