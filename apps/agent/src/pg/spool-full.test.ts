/**
 * A full audit spool, as sessions meet it (real PostgreSQL, node-postgres): with `fail-closed` the
 * session whose statement cannot be recorded is closed with 53100 and new sessions are refused
 * with 53100 (and counted); with `drop-oldest` sessions go on, the spool stays within its bound and
 * an `audit.gap` event says which events were dropped.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPostgres, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";
import { startHarness, type Harness } from "../test-support/pg.js";

const POLICIES = [readPolicy()];

let server: TestPostgres;
const harnesses: Harness[] = [];

beforeAll(async () => {
  server = await startPostgres();
}, 120_000);

afterAll(async () => {
  for (const h of harnesses) await h.close();
  await server?.stop();
});

async function connect(h: Harness): Promise<pg.Client> {
  const c = new pg.Client({
    host: "127.0.0.1",
    port: h.port,
    user: "alice@example.com",
    password: await h.token(),
    database: "postgres",
  });
  c.on("error", () => undefined);
  await c.connect();
  return c;
}

describe("audit spool full", () => {
  it("fail-closed: ends the session it cannot audit and refuses new ones with 53100", async () => {
    const h = await startHarness({
      pg: server,
      policies: POLICIES,
      spool: { maxBytes: 128 * 1024, segmentBytes: 32 * 1024, whenFull: "fail-closed" },
    });
    harnesses.push(h);
    const c = await connect(h);
    let failure: (Error & { code?: string }) | undefined;
    let ran = 0;
    for (let i = 0; i < 5_000 && !failure; i++) {
      try {
        await c.query(`SELECT ${i} AS padding_${"x".repeat(200)}`);
        ran++;
      } catch (error) {
        failure = error as Error & { code?: string };
      }
    }
    expect(ran).toBeGreaterThan(100);
    expect(failure?.code).toBe("53100");
    expect(failure?.message).toMatch(/cannot record audit events/);
    // The statement refused was not run: every statement that ran is in the spool.
    const recorded = h.events().filter((e) => e.type === "db.query").length;
    expect(recorded).toBe(ran);
    expect(h.spool.totalBytes).toBeLessThanOrEqual(128 * 1024);
    await expect(connect(h)).rejects.toMatchObject({ code: "53100" });
    expect(h.refusals).toContain("spool-full");
    // Once the control plane has stored what is there, sessions are served again.
    h.spool.ack(h.spool.peekNextSeq() - 1n);
    const again = await connect(h);
    expect((await again.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    await again.end();
  });

  it("drop-oldest: sessions go on, the spool stays bounded and the gap is recorded", async () => {
    const h = await startHarness({
      pg: server,
      policies: POLICIES,
      spool: { maxBytes: 128 * 1024, segmentBytes: 16 * 1024, whenFull: "drop-oldest" },
    });
    harnesses.push(h);
    const c = await connect(h);
    for (let i = 0; i < 2_000; i++) await c.query(`SELECT ${i} AS padding_${"y".repeat(200)}`);
    await c.end();
    expect(h.spool.totalBytes).toBeLessThanOrEqual(128 * 1024);
    const events = h.events();
    const gaps = events.flatMap((e) =>
      e.type === "audit.gap" && e.detail.case === "auditGap" ? [e.detail.value] : [],
    );
    expect(gaps.length).toBeGreaterThan(0);
    // What is left starts right after the last range a gap event reports dropped.
    const lastDropped = gaps.reduce((m, g) => (g.lastMissingSeq > m ? g.lastMissingSeq : m), 0n);
    expect(events[0]?.seq).toBe(lastDropped + 1n);
    // The newest statements are all there.
    const texts = new Set(
      events.flatMap((e) => (e.type === "db.query" && e.detail.case === "dbQuery" ? [e.detail.value.text] : [])),
    );
    for (let i = 1_990; i < 2_000; i++) expect(texts.has(`SELECT ${i} AS padding_${"y".repeat(200)}`)).toBe(true);
  });
});
