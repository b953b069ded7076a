import { describe, expect, it } from "vitest";
import { AuditEventSchema, create, fromBinary, timestampFromDate, toBinary, Verdict } from "@moat/proto";
import { encodeQueryEvent, encodeQuerySession, type QueryEventFields, type QuerySessionFields } from "./fast-encode.js";

type DbQueryEvent = QuerySessionFields & QueryEventFields;

function reference(e: DbQueryEvent): Uint8Array {
  return toBinary(
    AuditEventSchema,
    create(AuditEventSchema, {
      id: e.id,
      seq: e.seq,
      time: timestampFromDate(new Date(e.time)),
      type: e.type,
      actor: { ...e.actor, groups: [...e.actor.groups] },
      resource: e.resource,
      sessionId: e.sessionId,
      verdict: e.verdict,
      rule: e.rule,
      message: e.message,
      bundleVersion: e.bundleVersion,
      prevHash: typeof e.prevHash === "string" ? Buffer.from(e.prevHash, "latin1") : e.prevHash,
      detail: {
        case: "dbQuery",
        value: {
          ...e.query,
          durationUs: BigInt(e.query.durationUs),
          rows: BigInt(e.query.rows),
          tables: [...e.query.tables],
          maskedColumns: [...e.query.maskedColumns],
        },
      },
    }),
  );
}

describe("encodeQueryEvent", () => {
  it("writes exactly the bytes protobuf-es writes, for random events", () => {
    let seed = 11;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed % n);
    const str = () =>
      rnd(4) === 0
        ? ""
        : Array.from({ length: rnd(300) }, () =>
            String.fromCodePoint(rnd(3) === 0 ? 0x80 + rnd(0x2000) : 0x20 + rnd(90)),
          ).join("");
    for (let i = 0; i < 500; i++) {
      const e: DbQueryEvent = {
        id: str(),
        // Up to 2^63 - 1: beyond 2^53 the encoder switches from numbers to bigints.
        seq:
          rnd(6) === 0
            ? 2n ** 63n - 1n - BigInt(rnd(1000))
            : BigInt(rnd(3) === 0 ? 0 : rnd(2 ** 31)) * BigInt(rnd(3) === 0 ? 2 ** 20 : 1),
        time: rnd(2) === 0 ? 0 : 1_700_000_000_000 + rnd(2 ** 30),
        type: "db.query",
        actor: { user: str(), groups: Array.from({ length: rnd(3) }, str), sourceAddress: str(), tokenId: str() },
        resource: str(),
        sessionId: str(),
        verdict: [Verdict.UNSPECIFIED, Verdict.ALLOW, Verdict.DENY, Verdict.REVIEW][rnd(4)] as Verdict,
        rule: str(),
        message: str(),
        bundleVersion: BigInt(rnd(1000)),
        // Bytes, or the latin1 string of them the spool hands over (one char per byte).
        prevHash: ((hash: Uint8Array) => (rnd(2) === 0 ? Buffer.from(hash).toString("latin1") : hash))(
          rnd(5) === 0 ? new Uint8Array(0) : Uint8Array.from({ length: 32 }, () => rnd(256)),
        ),
        query: {
          text: str(),
          fingerprint: str(),
          statementClass: str(),
          tables: Array.from({ length: rnd(3) }, str),
          // Numbers (what the session passes) and bigints, up to 2^53 - 1 and beyond.
          durationUs: rnd(2) === 0 ? rnd(1_000_000) : BigInt(rnd(1_000_000)),
          rows:
            rnd(5) === 0
              ? 2n ** 53n + BigInt(rnd(1000))
              : rnd(4) === 0
                ? Number.MAX_SAFE_INTEGER - rnd(1000)
                : rnd(2) === 0
                  ? (rnd(3) === 0 ? 0 : rnd(2 ** 31)) * 1000
                  : BigInt(rnd(3) === 0 ? 0 : rnd(2 ** 31)) * 1000n,
          maskedColumns: Array.from({ length: rnd(3) }, str),
        },
      };
      // The session's fields encoded once, then copied into each event: protobuf-es's bytes.
      const fast = encodeQueryEvent(encodeQuerySession(e), e);
      expect(Buffer.from(fast).equals(Buffer.from(reference(e))), `event ${i}`).toBe(true);
      expect(fromBinary(AuditEventSchema, fast).detail.case).toBe("dbQuery");
    }
  });
});
