/**
 * The extended protocol at the byte level, through the agent to a real PostgreSQL: pipelined batches
 * with a denial in the middle, the skip-until-Sync rule, named statements and portals (pgjdbc-style
 * `S_1`), re-Parse of an existing name, unknown statements, oversized messages, garbage input.
 */
import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serialize } from "@moat/pg-wire";
import { createClassifier, createClassifierPool, type Classifier } from "@moat/sql";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";

const POLICY_READ = readPolicy() as { spec: Record<string, unknown> };
import { startHarness, type Harness } from "../test-support/pg.js";
import {
  errors,
  firstValues,
  maskedAgents,
  openRaw,
  pipeline,
  queryEvents,
  types,
  Raw,
} from "../test-support/raw-client.js";

let server: TestPostgres;
let h: Harness;

beforeAll(async () => {
  server = await startPostgres();
  await server.createDatabase("app");
  await server.sql(
    "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10); CREATE TABLE inbox (v text); CREATE TABLE users (email text); INSERT INTO users VALUES ('user1@example.com');",
    "app",
  );
  // Sessions that are not read-only: a read-only one sends nothing past a Sync or Query until it is
  // answered (stress.test.ts), and these tests are about what the agent does with pipelined cycles.
  h = await startHarness({
    pg: server,
    policies: [readPolicy()],
    listener: { maxMessageBytes: 1024 * 1024, readOnlySessions: false },
  });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await server?.stop();
});

function open(harness: Harness = h): Promise<Raw> {
  return openRaw(harness);
}

const { startMasked, withMasked } = maskedAgents(() => server);

describe("extended protocol through the agent", () => {
  it("forgets the unnamed statement and portal at a Query, as the server does (review 61)", async () => {
    const c = await open();
    try {
      // In a transaction block the unnamed portal would survive the Sync; the Query drops it on
      // the server. An Execute of it must not reach the target as a known portal (a PostgreSQL 15
      // bug crashed the server on such an Execute after a failed COPY).
      await c.exchange(serialize.query("BEGIN"));
      const ms = await pipeline(
        c,
        3,
        serialize.parse({ text: "SELECT 1 AS one" }),
        serialize.bind({}),
        serialize.sync(),
        serialize.query("SELECT 2 AS two"),
        serialize.execute({}),
        serialize.describe({ type: "S", name: "" }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12ZTDCZEZ");
      expect(firstValues(ms)).toEqual(["2"]);
      expect(errors(ms)[0]?.message).toMatch(/portal "" was not bound through Moat/);
      await c.exchange(serialize.query("ROLLBACK"));
    } finally {
      c.socket.destroy();
    }
  });

  it("runs a pipelined batch, denies the write in the middle and skips to Sync like PostgreSQL", async () => {
    const c = await open();
    const ms = await c.exchange(
      serialize.parse({ name: "", text: "SELECT count(*) FROM t" }),
      serialize.bind({}),
      serialize.execute({}),
      serialize.parse({ name: "", text: "DELETE FROM t" }),
      serialize.bind({}),
      serialize.execute({}),
      serialize.sync(),
      serialize.query("SELECT count(*) FROM t"),
    );
    expect(types(ms)).toMatch(/^12DCEZ/);
    expect(errors(ms)[0]).toMatchObject({ code: "42501" });
    const after = await c.until((m) => m.filter((x) => x.type === "Z").length >= 2);
    expect(types(after)).toBe("12DCEZTDCZ");
    expect(await server.sql("SELECT count(*) FROM t", "app")).toMatch(/^10/);
    c.socket.destroy();
  });

  it("answers a simple query up to its denied statement as PostgreSQL up to a failing one, and audits what ran", async () => {
    const c = await open();
    const before = queryEvents(h).length;
    // The first statement ends in a line comment: the agent's own text for the target must not let
    // it swallow what follows.
    const ms = await c.exchange(serialize.query("SELECT count(*) FROM t -- how many\n; DELETE FROM t; SELECT 2"));
    expect(types(ms)).toBe("TDCEZ");
    expect(firstValues(ms)).toEqual(["10"]);
    expect(errors(ms)).toMatchObject([{ code: "42501" }]);
    expect(ms.at(-1)?.body.toString()).toBe("I");
    const events = queryEvents(h).slice(before);
    expect(events.map(({ ev, q }) => [ev.verdict, q.text])).toEqual([
      [2, "DELETE FROM t"],
      [1, "SELECT count(*) FROM t -- how many"],
    ]);
    // In a block the session is left in the failed block, as PostgreSQL leaves it.
    const block = await c.exchange(serialize.query("BEGIN; SELECT 1; DELETE FROM t"));
    expect(types(block)).toBe("CTDCEZ");
    expect(block.at(-1)?.body.toString()).toBe("E");
    expect(errors(await c.exchange(serialize.query("SELECT 1")))[0]?.code).toBe("25P02");
    expect(types(await c.exchange(serialize.query("ROLLBACK")))).toBe("CZ");
    expect(await server.sql("SELECT count(*) FROM t", "app")).toMatch(/^10/);
    c.socket.destroy();
  });

  it("leaves catalog reads to detectors only while the session cannot have a temporary relation named like a catalog (review 44)", async () => {
    await withMasked(["db:ddl"], async (c) => {
      // A computed column labelled like the masked one, from pg_catalog alone: not masked.
      const catalog = await c.exchange(serialize.query("SELECT upper(typname) AS email FROM pg_type WHERE oid = 23"));
      expect(firstValues(catalog)).toEqual(["INT4"]);
      // A temporary view named pg_am: PostgreSQL finds it before pg_catalog.pg_am.
      expect(
        errors(await c.exchange(serialize.query("CREATE TEMP VIEW pg_temp.pg_am AS SELECT email FROM users"))),
      ).toEqual([]);
      expect(firstValues(await c.exchange(serialize.query("SELECT email FROM pg_am")))).toEqual(["****"]);
      expect(firstValues(await c.exchange(serialize.query("SELECT upper(email) AS e FROM pg_am")))).toEqual(["****"]);
    });
  });

  it("audits binary parameters of the types their Parse declared as their text (reviews 42, 46)", async () => {
    const c = await open();
    const ms = await c.exchange(
      serialize.parse({ name: "", text: "SELECT count(*) FROM t WHERE id = $1 AND $2::text <> ''", types: [23, 25] }),
      serialize.bind({ values: [Buffer.from([0, 0, 0, 3]), Buffer.from("x'y")] }),
      serialize.execute({}),
      serialize.sync(),
    );
    expect(types(ms)).toBe("12DCZ");
    expect(queryEvents(h).at(-1)?.q.text).toBe(
      "SELECT count(*) FROM t WHERE id = $1 AND $2::text <> '' -- parameters: $1 = '3', $2 = 'x''y'",
    );
    c.socket.destroy();
  });

  it("inside a transaction, a denied Parse leaves it aborted (status E)", async () => {
    const c = await open();
    await c.exchange(serialize.query("BEGIN"));
    const ms = await c.exchange(serialize.parse({ name: "", text: "DELETE FROM t" }), serialize.sync());
    expect(types(ms)).toBe("EZ");
    expect(ms.at(-1)?.body.toString()).toBe("E");
    const next = await c.exchange(serialize.query("SELECT 1"));
    expect(errors(next)[0]?.code).toBe("25P02");
    const rb = await c.exchange(serialize.query("ROLLBACK"));
    expect(rb.at(-1)?.body.toString()).toBe("I");
    c.socket.destroy();
  });

  it("tracks named statements and portals separately (pgjdbc S_1/P_1), and re-Parse of a live name keeps the old one", async () => {
    const c = await open();
    const ms = await c.exchange(
      serialize.parse({ name: "S_1", text: "SELECT id FROM t WHERE id = $1" }),
      serialize.bind({ portal: "P_1", statement: "S_1", values: ["3"] }),
      serialize.describe({ type: "P", name: "P_1" }),
      serialize.execute({ portal: "P_1", rows: 0 }),
      serialize.sync(),
    );
    expect(types(ms)).toBe("12TDCZ");
    // The same name again: PostgreSQL refuses it and keeps S_1; the agent must keep deciding S_1 as the SELECT.
    const again = await c.exchange(serialize.parse({ name: "S_1", text: "SELECT 2" }), serialize.sync());
    expect(errors(again)[0]?.code).toBe("42P05");
    const reuse = await c.exchange(
      serialize.bind({ portal: "", statement: "S_1", values: ["4"] }),
      serialize.execute({}),
      serialize.sync(),
    );
    expect(types(reuse)).toBe("2DCZ");
    c.socket.destroy();
  });

  it("refuses a Bind of a statement it never saw prepared, and the fast-path function call", async () => {
    const c = await open();
    const ms = await c.exchange(serialize.bind({ statement: "nope" }), serialize.execute({}), serialize.sync());
    expect(errors(ms)[0]).toMatchObject({ code: "26000", message: expect.stringMatching(/not prepared through Moat/) });
    const fc = Buffer.from([0x46, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    fc.writeInt32BE(4 + 4 + 2 + 2 + 2, 1);
    const fast = await c.exchange(fc.subarray(0, 15));
    expect(errors(fast)[0]?.message).toMatch(/fast-path function call/);
    // Audited as refused (review 43: it went unrecorded).
    expect(queryEvents(h).at(-1)).toMatchObject({
      ev: { verdict: 2 },
      q: { text: "-- fast-path call of the function with OID 1" },
    });
    // It leaves the unnamed prepared statement alone, as PostgreSQL's fast path does (review 45).
    expect(types(await c.exchange(serialize.parse({ text: "SELECT 7" }), serialize.sync()))).toBe("1Z");
    expect(types(await c.exchange(fc.subarray(0, 15)))).toBe("EZ");
    const unnamed = await c.exchange(serialize.bind({}), serialize.execute({}), serialize.sync());
    expect(types(unnamed)).toBe("2DCZ");
    expect(firstValues(unnamed)).toEqual(["7"]);
    const ok = await c.exchange(serialize.query("SELECT 1"));
    expect(types(ok)).toBe("TDCZ");
    c.socket.destroy();
  });

  it("refuses statement names it reserves for its own denials (else a denied Bind would run the client's statement)", async () => {
    const c = await open();
    const reserved = "moat: statement denied by policy";
    const parse = await c.exchange(
      serialize.parse({ name: reserved, text: "SELECT count(*) FROM t" }),
      serialize.sync(),
    );
    expect(errors(parse)[0]).toMatchObject({ code: "42939" });
    expect(errors(parse)[0]?.message).toMatch(/reserved by Moat/);
    const sqlPrepare = await c.exchange(serialize.query(`PREPARE "${reserved}" AS SELECT count(*) FROM t`));
    expect(errors(sqlPrepare)[0]).toMatchObject({ code: "42501" });
    // The denied Bind the agent rewrites to that name still fails on the target: no rows come back.
    const bind = await c.exchange(
      serialize.bind({ portal: "", statement: "never-prepared" }),
      serialize.execute({}),
      serialize.sync(),
    );
    expect(types(bind)).toBe("EZ");
    expect(errors(bind)[0]?.message).toMatch(/not prepared through Moat/);
    expect(types(await c.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    c.socket.destroy();
  });

  it("refuses a protocol Execute of a SQL cursor (its rows could not be masked) and lets FETCH read it", async () => {
    const c = await open();
    await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT id FROM t ORDER BY id"));
    const ms = await c.exchange(serialize.execute({ portal: "c", rows: 0 }), serialize.sync());
    expect(types(ms)).toBe("EZ");
    expect(errors(ms)[0]).toMatchObject({ code: "42501" });
    expect(errors(ms)[0]?.message).toMatch(/not bound through Moat; read a cursor with FETCH/);
    expect(ms.at(-1)?.body.toString()).toBe("E"); // failed like any error in a transaction block
    await c.exchange(serialize.query("ROLLBACK"));
    await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT id FROM t ORDER BY id"));
    const fetched = await c.exchange(serialize.query("FETCH 2 FROM c"));
    expect(types(fetched)).toBe("TDDCZ");
    await c.exchange(serialize.query("COMMIT"));
    c.socket.destroy();
  });

  it("keeps an unnamed portal bound behind a Sync whose ReadyForQuery comes before its Execute (pipelining)", async () => {
    const c = await open();
    c.socket.write(
      Buffer.concat([
        serialize.parse({ name: "", text: "SELECT 1" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
        serialize.bind({}), // the next cycle's portal, bound before the first cycle is answered
      ]),
    );
    await c.until((m) => m.some((x) => x.type === "Z"));
    const start = c.messages.length;
    c.socket.write(Buffer.concat([serialize.execute({}), serialize.sync()]));
    const rest = await c.until((m) => m.slice(start).some((x) => x.type === "Z"));
    expect(types(rest)).toBe("12DCZ2DCZ");
    c.socket.destroy();
  });

  it("stays in step when a client sends Sync during COPY FROM STDIN (the target ignores it): the next result is still masked", async () => {
    await withMasked(["db:copy-in"], async (c) => {
      // libpq's extended-protocol COPY: Sync right behind Execute, CopyDone + Sync after the data.
      c.socket.write(
        Buffer.concat([
          serialize.parse({ name: "", text: "COPY inbox FROM STDIN" }),
          serialize.bind({}),
          serialize.execute({}),
          serialize.sync(),
        ]),
      );
      await c.until((m) => m.some((x) => x.type === "G"));
      const start = c.messages.length;
      const copy = await c.exchange(
        Buffer.from([0x64, 0, 0, 0, 6, 0x78, 0x0a]), // CopyData "x\n"
        Buffer.from([0x63, 0, 0, 0, 4]), // CopyDone
        serialize.sync(),
      );
      expect(types(c.messages.slice(start))).toBe("CZ");
      expect(types(copy)).toBe("CZ");
      const after = await c.exchange(serialize.query("SELECT email FROM users"));
      expect(types(after)).toBe("TDCZ");
      expect(firstValues(after)).not.toContain("user1@example.com");
      // Simple protocol, a stray Sync in the middle of the data.
      const before = c.messages.filter((x) => x.type === "G").length;
      c.socket.write(serialize.query("COPY inbox FROM STDIN"));
      await c.until((m) => m.filter((x) => x.type === "G").length > before);
      const simple = await c.exchange(
        serialize.sync(),
        Buffer.from([0x64, 0, 0, 0, 6, 0x79, 0x0a]),
        Buffer.from([0x63, 0, 0, 0, 4]),
      );
      expect(types(simple)).toBe("CZ");
      const again = await c.exchange(serialize.query("SELECT email FROM users"));
      expect(types(again)).toBe("TDCZ");
      expect(firstValues(again)).not.toContain("user1@example.com");
      expect(await server.sql("SELECT count(*) FROM inbox", "app")).toMatch(/^2/);
    });
  });

  it("stays in step when a COPY FROM STDIN fails on its data with Syncs sent during it, and ends a session sending a Sync or Flush with a body", async () => {
    const masked = await startMasked(["db:copy-in"]);
    try {
      const bad = Buffer.from([0x64, 0, 0, 0, 8, 0x61, 0x09, 0x62, 0x0a]); // CopyData "a\tb\n": one column too many
      // Review 13: the target answers a Sync it reads after the COPY failed; the agent had let it
      // through without expecting an answer, so the next query's rows went to no statement, unmasked.
      // (Review 36: a Sync after the data is now refused, the session ended, whatever the COPY does.)
      const c = await open(masked);
      c.socket.write(serialize.query("COPY inbox FROM STDIN"));
      await c.until((m) => m.some((x) => x.type === "G"));
      let start = c.messages.length;
      c.socket.write(bad);
      await c.until((m) => m.slice(start).filter((x) => x.type === "Z").length >= 1);
      expect(types(c.messages.slice(start))).toBe("EZ");
      start = c.messages.length;
      c.socket.write(serialize.query("SELECT email FROM users"));
      await c.until((m) => m.slice(start).filter((x) => x.type === "Z").length >= 1);
      expect(types(c.messages.slice(start))).toBe("TDCZ");
      expect(firstValues(c.messages.slice(start))).not.toContain("user1@example.com");
      // libpq's extended-protocol COPY: Sync behind Execute, CopyDone + Sync.
      c.socket.write(
        Buffer.concat([
          serialize.parse({ name: "", text: "COPY inbox FROM STDIN" }),
          serialize.bind({}),
          serialize.execute({}),
          serialize.sync(),
        ]),
      );
      await c.until((m) => m.slice(start).some((x) => x.type === "G"));
      start = c.messages.length;
      c.socket.write(
        Buffer.concat([
          bad,
          Buffer.from([0x63, 0, 0, 0, 4]), // CopyDone
          serialize.sync(),
          serialize.query("SELECT email FROM users"),
        ]),
      );
      await c.until((m) => m.slice(start).filter((x) => x.type === "Z").length >= 2);
      await new Promise((r) => setTimeout(r, 200)); // nothing more may come
      expect(types(c.messages.slice(start))).toBe("EZTDCZ");
      expect(firstValues(c.messages.slice(start))).not.toContain("user1@example.com");
      const after = await c.exchange(serialize.query("SELECT email FROM users"));
      expect(types(after)).toBe("TDCZ");
      c.socket.destroy();
      // A Flush with a body (the target refuses it and skips to Sync): the session ends, 08P01.
      const d = await open(masked);
      d.socket.write(
        Buffer.concat([
          Buffer.from([0x48, 0, 0, 0, 5, 0]),
          serialize.query("SELECT 1 AS x"),
          serialize.sync(),
          serialize.query("SELECT email FROM users"),
        ]),
      );
      await d.until(() => d.closed);
      expect(errors(d.messages).map((e) => [e.severity, e.code])).toEqual([["FATAL", "08P01"]]);
      expect(types(d.messages)).not.toContain("D");
    } finally {
      await masked.close();
    }
  });

  it("ends a session that sends a Sync among COPY data or other messages before its COPY ends, and holds a Sync before the data until the COPY's fate is known (reviews 36-38)", async () => {
    const masked = await startMasked(["db:copy-in"]);
    await server.sql("CREATE VIEW inbox_view AS SELECT v FROM inbox", "app");
    const bad = Buffer.from([0x64, 0, 0, 0, 8, 0x61, 0x09, 0x62, 0x0a]); // CopyData "a\tb\n": one column too many
    const good = Buffer.from([0x64, 0, 0, 0, 6, 0x61, 0x0a]); // CopyData "a\n"
    const copyDone = Buffer.from([0x63, 0, 0, 0, 4]);
    const reverse = serialize.query("SELECT reverse(email) AS r FROM users");
    const slow = serialize.query("SELECT count(*)::text AS n FROM generate_series(1, 300000)");
    const extendedCopy = [
      serialize.parse({ text: "COPY inbox FROM STDIN" }),
      serialize.bind({}),
      serialize.execute({}),
    ];
    /**
     * Sends `before` in one write, then (once the COPY has started) `after`: the session must end
     * with 08P01 and nothing masked come back in clear. The target answers such a Sync if the COPY
     * failed on data sent before it and ignores it if not, which the agent cannot tell (review 36:
     * its ReadyForQuery ended the next query's record, whose rows were masked by the wrong columns).
     */
    const ends = async (before: Buffer[], after: Buffer[] = []) => {
      const c = await open(masked);
      c.socket.write(Buffer.concat(before));
      if (after.length > 0) {
        await c.until((m) => m.some((x) => x.type === "G"));
        c.socket.write(Buffer.concat(after));
      }
      await c.until(() => c.closed);
      expect(errors(c.messages).at(-1)).toMatchObject({ severity: "FATAL", code: "08P01" });
      expect(JSON.stringify(c.messages.map((m) => m.body.toString()))).not.toContain("elpmaxe");
      return errors(c.messages).at(-1)?.message;
    };
    /** The same where the agent must let everything through: the answers, and the session goes on. */
    const works = async (answers: number, before: Buffer[], after: Buffer[] = []) => {
      const c = await open(masked);
      const start = c.messages.length;
      c.socket.write(Buffer.concat(before));
      if (after.length > 0) {
        await c.until((m) => m.some((x) => x.type === "G"));
        c.socket.write(Buffer.concat(after));
      }
      await c.until((m) => m.slice(start).filter((x) => x.type === "Z").length >= answers);
      await new Promise((r) => setTimeout(r, 200)); // nothing more may come
      const ms = c.messages.slice(start);
      const next = await c.exchange(reverse);
      expect(types(next), `${types(ms)} ${JSON.stringify(errors(c.messages))}`).toBe("TDCZ");
      expect(firstValues(next)).toEqual(["****"]);
      expect(c.closed).toBe(false);
      c.socket.destroy();
      return ms;
    };
    try {
      // Pipelined before the CopyInResponse: a Sync after the data (the COPY fails on it or succeeds).
      expect(await ends([serialize.query("COPY inbox FROM STDIN"), bad, serialize.sync(), reverse, slow])).toMatch(
        /Sync among COPY data/,
      );
      await ends([serialize.query("COPY inbox FROM STDIN"), good, serialize.sync(), copyDone, reverse]);
      await ends([...extendedCopy, serialize.sync(), bad, serialize.sync(), copyDone, serialize.sync(), reverse, slow]);
      // Review 37: a Query or Describe in the span (the target skips it after the COPY failed).
      expect(
        await ends([...extendedCopy, serialize.sync(), bad, serialize.query("SELECT 1 AS x"), serialize.sync()]),
      ).toMatch(/unexpected message type 'Q' during COPY/);
      // The same with a Query long enough for the worker thread: refused before it is held there (it
      // was held, the COPY failed meanwhile, and the Query then ran and was never answered).
      const longQuery = serialize.query(`SELECT 1 AS x /* ${"x".repeat(20_000)} */`);
      expect(await ends([...extendedCopy, serialize.sync(), bad, longQuery, serialize.sync()])).toMatch(
        /unexpected message type 'Q' during COPY/,
      );
      await ends([
        ...extendedCopy,
        serialize.sync(),
        bad,
        serialize.describe({ type: "S", name: "" }),
        serialize.sync(),
      ]);
      // Once the COPY is known to run: a Sync after data, or a Query before CopyDone.
      await ends([serialize.query("COPY inbox FROM STDIN")], [bad, serialize.sync(), reverse]);
      expect(await ends([serialize.query("COPY inbox FROM STDIN")], [good, reverse])).toMatch(
        /unexpected message type 'Q' during COPY/,
      );
      // What clients do works: libpq's Sync right behind the Execute (ignored), data, CopyDone, Sync.
      let ms = await works(1, [...extendedCopy, serialize.sync()], [good, copyDone, serialize.sync()]);
      expect(types(ms)).toBe("12GCZ");
      // Syncs before any data are ignored by the target when the COPY reads its data, pipelined or not.
      ms = await works(1, [serialize.query("COPY inbox FROM STDIN"), serialize.sync(), serialize.sync()], [bad]);
      expect(types(ms)).toBe("GEZ");
      ms = await works(2, [serialize.query("COPY inbox FROM STDIN")], [serialize.sync(), good, copyDone, reverse]);
      expect(types(ms)).toBe("GCZTDCZ");
      expect(firstValues(ms)).toEqual(["****"]);
      // Review 38: but answered when the COPY fails before reading any (a view), or never starts.
      ms = await works(4, [serialize.query("COPY inbox_view FROM STDIN"), serialize.sync(), copyDone, reverse, slow]);
      expect(types(ms)).toBe("GEZZTDCZTDCZ"); // as PostgreSQL answers it
      expect(firstValues(ms)).toEqual(["****", "300000"]);
      ms = await works(1, [
        serialize.parse({ text: "COPY inbox_view FROM STDIN" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      ]);
      expect(types(ms)).toBe("12GEZ");
      ms = await works(2, [serialize.query("COPY nosuch FROM STDIN"), serialize.sync()]);
      expect(types(ms)).toBe("EZZ");
      // An extended COPY whose Bind fails: the target skips its Execute to the held Sync.
      ms = await works(1, [
        serialize.parse({ text: "COPY inbox FROM STDIN" }),
        serialize.bind({ values: ["1"] }),
        serialize.execute({}),
        serialize.sync(),
      ]);
      expect(types(ms)).toBe("1EZ");
      // Review 61: data after the held Sync of a COPY that never started (no CopyInResponse): the
      // target skipped to that Sync and answers it (the agent took it as read by the COPY: no Z).
      ms = await works(1, [
        serialize.parse({ text: "COPY nosuch FROM STDIN" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
        good,
      ]);
      expect(types(ms)).toBe("12EZ");
      ms = await works(1, [
        serialize.parse({ text: "COPY inbox FROM STDIN" }),
        serialize.bind({ values: ["1"] }),
        serialize.execute({}),
        serialize.sync(),
        good,
        copyDone,
      ]);
      expect(types(ms)).toBe("1EZ");
      // ... and a failure in an earlier cycle leaves the COPY's own span to it.
      ms = await works(
        2,
        [serialize.query("SELECT 1/0"), ...extendedCopy, serialize.sync()],
        [good, copyDone, serialize.sync()],
      );
      expect(types(ms)).toBe("EZ12GCZ");
      // Review 39: a Sync held in a second COPY's span, settled only by that COPY (the first one's
      // outcome must not send it on or drop it), landing where the client put it.
      const set = serialize.query("SET application_name = 'x'");
      const twoCopies = [
        serialize.query("COPY inbox FROM STDIN"),
        bad,
        copyDone,
        serialize.query("COPY inbox FROM STDIN"),
      ];
      ms = await works(3, [...twoCopies, serialize.sync()], [good, copyDone, set]);
      expect(types(ms)).toBe("GEZGCZCSZ");
      ms = await works(
        4,
        [serialize.query("COPY inbox_view FROM STDIN"), serialize.sync(), copyDone, twoCopies[3] as Buffer],
        [good, copyDone, set],
      );
      expect(types(ms)).toBe("GEZZGCZCSZ");
      // Review 40: libpq's PQputCopyEnd with an error message (CopyFail, Sync): the target read the
      // held Sync before the CopyFail failed the COPY: no answer of its own.
      ms = await works(1, [...extendedCopy, serialize.sync()], [serialize.copyFail("no thanks"), serialize.sync()]);
      expect(types(ms)).toBe("12GEZ");
      // What followed a CopyDone while its COPY's outcome was awaited runs though the client closed.
      const closing = await open(masked);
      closing.socket.end(
        Buffer.concat([
          serialize.query("COPY inbox_view FROM STDIN"),
          serialize.sync(),
          copyDone,
          serialize.query("SELECT 'after-copydone' AS a"),
        ]),
      );
      await closing.until(() => closing.closed);
      await waitFor(
        async () => queryEvents(masked).some(({ q }) => q.text.startsWith("SELECT 'after-copydone'")),
        10_000,
      );
      // As psql sends it: a COPY that cannot start, then the next query.
      expect(types(await works(1, [serialize.query("COPY nosuch FROM STDIN")]))).toBe("EZ");
    } finally {
      await masked.close();
    }
  });

  it("forgets protocol portals that a SQL CLOSE/DECLARE or the end of their transaction may have replaced", async () => {
    const c = await open();
    await c.exchange(serialize.query("BEGIN"));
    const bound = await c.exchange(
      serialize.parse({ name: "", text: "SELECT id FROM t ORDER BY id" }),
      serialize.bind({ portal: "c" }),
      serialize.describe({ type: "P", name: "c" }),
      serialize.execute({ portal: "c", rows: 1 }),
      serialize.sync(),
    );
    expect(types(bound)).toBe("12TDsZ");
    await c.exchange(serialize.query("CLOSE c; DECLARE c CURSOR FOR SELECT id, id FROM t"));
    const stale = await c.exchange(serialize.execute({ portal: "c", rows: 1 }), serialize.sync());
    expect(errors(stale)[0]?.message).toMatch(/not bound through Moat/);
    await c.exchange(serialize.query("ROLLBACK"));
    c.socket.destroy();
  });

  it("masks FETCH from a protocol portal whose name a failed DECLARE tried to take", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("BEGIN"));
      await c.exchange(
        serialize.parse({ name: "s2", text: "SELECT lower(email) FROM users" }),
        serialize.bind({ portal: "cy", statement: "s2" }),
        serialize.sync(),
      );
      await c.exchange(serialize.query("SAVEPOINT s"));
      const taken = await c.exchange(serialize.query("DECLARE cy CURSOR FOR SELECT 'harmless'"));
      expect(errors(taken)[0]?.message).toMatch(/already exists/);
      await c.exchange(serialize.query("ROLLBACK TO s"));
      const rows = await c.exchange(serialize.query("FETCH ALL FROM cy"));
      expect(types(rows)).toBe("TDCZ");
      expect(firstValues(rows)).toEqual(["****"]);
      await c.exchange(serialize.query("ROLLBACK"));
    });
  });

  it("keeps its names in step with the server's: long names, EXECUTE of a Parse'd name, a DEALLOCATE bound twice, a Describe before Bind", async () => {
    await server.sql(
      `CREATE SCHEMA IF NOT EXISTS secret; CREATE TABLE IF NOT EXISTS secret.users (email text);
       TRUNCATE secret.users; INSERT INTO secret.users VALUES ('TOPSECRET@example.com');`,
      "app",
    );
    const scoped = await startHarness({
      pg: server,
      policies: [
        {
          apiVersion: "moat.dev/v1",
          kind: "Policy",
          metadata: { name: "public-only" },
          spec: {
            subjects: { groups: ["eng"] },
            resources: { names: ["db"] },
            rules: [
              { name: "connect", effect: "allow", actions: ["connect"] },
              { name: "public", effect: "allow", actions: ["db:read"], tables: ["public.*"] },
            ],
            masking: [{ columns: ["email"], style: "full" }],
          },
        },
      ],
    });
    try {
      const c = await open(scoped);
      const secretRead = "SELECT row_to_json(u)::text AS j FROM users u";
      // 1. Names over 63 bytes (the server compares the first 63) are refused.
      const long = `${"a".repeat(63)}1`;
      const refused = await c.exchange(serialize.parse({ name: long, text: "SELECT 1" }), serialize.sync());
      expect(errors(refused)[0]).toMatchObject({ code: "42602", message: expect.stringContaining("at most 63 bytes") });
      const closeLong = await c.exchange(serialize.close({ type: "S", name: `${"a".repeat(63)}2` }), serialize.sync());
      expect(errors(closeLong)[0]?.message).toMatch(/at most 63 bytes/);
      // 2. A failed SQL PREPARE, then a protocol Parse of the name: EXECUTE runs the Parse'd one.
      await c.exchange(serialize.query("PREPARE p AS SELECT 1 FROM public.nope"));
      await c.exchange(serialize.parse({ name: "p", text: secretRead }), serialize.sync());
      // 3. A Parse'd DEALLOCATE bound twice (the second Bind never runs), then a PREPARE between.
      await c.exchange(serialize.query("PREPARE q AS SELECT 'x'::text AS j"));
      const answered = c.messages.filter((x) => x.type === "Z").length;
      c.socket.write(
        Buffer.concat([
          serialize.parse({ name: "d", text: "DEALLOCATE q" }),
          serialize.bind({ statement: "d" }),
          serialize.execute({}),
          serialize.sync(),
          serialize.query(`PREPARE q AS ${secretRead}`),
          serialize.bind({ statement: "d" }),
          serialize.sync(),
        ]),
      );
      await c.until((m) => m.filter((x) => x.type === "Z").length >= answered + 3);
      await c.exchange(serialize.query("PREPARE q AS SELECT 'x'::text AS j")); // fails: q exists
      await c.exchange(serialize.query("SET search_path = secret, public"));
      for (const name of ["p", "q"]) {
        const run = await c.exchange(serialize.query(`EXECUTE ${name}`));
        expect(firstValues(run).join(), name).not.toMatch(/TOPSECRET/);
        expect(errors(run)[0]?.code, name).toBe("42501");
      }
      c.socket.destroy();
      // 4. Describe S answered after the Bind, and a Describe taken under another search_path: the
      // portal's own columns decide the masking.
      const m = await open(scoped);
      await m.exchange(serialize.parse({ name: "s", text: "SELECT email FROM users" }), serialize.sync());
      m.socket.write(
        Buffer.concat([
          serialize.describe({ type: "S", name: "s" }),
          serialize.bind({ statement: "s" }),
          serialize.flush(),
        ]),
      );
      await m.until((ms) => ms.some((x) => x.type === "2"));
      expect(firstValues(await m.exchange(serialize.execute({}), serialize.sync()))).toEqual(["****"]);
      m.socket.destroy();
    } finally {
      await scoped.close();
    }
  });

  it("frees a closed portal's name: a thousand and more cursors one after another in one transaction (pg-cursor)", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("BEGIN"));
      await c.exchange(serialize.parse({ name: "q", text: "SELECT id FROM t ORDER BY id" }), serialize.sync());
      for (let i = 0; i < 1005; i++) {
        const page = await c.exchange(
          serialize.bind({ portal: `C_${i}`, statement: "q" }),
          serialize.execute({ portal: `C_${i}`, rows: 1 }),
          serialize.close({ type: "P", name: `C_${i}` }),
          serialize.sync(),
        );
        if (errors(page).length > 0) throw new Error(`cursor ${i}: ${errors(page)[0]?.message}`);
      }
      expect(types(await c.exchange(serialize.query("DECLARE fresh CURSOR FOR SELECT 1")))).toBe("CZ");
      await c.exchange(serialize.query("COMMIT"));
    });
  });

  it("keeps the effects of a Parse'd DECLARE or PREPARE bound under a name a failed SQL PREPARE also claims", async () => {
    await withMasked([], async (c) => {
      // A cursor declared by binding a Parse'd DECLARE.
      await c.exchange(
        serialize.parse({ name: "p", text: "DECLARE c CURSOR WITH HOLD FOR SELECT lower(email) FROM users" }),
        serialize.sync(),
      );
      expect(errors(await c.exchange(serialize.query("PREPARE p AS SELECT 1")))[0]?.message).toMatch(/already exists/);
      // EXECUTE of a Parse'd statement that declares or prepares is refused (Bind keeps its effect).
      expect(errors(await c.exchange(serialize.query("EXECUTE p")))[0]?.code).toBe("42501");
      // A Bind of it is refused too: which record runs decides what the agent must track.
      const bound = await c.exchange(serialize.bind({ statement: "p" }), serialize.execute({}), serialize.sync());
      expect(errors(bound)[0]?.message).toMatch(/claimed by both a SQL PREPARE and a protocol Parse/);
      await c.exchange(serialize.query("DECLARE c CURSOR WITH HOLD FOR SELECT 'x'::text AS v"));
      expect(firstValues(await c.exchange(serialize.query("FETCH ALL FROM c")))).toEqual(["x"]); // the only c
      await c.exchange(serialize.query("CLOSE c"));
      // The same for FETCH Parse'd under a name a failed SQL PREPARE claims: refused, not masked as the other.
      await c.exchange(serialize.query("BEGIN"));
      await c.exchange(serialize.query("DECLARE t CURSOR FOR SELECT lower(email) FROM users"));
      await c.exchange(serialize.query("SAVEPOINT s"));
      await c.exchange(serialize.query("PREPARE f AS SELECT 1 FROM public.nope")); // fails, recorded
      await c.exchange(serialize.query("ROLLBACK TO s"));
      await c.exchange(serialize.parse({ name: "f", text: "FETCH ALL FROM t" }), serialize.sync());
      const fetched = await c.exchange(serialize.bind({ statement: "f" }), serialize.execute({}), serialize.sync());
      expect(firstValues(fetched)).toEqual([]);
      expect(errors(fetched)[0]?.message).toMatch(/claimed by both/);
      await c.exchange(serialize.query("ROLLBACK"));
      // A statement prepared by binding a Parse'd PREPARE (no SQL record under the Parse's name): tracked.
      await c.exchange(
        serialize.parse({ name: "p2", text: "PREPARE q AS SELECT lower(email) AS v FROM users" }),
        serialize.sync(),
      );
      expect(
        types(await c.exchange(serialize.bind({ statement: "p2" }), serialize.execute({}), serialize.sync())),
      ).toBe("2CZ");
      await c.exchange(serialize.query("PREPARE q AS SELECT 'x'::text AS v")); // fails: q exists
      expect(firstValues(await c.exchange(serialize.query("EXECUTE q")))).toEqual(["****"]);
    });
  });

  it("forgets a portal whose Bind failed (its name taken by a WITH HOLD cursor): an Execute of the name is refused", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("DECLARE c CURSOR WITH HOLD FOR SELECT lower(email) FROM users"));
      await c.exchange(serialize.query("BEGIN; SAVEPOINT s"));
      const failed = await c.exchange(
        serialize.parse({ text: "SELECT 'harmless' AS x" }),
        serialize.describe({ type: "S", name: "" }),
        serialize.bind({ portal: "c" }),
        serialize.sync(),
      );
      expect(errors(failed)[0]?.message).toMatch(/cursor "c" already exists/);
      await c.exchange(serialize.query("ROLLBACK TO s")); // still in the block: no ReadyForQuery 'I'
      const run = await c.exchange(serialize.execute({ portal: "c" }), serialize.sync());
      expect(run.filter((m) => m.type === "D")).toEqual([]);
      expect(errors(run)[0]?.message).toMatch(/not bound through Moat/);
      await c.exchange(serialize.query("ROLLBACK"));
      await c.exchange(serialize.query("CLOSE c"));
    });
  });

  it("applies a Describe's answer only to what it described, not to a statement or portal parsed since under the name", async () => {
    await withMasked([], async (c) => {
      const bindCompletes = () => c.messages.filter((m) => m.type === "2").length;
      // The unnamed portal: described, then replaced before the answer arrives.
      let before = bindCompletes();
      c.socket.write(
        Buffer.concat([
          serialize.parse({ text: "SELECT id AS x FROM t LIMIT 1" }),
          serialize.bind({}),
          serialize.describe({ type: "P", name: "" }),
          serialize.parse({ text: "SELECT email AS x FROM users" }),
          serialize.bind({}),
          serialize.flush(),
        ]),
      );
      await c.until(() => bindCompletes() >= before + 2);
      expect(firstValues(await c.exchange(serialize.execute({}), serialize.sync()))).toEqual(["****"]);
      // A named statement: described, closed and parsed again.
      before = c.messages.filter((m) => m.type === "1").length;
      c.socket.write(
        Buffer.concat([
          serialize.parse({ name: "s", text: "SELECT id AS x FROM t LIMIT 1" }),
          serialize.describe({ type: "S", name: "s" }),
          serialize.close({ type: "S", name: "s" }),
          serialize.parse({ name: "s", text: "SELECT lower(email) AS x FROM users" }),
          serialize.flush(),
        ]),
      );
      await c.until((m) => m.filter((x) => x.type === "1").length >= before + 2);
      const rows = await c.exchange(serialize.bind({ statement: "s" }), serialize.execute({}), serialize.sync());
      expect(firstValues(rows)).toEqual(["****"]);
    });
  });

  it("pages a portal with a row limit and audits it once", async () => {
    const before = h.events().length;
    const c = await open();
    const ms = await c.exchange(
      serialize.parse({ name: "", text: "SELECT id FROM t ORDER BY id" }),
      serialize.bind({}),
      serialize.execute({ rows: 4 }),
      serialize.execute({ rows: 4 }),
      serialize.execute({ rows: 4 }),
      serialize.sync(),
    );
    expect(types(ms)).toBe("12DDDDsDDDDsDDCZ");
    c.socket.destroy();
    await new Promise((r) => setTimeout(r, 200));
    const queries = h
      .events()
      .slice(before)
      .filter((e) => e.type === "db.query");
    expect(queries).toHaveLength(1);
    const d = queries[0]?.detail;
    expect(d?.case === "dbQuery" && d.value.rows).toBe(10n);
  });

  it("masks, or refuses, a pipelined or running Execute whose rows come after masking rules arrived (reviews 16, 17)", async () => {
    const policy = (masking: boolean) =>
      readPolicy(["db:function"], masking ? [{ columns: ["email"], style: "full" }] : undefined);
    const m = await startHarness({ pg: server, policies: [policy(false)] });
    try {
      // The portals were described (pgjdbc describes every portal) before the rules came: their
      // rows are masked by the columns of those Describes.
      const c = await open(m);
      const slowThenEmail = (describe: boolean) =>
        Buffer.concat([
          serialize.parse({ name: "s1", text: "SELECT email FROM users" }),
          serialize.bind({ portal: "p1", statement: "s1" }),
          ...(describe ? [serialize.describe({ type: "P", name: "p1" })] : []),
          serialize.flush(),
          serialize.parse({ text: "SELECT pg_sleep(1)" }),
          serialize.bind({}),
          ...(describe ? [serialize.describe({ type: "P", name: "" })] : []),
          serialize.execute({}),
          serialize.execute({ portal: "p1" }),
          serialize.sync(),
        ]);
      c.socket.write(slowThenEmail(true));
      await c.until((ms) => ms.some((x) => x.type === "T"));
      m.setPolicies([policy(true)]);
      await c.until((ms) => ms.some((x) => x.type === "Z"));
      expect(firstValues(c.messages)).toEqual(["", "****"]);
      c.socket.destroy();
      // Not described: their columns are unknown, so their rows cannot be masked; the session ends
      // (before, the rows of such an Execute were relayed unmasked).
      m.setPolicies([policy(false)]);
      const d = await open(m);
      d.socket.write(slowThenEmail(false));
      await d.until((ms) => ms.filter((x) => x.type === "2").length === 1);
      m.setPolicies([policy(true)]);
      await d.until((ms) => ms.some((x) => x.type === "E"));
      expect(errors(d.messages)[0]?.message).toMatch(/masking rules now apply/);
      expect(JSON.stringify(firstValues(d.messages))).not.toContain("user1@example.com");
      d.socket.destroy();
      // Rules that arrive while the Execute already runs (its plan made without them) apply to its
      // rows (review 17).
      m.setPolicies([policy(false)]);
      const e = await open(m);
      e.socket.write(
        Buffer.concat([
          serialize.parse({ text: "SELECT email, pg_sleep(1)::text FROM users" }),
          serialize.bind({}),
          serialize.describe({ type: "P", name: "" }),
          serialize.flush(),
          serialize.execute({}),
          serialize.sync(),
        ]),
      );
      await e.until((ms) => ms.some((x) => x.type === "T"));
      await new Promise((r) => setTimeout(r, 200));
      m.setPolicies([policy(true)]);
      await e.until((ms) => ms.some((x) => x.type === "Z"));
      expect(types(e.messages)).toBe("12TDCZ");
      // The row's first value is the masked email (the sleep's empty text follows it).
      expect(firstValues(e.messages)[0]?.startsWith("****")).toBe(true);
      expect(JSON.stringify(firstValues(e.messages))).not.toContain("user1@example.com");
      e.socket.destroy();
    } finally {
      await m.close();
    }
  });

  it("decides a cursor's FETCH and a portal's later Execute again when the policies change (a rule that arrives applies to them)", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    const noT = {
      ...POLICY_READ,
      spec: {
        ...POLICY_READ.spec,
        rules: [
          { name: "read", effect: "allow", actions: ["connect", "db:read"] },
          { name: "no-t", effect: "deny", actions: ["db:*"], tables: ["public.t"], message: "t is closed now" },
        ],
      },
    };
    try {
      const sql = await open(harness);
      const proto = await open(harness);
      const held = await open(harness);
      expect(
        types(await sql.exchange(serialize.query("BEGIN; DECLARE c1 CURSOR FOR SELECT id FROM t ORDER BY id"))),
      ).toBe("CCZ");
      expect(firstValues(await sql.exchange(serialize.query("FETCH 2 FROM c1")))).toEqual(["1", "2"]);
      await proto.exchange(serialize.query("BEGIN"));
      const paged = await proto.exchange(
        serialize.parse({ name: "", text: "SELECT id FROM t ORDER BY id" }),
        serialize.bind({ portal: "p1" }),
        serialize.execute({ portal: "p1", rows: 2 }),
        serialize.sync(),
      );
      expect(types(paged)).toBe("12DDsZ");
      await held.exchange(
        serialize.query(
          "DECLARE h1 CURSOR WITH HOLD FOR SELECT id FROM t ORDER BY id; DECLARE u1 CURSOR WITH HOLD FOR SELECT email FROM users",
        ),
      );
      // A portal whose statement is a FETCH runs it at its first SQL FETCH (review 21).
      const lazy = await open(harness);
      await lazy.exchange(serialize.query("BEGIN; DECLARE c2 CURSOR FOR SELECT id FROM t"));
      const bound = await lazy.exchange(
        serialize.parse({ name: "", text: "FETCH ALL FROM c2" }),
        serialize.bind({ portal: "f2" }),
        serialize.sync(),
      );
      expect(types(bound)).toBe("12Z");

      harness.setPolicies([noT]);
      expect(errors(await lazy.exchange(serialize.query("FETCH ALL FROM f2")))[0]?.code).toBe("42501");
      lazy.socket.destroy();
      const fetched = await sql.exchange(serialize.query("FETCH 2 FROM c1"));
      expect(errors(fetched)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("t is closed now") });
      await sql.exchange(serialize.query("ROLLBACK"));
      const page = await proto.exchange(serialize.execute({ portal: "p1", rows: 2 }), serialize.sync());
      expect(types(page)).toBe("EZ");
      expect(errors(page)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("t is closed now") });
      await proto.exchange(serialize.query("ROLLBACK"));
      expect(errors(await held.exchange(serialize.query("FETCH 1 FROM h1")))[0]?.code).toBe("42501");
      // Other cursors read on; closing one needs nothing.
      expect(firstValues(await held.exchange(serialize.query("FETCH 1 FROM u1")))).toEqual(["user1@example.com"]);
      expect(types(await held.exchange(serialize.query("CLOSE h1")))).toBe("CZ");

      // Back: a portal bound under the new bundle reads as before.
      harness.setPolicies([readPolicy()]);
      await proto.exchange(serialize.query("BEGIN"));
      const again = await pipeline(
        proto,
        2,
        serialize.parse({ name: "", text: "SELECT id FROM t ORDER BY id" }),
        serialize.bind({ portal: "p2" }),
        serialize.execute({ portal: "p2", rows: 1 }),
        serialize.sync(),
        serialize.execute({ portal: "p2", rows: 1 }),
        serialize.sync(),
      );
      expect(types(again)).toBe("12DsZDsZ");
      expect(firstValues(again)).toEqual(["1", "2"]);
      for (const c of [sql, proto, held]) c.socket.destroy();
    } finally {
      await harness.close();
    }
  });

  it("audits a commit that fails at Sync after the statements it undid, a suspended portal's included", async () => {
    await server.sql(
      "CREATE TABLE IF NOT EXISTS parents (id int PRIMARY KEY); CREATE TABLE IF NOT EXISTS children (pid int REFERENCES parents DEFERRABLE INITIALLY DEFERRED)",
      "app",
    );
    const harness = await startHarness({ pg: server, policies: [readPolicy(["db:write"])] });
    try {
      const c = await open(harness);
      // A second Sync cycle pipelined behind: its own transaction, recorded after the failed commit.
      const ms = await pipeline(
        c,
        2,
        serialize.parse({ name: "", text: "INSERT INTO children VALUES (6), (7) RETURNING pid" }),
        serialize.bind({}),
        serialize.execute({ rows: 1 }),
        serialize.sync(),
        serialize.parse({ name: "", text: "SELECT id FROM t" }),
        serialize.bind({ portal: "later" }),
        serialize.execute({ portal: "later" }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12DsEZ12DDDDDDDDDDCZ");
      expect(errors(ms)[0]?.code).toBe("23503");
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 200));
      const queries = queryEvents(harness).map(({ q }) => q);
      const at = (text: string) => queries.findIndex((q) => q.text.startsWith(text));
      expect(at("INSERT INTO children")).toBeGreaterThanOrEqual(0);
      expect(at("-- commit at Sync (implicit transaction)")).toBeGreaterThan(at("INSERT INTO children"));
      expect(at("SELECT id FROM t")).toBeGreaterThan(at("-- commit at Sync (implicit transaction)"));
      expect(Number(queries[at("SELECT id FROM t")]?.rows)).toBe(10);
    } finally {
      await harness.close();
    }
  });

  it("audits each Execute of a pipeline when answered: rows, an error, the skipped ones (review 22)", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      const c = await open(harness);
      // pgjdbc's batches: Bind and Execute of the unnamed portal again and again, one Sync.
      const batch = await c.exchange(
        serialize.parse({ name: "a", text: "SELECT id FROM t" }),
        serialize.parse({ name: "b", text: "SELECT 1/0" }),
        serialize.bind({ statement: "a" }),
        serialize.execute({}),
        serialize.bind({ statement: "b" }),
        serialize.execute({}),
        serialize.bind({ statement: "a" }),
        serialize.execute({}),
        serialize.sync(),
      );
      // (1/0 fails at its Bind, where PostgreSQL plans it.)
      expect(types(batch)).toBe("112DDDDDDDDDDCEZ");
      // An Execute and a Close of its portal in one write.
      await c.exchange(
        serialize.bind({ portal: "P", statement: "a" }),
        serialize.execute({ portal: "P" }),
        serialize.close({ type: "P", name: "P" }),
        serialize.sync(),
      );
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 200));
      const runs = queryEvents(harness).map(({ ev, q }) => [q.text, Number(q.rows), ev.message]);
      expect(runs).toEqual([
        ["SELECT id FROM t", 10, ""],
        ["SELECT 1/0", 0, "failed on the target: division by zero"],
        ["SELECT id FROM t", 0, "not run: an earlier message of the same Sync failed"],
        ["SELECT id FROM t", 10, ""],
      ]);
    } finally {
      await harness.close();
    }
  });

  it("audits a portal whose Execute pipelined past its implicit transaction finds it gone as run (review 23)", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()], listener: { readOnlySessions: false } });
    try {
      const c = await open(harness);
      const ms = await pipeline(
        c,
        2,
        serialize.parse({ name: "a", text: "SELECT id FROM t" }),
        serialize.bind({ portal: "P", statement: "a" }),
        serialize.execute({ portal: "P", rows: 3 }),
        serialize.sync(),
        serialize.execute({ portal: "P", rows: 3 }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12DDDsZEZ");
      expect(errors(ms)[0]?.code).toBe("34000");
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 200));
      expect(queryEvents(harness).map(({ ev, q }) => [q.text, Number(q.rows), ev.message])).toEqual([
        ["SELECT id FROM t", 3, ""],
      ]);
    } finally {
      await harness.close();
    }
  });

  it("answers a pipeline of 20 000 Bind/Execute pairs in order (the queue of awaited answers)", async () => {
    const c = await open();
    await c.exchange(serialize.parse({ name: "one", text: "SELECT id FROM t WHERE id = 1" }), serialize.sync());
    const pair = Buffer.concat([serialize.bind({ statement: "one" }), serialize.execute({})]);
    const n = 20_000;
    const start = c.messages.length;
    c.socket.write(
      Buffer.concat([serialize.query("SELECT pg_sleep(0.2)"), ...Array<Buffer>(n).fill(pair), serialize.sync()]),
    );
    let zs = 0;
    let seen = start;
    await c.until((m) => {
      for (; seen < m.length; seen++) if (m[seen]?.type === "Z") zs++;
      return zs >= 2;
    }, 60_000);
    const ms = c.messages.slice(start);
    expect(ms.length).toBe(4 + 3 * n + 1);
    expect(ms.filter((m) => m.type === "D").length).toBe(1 + n);
    expect(ms.filter((m) => m.type === "E")).toEqual([]);
    c.socket.destroy();
  });

  it("audits a refused Parse once: the Bind and Execute the target skips after it are skipped by the agent too", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      const c = await open(harness);
      const ms = await c.exchange(
        serialize.parse({ name: "w", text: "DELETE FROM t" }),
        serialize.bind({ portal: "P", statement: "w" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.execute({ portal: "P" }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("EZ");
      expect(errors(ms)[0]?.code).toBe("42501");
      expect(types(await c.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 200));
      const refusals = queryEvents(harness).filter(({ ev }) => ev.verdict !== 1);
      expect(refusals.map(({ q }) => q.text)).toEqual(["DELETE FROM t"]);
    } finally {
      await harness.close();
    }
  });

  it("decides a paged portal's Execute again once a rule's time condition has run out", async () => {
    const expiresAt = new Date(Date.now() + 1500).toISOString();
    const timed = {
      ...POLICY_READ,
      spec: {
        ...POLICY_READ.spec,
        rules: [
          { name: "connect", effect: "allow", actions: ["connect"] },
          { name: "until-soon", effect: "allow", actions: ["db:read"], conditions: { expiresAt } },
        ],
      },
    };
    const harness = await startHarness({ pg: server, policies: [timed] });
    try {
      const c = await open(harness);
      await c.exchange(serialize.query("BEGIN"));
      const first = await c.exchange(
        serialize.parse({ name: "", text: "SELECT id FROM t ORDER BY id" }),
        serialize.bind({ portal: "C_1" }),
        serialize.execute({ portal: "C_1", rows: 2 }),
        serialize.sync(),
      );
      expect(firstValues(first)).toEqual(["1", "2"]);
      // The same bundle, later: the rule that allowed it has expired.
      await new Promise((r) => setTimeout(r, Date.parse(expiresAt) - Date.now() + 100));
      const later = await c.exchange(serialize.execute({ portal: "C_1", rows: 2 }), serialize.sync());
      expect(types(later)).toBe("EZ");
      expect(errors(later)[0]?.code).toBe("42501");
      c.socket.destroy();
    } finally {
      await harness.close();
    }
  });

  it("ends only the offending session on an oversized or malformed message", async () => {
    const good = await open();
    const bad = await open();
    const huge = Buffer.alloc(5);
    huge[0] = 0x51;
    huge.writeInt32BE(2 * 1024 * 1024, 1);
    bad.socket.write(huge);
    await bad.until(() => bad.closed);
    expect(errors(bad.messages)[0]).toMatchObject({ severity: "FATAL", code: "54000" });
    const worse = await open();
    worse.socket.write(Buffer.from([0x7a, 0, 0, 0, 4]));
    await worse.until(() => worse.closed);
    expect(errors(worse.messages)[0]?.message).toMatch(/unexpected message type/);
    expect(types(await good.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    good.socket.destroy();
  });

  it("caps the prepared statements a session keeps, by number and by length of text (review 36)", async () => {
    const c = await open();
    const parses = Array.from({ length: 10_000 }, (_, i) => serialize.parse({ name: `s${i}`, text: "SELECT 1" }));
    let ms = await c.exchange(...parses, serialize.sync());
    expect(ms.filter((m) => m.type === "1")).toHaveLength(10_000);
    ms = await c.exchange(serialize.parse({ name: "one-more", text: "SELECT 1" }), serialize.sync());
    expect(errors(ms)[0]).toMatchObject({
      code: "54000",
      message: expect.stringMatching(/too many prepared statements/),
    });
    ms = await c.exchange(serialize.query("PREPARE q AS SELECT 1"));
    expect(errors(ms)[0]).toMatchObject({
      code: "42501",
      message: expect.stringMatching(/too many prepared statements/),
    });
    // The unnamed statement does not count; a Close frees a place once the target has answered it.
    ms = await c.exchange(
      serialize.parse({ text: "SELECT 2" }),
      serialize.bind({}),
      serialize.execute({}),
      serialize.sync(),
    );
    expect(types(ms)).toBe("12DCZ");
    expect(types(await c.exchange(serialize.close({ type: "S", name: "s0" }), serialize.sync()))).toBe("3Z");
    ms = await c.exchange(serialize.parse({ name: "one-more", text: "SELECT 1" }), serialize.sync());
    expect(types(ms)).toBe("1Z");
    c.socket.destroy();
    // Definitions of one name awaiting the server's answer are merged (either may be what runs), each
    // merge copying the ones before: past 16 in flight another is refused (review 38: 10 000 Parses
    // of one name pipelined behind a slow query took 857 MB of the agent's heap).
    const e = await open();
    const redefine = Array.from({ length: 40 }, () => serialize.parse({ name: "s", text: "SELECT 1 AS x" }));
    ms = await pipeline(e, 2, serialize.query("SELECT pg_sleep(0.3)"), ...redefine, serialize.sync());
    // (The server fails the second Parse, 42P05, and skips the rest; the agent refused the 17th.)
    expect(types(ms)).toBe("TDCZ1EZ");
    expect(errors(ms)[0]?.code).toBe("42P05");
    expect(
      queryEvents(h).some(({ ev }) => /was defined again 16 times while the server may still hold/.test(ev.message)),
    ).toBe(true);
    // In one Query: the agent refuses the 17th, and sends the server the 16 before it, which fails
    // the second (42P05) as PostgreSQL fails such a query.
    const before = queryEvents(h).length;
    ms = await e.exchange(serialize.query(Array.from({ length: 40 }, () => "PREPARE q AS SELECT 1").join("; ")));
    expect(errors(ms)[0]).toMatchObject({ code: "42P05" });
    expect(
      queryEvents(h)
        .slice(before)
        .some(({ ev }) => /was defined again 16 times while the server may still hold/.test(ev.message)),
    ).toBe(true);
    expect(types(await e.exchange(serialize.parse({ name: "s", text: "SELECT 2 AS x" }), serialize.sync()))).toBe("EZ"); // the server still holds s
    e.socket.destroy();
    // 32 Mi characters of text at most: the 34th statement of a million characters is refused.
    const d = await open();
    const big = (i: number) => serialize.parse({ name: `big${i}`, text: `SELECT ${i} -- ${"x".repeat(1_000_000)}` });
    for (let i = 0; i < 33; i++) expect(types(await d.exchange(big(i), serialize.sync()))).toBe("1Z");
    expect(errors(await d.exchange(big(33), serialize.sync()))[0]).toMatchObject({ code: "54000" });
    d.socket.destroy();
  }, 120_000);

  it("holds maxSessions against sessions authenticating at once and idle connections, and still routes cancels (review 36)", async () => {
    const limited = await startHarness({ pg: server, policies: [readPolicy()], listener: { maxSessions: 2 } });
    const token = await limited.token();
    /** Startup and password in one write: the messages until ReadyForQuery or the close. */
    const login = async () => {
      const socket = connect(limited.port, "127.0.0.1");
      const c = new Raw(socket);
      await new Promise((r) => socket.once("connect", r));
      socket.write(
        Buffer.concat([serialize.startup({ user: "alice@example.com", database: "app" }), serialize.password(token)]),
      );
      await c.until((m) => m.some((x) => x.type === "Z"));
      return c;
    };
    /** Runs pg_sleep(10) in session `c` and cancels it with its BackendKeyData over a new connection. */
    const cancelsSleep = async (c: Raw) => {
      const key = c.messages.find((m) => m.type === "K")?.body as Buffer;
      const sent = c.messages.length;
      c.socket.write(serialize.query("SELECT pg_sleep(10)"));
      await waitFor(
        async () =>
          (await server.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)'")).trim() ===
          "1",
        10_000,
      );
      const cancel = connect(limited.port, "127.0.0.1");
      cancel.on("error", () => undefined);
      cancel.end(Buffer.concat([Buffer.from([0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]), key]));
      await c.until((m) => m.slice(sent).some((x) => x.type === "Z"));
      expect(errors(c.messages.slice(sent))[0]?.code).toBe("57014");
    };
    const idle: Socket[] = [];
    try {
      // Six at once: two sessions, four refused before authenticating.
      const six = await Promise.all(Array.from({ length: 6 }, login));
      const admitted = six.filter((c) => !c.closed);
      expect(admitted).toHaveLength(2);
      for (const c of six.filter((x) => x.closed))
        expect(errors(c.messages)).toMatchObject([{ severity: "FATAL", code: "53300" }]);
      expect(limited.listener.sessions()).toBe(2);
      // At the limit, a cancel still reaches the session it names.
      const [a] = admitted as [Raw, Raw];
      await cancelsSleep(a);
      // A session that ends frees its place.
      a.socket.destroy();
      await waitFor(async () => limited.listener.sessions() === 1, 5_000);
      const again = await login();
      expect(again.closed).toBe(false);
      again.socket.destroy();
      await waitFor(async () => limited.listener.sessions() === 1, 5_000);
      // Connections that never authenticate count too: past maxSessions of them, others are refused.
      for (let i = 0; i < 2; i++) {
        const socket = connect(limited.port, "127.0.0.1");
        socket.on("error", () => undefined);
        await new Promise((r) => socket.once("connect", r));
        idle.push(socket);
      }
      await new Promise((r) => setTimeout(r, 100));
      const refused = await login();
      expect(refused.closed).toBe(true);
      expect(errors(refused.messages)[0]?.message).toMatch(/too many connections being set up/);
      // ... but a cancel request still gets through (review 38).
      await cancelsSleep(admitted[1] as Raw);
      for (const socket of idle) socket.destroy();
      await new Promise((r) => setTimeout(r, 100));
      const served = await login();
      expect(served.closed).toBe(false);
      served.socket.destroy();
      for (const c of admitted) c.socket.destroy();
    } finally {
      for (const socket of idle) socket.destroy();
      await limited.close();
    }
  });

  it("answers a GSSENCRequest once, and refuses a second one (08P01)", async () => {
    const gssenc = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    const socket = connect(h.port, "127.0.0.1");
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    await new Promise((r) => socket.once("connect", r));
    socket.write(Buffer.concat([gssenc, gssenc]));
    await new Promise((r) => socket.once("close", r));
    const got = Buffer.concat(chunks);
    expect(got.subarray(0, 1).toString()).toBe("N");
    expect(got.subarray(1).toString("latin1")).toMatch(/08P01/);
  });

  it("answers a startup asking for protocol 3.2 or protocol options with NegotiateProtocolVersion (3.0), like PostgreSQL 15", async () => {
    const token = await h.token();
    const socket = connect(h.port, "127.0.0.1");
    const raw = new Raw(socket);
    await new Promise((r) => socket.once("connect", r));
    const pairs = ["user", "alice@example.com", "database", "app", "_pq_.future_option", "on"];
    const body = Buffer.concat([...pairs.map((p) => Buffer.from(`${p}\0`)), Buffer.from([0])]);
    const head = Buffer.alloc(8);
    head.writeInt32BE(8 + body.length, 0);
    head.writeInt32BE((3 << 16) | 2, 4);
    socket.write(Buffer.concat([head, body]));
    await raw.until((m) => m.some((x) => x.type === "R"));
    expect(types(raw.messages)).toBe("vR");
    const v = raw.messages[0]?.body as Buffer;
    expect(v.readInt32BE(0)).toBe(196608); // 3.0 coded as in the startup packet, as PostgreSQL 15 sends it
    expect(v.readInt32BE(4)).toBe(1);
    expect(v.subarray(8).toString()).toBe("_pq_.future_option\0");
    socket.write(serialize.password(token));
    await raw.until((m) => m.some((x) => x.type === "Z"));
    expect(types(await raw.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    socket.destroy();
  });
});

/** A Query message carrying exactly `bytes` (not necessarily UTF-8). */
function rawQuery(...parts: (string | number[])[]): Buffer {
  const text = Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p, "latin1") : Buffer.from(p))));
  const msg = Buffer.alloc(text.length + 6);
  msg[0] = 0x51;
  msg.writeInt32BE(text.length + 5, 1);
  text.copy(msg, 5);
  return msg;
}

describe("long texts, classified on a worker thread", () => {
  // Longer than parseOffThreadBytes (16 KiB in the harness): `SELECT ... WHERE id IN (1, 2, ...)`.
  const inList = (n: number) => Array.from({ length: n }, (_, i) => i + 1).join(", ");
  const longRead = `SELECT count(*) FROM t WHERE id IN (${inList(5000)})`;
  const longWrite = `DELETE FROM t WHERE id IN (${inList(5000)})`;

  it("gives them the verdicts it gives short ones, in order with the messages around them", async () => {
    const c = await open();
    const ms = await pipeline(
      c,
      5,
      serialize.query(longRead),
      serialize.query("SELECT 1"),
      serialize.parse({ name: "", text: longWrite }),
      serialize.bind({}),
      serialize.execute({}),
      serialize.sync(),
      serialize.parse({ name: "s1", text: longRead }),
      serialize.bind({ statement: "s1" }),
      serialize.execute({}),
      serialize.sync(),
      serialize.query(`${longRead}; ${longWrite}`),
    );
    // (The last Query's read runs before its denied write, as on PostgreSQL.)
    expect(types(ms)).toBe("TDCZTDCZEZ12DCZTDCEZ");
    expect(firstValues(ms)).toEqual(["10", "1", "10", "10"]);
    expect(errors(ms).map((e) => e.code)).toEqual(["42501", "42501"]);
    // What came after them is answered too.
    expect(types(await c.exchange(serialize.query("SELECT count(*) FROM t")))).toBe("TDCZ");
    expect(await server.sql("SELECT count(*) FROM t", "app")).toMatch(/^10/);
    c.socket.destroy();
  });

  it("serves other sessions while one long text is being classified", async () => {
    const a = await open();
    const b = await open();
    // About 0.9 MiB (the harness's maxMessageBytes is 1 MiB): half a second of parsing or more.
    const huge = `INSERT INTO t VALUES ${Array.from({ length: 115_000 }, (_, i) => `(${i})`).join(",")}`;
    expect(huge.length).toBeGreaterThan(900_000);
    expect(huge.length).toBeLessThan(1_000_000);
    a.socket.write(serialize.query(huge));
    let answered = 0;
    while (!a.closed && !a.messages.some((m) => m.type === "Z")) {
      expect(types(await b.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
      answered++;
    }
    expect(errors(a.messages)[0]).toMatchObject({ code: "42501" });
    // On the event loop (before the worker), b got no answer until a's text was parsed.
    expect(answered).toBeGreaterThanOrEqual(20);
    a.socket.destroy();
    b.socket.destroy();
  });

  it("cancels the classification of a text whose session ends, and refuses texts past the pool's limit (53400)", async () => {
    const pool = createClassifierPool({ maxQueuedLength: 2_000_000 });
    const harness = await startHarness({ pg: server, policies: [readPolicy()], classifierPool: pool });
    const until = async (what: () => boolean) => {
      for (const deadline = Date.now() + 10_000; !what(); await new Promise((r) => setTimeout(r, 20)))
        if (Date.now() > deadline) throw new Error("timeout");
    };
    try {
      // About 1.8 MiB each (seconds of parsing): the sessions reset as soon as the pool has them.
      const huge = (i: number) => serialize.query(`SELECT count(*) FROM t WHERE id IN (${inList(250_000)}, ${i})`);
      for (let i = 0; i < 4; i++) {
        const c = await open(harness);
        c.socket.write(huge(i));
        await until(() => pool.pending > 0);
        c.socket.resetAndDestroy();
        // Nothing is left behind: not queued, not parsing (its worker stopped).
        await until(() => pool.pending === 0 && harness.listener.sessions() === 0);
      }
      // Past maxQueuedLength, a text is refused at once while another is parsed; the session goes on.
      const a = await open(harness);
      const b = await open(harness);
      a.socket.write(huge(9));
      await until(() => pool.pending > 0);
      const refused = await b.exchange(serialize.query(longRead.replace("SELECT", `SELECT ${"1 + ".repeat(60_000)}`)));
      expect(errors(refused)[0]).toMatchObject({ code: "53400", message: expect.stringContaining("too many long") });
      expect(types(await b.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
      await a.until((m) => m.some((x) => x.type === "Z"), 30_000);
      expect(firstValues(a.messages)).toEqual(["10"]);
      expect(types(await b.exchange(serialize.query(longRead)))).toBe("TDCZ");
      a.socket.destroy();
      b.socket.destroy();
    } finally {
      await harness.close();
      await pool.close();
    }
  });

  it("runs what the client sent before it closed or terminated, as PostgreSQL does, and audits it", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy(["db:write"])] });
    const marked = async (mark: string) =>
      (await server.sql(`SELECT count(*) FROM inbox WHERE v = '${mark}'`, "app")).trim();
    try {
      // A long INSERT, held for its classification, then the client's FIN (no Terminate).
      const c = await open(harness);
      c.socket.end(
        serialize.query(`INSERT INTO inbox SELECT 'fin' WHERE 1 NOT IN (${inList(5000).replace(/^1, /, "")})`),
      );
      // A short INSERT and Terminate in one write: answered, then the session ends, as on PostgreSQL
      // (review 36: the session ended at once, the answer was never relayed).
      const d = await open(harness);
      d.socket.write(Buffer.concat([serialize.query("INSERT INTO inbox VALUES ('term')"), serialize.end()]));
      // The same through the extended protocol.
      const e = await open(harness);
      e.socket.write(
        Buffer.concat([
          serialize.parse({ name: "", text: "INSERT INTO inbox VALUES ('extended')" }),
          serialize.bind({}),
          serialize.execute({}),
          serialize.sync(),
          serialize.end(),
        ]),
      );
      // A large result the client leaves in the middle: the rows it was sent are counted.
      const f = await open(harness);
      f.socket.write(serialize.query("SELECT g FROM generate_series(1, 2000000) g"));
      await f.until((m) => m.filter((x) => x.type === "D").length > 20_000, 20_000);
      const relayed = f.messages.filter((x) => x.type === "D").length;
      f.socket.destroy();
      await Promise.all([c.until(() => c.closed), d.until(() => d.closed), e.until(() => e.closed)]);
      expect(types(d.messages)).toBe("CZ");
      expect(types(e.messages)).toBe("12CZ");
      for (let i = 0; i < 100 && ((await marked("fin")) !== "1" || (await marked("term")) !== "1"); i++)
        await new Promise((r) => setTimeout(r, 50));
      expect(await marked("fin")).toBe("1");
      expect(await marked("term")).toBe("1");
      await new Promise((r) => setTimeout(r, 200));
      const find = (text: string) => queryEvents(harness).find(({ q }) => q.text.startsWith(text));
      expect(find("INSERT INTO inbox VALUES ('term')")?.ev.message).toBe("");
      expect(find("INSERT INTO inbox VALUES ('extended')")?.ev.message).toBe("");
      expect(find("INSERT INTO inbox SELECT 'fin'")).toBeDefined();
      const cut = find("SELECT g FROM generate_series");
      expect(cut?.ev.message).toBe("the session ended before the statement completed");
      expect(Number(cut?.q.rows)).toBeGreaterThanOrEqual(relayed);
    } finally {
      await harness.close();
    }
  });

  it("reads nothing a client sends after its Terminate, even while a long text before it is classified (review 38)", async () => {
    const c = await open();
    c.socket.write(
      Buffer.concat([serialize.query(`SELECT 'before-terminate' WHERE 1 IN (${inList(5000)})`), serialize.end()]),
    );
    await new Promise((r) => setTimeout(r, 150));
    c.socket.write(serialize.query("SELECT 'after-terminate'"));
    await c.until(() => c.closed, 10_000);
    expect(types(c.messages)).toBe("TDCZ");
    await new Promise((r) => setTimeout(r, 200));
    const texts = queryEvents(h).map(({ q }) => q.text);
    expect(texts.some((t) => t.startsWith("SELECT 'before-terminate'"))).toBe(true);
    expect(texts.some((t) => t.includes("after-terminate"))).toBe(false);
  });

  it("does not parse a long text on the loop after all when a lexical change it was held under is answered meanwhile", async () => {
    // The classifier of the agent's own thread, watched: no long text may reach it.
    const base = createClassifier();
    const onLoop: number[] = [];
    const classifier: Classifier = {
      get cacheSize() {
        return base.cacheSize;
      },
      classify(text, lexical) {
        if (text.length >= 16 * 1024) onLoop.push(text.length);
        return base.classify(text, lexical);
      },
    };
    const harness = await startHarness({ pg: server, policies: [readPolicy()], classifier });
    try {
      const c = await open(harness);
      const padding = ` /* ${"x".repeat(200_000)} */`;
      // Held while the SET is in flight (read as if standard_conforming_strings were off); the SET
      // is answered long before the worker is done. Without a backslash the classification holds;
      // with one it is made again, on the worker, under the setting now known (on: allowed).
      for (const text of [`${longRead}${padding}`, `SELECT 'a\\b' AS v${padding}`]) {
        const ms = await pipeline(c, 2, serialize.query("SET client_encoding = 'LATIN1'"), serialize.query(text));
        expect(types(ms)).toBe("CSZTDCZ");
        await c.exchange(serialize.query("RESET client_encoding"));
      }
      expect(firstValues(c.messages)).toEqual(["10", "a\\b"]);
      expect(onLoop).toEqual([]);
      c.socket.destroy();
    } finally {
      await harness.close();
    }
  });

  it("refuses a text longer than maxStatementLength (54000) without parsing it, and goes on with the session", async () => {
    const harness = await startHarness({
      pg: server,
      policies: [readPolicy()],
      listener: { maxStatementLength: 64 * 1024 },
    });
    try {
      const c = await open(harness);
      const tooLong = `SELECT count(*) FROM t WHERE id IN (${inList(15_000)})`;
      expect(tooLong.length).toBeGreaterThan(64 * 1024);
      for (const ms of [
        await c.exchange(serialize.query(tooLong)),
        await c.exchange(
          serialize.parse({ name: "", text: tooLong }),
          serialize.bind({}),
          serialize.execute({}),
          serialize.sync(),
        ),
      ]) {
        expect(types(ms)).toBe("EZ");
        expect(errors(ms)[0]).toMatchObject({ code: "54000", message: expect.stringContaining("maxStatementLength") });
      }
      expect(types(await c.exchange(serialize.query(longRead)))).toBe("TDCZ");
      c.socket.destroy();
    } finally {
      await harness.close();
    }
  });

  it("refuses a long text whose classifier worker died (XX000) and goes on with the session", async () => {
    const broken = createClassifierPool({ workerUrl: new URL("data:text/javascript,process.exit(1)") });
    const harness = await startHarness({ pg: server, policies: [readPolicy()], classifierPool: broken });
    try {
      const c = await open(harness);
      const ms = await c.exchange(serialize.query(longRead));
      expect(types(ms)).toBe("EZ");
      expect(errors(ms)[0]).toMatchObject({ code: "XX000", message: expect.stringContaining("could not check") });
      expect(firstValues(await c.exchange(serialize.query("SELECT count(*) FROM t")))).toEqual(["10"]);
      c.socket.destroy();
    } finally {
      await harness.close();
      await broken.close();
    }
  });
});

describe("texts the server could read differently from the agent (lexical settings)", () => {
  const rows = async () => (await server.sql("SELECT count(*) FROM t", "app")).trim();
  // Under SJIS, 0x81 is a lead byte: 0x81 + backslash is one character, so the server ends the
  // string at the quote after it and runs what follows; the agent (UTF-8) reads one SET.
  const sjisTrick = rawQuery("SET client_encoding = E'UTF8", [0x81], "\\'; DELETE FROM t; --'");
  // With standard_conforming_strings off, \' does not end a string: the server runs the DELETE,
  // while a reader with it on sees a harmless concatenation.
  const backslashTrick = serialize.query("SELECT 'a\\' || ' ; DELETE FROM t; -- '");

  it("refuses non-ASCII text while the client encoding is one whose characters can hide quotes", async () => {
    const c = await open();
    expect(errors(await c.exchange(serialize.query("SET client_encoding = 'SJIS'")))).toEqual([]);
    const ms = await c.exchange(sjisTrick);
    expect(errors(ms)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("client_encoding SJIS") });
    expect(await rows()).toMatch(/^10/);
    // Pure ASCII reads the same in every encoding: switching back works, then everything does.
    expect(errors(await c.exchange(serialize.query("SET client_encoding = 'UTF8'")))).toEqual([]);
    expect(types(await c.exchange(serialize.query("SELECT 'é' AS x")))).toBe("TDCZ");
    c.socket.destroy();
  });

  it("accepts only ASCII text under a client encoding other than UTF8 (the agent reads text as UTF-8)", async () => {
    await server.sql('CREATE TABLE IF NOT EXISTS "geheimé" (v text)', "app");
    const c = await open();
    expect(errors(await c.exchange(serialize.query("SET client_encoding = 'LATIN1'")))).toEqual([]);
    // `geheim\xe9` is "geheimé" to a LATIN1 server and "geheim\ufffd" to a UTF-8 reader.
    const latin1 = Buffer.concat([Buffer.from("SELECT * FROM geheim"), Buffer.from([0xe9])]);
    const query = Buffer.alloc(latin1.length + 6);
    query.write("Q", 0);
    query.writeInt32BE(latin1.length + 5, 1);
    latin1.copy(query, 5);
    const refused = await c.exchange(query);
    expect(errors(refused)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("ASCII text only") });
    expect(types(await c.exchange(serialize.query("SELECT 1 AS x")))).toBe("TDCZ");
    // SQL_ASCII converts nothing: UTF-8 text reads the same for both, other bytes are refused by
    // one or the other (the agent, or a UTF8 server: invalid byte sequence).
    expect(errors(await c.exchange(serialize.query("SET client_encoding = 'SQL_ASCII'")))).toEqual([]);
    expect(types(await c.exchange(serialize.query("SELECT 'é' AS x")))).toBe("TDCZ");
    const bytes = await c.exchange(query);
    expect(bytes.filter((m) => m.type === "D")).toEqual([]);
    expect(errors(bytes)).toHaveLength(1);
    expect(errors(await c.exchange(serialize.query("SET client_encoding = 'UTF8'")))).toEqual([]);
    expect(types(await c.exchange(serialize.query("SELECT 'é' AS x")))).toBe("TDCZ");
    c.socket.destroy();
  });

  it("reads text pipelined behind an unanswered lexical change pessimistically", async () => {
    // Simple protocol: the SET and the trick in one write, before the server has answered the SET.
    const a = await open();
    const sjis = await a.exchange(serialize.query("SET client_encoding = 'SJIS'"), sjisTrick);
    await a.until((m) => m.filter((x) => x.type === "Z").length >= 2);
    expect(errors(a.messages)[0]).toMatchObject({
      code: "42501",
      message: expect.stringContaining("not been answered"),
    });
    expect(sjis.length).toBeGreaterThan(0);
    a.socket.destroy();
    expect(await rows()).toMatch(/^10/);

    const b = await open();
    await b.exchange(serialize.query("SET standard_conforming_strings = off"), backslashTrick);
    await b.until((m) => m.filter((x) => x.type === "Z").length >= 2);
    expect(errors(b.messages)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("backslash") });
    // Answered now: the agent knows it is off, and still refuses backslashes (as it did before).
    const later = await b.exchange(backslashTrick);
    expect(errors(later)[0]?.code).toBe("42501");
    b.socket.destroy();
    expect(await rows()).toMatch(/^10/);

    {
      // Extended protocol: a lexical change is refused at its Parse (only a simple query may carry one).
      const c = await open();
      const ms = await pipeline(
        c,
        2,
        serialize.parse({ name: "", text: "SET standard_conforming_strings = off" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
        serialize.parse({ name: "", text: "SELECT 'a\\' || ' ; DELETE FROM t; -- '" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      );
      expect(errors(ms)[0]).toMatchObject({
        code: "42501",
        message: expect.stringContaining("simple query on its own"),
      });
      c.socket.destroy();
      expect(await rows()).toMatch(/^10/);
    }
  });

  it("reads a long text (classified on a worker) pipelined behind an unanswered lexical change pessimistically too", async () => {
    const padding = ` /* ${"x".repeat(20_000)} */`;
    const longTrick = serialize.query(`SELECT 'a\\' || ' ; DELETE FROM t; -- '${padding}`);
    const c = await open();
    await c.exchange(serialize.query("SET standard_conforming_strings = off"), longTrick);
    await c.until((m) => m.filter((x) => x.type === "Z").length >= 2);
    expect(errors(c.messages)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("backslash") });
    // Answered: off is known now, and a long text with a backslash is still refused.
    expect(errors(await c.exchange(longTrick))[0]?.code).toBe("42501");
    // Back on: the long text is read as the server reads it (a harmless concatenation).
    await c.exchange(serialize.query("SET standard_conforming_strings = on"));
    expect(types(await c.exchange(longTrick))).toBe("TDCZ");
    c.socket.destroy();
    expect(await rows()).toMatch(/^10/);
  });

  it("lets a lexical change through only alone or last, outside a transaction block, with nothing in flight", async () => {
    const refusal = expect.stringContaining("outside a transaction block");
    const c = await open();
    // Inside a block: COMMIT, ROLLBACK or an error aborting the block could revert it unseen.
    expect(errors(await c.exchange(serialize.query("SET standard_conforming_strings = off")))).toEqual([]);
    await c.exchange(serialize.query("BEGIN"));
    expect(errors(await c.exchange(serialize.query("SET LOCAL standard_conforming_strings = on")))[0]).toMatchObject({
      code: "42501",
      message: refusal,
    });
    await c.exchange(serialize.query("ROLLBACK"));
    // With another statement after it in the same message (read under the new setting), a BEGIN
    // before it, or another message still unanswered.
    for (const text of [
      "SET standard_conforming_strings = on; SELECT 1",
      "SELECT 1; SET standard_conforming_strings = on; SET standard_conforming_strings = off",
      "BEGIN; SET standard_conforming_strings = on",
    ])
      expect(errors(await c.exchange(serialize.query(text)))[0], text).toMatchObject({
        code: "42501",
        message: refusal,
      });
    // (The BEGIN before the refused statement ran: its block is failed, as on PostgreSQL.)
    expect(types(await c.exchange(serialize.query("ROLLBACK")))).toBe("CZ");
    const pipelined = await pipeline(
      c,
      2,
      serialize.query("SELECT pg_sleep(0.05)"),
      serialize.query("SET standard_conforming_strings = on"),
    );
    expect(errors(pipelined)[0]).toMatchObject({ code: "42501", message: refusal });
    // Still off, as the agent knows: the trick stays refused.
    expect(errors(await c.exchange(backslashTrick))[0]?.code).toBe("42501");
    // A portal bound now and executed in a later Sync cycle inside a block: refused at Parse.
    await c.exchange(serialize.query("BEGIN"));
    const portal = await pipeline(
      c,
      1,
      serialize.parse({ name: "s", text: "SET standard_conforming_strings = on" }),
      serialize.bind({ portal: "p", statement: "s" }),
      serialize.sync(),
    );
    expect(errors(portal)[0]).toMatchObject({ code: "42501", message: refusal });
    await c.exchange(serialize.query("ROLLBACK"));
    // Alone and idle, or last of its message: fine (asyncpg's reset of a pooled connection ends
    // with RESET ALL); the answer says what is in force.
    expect(errors(await c.exchange(serialize.query("SELECT 1; RESET ALL")))).toEqual([]);
    // Back on (the server's default): the trick is the harmless concatenation it then is.
    expect(errors(await c.exchange(backslashTrick))).toEqual([]);
    expect(errors(await c.exchange(serialize.query("SET standard_conforming_strings = on")))).toEqual([]);
    // Setting the value in force changes nothing, anywhere (pg_restore --single-transaction sends
    // a dump's SETs inside its transaction); a real change there stays refused.
    await c.exchange(serialize.query("BEGIN"));
    for (const noOp of ["SET client_encoding = 'UTF8'", "SET standard_conforming_strings = on", "SET NAMES 'utf-8'"])
      expect(errors(await c.exchange(serialize.query(noOp))), noOp).toEqual([]);
    const extended = await pipeline(
      c,
      1,
      serialize.parse({ name: "", text: "SET client_encoding TO 'UTF8'" }),
      serialize.bind({}),
      serialize.execute({}),
      serialize.sync(),
    );
    expect(errors(extended)).toEqual([]);
    expect(errors(await c.exchange(serialize.query("SET client_encoding = 'LATIN1'")))[0]).toMatchObject({
      code: "42501",
      message: refusal,
    });
    await c.exchange(serialize.query("ROLLBACK"));
    await c.exchange(serialize.query("BEGIN"));
    for (const change of ["SET standard_conforming_strings = off", "SET standard_conforming_strings = of"])
      expect(errors(await c.exchange(serialize.query(change)))[0], change).toMatchObject({ code: "42501" });
    await c.exchange(serialize.query("ROLLBACK"));
    c.socket.destroy();
    expect(await rows()).toMatch(/^10/);
  });

  it("ignores messages while the target skips to Sync, as the target does, and stays in step", async () => {
    const c = await open();
    // An extended-protocol error with no Sync sent: the target now ignores everything but Sync.
    c.socket.write(
      Buffer.concat([
        serialize.parse({ name: "", text: "SELECT * FROM no_such_table" }),
        serialize.bind({}),
        serialize.execute({}),
      ]),
    );
    await c.until((m) => m.some((x) => x.type === "E"));
    const ms = await pipeline(c, 1, serialize.query("SELECT 1"), serialize.sync());
    expect(types(ms)).toBe("Z"); // the Query was ignored, the Sync answered
    // In step: an allowed query gets its own rows, a denied one the agent's 42501.
    const read = await c.exchange(serialize.query("SELECT count(*) FROM t"));
    expect(types(read)).toBe("TDCZ");
    const denied = await c.exchange(serialize.query("DELETE FROM t"));
    expect(errors(denied)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("no policy allows") });
    c.socket.destroy();
    expect(await rows()).toMatch(/^10/);
  });

  it("leaves ordinary pipelines alone (no lexical change in flight)", async () => {
    const c = await open();
    expect(errors(await pipeline(c, 2, serialize.query("SELECT 'é'"), serialize.query("SELECT 'a\\b'")))).toEqual([]);
    c.socket.destroy();
  });
});
