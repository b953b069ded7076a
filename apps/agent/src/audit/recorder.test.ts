import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AuditEventSchema, fromBinary, Verdict } from "@moat/proto";
import { tempDir } from "@moat/testkit";
import { createAuditRecorder, QUERY_EVENT_LIMITS } from "./recorder.js";
import { AuditSpool, MAX_EVENT_BYTES } from "./spool.js";

describe("query events", () => {
  it("bound their fields so that every event fits in the spool, and say what was cut", () => {
    const { spool } = AuditSpool.open({ dir: join(tempDir("moat-recorder-"), "audit") });
    const recorder = createAuditRecorder({ spool, bundleVersion: () => 7n });
    // The worst case: every field at its longest, in three-byte characters, too many tables and
    // groups (the session's fields are bounded too).
    const wide = "\u20ac";
    const name = wide.repeat(10_000);
    const queries = recorder.queries({
      actor: {
        user: name,
        groups: Array.from({ length: 5_000 }, (_, i) => `${name}${i}`),
        sourceAddress: "127.0.0.1",
        tokenId: name,
      },
      resource: name,
      sessionId: name,
    });
    queries.recordSoon({
      verdict: Verdict.ALLOW,
      rule: wide.repeat(100_000),
      message: wide.repeat(1_000_000),
      query: {
        text: wide.repeat(1_000_000),
        fingerprint: name,
        statementClass: name,
        tables: Array.from({ length: 5_000 }, (_, i) => `${name}${i}`),
        durationUs: 1,
        rows: 2,
        maskedColumns: Array.from({ length: 5_000 }, (_, i) => `${name}${i}`),
      },
    });
    // An ordinary event is kept as it is.
    queries.recordSoon({
      verdict: Verdict.DENY,
      rule: "p/r",
      message: "no policy allows db:write",
      query: {
        text: "DELETE FROM t",
        fingerprint: "",
        statementClass: "write",
        tables: ["public.t"],
        durationUs: 0,
        rows: 0,
        maskedColumns: [],
      },
    });
    const [big, small] = spool.read(1n, 10, 1 << 30);
    expect(big && small).toBeTruthy();
    expect(big!.payload.length).toBeLessThan(MAX_EVENT_BYTES);
    const e = fromBinary(AuditEventSchema, big!.payload);
    const q = e.detail.case === "dbQuery" ? e.detail.value : undefined;
    expect(q?.text).toHaveLength(QUERY_EVENT_LIMITS.text + 1);
    expect(q?.text.endsWith("…")).toBe(true);
    expect(e.message).toHaveLength(QUERY_EVENT_LIMITS.message + 1);
    expect(q?.tables).toHaveLength(QUERY_EVENT_LIMITS.listEntries + 1);
    expect(q?.tables.at(-1)).toBe(`… ${5_000 - QUERY_EVENT_LIMITS.listEntries} more`);
    expect(q?.maskedColumns[0]).toHaveLength(QUERY_EVENT_LIMITS.name + 1);
    expect(e.actor?.groups).toHaveLength(QUERY_EVENT_LIMITS.listEntries + 1);
    expect(e.resource).toHaveLength(QUERY_EVENT_LIMITS.name + 1);
    const s = fromBinary(AuditEventSchema, small!.payload);
    expect(s.detail.case === "dbQuery" && s.detail.value).toMatchObject({
      text: "DELETE FROM t",
      tables: ["public.t"],
    });
    expect(s.message).toBe("no policy allows db:write");
    spool.close();
  });
});

describe("the audit chain", () => {
  const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
  const session = {
    actor: { user: "u", groups: ["g"], sourceAddress: "127.0.0.1", tokenId: "t" },
    resource: "db",
    sessionId: "s1",
  };
  const statement = (text: string) => ({
    verdict: Verdict.ALLOW,
    rule: "r",
    message: "",
    query: { text, fingerprint: "", statementClass: "read", tables: [], durationUs: 1, rows: 1, maskedColumns: [] },
  });
  const turn = () => new Promise((resolve) => setImmediate(resolve));

  for (const start of [0n, 2n ** 32n - 3n, 2n ** 40n + 7n]) {
    it(`links statements and session events alike, across reopens, from sequence ${start}`, async () => {
      const dir = join(tempDir("moat-chain-"), "audit");
      mkdirSync(dir, { recursive: true });
      if (start > 0n) writeFileSync(join(dir, "acked"), `${start}\n`); // as if shipped up to there
      let wakes = 0;
      const open = () => {
        const { spool } = AuditSpool.open({ dir });
        return { spool, recorder: createAuditRecorder({ spool, bundleVersion: () => 1n, onRecorded: () => wakes++ }) };
      };
      let { spool, recorder } = open();
      await recorder.record({ type: "session.start", message: "start" });
      const q = recorder.queries(session);
      q.recordSoon(statement("SELECT 1"));
      q.recordSoon(statement("SELECT 2 \u00ff\u20ac"));
      await recorder.record({ type: "session.end", message: "end" });
      q.recordSoon(statement("SELECT 3"));
      await turn();
      const woken = wakes;
      expect(woken).toBeGreaterThanOrEqual(3); // each record(), and the turn's statements once written
      spool.close();
      ({ spool, recorder } = open());
      recorder.queries(session).recordSoon(statement("SELECT 4"));
      await recorder.record({ type: "session.start", message: "again" });
      await turn();
      expect(wakes).toBeGreaterThan(woken);
      spool.close();
      ({ spool } = open());
      const events = spool.read(start + 1n, 1000, 1 << 30);
      expect(events.map((e) => e.seq)).toEqual(Array.from({ length: 7 }, (_, i) => start + 1n + BigInt(i)));
      let previous = "";
      for (const { seq, payload } of events) {
        const e = fromBinary(AuditEventSchema, payload);
        expect(e.seq).toBe(seq);
        expect(Buffer.from(e.prevHash).toString("hex")).toBe(previous);
        previous = sha256(payload);
      }
      // The frames' own headers say the same numbers.
      const seqs: bigint[] = [];
      for (const file of readdirSync(dir)
        .filter((f) => f !== "acked")
        .sort()) {
        const b = readFileSync(join(dir, file));
        for (let at = 0; at + 16 <= b.length; at += 16 + b.readUInt32LE(at)) seqs.push(b.readBigUInt64LE(at + 8));
      }
      expect(seqs).toEqual(events.map((e) => e.seq));
      spool.close();
    });
  }
});
