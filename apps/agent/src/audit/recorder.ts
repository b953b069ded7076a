/**
 * Records audit events: gives each a ULID, the next sequence number, the time, the bundle version
 * in force and the SHA-256 of the previous event (the hash chain), spools it durably, and wakes
 * the shipper. `record` resolves once the event is on disk.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, AuditEventSchema, timestampFromDate, toBinary } from "@moat/proto";
import type { AuditSpool, Gap } from "./spool.js";
import { createUlidFactory } from "@moat/common";

export type AuditEventInit = Omit<
  Exclude<MessageInitShape<typeof AuditEventSchema>, { $typeName: string }>,
  "id" | "seq" | "time" | "prevHash" | "bundleVersion"
>;

export interface AuditRecorder {
  record(event: AuditEventInit): Promise<{ seq: bigint; id: string }>;
}

export function createAuditRecorder(deps: {
  spool: AuditSpool;
  bundleVersion: () => bigint;
  now?: () => Date;
  onRecorded?: () => void;
}): AuditRecorder {
  const now = deps.now ?? (() => new Date());
  const ulid = createUlidFactory(() => now().getTime());
  const recorder: AuditRecorder = {
    async record(event) {
      const id = ulid();
      const result = await deps.spool.append((seq) =>
        toBinary(
          AuditEventSchema,
          create(AuditEventSchema, {
            ...event,
            id,
            seq,
            time: timestampFromDate(now()),
            prevHash: deps.spool.lastHash,
            bundleVersion: deps.bundleVersion(),
          }),
        ),
      );
      if (result.gap) await recordGap(result.gap, "the audit spool was full: the oldest unshipped events were dropped");
      deps.onRecorded?.();
      return { seq: result.seq, id };
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
