/**
 * What the audit trail says a statement did, against a real PostgreSQL (review 49): rows a failing
 * statement returned first, portals closed while suspended, implicit transactions an error rolled
 * back, the class of EXECUTE and FETCH, parameters of long texts, of set_config and of clients in
 * other encodings.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serialize } from "@moat/pg-wire";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";
import { startHarness, type Harness } from "../test-support/pg.js";
import {
  errors,
  firstValues,
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
  // Everything but DDL: a DROP is the agent's own refusal.
  const actions = ["db:write", "db:admin", "db:function", "db:dynamic", "db:copy-in", "db:copy-out"];
  h = await startHarness({ pg: server, policies: [readPolicy(actions)] });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await server?.stop();
});

const parse = (text: string, name = "") => serialize.parse({ name, text });

/** The db.query events recorded from `from` on: text, message, rows, class. */
const since = (from: number) => queryEventsSince(h, from);

const session = <T>(body: (c: Raw) => Promise<T>): Promise<T> => withRaw(h, body);

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
      await c.exchange(
        parse("INSERT INTO w VALUES (3)"),
        serialize.bind({}),
        serialize.execute({}),
        parse("SELECT 1/0"),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      );
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
      const rollbacks = (from: number) => since(from).filter((e) => e.text.startsWith("-- rollback"));
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
      await c.exchange(
        parse("INSERT INTO w VALUES (2)"),
        serialize.bind({}),
        serialize.execute({}),
        parse("CALL pc()"),
        serialize.bind({}),
        serialize.execute({}),
        parse("SELECT 1/0"),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      );
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
        parse("SELECT 1/0"),
        serialize.bind({}),
        serialize.execute({}),
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
