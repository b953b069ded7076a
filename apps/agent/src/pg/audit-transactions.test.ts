/**
 * The audit trail's account of transactions against a real PostgreSQL (review 52, on the rollback
 * event of audit-fidelity.test.ts): what commits on its own, what a rollback undoes or leaves, a
 * session ending with messages in flight, ordinary traffic with no rollback event, and EXECUTE of a
 * prepared statement setting configuration values.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import pg from "pg";
import { serialize } from "@moat/pg-wire";
import { chmodSync } from "node:fs";
import { dirname, join } from "node:path";
import { startPostgres, tempDir, waitFor, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";
import { run, startHarness, type Harness } from "../test-support/pg.js";
import {
  firstValues,
  openRaw,
  queryEvents,
  types,
  type Raw,
  queryEventsSince,
  withRaw,
} from "../test-support/raw-client.js";

let server: TestPostgres;
let h: Harness;

beforeAll(async () => {
  server = await startPostgres();
  await server.createDatabase("app");
  await server.sql(
    "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10); CREATE TABLE w (id int);",
    "app",
  );
  const actions = ["db:write", "db:ddl", "db:admin", "db:function", "db:dynamic", "db:copy-in", "db:copy-out"];
  h = await startHarness({ pg: server, policies: [readPolicy(actions)] });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await server?.stop();
});

const parse = (text: string, name = "") => serialize.parse({ name, text });
const ext = (text: string) => [parse(text), serialize.bind({}), serialize.execute({})];
const since = (from: number) => queryEventsSince(h, from);
const rollbacks = (from: number) => since(from).filter((e) => e.text.startsWith("-- rollback"));

const session = <T>(body: (c: Raw) => Promise<T>): Promise<T> => withRaw(h, body);

describe("the audit trail of transactions", () => {
  beforeEach(async () => {
    await server.sql("DELETE FROM w", "app");
  });
  it("says nothing undone of CREATE INDEX CONCURRENTLY, which commits at once", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      await c.exchange(...ext("CREATE INDEX CONCURRENTLY wi ON w (id)"), ...ext("SELECT 1/0"), serialize.sync());
      const kept = await server.sql("SELECT count(*) FROM pg_class WHERE relname = 'wi'", "app");
      expect(kept).toMatch(/^1/);
      expect(rollbacks(from)).toEqual([]);
    });
  });

  it("says nothing undone of COPY ... TO (STDOUT or a file) before an error", async () => {
    await session(async (c) => {
      let from = queryEvents(h).length;
      await c.exchange(serialize.query("COPY t TO STDOUT; SELECT 1/0"));
      expect(rollbacks(from)).toEqual([]);
      from = queryEvents(h).length;
      // (A file the server writes, which a rollback leaves.)
      const file = join(tempDir(), "copy.txt");
      chmodSync(dirname(file), 0o777);
      await c.exchange(serialize.query(`COPY t TO '${file}'; SELECT 1/0`));
      expect(rollbacks(from)).toEqual([]);
    });
  });

  it("counts TRUNCATE, a writable CTE and EXPLAIN ANALYZE of a write as writes an error undid", async () => {
    await server.sql("INSERT INTO w VALUES (100)", "app");
    await session(async (c) => {
      for (const q of [
        "TRUNCATE w; SELECT 1/0",
        "WITH x AS (INSERT INTO w VALUES (1) RETURNING id) SELECT * FROM x; SELECT 1/0",
        "EXPLAIN ANALYZE INSERT INTO w VALUES (2); SELECT 1/0",
      ]) {
        const from = queryEvents(h).length;
        await c.exchange(serialize.query(q));
        expect(rollbacks(from), q).toHaveLength(1);
      }
    });
    expect(await server.sql("SELECT count(*) FROM w WHERE id <> 100", "app")).toMatch(/^0/);
    await server.sql("DELETE FROM w", "app");
  });

  it("says a writable CTE closed suspended ran whole", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      const ms = await c.exchange(
        parse("WITH x AS (INSERT INTO w SELECT id FROM t RETURNING id) SELECT * FROM x"),
        serialize.bind({}),
        serialize.execute({ rows: 2 }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12DDsZ");
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^10/);
      expect(since(from)[0]?.message).toMatch(/ran to completion/);
    });
    await server.sql("DELETE FROM w", "app");
  });

  it("records the rollback of a session closed inside an explicit transaction with a Sync in flight", async () => {
    const c = await openRaw(h);
    const from = queryEvents(h).length;
    await c.exchange(serialize.query("BEGIN"));
    await c.exchange(...ext("INSERT INTO w VALUES (7)"), serialize.sync());
    c.socket.write(Buffer.concat([...ext("SELECT pg_sleep(0.3)"), serialize.sync()]));
    await new Promise((r) => setTimeout(r, 50));
    c.socket.destroy();
    await new Promise((r) => setTimeout(r, 1500));
    expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^0/);
    expect(rollbacks(from)).toHaveLength(1);
  });

  it("records no rollback of a session closed with a COMMIT in flight (it committed)", async () => {
    const c = await openRaw(h);
    const from = queryEvents(h).length;
    await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (8)"));
    c.socket.write(Buffer.concat([...ext("SELECT pg_sleep(0.3)"), ...ext("COMMIT")]));
    await new Promise((r) => setTimeout(r, 50));
    c.socket.destroy();
    await new Promise((r) => setTimeout(r, 1500));
    const n = await server.sql("SELECT count(*) FROM w WHERE id = 8", "app");
    expect(n).toMatch(/^1/);
    expect(rollbacks(from)).toEqual([]);
    await server.sql("DELETE FROM w", "app");
  });

  it("counts the rows of a suspended portal that fails at a later Execute", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      const ms = await c.exchange(
        parse("SELECT 10 / (4 - id) FROM t"),
        serialize.bind({}),
        serialize.execute({ rows: 2 }),
        serialize.execute({ rows: 1 }),
        serialize.execute({ rows: 5 }),
        serialize.sync(),
      );
      expect(since(from)[0]?.rows).toBe(firstValues(ms).length);
    });
  });

  it("records no rollback event for ordinary traffic (pgbench TPC-B in three modes, node-postgres transactions)", async () => {
    const init = await run("pgbench", [
      "-i",
      "-s",
      "1",
      "-q",
      `host=127.0.0.1 port=${server.port} user=postgres dbname=app`,
    ]);
    expect(init.code).toBe(0);
    const from = queryEvents(h).length;
    for (const mode of ["simple", "extended", "prepared"]) {
      const token = await h.token();
      const r = await run(
        "pgbench",
        [
          "-n",
          "-M",
          mode,
          "-c",
          "2",
          "-t",
          "30",
          `host=127.0.0.1 port=${h.port} user=alice@example.com dbname=app sslmode=require`,
        ],
        { PGPASSWORD: token },
      );
      expect(r.stderr + r.stdout, mode).toMatch(/processed: 60\/60/);
    }
    const token = await h.token();
    const client = new pg.Client({
      host: "127.0.0.1",
      port: h.port,
      user: "alice@example.com",
      password: token,
      database: "app",
    });
    await client.connect();
    for (let i = 0; i < 5; i++) {
      await client.query("BEGIN");
      await client.query("INSERT INTO w VALUES ($1)", [i]);
      await client.query("UPDATE w SET id = id + 1 WHERE id = $1", [i]);
      await client.query("COMMIT");
    }
    await client.query("BEGIN");
    await client.query("INSERT INTO w VALUES ($1)", [99]);
    await client.query("SELECT 1/0").catch(() => undefined);
    await client.query("ROLLBACK");
    await client.query("INSERT INTO w VALUES ($1)", [50]);
    await client.query("SELECT $1::int / 0", [1]).catch(() => undefined);
    await client.end();
    const psqlRun = await run(
      "psql",
      [
        `host=127.0.0.1 port=${h.port} user=alice@example.com dbname=app sslmode=require`,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-1",
        "-c",
        "INSERT INTO w VALUES (1)",
        "-c",
        "UPDATE w SET id = 2 WHERE id = 1",
      ],
      { PGPASSWORD: await h.token() },
    );
    expect(psqlRun.code).toBe(0);
    await waitFor(() => queryEvents(h).length > from);
    await new Promise((r) => setTimeout(r, 500));
    const rb = rollbacks(from);
    expect(rb).toEqual([]);
    await server.sql("DELETE FROM w", "app");
  }, 120_000);

  it("keeps no arguments of EXECUTE of a name that may hold an UPDATE of pg_settings (a second PREPARE failed)", async () => {
    await session(async (c) => {
      await c.exchange(serialize.query("SET app.password = 'x'"));
      const from = queryEvents(h).length;
      for (const q of [
        "PREPARE q(text, text) AS UPDATE pg_settings SET setting = $2 WHERE name = $1",
        "PREPARE q(text, text) AS SELECT $1, $2",
        "EXECUTE q('app.password', 'hunter2-s1')",
        "PREPARE r(text, text) AS SELECT $1, $2",
        "PREPARE r(text, text) AS UPDATE pg_settings SET setting = $2 WHERE name = $1",
        "EXECUTE r('app.password', 'hunter2-s1r')",
        "SHOW app.password",
      ])
        await c.exchange(serialize.query(q));
      expect(JSON.stringify(since(from))).not.toContain("hunter2");
    });
  });

  it("records the rollback of a session closed while a query runs inside an explicit transaction", async () => {
    const c = await openRaw(h);
    const from = queryEvents(h).length;
    await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (7)"));
    c.socket.write(serialize.query("SELECT pg_sleep(0.3)"));
    await new Promise((r) => setTimeout(r, 50));
    c.socket.destroy();
    await new Promise((r) => setTimeout(r, 1500));
    expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^0/);
    expect(rollbacks(from)).toHaveLength(1);
  });

  it("keeps no arguments of EXECUTE of a prepared UPDATE of pg_settings", async () => {
    await session(async (c) => {
      await c.exchange(serialize.query("SET app.password = 'x'"));
      const from = queryEvents(h).length;
      for (const q of [
        "PREPARE u(text, text) AS UPDATE pg_settings SET setting = $2 WHERE name = $1",
        "EXECUTE u('app.password', 'hunter2-s2')",
      ])
        await c.exchange(serialize.query(q));
      // The same through a protocol-level Parse of the name, then SQL EXECUTE.
      await c.exchange(parse("UPDATE pg_settings SET setting = $2 WHERE name = $1", "pu"), serialize.sync());
      await c.exchange(serialize.query("EXECUTE pu('app.password', 'hunter2-s2p')"));
      expect(JSON.stringify(since(from))).not.toContain("hunter2");
    });
  });

  it("counts EXECUTE of a SQL-prepared INSERT before an error as a write undone", async () => {
    await session(async (c) => {
      await c.exchange(serialize.query("PREPARE ins9 AS INSERT INTO w VALUES (9)"));
      const from = queryEvents(h).length;
      await c.exchange(serialize.query("EXECUTE ins9; SELECT 1/0"));
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^0/);
      expect(rollbacks(from)).toHaveLength(1);
    });
  });
  it("reads CONCURRENTLY only where it commits on its own (review 53)", async () => {
    await withRaw(h, async (c) => {
      let from = queryEvents(h).length;
      await c.exchange(serialize.query("INSERT INTO w VALUES (1); SELECT 'concurrently'; SELECT 1/0"));
      expect(rollbacks(from)).toHaveLength(1);
      from = queryEvents(h).length;
      await c.exchange(...ext("INSERT INTO w VALUES (1) /* concurrently */"), ...ext("SELECT 1/0"), serialize.sync());
      expect(rollbacks(from)).toHaveLength(1);
    });
  });

  it("says nothing undone after a statement it cannot tell (a name two definitions may hold), and keeps no secret its parameters may give (review 53)", async () => {
    await withRaw(h, async (c) => {
      // A protocol COMMIT under a name a failed SQL PREPARE also claims: it committed.
      await c.exchange(parse("COMMIT", "s"), serialize.sync());
      expect(types(await c.exchange(serialize.query("PREPARE s AS SELECT 1")))).toContain("E");
      await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (1)"));
      let from = queryEvents(h).length;
      await c.exchange(
        serialize.bind({ statement: "s" }),
        serialize.execute({}),
        ...ext("SELECT 1/0"),
        serialize.sync(),
      );
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^1/);
      expect(rollbacks(from)).toEqual([]);
      // An UPDATE of pg_settings under a name a failed SQL PREPARE also claims.
      await c.exchange(serialize.query("SET app.password = 'x'"));
      await c.exchange(parse("UPDATE pg_settings SET setting = $1 WHERE name = 'app.password'", "u"), serialize.sync());
      expect(types(await c.exchange(serialize.query("PREPARE u AS SELECT 1")))).toContain("E");
      from = queryEvents(h).length;
      await c.exchange(
        serialize.bind({ statement: "u", values: ["hunter2-u"] }),
        serialize.execute({}),
        serialize.sync(),
      );
      expect(since(from).map((e) => e.text)).toEqual([expect.stringMatching(/-- parameters: \*\*\*$/)]);
      expect(JSON.stringify(since(from))).not.toContain("hunter2");
    });
    await server.sql("DELETE FROM w", "app");
  });
});
