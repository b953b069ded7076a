/**
 * Audit on the control plane: idempotent ingestion of the batches agents ship (events keyed by
 * agent and sequence number; a resent batch stores nothing twice), search with keyset pagination,
 * and hash-chain verification (each event carries the SHA-256 of the bytes of the agent's
 * previous event, so a removed or altered event breaks the chain at a known place).
 */
import { createHash } from "node:crypto";
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
import type { AuditEventRow, AuditFilter, Store } from "../store/index.js";

const VERDICTS: Record<number, string> = {
  [Verdict.ALLOW]: "allow",
  [Verdict.DENY]: "deny",
  [Verdict.REVIEW]: "review",
};
const MAX_TEXT = 4096;

export const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

function textOf(event: AuditEvent): string {
  const d = event.detail;
  const text = d.case === "dbQuery" ? d.value.text : d.case === "sshExec" ? d.value.command : event.message;
  return text.slice(0, MAX_TEXT);
}

/** Decodes one shipped event into a row; throws AppError("bad_request") for a malformed one. */
export function toRow(bytes: Uint8Array): Omit<AuditEventRow, "agentId"> {
  let event: AuditEvent;
  try {
    event = fromBinary(AuditEventSchema, bytes);
  } catch (error) {
    throw new AppError("bad_request", "an audit event is not a valid AuditEvent", { cause: error });
  }
  if (event.seq === 0n || !/^[0-9A-HJKMNP-TV-Z]{26}$/.test(event.id) || !event.type) {
    throw new AppError("bad_request", "an audit event lacks an id, a sequence number or a type");
  }
  return {
    id: event.id,
    seq: event.seq,
    time: event.time ? timestampDate(event.time) : new Date(0),
    type: event.type.slice(0, 64),
    user: (event.actor?.user ?? "").slice(0, 320),
    resource: event.resource.slice(0, 63),
    sessionId: event.sessionId.slice(0, 64),
    verdict: VERDICTS[event.verdict] ?? "",
    rule: event.rule.slice(0, 200),
    text: textOf(event),
    bundleVersion: event.bundleVersion,
    prevHash: Buffer.from(event.prevHash).toString("hex"),
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

export function createAuditService(deps: { store: Pick<Store, "auditEvents">; now?: () => Date }) {
  const { store } = deps;
  const now = deps.now ?? (() => new Date());
  const ulid = createUlidFactory(() => now().getTime());
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

    async ingest(agentId: string, batch: Uint8Array[]): Promise<{ stored: number; lastSeq: bigint }> {
      const rows = batch.map(toRow);
      const lastSeq = rows.reduce((max, r) => (r.seq > max ? r.seq : max), 0n);
      const stored = rows.length > 0 ? await store.auditEvents.ingest(agentId, rows, lastSeq) : 0;
      return { stored, lastSeq };
    },

    async search(filter: AuditFilter, limit: number): Promise<{ items: AuditView[]; nextCursor?: string }> {
      const rows = await store.auditEvents.search(filter, limit + 1);
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      return {
        items: page.map(toView),
        ...(rows.length > limit && last
          ? { nextCursor: Buffer.from(`${last.time.toISOString()}|${last.id}`).toString("base64url") }
          : {}),
      };
    },

    decodeCursor(cursor: string): { time: Date; id: string } {
      const [time, id] = Buffer.from(cursor, "base64url").toString("utf8").split("|");
      const date = new Date(time ?? "");
      if (!id || Number.isNaN(date.getTime())) throw new AppError("bad_request", "the cursor is not valid");
      return { time: date, id };
    },

    /** Recomputes an agent's chain from its first stored event. */
    async verify(agentId: string): Promise<ChainReport> {
      let previous: AuditEventRow | undefined;
      let checked = 0;
      for (let from = 0n; ;) {
        const rows = await store.auditEvents.chain(agentId, from, 1000);
        for (const row of rows) {
          checked++;
          // Stored bytes must still be what the agent sent: the row's hash and fields derive from them.
          if (sha256(row.payload) !== row.hash) {
            return {
              agentId,
              checked,
              ok: false,
              firstBreak: {
                seq: row.seq.toString(),
                id: row.id,
                problem: "the stored event was altered (its bytes no longer match its hash)",
              },
            };
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
            return {
              agentId,
              checked,
              ok: false,
              firstBreak: { seq: row.seq.toString(), id: row.id, problem: "the stored event's fields were altered" },
            };
          }
          if (previous) {
            if (row.seq !== previous.seq + 1n) {
              return {
                agentId,
                checked,
                ok: false,
                firstBreak: {
                  seq: (previous.seq + 1n).toString(),
                  problem: `events ${previous.seq + 1n}..${row.seq - 1n} are missing`,
                },
              };
            }
            if (row.prevHash !== previous.hash) {
              return {
                agentId,
                checked,
                ok: false,
                firstBreak: {
                  seq: row.seq.toString(),
                  id: row.id,
                  problem: "the previous event does not match the hash this event carries",
                },
              };
            }
          }
          previous = row;
        }
        if (rows.length < 1000) break;
        from = (rows[rows.length - 1] as AuditEventRow).seq + 1n;
      }
      return { agentId, checked, ok: true };
    },
  };
}

export type AuditService = ReturnType<typeof createAuditService>;
