import type { MessageInitShape } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
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
import { decodeAuditFields, type DecodedAuditFields } from "./audit-decode.js";
import { toRow } from "./audit.js";

/** What protobuf-es makes of the same bytes, in the reader's shape. */
function expected(event: AuditEvent): DecodedAuditFields {
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

const same = (bytes: Uint8Array) => {
  const fast = decodeAuditFields(bytes);
  expect(fast).toBeDefined();
  expect({ ...fast, prevHash: Buffer.from(fast!.prevHash) }).toEqual({
    ...expected(fromBinary(AuditEventSchema, bytes)),
    prevHash: Buffer.from(fromBinary(AuditEventSchema, bytes).prevHash),
  });
};

const details: MessageInitShape<typeof AuditEventSchema>["detail"][] = [
  undefined,
  {
    case: "sessionStart",
    value: { protocol: "postgres", targetUser: "app", targetDatabase: "shop", clientApplication: "psql" },
  },
  { case: "sessionEnd", value: { reason: "client closed the connection", durationMs: 12_345n } },
  {
    case: "dbQuery",
    value: {
      text: "SELECT 'naïve ☃ 𝄞' FROM t WHERE id = 1",
      fingerprint: "abc",
      statementClass: "select",
      tables: ["public.t", "public.u"],
      durationUs: 2n ** 40n,
      rows: 3n,
      maskedColumns: ["t.email"],
    },
  },
  { case: "sshExec", value: { command: "ls -la /var/log", exitCode: -1 } },
  { case: "auditGap", value: { firstMissingSeq: 5n, lastMissingSeq: 9n, reason: "spool full" } },
  { case: "bundleApplied", value: { version: 7n, applied: false, error: "bad signature" } },
];

function event(i: number, overrides: Record<string, unknown> = {}): Uint8Array {
  return toBinary(
    AuditEventSchema,
    create(AuditEventSchema, {
      id: `01JD${String(i).padStart(22, "0")}`,
      seq: BigInt(i + 1),
      time: timestampFromDate(new Date(1_700_000_000_123 + i * 1001)),
      type: i % 2 ? "db.query" : "session.start",
      actor: { user: `user${i}@example.com`, groups: ["a", "b"], sourceAddress: "10.0.0.1", tokenId: "t" },
      resource: "orders-db",
      sessionId: `01JDSESS${String(i).padStart(18, "0")}`,
      verdict: [Verdict.ALLOW, Verdict.DENY, Verdict.REVIEW, 0][i % 4],
      rule: "p/r",
      message: i % 3 ? "" : "a message ✓",
      bundleVersion: BigInt(i),
      prevHash: new Uint8Array(32).fill(i % 256),
      detail: details[i % details.length],
      ...overrides,
    }),
  );
}

describe("decodeAuditFields", () => {
  it("reads what protobuf-es reads, for every detail kind and edge values", () => {
    for (let i = 0; i < 50; i++) same(event(i));
    same(event(1, { seq: 2n ** 64n - 1n, bundleVersion: 2n ** 63n }));
    same(event(2, { time: undefined })); // no time
    same(event(3, { time: timestampFromDate(new Date(-86_400_000 - 1)) })); // before 1970
    same(event(4, { verdict: -5 as Verdict })); // an enum value nobody knows, as a 10-byte varint
    same(event(5, { actor: undefined, prevHash: new Uint8Array(0) }));
    same(toBinary(AuditEventSchema, create(AuditEventSchema, {})));
  });

  it("accepts unknown fields (a newer agent) and leaves them in the stored bytes", () => {
    const extra = Buffer.concat([
      Buffer.from(event(7)),
      Buffer.from([0x98, 0x06, 0x96, 0x01]), // field 99, varint 150
      Buffer.from([0xa2, 0x06, 0x03, 0x61, 0x62, 0x63]), // field 100, bytes "abc"
      Buffer.from([0xad, 0x06, 1, 2, 3, 4]), // field 101, fixed32
      Buffer.from([0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]), // field 102, fixed64
    ]);
    same(extra);
  });

  it("leaves unusual but valid encodings to protobuf-es (a repeated message field merges)", () => {
    const a = toBinary(AuditEventSchema, create(AuditEventSchema, { actor: { user: "x@example.com" } }));
    const b = toBinary(AuditEventSchema, create(AuditEventSchema, { actor: { sourceAddress: "10.0.0.9" } }));
    const twice = Buffer.concat([Buffer.from(event(9)), Buffer.from(a), Buffer.from(b)]);
    expect(decodeAuditFields(twice)).toBeUndefined();
    expect(fromBinary(AuditEventSchema, twice).actor?.user).toBe("x@example.com");
    // Two cases of the detail oneof: the last one wins in protobuf.
    const sessionEnd = toBinary(
      AuditEventSchema,
      create(AuditEventSchema, { detail: { case: "sessionEnd", value: { reason: "r" } } }),
    );
    expect(decodeAuditFields(Buffer.concat([Buffer.from(event(3)), Buffer.from(sessionEnd)]))).toBeUndefined();
  });

  it("refuses invalid UTF-8, truncation and groups, like protobuf-es", () => {
    const bad = Buffer.from(event(3));
    const at = bad.indexOf("orders-db");
    bad[at] = 0xff;
    expect(decodeAuditFields(bad)).toBeUndefined();
    expect(() => fromBinary(AuditEventSchema, bad)).toThrow();
    expect(() => toRow(bad)).toThrow(expect.objectContaining({ code: "bad_request" }));
    const full = event(3);
    expect(decodeAuditFields(full.subarray(0, full.length - 1))).toBeUndefined();
    expect(decodeAuditFields(Buffer.concat([Buffer.from(full), Buffer.from([0x93, 0x03])]))).toBeUndefined();
  });

  it("never accepts what protobuf-es refuses, and agrees whenever it accepts (fuzzed)", () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    let accepted = 0;
    for (let n = 0; n < 20_000; n++) {
      const bytes = Buffer.from(event(n % 97));
      const edits = 1 + Math.floor(random() * 3);
      for (let k = 0; k < edits; k++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      const cut = random() < 0.2 ? bytes.subarray(0, Math.floor(random() * bytes.length)) : bytes;
      let slow: AuditEvent | undefined;
      try {
        slow = fromBinary(AuditEventSchema, cut);
      } catch {
        slow = undefined;
      }
      const fast = decodeAuditFields(cut);
      if (fast === undefined) continue;
      accepted++;
      expect(slow, `fast path accepted bytes protobuf-es refuses: ${cut.toString("hex")}`).toBeDefined();
      expect({ ...fast, prevHash: Buffer.from(fast.prevHash) }).toEqual({
        ...expected(slow!),
        prevHash: Buffer.from(slow!.prevHash),
      });
    }
    expect(accepted).toBeGreaterThan(1000);
  });
});

describe("toRow", () => {
  it("takes the statement text or command, else the message, and refuses events without id, seq or type", () => {
    expect(toRow(event(3)).text).toBe("SELECT 'naïve ☃ 𝄞' FROM t WHERE id = 1");
    expect(toRow(event(4)).text).toBe("ls -la /var/log");
    expect(toRow(event(6)).text).toBe("a message ✓");
    expect(() => toRow(event(1, { seq: 0n }))).toThrow(expect.objectContaining({ code: "bad_request" }));
    expect(() => toRow(event(1, { id: "not-a-ulid" }))).toThrow(expect.objectContaining({ code: "bad_request" }));
    expect(() => toRow(event(1, { type: "" }))).toThrow(expect.objectContaining({ code: "bad_request" }));
  });

  it("refuses an event whose time cannot be stored", () => {
    const time = { ...timestampFromDate(new Date()), seconds: 10n ** 15n };
    expect(() => toRow(event(1, { time }))).toThrow(expect.objectContaining({ code: "bad_request" }));
  });
});
