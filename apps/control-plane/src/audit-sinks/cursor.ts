/**
 * A sink's cursor and the choice of what to deliver next. Pure: no store, no clock.
 *
 * Why a cursor per source and not one position in a global order: the AuditEvent table has no
 * column whose order is the order in which rows become visible. `receivedAt` is the writer's clock
 * (replicas' clocks differ; on PostgreSQL a transaction's rows can commit after rows with a later
 * timestamp from another transaction), and event ids are the agents' clocks. A cursor "after
 * (receivedAt, id)" would skip any event committed late with a smaller key. What *is* dense and
 * ordered is each source's sequence number (an agent numbers its events 1, 2, 3, ...; the control
 * plane numbers its own chain from a counter in the same transaction). So the cursor holds, per
 * source, the last sequence number delivered, and only the next one (`after + 1`) may be delivered:
 * an event committed late can never be passed over. A hole that stays (events an agent dropped, or
 * that retention deleted before delivery) is waited for `gapGraceSeconds`, then skipped and counted.
 */
import type { SinkEventRow } from "../store/index.js";

/** Per source (agent id, or "control-plane"): the last sequence number delivered. */
export type Cursor = Map<string, bigint>;

const CURSOR_VERSION = 1;

export function encodeCursor(cursor: Cursor): string {
  const sources: Record<string, string> = {};
  for (const [source, seq] of [...cursor].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    sources[source] = seq.toString();
  return JSON.stringify({ v: CURSOR_VERSION, sources });
}

/** Throws on anything that is not a cursor this code wrote (never guesses a position). */
export function decodeCursor(text: string): Cursor {
  const parsed = JSON.parse(text) as { v?: unknown; sources?: unknown };
  if (parsed.v !== CURSOR_VERSION || typeof parsed.sources !== "object" || parsed.sources === null)
    throw new Error("unrecognised audit sink cursor");
  const cursor: Cursor = new Map();
  for (const [source, seq] of Object.entries(parsed.sources as Record<string, unknown>)) {
    if (typeof seq !== "string" || !/^\d+$/.test(seq)) throw new Error("unrecognised audit sink cursor");
    cursor.set(source, BigInt(seq));
  }
  return cursor;
}

/** The last delivered sequence number of `source` (0: nothing delivered; sequences start at 1). */
export const positionOf = (cursor: Cursor, source: string): bigint => cursor.get(source) ?? 0n;

/**
 * From rows read after the cursor (in the order to deliver them), the ones that may be delivered
 * now: a row goes in only when it is its source's next sequence number, counting the rows taken
 * before it. The result keeps the input order, and each source's rows are consecutive and in
 * sequence order, starting right after the cursor.
 */
export function selectDeliverable<R extends Pick<SinkEventRow, "agentId" | "seq">>(rows: R[], cursor: Cursor): R[] {
  const next = new Map<string, bigint>();
  const out: R[] = [];
  for (const row of rows) {
    const expected = next.get(row.agentId) ?? positionOf(cursor, row.agentId) + 1n;
    if (row.seq !== expected) continue;
    out.push(row);
    next.set(row.agentId, expected + 1n);
  }
  return out;
}

/** The cursor after delivering `rows` (a result of `selectDeliverable`, or a prefix of one). */
export function advance(cursor: Cursor, rows: readonly Pick<SinkEventRow, "agentId" | "seq">[]): Cursor {
  const out = new Map(cursor);
  for (const row of rows) if (row.seq > positionOf(out, row.agentId)) out.set(row.agentId, row.seq);
  return out;
}
