/**
 * The catalog cache that resolves result columns (table OID + column number) to table columns for
 * masking, against a real PostgreSQL: lookups, tables the catalog does not know, renames seen after
 * the TTL, shared concurrent lookups, and failures (which the session turns into closing itself).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { CatalogCache } from "./catalog.js";
import { connectTarget, TargetError } from "./target.js";

let server: TestPostgres;
let usersOid: number;
let ordersOid: number;

beforeAll(async () => {
  server = await startPostgres();
  await server.createDatabase("cat");
  await server.sql(
    `CREATE SCHEMA "My Schema"; CREATE TABLE users (id int, email text, dropped int, "Note" text);
     ALTER TABLE users DROP COLUMN dropped; CREATE TABLE "My Schema".orders (id int, card text);`,
    "cat",
  );
  const oids = await server.sql(
    `SELECT 'users'::regclass::oid::int || ',' || '"My Schema".orders'::regclass::oid::int`,
    "cat",
  );
  [usersOid, ordersOid] = oids.trim().split(",").map(Number) as [number, number];
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

const open = (database: string) =>
  connectTarget({
    target: {
      host: "127.0.0.1",
      port: server.port,
      user: "postgres",
      sslmode: "disable",
      connectTimeoutMs: 5000,
      pooler: "none",
    },
    database,
    parameters: {},
  });

describe("catalog cache", () => {
  it("resolves columns by table OID and number, skipping dropped columns, quoting kept", async () => {
    const catalog = new CatalogCache({ open });
    try {
      expect(catalog.missing("cat", [usersOid, 0, ordersOid, usersOid]).sort()).toEqual([usersOid, ordersOid].sort());
      await catalog.resolve("cat", [usersOid, ordersOid]);
      expect(catalog.missing("cat", [usersOid, ordersOid])).toEqual([]);
      expect(catalog.lookup("cat", usersOid, 2)).toEqual({ schema: "public", table: "users", column: "email" });
      expect(catalog.lookup("cat", usersOid, 3)).toBeUndefined(); // dropped
      expect(catalog.lookup("cat", usersOid, 4)).toEqual({ schema: "public", table: "users", column: "Note" });
      expect(catalog.lookup("cat", ordersOid, 2)).toEqual({ schema: "My Schema", table: "orders", column: "card" });
      // OIDs are per database.
      expect(catalog.lookup("postgres", usersOid, 2)).toBeUndefined();
      expect(catalog.missing("postgres", [usersOid])).toEqual([usersOid]);
    } finally {
      catalog.close();
    }
  });

  it("remembers OIDs the catalog does not know, and looks tables up again after the TTL", async () => {
    let now = 1_000_000;
    let opened = 0;
    const catalog = new CatalogCache({ open: (db) => (opened++, open(db)), ttlMs: 1000, now: () => now });
    try {
      await catalog.resolve("cat", [4_000_000_000]);
      expect(catalog.missing("cat", [4_000_000_000])).toEqual([]);
      expect(catalog.lookup("cat", 4_000_000_000, 1)).toBeUndefined();
      await catalog.resolve("cat", [usersOid]);
      await server.sql("ALTER TABLE users RENAME COLUMN email TO mail", "cat");
      expect(catalog.lookup("cat", usersOid, 2)?.column).toBe("email"); // until the TTL
      now += 1001;
      expect(catalog.missing("cat", [usersOid])).toEqual([usersOid]);
      await catalog.resolve("cat", [usersOid]);
      expect(catalog.lookup("cat", usersOid, 2)?.column).toBe("mail");
      expect(opened).toBe(1); // one connection for all of it
      await server.sql("ALTER TABLE users RENAME COLUMN mail TO email", "cat");
      // Concurrent asks for the same tables share one query.
      now += 1001;
      await Promise.all([catalog.resolve("cat", [usersOid]), catalog.resolve("cat", [usersOid])]);
      expect(catalog.lookup("cat", usersOid, 2)?.column).toBe("email");
    } finally {
      catalog.close();
    }
  });

  it("fails a lookup it cannot make, and recovers with a new connection", async () => {
    let fail = true;
    const catalog = new CatalogCache({
      open: (db) => (fail ? Promise.reject(new TargetError("cannot reach the target")) : open(db)),
    });
    try {
      await expect(catalog.resolve("cat", [usersOid])).rejects.toThrow(/cannot reach the target/);
      fail = false;
      await catalog.resolve("cat", [usersOid]);
      expect(catalog.lookup("cat", usersOid, 1)?.column).toBe("id");
      // The connection dies under it: the next lookup opens another.
      await server.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'cat' AND pid <> pg_backend_pid()",
        "cat",
      );
      await new Promise((r) => setTimeout(r, 100));
      await catalog.resolve("cat", [ordersOid]);
      expect(catalog.lookup("cat", ordersOid, 2)?.column).toBe("card");
    } finally {
      catalog.close();
    }
    await expect(catalog.resolve("cat", [usersOid])).rejects.toThrow(/stopping/);
  });

  it("reads which functions PostgreSQL may call unseen: attribute notation, overloads of built-ins, views and policies", async () => {
    await server.sql(
      `CREATE TABLE visits (id int); CREATE TABLE log (n int);
       CREATE FUNCTION touch(visits) RETURNS int LANGUAGE sql AS 'INSERT INTO log VALUES (1) RETURNING 1';
       CREATE FUNCTION log_msg() RETURNS int LANGUAGE sql AS 'INSERT INTO log VALUES (2) RETURNING 1';
       CREATE FUNCTION pure(int, extra int DEFAULT 0) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
       CREATE FUNCTION two(int, int) RETURNS int LANGUAGE sql AS 'SELECT $1';
       CREATE FUNCTION "My Schema".initcap(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
       CREATE PROCEDURE proc(int) LANGUAGE sql AS 'SELECT 1';
       CREATE VIEW calls_log AS SELECT id, log_msg() FROM visits;
       CREATE VIEW over_it AS SELECT * FROM calls_log;
       CREATE VIEW calls_pure AS SELECT pure(id) FROM visits;
       CREATE TABLE guarded (id int); ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
       CREATE POLICY p ON guarded USING (log_msg() = 1);
       CREATE FUNCTION wrap(int) RETURNS int LANGUAGE sql STABLE AS 'SELECT $1';
       CREATE VIEW calls_stable AS SELECT wrap(id) FROM visits;
       CREATE FUNCTION bump(int, int) RETURNS int LANGUAGE sql AS 'SELECT $1';
       CREATE OPERATOR public.#%# (leftarg = int, rightarg = int, function = bump);
       CREATE OPERATOR public.|| (leftarg = int, rightarg = int, function = bump);
       CREATE VIEW calls_op AS SELECT id #%# id FROM visits;
       CREATE AGGREGATE agg(int) (sfunc = bump, stype = int, initcond = '0');
       CREATE VIEW calls_agg AS SELECT agg(id) FROM visits;
       CREATE TABLE guarded_by_view (id int); ALTER TABLE guarded_by_view ENABLE ROW LEVEL SECURITY;
       CREATE POLICY p ON guarded_by_view USING (EXISTS (SELECT FROM calls_stable));
       CREATE VIEW plain AS SELECT id, lower('x') FROM visits;
       CREATE EXTENSION citext; CREATE EXTENSION dblink;
       CREATE VIEW v_notify AS SELECT pg_notify('c', 'x') IS NULL AS n, now() AS t, upper('a') AS u;
       CREATE VIEW over_notify AS SELECT * FROM v_notify;
       CREATE VIEW v_activity AS SELECT pid FROM pg_stat_activity;
       CREATE VIEW v_dblink AS SELECT dblink_exec('dbname=cat', 'SELECT 1') AS r;
       CREATE TABLE guarded_lock (id int); ALTER TABLE guarded_lock ENABLE ROW LEVEL SECURITY;
       CREATE POLICY p ON guarded_lock USING (pg_try_advisory_lock(id));
       CREATE DOMAIN d_notify AS int CHECK (pg_notify('c', VALUE::text) IS NULL OR true);
       CREATE DOMAIN d_over AS d_notify;
       CREATE DOMAIN d_own AS int CHECK (pure(VALUE) > 0);
       CREATE DOMAIN d_plain AS text CHECK (VALUE ~ '^a');
       CREATE DOMAIN d_op AS int CHECK (VALUE #%# 1 > 0);
       CREATE TYPE stamp AS (v text);
       CREATE FUNCTION to_stamp(text) RETURNS stamp LANGUAGE sql AS 'SELECT ROW($1)::stamp';
       CREATE CAST (text AS stamp) WITH FUNCTION to_stamp(text);
       CREATE VIEW v_dom AS SELECT id::d_own AS id FROM visits;
       CREATE VIEW over_dom AS SELECT * FROM v_dom;
       CREATE TYPE comp AS (a d_own);
       CREATE DOMAIN d_comp AS comp;
       CREATE TABLE row_dom (a d_notify);
       CREATE TYPE r_dom AS RANGE (subtype = d_own);
       CREATE DOMAIN d_inner AS int CHECK ((VALUE)::d_own IS NOT NULL);
       CREATE VIEW v_row AS SELECT NULL::row_dom AS r;
       CREATE MATERIALIZED VIEW mv AS SELECT pg_notify('c', 'x') IS NULL AS n, log_msg() AS l;
       CREATE TABLE ruled (id int); CREATE RULE r AS ON INSERT TO ruled DO ALSO SELECT log_msg();
       CREATE TABLE guarded_insert (id int); ALTER TABLE guarded_insert ENABLE ROW LEVEL SECURITY;
       CREATE POLICY p ON guarded_insert FOR INSERT WITH CHECK (log_msg() = 1);
       CREATE VIEW v_xml AS SELECT table_to_xml('visits', true, false, '') AS x;`,
      "cat",
    );
    let now = 1_000_000;
    const catalog = new CatalogCache({ open, ttlMs: 1000, now: () => now });
    try {
      expect(catalog.hiddenCalls("cat")).toBeUndefined(); // not read yet: the session is not started
      const calls = await catalog.loadHiddenCalls("cat");
      expect(catalog.hiddenCalls("cat")).toBe(calls);
      // One-argument functions: the database's own (procedures and two-argument ones not), and an
      // extension's unless a built-in has its name (dblink_exec(text) yes; citext's max(citext) no).
      for (const name of ["initcap", "pure", "touch", "wrap", "agg", "dblink_exec"])
        expect(calls.rowFunctions.has(name), name).toBe(true);
      for (const name of ["two", "proc", "bump", "max", "lower"])
        expect(calls.rowFunctions.has(name), name).toBe(false);
      expect([...calls.shadowing]).toEqual(["initcap"]);
      expect([...calls.operators]).toEqual(["||"]);
      // Views and policied tables calling the database's own functions, whatever their volatility,
      // through operators, aggregates, other views and a policy's subquery (review 60).
      expect([...calls.relations].sort()).toEqual([
        "calls_agg",
        "calls_log",
        "calls_op",
        "calls_pure",
        "calls_stable",
        "guarded",
        "guarded_by_view",
        "over_dom",
        "over_it",
        "v_dom",
      ]);
      // ... and (review 64) views casting to a domain whose CHECK calls one, directly or through a
      // view; not a materialized view (reading it runs nothing), an ON INSERT rule, an INSERT policy.
      for (const name of ["v_dom", "over_dom"]) expect(calls.relations.has(name), name).toBe(true);
      for (const name of ["mv", "ruled", "guarded_insert"]) expect(calls.relations.has(name), name).toBe(false);
      // Views and policies calling built-ins or extension functions that are not IMMUTABLE (review
      // 62; STABLE ones too since review 64: table_to_xml, pg_stat_get_activity), through other
      // views and system views, and the types they use; the agent decides which of them matter.
      const relationCalls = Object.fromEntries([...calls.relationCalls].map(([k, v]) => [k, [...v].sort()]));
      expect(relationCalls).toEqual({
        v_notify: ["now", "pg_notify"],
        over_notify: ["now", "pg_notify"],
        v_activity: ["pg_stat_get_activity"],
        v_dblink: ["dblink_exec"],
        guarded_lock: ["pg_try_advisory_lock"],
        v_row: ["pg_notify"],
        v_xml: ["table_to_xml"],
      });
      // Casts: domains' CHECKs (VOLATILE built-ins, the database's own functions whatever their
      // volatility), through base domains, and user cast functions; not a plain CHECK.
      // (Review 64: and every type whose input passes through such a domain: arrays, composites, a
      // table's row, domains over composites, ranges and multiranges, a domain whose CHECK casts.)
      const typeCalls = Object.fromEntries([...calls.typeCalls].map(([k, v]) => [k, v]));
      const own = [{ name: "pure", own: true }];
      const notify = [{ name: "pg_notify", own: false }];
      expect(typeCalls).toMatchObject({
        // A view's row type too (`'(1)'::v_dom`).
        v_dom: own,
        over_dom: own,
        v_row: notify,
        d_notify: notify,
        _d_notify: notify,
        d_over: notify,
        _d_over: notify,
        row_dom: notify,
        _row_dom: notify,
        d_own: own,
        _d_own: own,
        comp: own,
        _comp: own,
        d_comp: own,
        _d_comp: own,
        r_dom: own,
        _r_dom: own,
        r_dom_multirange: own,
        _r_dom_multirange: own,
        d_inner: own,
        _d_inner: own,
        d_op: [{ name: "bump", own: true }],
        _d_op: [{ name: "bump", own: true }],
        stamp: [{ name: "to_stamp", own: true }],
      });
      // Not a domain whose CHECK calls only immutable built-ins, nor types holding nothing checked.
      for (const name of ["d_plain", "_d_plain", "visits", "log"]) expect(typeCalls[name], name).toBeUndefined();
      // A function created since counts once the answer is older than the TTL (read again in the background).
      await server.sql("CREATE FUNCTION stamp(visits) RETURNS int LANGUAGE sql AS 'SELECT 1'", "cat");
      now += 1001;
      expect(catalog.hiddenCalls("cat")).toBe(calls);
      await waitFor(() => catalog.hiddenCalls("cat")?.rowFunctions.has("stamp") === true);
    } finally {
      catalog.close();
    }
  });
});
