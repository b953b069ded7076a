/**
 * What the audit trail says a statement did, against a real PostgreSQL (reviews 49-53): rows a
 * failing statement returned first, portals closed while suspended, implicit transactions an error
 * rolled back, the class of EXECUTE and FETCH, parameters of long texts, of set_config and of
 * clients in other encodings; what commits on its own, what a rollback undoes or leaves, a session
 * ending with messages in flight, ordinary traffic with no rollback event.
 */
import { chmodSync } from "node:fs";
import { dirname, join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { serialize } from "@moat/pg-wire";
import { startPostgres, tempDir, waitFor, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";
import { pgbench, pgbenchInit, psql, startHarness, type Harness } from "../test-support/pg.js";
import {
  errors,
  firstValues,
  openRaw,
  queryEvents,
  queryEventsSince,
  types,
  withRaw,
  type Raw,
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
  // Everything, but DDL on t: a DROP of it is the agent's own refusal.
  const actions = ["db:write", "db:ddl", "db:admin", "db:function", "db:dynamic", "db:copy-in", "db:copy-out"];
  const keepT = {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "keep-t" },
    spec: {
      subjects: { groups: ["eng"] },
      resources: { names: ["db"] },
      rules: [{ name: "keep-t", effect: "deny", actions: ["db:ddl"], tables: ["public.t"] }],
    },
  };
  h = await startHarness({ pg: server, policies: [readPolicy(actions), keepT] });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await server?.stop();
});

const parse = (text: string, name = "") => serialize.parse({ name, text });
/** Parse, Bind and Execute of `text` (unnamed). */
const ext = (text: string) => [parse(text), serialize.bind({}), serialize.execute({})];

/** The db.query events recorded from `from` on: text, message, rows, class. */
const since = (from: number) => queryEventsSince(h, from);
const rollbacks = (from: number) => since(from).filter((e) => e.text.startsWith("-- rollback"));

const session = <T>(body: (c: Raw) => Promise<T>): Promise<T> => withRaw(h, body);

/**
 * Opens a session, sends each of `setup` awaiting its answer, then sends `inFlight` and closes the
 * connection before it is answered; resolves once the agent has recorded the session's end, with the
 * index of the first event after `setup`.
 */
async function closeWithInFlight(setup: Buffer[][], inFlight: Buffer[]): Promise<number> {
  const ends = () => h.events().filter((e) => e.type === "session.end").length;
  const ended = ends();
  const c = await openRaw(h);
  for (const messages of setup) await c.exchange(...messages);
  const from = queryEvents(h).length;
  c.socket.write(Buffer.concat(inFlight));
  await new Promise((r) => setTimeout(r, 50));
  c.socket.destroy();
  await waitFor(() => ends() > ended);
  return from;
}

describe("the audit trail of what statements did", () => {
  it("counts the rows a statement returned before it failed", async () => {
    await session(async (c) => {
      let from = queryEvents(h).length;
      const ms = await c.exchange(serialize.query("SELECT 10 / (5 - id) FROM t"));
      expect(firstValues(ms)).toHaveLength(4);
      expect(errors(ms)).toMatchObject([{ code: "22012" }]);
      expect(since(from)).toMatchObject([
        { rows: 4, message: expect.stringMatching(/^failed on the target: division/) },
      ]);
      // Extended: two rows, suspended, then four more before the error.
      from = queryEvents(h).length;
      const ext = await c.exchange(
        parse("SELECT 10 / (7 - id) FROM t"),
        serialize.bind({}),
        serialize.execute({ rows: 2 }),
        serialize.execute({ rows: 10 }),
        serialize.sync(),
      );
      expect(firstValues(ext)).toHaveLength(6);
      expect(since(from)).toMatchObject([{ rows: 6, message: expect.stringMatching(/^failed on the target/) }]);
    });
  });

  it("says when a portal closed suspended: its rows are those returned, and a write ran whole", async () => {
    await server.sql("TRUNCATE w", "app");
    await session(async (c) => {
      const from = queryEvents(h).length;
      for (const text of ["INSERT INTO w SELECT id FROM t RETURNING id", "SELECT id FROM t"]) {
        const ms = await c.exchange(parse(text), serialize.bind({}), serialize.execute({ rows: 2 }), serialize.sync());
        expect(types(ms)).toBe("12DDsZ");
      }
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^10/);
      expect(since(from)).toEqual([
        {
          text: "INSERT INTO w SELECT id FROM t RETURNING id",
          rows: 2,
          statementClass: "write",
          message:
            "closed while suspended: rows counts the rows returned to the client; the statement itself ran to completion at its first Execute",
        },
        {
          text: "SELECT id FROM t",
          rows: 2,
          statementClass: "read",
          message: "closed while suspended: rows counts the rows returned to the client",
        },
      ]);
    });
  });

  it("records that an implicit transaction an error ended undid the changes before the error", async () => {
    await server.sql("TRUNCATE w", "app");
    await session(async (c) => {
      // A simple query: a statement's own error.
      let from = queryEvents(h).length;
      await c.exchange(serialize.query("INSERT INTO w VALUES (1); INSERT INTO w VALUES (2); SELECT 1/0"));
      expect(since(from).map((e) => e.text)).toEqual([
        "INSERT INTO w VALUES (1)",
        "INSERT INTO w VALUES (2)",
        "SELECT 1/0",
        "-- rollback at the end of the query (implicit transaction)",
      ]);
      expect(since(from)[3]?.message).toBe(
        "an error ended the implicit transaction: what the 2 statements before it wrote were undone",
      );
      // A pipeline up to a Sync.
      from = queryEvents(h).length;
      await c.exchange(...ext("INSERT INTO w VALUES (3)"), ...ext("SELECT 1/0"), serialize.sync());
      expect(since(from).map((e) => e.text)).toEqual([
        "INSERT INTO w VALUES (3)",
        "SELECT 1/0",
        "-- rollback at Sync (implicit transaction)",
      ]);
      expect(since(from)[2]?.message).toMatch(/what the statement before it wrote was undone$/);
      // The agent's refusal of a later statement: its substitute fails on the target.
      from = queryEvents(h).length;
      const ms = await c.exchange(serialize.query("INSERT INTO w VALUES (4); DROP TABLE t"));
      expect(errors(ms)).toMatchObject([{ code: "42501" }]);
      // (The refusal is recorded when decided, before the statement ahead of it completes.)
      expect(since(from).map((e) => e.text)).toEqual([
        "DROP TABLE t",
        "INSERT INTO w VALUES (4)",
        "-- rollback at the end of the query (implicit transaction)",
      ]);
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^0/);
      // Nothing undone, nothing said: a failing statement alone, reads before an error, a block the
      // client rolls back itself, a transaction that committed before the error.
      from = queryEvents(h).length;
      await c.exchange(serialize.query("SELECT 1/0"));
      await c.exchange(serialize.query("SELECT 1; SELECT 1/0"));
      await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (5); SELECT 1/0"));
      await c.exchange(serialize.query("ROLLBACK"));
      await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (6); COMMIT; SELECT 1/0"));
      expect(since(from).filter((e) => e.text.startsWith("-- rollback"))).toEqual([]);
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^1/);
    });
  });

  it("records EXECUTE with the class of the statement it runs and FETCH of a cursor as a read", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      for (const q of [
        "PREPARE ins(int) AS INSERT INTO w VALUES ($1)",
        "EXECUTE ins(42)",
        "BEGIN",
        "DECLARE c1 CURSOR FOR SELECT id FROM t",
        "FETCH 2 FROM c1",
        "COMMIT",
      ])
        await c.exchange(serialize.query(q));
      const classes = Object.fromEntries(since(from).map((e) => [e.text, e.statementClass]));
      expect(classes["EXECUTE ins(42)"]).toBe("write");
      expect(classes["FETCH 2 FROM c1"]).toBe("read");
    });
  });

  it("keeps a long statement's parameters whole, cutting its text instead", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      const text = `SELECT $1::text /* ${"x".repeat(70 * 1024)} */`;
      const ms = await c.exchange(
        parse(text),
        serialize.bind({ values: ["kept"] }),
        serialize.execute({}),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12DCZ");
      const [event] = since(from);
      expect(event?.text).toMatch(/^SELECT \$1::text \/\* x+… -- parameters: \$1 = 'kept'$/);
      expect(event?.text.length).toBeLessThanOrEqual(64 * 1024);
    });
  });

  it("never keeps the parameters of a statement setting configuration values, whatever their format", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      // Binary, of no declared type: rendered in hex, which no word list reads.
      const values = [Buffer.from("app.password"), Buffer.from("hunter2")];
      const ms = await c.exchange(
        parse("SELECT set_config($1, $2, false)"),
        serialize.bind({ values }),
        serialize.execute({}),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12DCZ");
      const [event] = since(from);
      expect(event?.text).toBe("SELECT set_config($1, $2, false) -- parameters: ***");
      const recorded = JSON.stringify(h.events().slice(-5), (_, v: unknown) => (typeof v === "bigint" ? String(v) : v));
      expect(recorded).toContain("set_config");
      expect(recorded).not.toMatch(/hunter2|68756e74657232/);
    });
  });

  it("shows text parameters past ASCII in hex when the client encoding is not UTF-8", async () => {
    await session(async (c) => {
      await c.exchange(serialize.query("SET client_encoding = 'LATIN1'"));
      const from = queryEvents(h).length;
      for (const word of ["caf\xe9", "caf\xe8"]) {
        // A text-format parameter in LATIN1 (pg-protocol's serializer would send UTF-8).
        const bind = serialize.bind({ values: ["?"] });
        const at = bind.lastIndexOf(Buffer.from("?"));
        const latin1 = Buffer.concat([
          bind.subarray(0, at - 4),
          Buffer.from([0, 0, 0, 4]),
          Buffer.from(word, "latin1"),
          bind.subarray(at + 1),
        ]);
        latin1.writeInt32BE(latin1.length - 1, 1);
        const ms = await c.exchange(parse("SELECT $1::text"), latin1, serialize.execute({}), serialize.sync());
        expect(types(ms)).toBe("12DCZ");
      }
      expect(since(from).map((e) => e.text)).toEqual([
        "SELECT $1::text -- parameters: $1 = '\\x636166e9'",
        "SELECT $1::text -- parameters: $1 = '\\x636166e8'",
      ]);
    });
  });
  it("counts for the rollback event only what a rollback undoes, where the transaction really ended (review 51)", async () => {
    await server.sql(
      `TRUNCATE w; CREATE SEQUENCE IF NOT EXISTS s;
       CREATE OR REPLACE PROCEDURE pc() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$`,
      "app",
    );
    await session(async (c) => {
      // A failing transaction command in an implicit transaction undoes what came before it.
      let from = queryEvents(h).length;
      await c.exchange(serialize.query("INSERT INTO w VALUES (1); SAVEPOINT a; RELEASE nosuch"));
      expect(rollbacks(from)).toMatchObject([
        { message: expect.stringMatching(/what the statement before it wrote was undone/) },
      ]);
      // A sequence's value, an advisory lock, a prepared statement stay: nothing counted.
      from = queryEvents(h).length;
      await c.exchange(
        serialize.query(
          "SELECT setval('s', 42); SELECT pg_advisory_lock(7); PREPARE pi AS INSERT INTO w VALUES (9); SELECT 1/0",
        ),
      );
      expect(rollbacks(from)).toEqual([]);
      await c.exchange(serialize.query("SELECT pg_advisory_unlock(7); DEALLOCATE pi"));
      // A procedure that commits: what came before it stays.
      from = queryEvents(h).length;
      await c.exchange(...ext("INSERT INTO w VALUES (2)"), ...ext("CALL pc()"), ...ext("SELECT 1/0"), serialize.sync());
      expect(rollbacks(from)).toEqual([]);
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^1/);
      // A write with RETURNING read with a row limit ran whole; an error after it in the same Sync
      // undoes it: the rollback event comes after the portal's (recorded when the next Bind replaced
      // the unnamed portal).
      from = queryEvents(h).length;
      await c.exchange(
        parse("INSERT INTO w SELECT id FROM t RETURNING id"),
        serialize.bind({}),
        serialize.execute({ rows: 1 }),
        ...ext("SELECT 1/0"),
        serialize.sync(),
      );
      expect(since(from).map((e) => e.text)).toEqual([
        "INSERT INTO w SELECT id FROM t RETURNING id",
        "SELECT 1/0",
        "-- rollback at Sync (implicit transaction)",
      ]);
      expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^1/);
      // A COMMIT of a failed block says PostgreSQL rolled it back.
      from = queryEvents(h).length;
      await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (3); SELECT 1/0"));
      await c.exchange(serialize.query("COMMIT"));
      expect(since(from).find((e) => e.text === "COMMIT")?.message).toBe(
        "the transaction block had failed: PostgreSQL rolled it back (its answer: ROLLBACK)",
      );
    });
    // A session that ends inside a transaction: the target rolls it back.
    const from = queryEvents(h).length;
    await session(async (c) => {
      await c.exchange(serialize.query("BEGIN; INSERT INTO w VALUES (4)"));
    });
    await waitFor(() => since(from).some((e) => e.text.startsWith("-- rollback")));
    expect(since(from).at(-1)).toMatchObject({
      text: "-- rollback at the end of the session (its transaction was open)",
      message: "the session ended inside a transaction: what the statement before it wrote was undone",
    });
    expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^1/);
  });

  it("audits EXECUTE and FETCH by what they may run, and EXECUTE of a prepared set_config without its arguments (review 51)", async () => {
    await server.sql(
      `CREATE OR REPLACE FUNCTION fw(i int) RETURNS int LANGUAGE sql AS $$ INSERT INTO w VALUES (i) RETURNING i $$`,
      "app",
    );
    await session(async (c) => {
      const from = queryEvents(h).length;
      for (const q of [
        "PREPARE q AS INSERT INTO w VALUES (5)",
        "PREPARE q AS SELECT 1",
        "EXECUTE q",
        "BEGIN",
        "DECLARE cw CURSOR FOR SELECT fw(id) FROM t",
        "FETCH 2 FROM cw",
        "COMMIT",
        "PREPARE sc(text, text) AS SELECT set_config($1, $2, false)",
        "EXECUTE sc('app.password', 'hunter2-k')",
      ])
        await c.exchange(serialize.query(q));
      const events = since(from);
      const classOf = (text: string) => events.find((e) => e.text === text)?.statementClass;
      expect(classOf("EXECUTE q")).toBe("write");
      expect(classOf("FETCH 2 FROM cw")).not.toBe("read");
      expect(events.map((e) => e.text)).toContain("EXECUTE sc('***', '***')");
      expect(JSON.stringify(events)).not.toContain("hunter2-k");
    });
  });

  it("keeps a statement readable when its parameters alone would fill the event", async () => {
    await session(async (c) => {
      const from = queryEvents(h).length;
      const values = Array.from({ length: 300 }, () => "v".repeat(300));
      const placeholders = values.map((_, i) => `$${i + 1}`).join(", ");
      const text = `SELECT count(*) FROM t WHERE 'x' NOT IN (${placeholders})`;
      const ms = await c.exchange(parse(text), serialize.bind({ values }), serialize.execute({}), serialize.sync());
      expect(types(ms)).toBe("12DCZ");
      const [event] = since(from);
      expect(event?.text.startsWith("SELECT count(*) FROM t WHERE 'x' NOT IN ($1, $2")).toBe(true);
      expect(event?.text.length).toBeLessThanOrEqual(64 * 1024 + 32);
    });
  });
});

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
    const from = await closeWithInFlight(
      [[serialize.query("BEGIN")], [...ext("INSERT INTO w VALUES (7)"), serialize.sync()]],
      [...ext("SELECT pg_sleep(0.3)"), serialize.sync()],
    );
    expect(await server.sql("SELECT count(*) FROM w", "app")).toMatch(/^0/);
    expect(rollbacks(from)).toHaveLength(1);
  });

  it("records no rollback of a session closed with a COMMIT in flight (it committed)", async () => {
    const from = await closeWithInFlight(
      [[serialize.query("BEGIN; INSERT INTO w VALUES (8)")]],
      [...ext("SELECT pg_sleep(0.3)"), ...ext("COMMIT")],
    );
    // The target runs what the agent forwarded after the session's end is recorded: the row is kept.
    await waitFor(async () => /^1/.test(await server.sql("SELECT count(*) FROM w WHERE id = 8", "app")));
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
    const init = await pgbenchInit(server.port);
    expect(init.code).toBe(0);
    const from = queryEvents(h).length;
    for (const mode of ["simple", "extended", "prepared"]) {
      const r = await pgbench(h, await h.token(), ["-n", "-M", mode, "-c", "2", "-t", "30"]);
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
    const psqlRun = await psql(h, await h.token(), "", {
      extra: [
        "-v",
        "ON_ERROR_STOP=1",
        "-1",
        "-c",
        "INSERT INTO w VALUES (1)",
        "-c",
        "UPDATE w SET id = 2 WHERE id = 1",
      ],
    });
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
    const from = await closeWithInFlight(
      [[serialize.query("BEGIN; INSERT INTO w VALUES (7)")]],
      [serialize.query("SELECT pg_sleep(0.3)")],
    );
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
