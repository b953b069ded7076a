/**
 * The Postgres enforcer against a real PostgreSQL server with real clients (psql, pgbench,
 * node-postgres, psycopg2): connection set-up, token authentication, statement decisions in the
 * simple and extended protocols, transactions, masking, cancel, COPY, audit events.
 */
import { spawn } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPostgres, tempDir, waitFor, type TestPostgres } from "@moat/testkit";
import { HIDDEN_CASTS_SQL, pgbench, pgbenchInit, psql, run, startHarness, type Harness } from "../test-support/pg.js";

const POLICIES = [
  {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "eng-read" },
    spec: {
      subjects: { groups: ["eng"] },
      resources: { names: ["db"] },
      rules: [
        { name: "read", effect: "allow", actions: ["connect", "db:read", "db:copy-out"] },
        {
          name: "no-secrets",
          effect: "deny",
          actions: ["db:*"],
          tables: ["public.secrets"],
          message: "secrets are off limits",
        },
        { name: "writes-need-approval", effect: "review", actions: ["db:write"], tables: ["public.orders"] },
      ],
      masking: [
        { columns: ["email"], style: "partial" },
        { detectors: ["credit-card"], style: "full" },
        { columns: ["analytics.events.kind"], style: "full" },
      ],
    },
  },
  {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "etl" },
    spec: {
      subjects: { groups: ["etl"] },
      resources: { names: ["db"] },
      rules: [
        { name: "connect", effect: "allow", actions: ["connect"] },
        { name: "export-analytics", effect: "allow", actions: ["db:copy-out"], tables: ["analytics.*"] },
      ],
    },
  },
  {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "backup" },
    spec: {
      subjects: { groups: ["backup"] },
      resources: { names: ["db"] },
      rules: [
        { name: "connect", effect: "allow", actions: ["connect"] },
        { name: "dump-public", effect: "allow", actions: ["db:read", "db:copy-out"], tables: ["public.*"] },
      ],
    },
  },
  {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "reader" },
    spec: {
      subjects: { groups: ["readers"] },
      resources: { names: ["db"] },
      rules: [
        { name: "connect", effect: "allow", actions: ["connect"] },
        { name: "read-public", effect: "allow", actions: ["db:read"], tables: ["public.*"] },
      ],
    },
  },
  {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "writer" },
    spec: {
      subjects: { groups: ["writers"] },
      resources: { names: ["db"] },
      rules: [
        { name: "connect", effect: "allow", actions: ["connect"] },
        { name: "write-public", effect: "allow", actions: ["db:read", "db:write"], tables: ["public.*"] },
      ],
    },
  },
  {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: "dba" },
    spec: {
      subjects: { groups: ["dba"] },
      resources: { names: ["db"] },
      rules: [{ name: "all", effect: "allow", actions: ["connect", "db:*"] }],
    },
  },
];

let pgServer: TestPostgres;
let h: Harness;
let alice: string;
let dba: string;
let etl: string;
let backup: string;
let reader: string;

beforeAll(async () => {
  pgServer = await startPostgres();
  await pgServer.createDatabase("app");
  const setup = await run("psql", [
    `host=127.0.0.1 port=${pgServer.port} user=postgres dbname=app`,
    "-X",
    "-q",
    "-v",
    "ON_ERROR_STOP=1",
    "-c",
    `CREATE TABLE users (id int PRIMARY KEY, email text, note text);
     INSERT INTO users SELECT i, 'user' || i || '@example.com', CASE WHEN i = 1 THEN 'card 4111 1111 1111 1111' ELSE 'ok' END FROM generate_series(1, 100) i;
     CREATE TABLE secrets (id int, v text); INSERT INTO secrets VALUES (1, 'top');
     CREATE TABLE orders (id int, amount int);
     CREATE SCHEMA analytics; CREATE TABLE analytics.events (id int, kind text);
     INSERT INTO analytics.events SELECT i, 'k' || i FROM generate_series(1, 1000) i;
     CREATE TABLE visits (id int); INSERT INTO visits VALUES (1);
     CREATE TABLE visit_log (n int);
     CREATE FUNCTION touch(visits) RETURNS int LANGUAGE plpgsql
       AS 'BEGIN INSERT INTO visit_log VALUES (1); RETURN 1; END';
     CREATE VIEW touched_visits AS SELECT id, touch(v) FROM visits v;
     CREATE FUNCTION log_visit(int) RETURNS bool LANGUAGE plpgsql
       AS 'BEGIN INSERT INTO visit_log VALUES (1); RETURN true; END';
     CREATE DOMAIN logged_int AS int CHECK (log_visit(VALUE));
     CREATE FUNCTION initcap(int) RETURNS text LANGUAGE plpgsql
       AS 'BEGIN INSERT INTO visit_log VALUES (1); RETURN 1; END';
     CREATE FUNCTION via_stable(int) RETURNS bool LANGUAGE plpgsql STABLE AS 'BEGIN RETURN log_visit($1); END';
     CREATE VIEW stable_visits AS SELECT id, via_stable(id) FROM visits;
     CREATE FUNCTION text_xor(text, text) RETURNS text LANGUAGE plpgsql
       AS 'BEGIN INSERT INTO visit_log VALUES (1); RETURN $1; END';
     CREATE OPERATOR public.# (leftarg = text, rightarg = text, function = text_xor);
     CREATE EXTENSION IF NOT EXISTS dblink;
     CREATE VIEW notifying AS SELECT id, pg_notify('visits', id::text) IS NULL AS sent FROM visits;
     CREATE DOMAIN notified_int AS int CHECK (pg_notify('visits', VALUE::text) IS NULL OR true);
     ${HIDDEN_CASTS_SQL}
     CREATE VIEW logged_view AS SELECT id::logged_int AS id FROM visits;
     CREATE TYPE logged_pair AS (a logged_int);
     CREATE VIEW activity AS SELECT pid FROM pg_stat_activity;
     CREATE MATERIALIZED VIEW notified_mv AS SELECT 1 AS one, pg_notify('visits', 'x') IS NULL AS sent;`,
  ]);
  expect(setup.stderr).toBe("");
  h = await startHarness({ pg: pgServer, policies: POLICIES });
  alice = await h.token("alice@example.com", ["eng"]);
  dba = await h.token("dba@example.com", ["dba"]);
  etl = await h.token("etl@example.com", ["etl"]);
  backup = await h.token("backup@example.com", ["backup"]);
  reader = await h.token("reader@example.com", ["readers"]);
}, 120_000);

/** POLICIES with the rules of eng-read (alice's policy) replaced by `rules(its rules)`. */
function withEngReadRules(rules: (existing: (typeof POLICIES)[number]["spec"]["rules"]) => object[]) {
  return POLICIES.map((p) =>
    p.metadata.name !== "eng-read" ? p : { ...p, spec: { ...p.spec, rules: rules(p.spec.rules) } },
  );
}

/** A node-postgres client connected through the agent as `user` with `token`. */
async function clientAs(user: string, token: string): Promise<pg.Client> {
  const c = new pg.Client({ host: "127.0.0.1", port: h.port, user, password: token, database: "app" });
  await c.connect();
  return c;
}

/** node-postgres connected through the agent as alice (extended protocol). */
const aliceClient = () => clientAs("alice@example.com", alice);

afterAll(async () => {
  await h?.close();
  await pgServer?.stop();
});

describe("connection set-up and authentication", () => {
  it("serves psql over TLS with the token as password", async () => {
    const r = await psql(h, alice, "SELECT count(*) FROM users");
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("100");
    const ssl = await psql(h, alice, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    expect(ssl.code).toBe(0);
  });

  it("refuses a bad token, another user's token and a wrong user name with the protocol's errors", async () => {
    const bad = await psql(h, "not-a-token", "SELECT 1");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/password authentication failed for user "alice@example.com"/);
    const other = await psql(h, dba, "SELECT 1");
    expect(other.stderr).toMatch(/belongs to "dba@example.com"/);
  });

  it("refuses connect when no policy allows it", async () => {
    const nobody = await h.token("mallory@example.com", ["guests"]);
    const r = await psql(h, nobody, "SELECT 1", { user: "mallory@example.com" });
    expect(r.stderr).toMatch(/no policy allows connect on db for mallory@example.com/);
  });

  it("answers GSSENCRequest with N, then serves the session (gssencmode=prefer)", async () => {
    const r = await psql(h, alice, "SELECT 1", { extra: [] });
    expect(r.stdout.trim()).toBe("1");
  });

  it("opens the target session in the client's client_encoding (pg-protocol's startup would force UTF8)", async () => {
    const r = await psql(h, alice, "SHOW client_encoding", { env: { PGCLIENTENCODING: "LATIN1" } });
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("LATIN1");
  });

  it("refuses the startup option `options` and replication connections", async () => {
    const r = await run(
      "psql",
      [
        `host=127.0.0.1 port=${h.port} user=alice@example.com dbname=app sslmode=require options='-c search_path=x'`,
        "-Atc",
        "SELECT 1",
      ],
      { PGPASSWORD: alice },
    );
    expect(r.stderr).toMatch(/'options' is not supported/);
  });
});

describe("statement decisions", () => {
  it("allows reads, denies writes with 42501 and the session stays usable", async () => {
    const r = await psql(h, alice, "", {
      extra: ["-c", "SELECT count(*) FROM users", "-c", "DELETE FROM users", "-c", "SELECT count(*) FROM users"],
    });
    expect(r.stdout.trim().split("\n")).toEqual(["100", "100"]);
    expect(r.stderr).toMatch(/ERROR: {2}no policy allows db:write on db/);
  });

  it("denies by table with the rule's message, and review says approval is required", async () => {
    const r = await psql(h, alice, "SELECT * FROM secrets");
    expect(r.stderr).toMatch(/secrets are off limits/);
    const w = await psql(h, alice, "INSERT INTO orders VALUES (1, 1)");
    expect(w.stderr).toMatch(/requires approval/);
  });

  it("runs a multi-statement query up to its denied statement, as PostgreSQL runs one up to a failing statement", async () => {
    const r = await psql(h, dba, "CREATE TABLE IF NOT EXISTS t1 (x int)", { user: "dba@example.com" });
    expect(r.code).toBe(0);
    const m = await psql(h, alice, "SELECT 1; DELETE FROM users");
    expect(m.stderr).toMatch(/db:write/);
    const count = await psql(h, alice, "SELECT count(*) FROM users");
    expect(count.stdout.trim()).toBe("100");

    // The transaction state after it is PostgreSQL's (review 42): a BEGIN before the denied statement
    // leaves a failed transaction block, a COMMIT before it has committed.
    const reader = await aliceClient();
    await expect(reader.query("BEGIN; SELECT count(*) FROM users; DELETE FROM users; SELECT 2")).rejects.toMatchObject({
      code: "42501",
    });
    await expect(reader.query("SELECT 1")).rejects.toMatchObject({ code: "25P02" });
    await reader.query("ROLLBACK");
    expect((await reader.query("SELECT 3 AS v")).rows).toEqual([{ v: 3 }]);
    await reader.end();
    const writer = await clientAs("writer@example.com", await h.token("writer@example.com", ["writers"]));
    await writer.query("BEGIN");
    await writer.query("INSERT INTO t1 VALUES (7)");
    await expect(writer.query("COMMIT; CREATE TABLE t1_nope (x int); INSERT INTO t1 VALUES (8)")).rejects.toMatchObject(
      {
        code: "42501",
      },
    );
    expect((await writer.query("SELECT array_agg(x ORDER BY x) AS xs FROM t1 WHERE x IN (7, 8)")).rows).toEqual([
      { xs: [7] },
    ]);
    await writer.end();
    // A statement before the denied one that fails on the target shows its own error.
    const again = await psql(h, alice, "SELECT 1/0; DELETE FROM users");
    expect(again.stderr).toMatch(/division by zero/);
  });

  it("inside a transaction, a denial aborts it as PostgreSQL would", async () => {
    const script = [
      "BEGIN;",
      "SELECT count(*) FROM users;",
      "DELETE FROM users;",
      "SELECT 1;",
      "ROLLBACK;",
      "SELECT 'after';",
    ].join("\n");
    const r = await psql(h, alice, "", { input: script, extra: ["-v", "ON_ERROR_STOP=0"] });
    expect(r.stdout.trim().split("\n")).toEqual(["100", "after"]);
    expect(r.stderr).toMatch(/no policy allows db:write/);
    expect(r.stderr).toMatch(/current transaction is aborted/);
  });

  it("reports syntax errors like PostgreSQL (42601, with their position) without reaching the target", async () => {
    const r = await psql(h, alice, "SELEC 1");
    expect(r.stderr).toMatch(/syntax error at or near "SELEC"/);
    // psql shows the line and a caret under the error, as it does for the server's own.
    const multi = await psql(h, alice, "", { input: "SELECT 'é';\nSELECT 2 FROM WHERE 1;\n" });
    expect(multi.stderr).toContain(
      'syntax error at or near "WHERE"\nLINE 1: SELECT 2 FROM WHERE 1;\n                      ^',
    );
    const lines = await psql(h, alice, "SELECT 1,\n  2 3abc");
    expect(lines.stderr).toContain("LINE 2:   2 3abc\n            ^");
    // A Parse (extended protocol) says where too.
    const c = await clientAs("alice@example.com", alice);
    try {
      const error = await c.query("SELECT $1::int FROM WHERE", [1]).catch((e: unknown) => e as pg.DatabaseError);
      expect(error).toMatchObject({ code: "42601", position: "21" });
      expect((await c.query("SELECT 1 AS ok")).rows).toEqual([{ ok: 1 }]);
    } finally {
      await c.end();
    }
  });

  it("denies the read-only escapes", async () => {
    for (const sql of [
      "WITH d AS (DELETE FROM users RETURNING *) SELECT count(*) FROM d",
      "SELECT * INTO users_copy FROM users",
      "EXPLAIN ANALYZE DELETE FROM users",
      "COPY users TO PROGRAM 'cat > /tmp/x'",
      "DO $$ BEGIN DELETE FROM users; END $$",
      "SELECT set_config('role', 'postgres', false)",
      "SET ROLE postgres",
      "SELECT pg_terminate_backend(1)",
      "PREPARE p AS DELETE FROM users",
      // Built-ins in attribute notation: `(x).f` runs f(x) (review 13: these read server files).
      "SELECT ('PG_VERSION'::text).pg_read_file",
      "SELECT (x).pg_ls_dir FROM (SELECT '.'::text AS x) s",
      "SELECT t.pg_read_file FROM unnest(ARRAY['PG_VERSION'::text]) t",
    ]) {
      const r = await psql(h, alice, sql);
      expect(r.stderr, sql).toMatch(/ERROR: /);
      expect(r.stderr, sql).not.toMatch(/syntax error/);
    }
    const count = await psql(h, alice, "SELECT count(*) FROM users");
    expect(count.stdout.trim()).toBe("100");
  });

  it("qualifies unqualified names with the search path, also when a statement of the same message changes it", async () => {
    const setup = await psql(
      h,
      dba,
      "CREATE SCHEMA IF NOT EXISTS hidden; CREATE TABLE IF NOT EXISTS hidden.secrets (v text)",
      {
        user: "dba@example.com",
      },
    );
    expect(setup.stderr).toBe("");
    const r = await psql(h, alice, "SET search_path = hidden, public; SELECT * FROM secrets");
    expect(r.stderr).toMatch(/db:read on db \(table hidden\.secrets\)|secrets are off limits/);
    const two = await psql(h, alice, "", { extra: ["-c", "SET search_path = hidden", "-c", "SELECT * FROM secrets"] });
    expect(two.stderr).toMatch(/ERROR/);
  });

  it("reuses a statement shape's verdict only while the bundle, the search path and the time leave it unchanged", async () => {
    // The agent keeps each shape's verdict per session (decide): each of these changes must reach it.
    const withRule = (rule: object, conditions?: object) =>
      withEngReadRules((rules) => [
        { name: "connect", effect: "allow", actions: ["connect"] },
        rule,
        ...rules.filter((r) => r.name !== "read" || conditions === undefined),
        ...(conditions ? [{ ...rules[0], conditions }] : []),
      ]);
    const c = await aliceClient();
    const outcome = (sql: string) =>
      c.query(sql).then(
        () => "allowed",
        (e: { code?: string }) => e.code ?? "error",
      );
    try {
      expect(await outcome("SELECT count(*) FROM users WHERE id = 1")).toBe("allowed");
      // A new bundle: the same shape is decided again.
      h.setPolicies(withRule({ name: "no-users", effect: "deny", actions: ["db:*"], tables: ["public.users"] }));
      expect(await outcome("SELECT count(*) FROM users WHERE id = 2")).toBe("42501");
      // A search path that widens what an unqualified name may be.
      h.setPolicies(withRule({ name: "no-hidden", effect: "deny", actions: ["db:*"], tables: ["hidden.*"] }));
      expect(await outcome("SELECT count(*) FROM users WHERE id = 3")).toBe("allowed");
      expect(await outcome("SET search_path = hidden, public")).toBe("allowed");
      expect(await outcome("SELECT count(*) FROM users WHERE id = 4")).toBe("42501");
    } finally {
      await c.end();
    }
    // Time conditions: the rule that allows reading expires during the session.
    const expiresAt = new Date(Date.now() + 1500).toISOString();
    h.setPolicies(withRule({ name: "nothing", effect: "deny", actions: ["db:admin"] }, { expiresAt }));
    const d = await aliceClient();
    try {
      const first = await d.query("SELECT count(*) FROM users WHERE id = 5");
      expect(first.rows).toEqual([{ count: "1" }]);
      await new Promise((r) => setTimeout(r, Date.parse(expiresAt) - Date.now() + 100));
      const late = await d.query("SELECT count(*) FROM users WHERE id = 6").then(
        () => "allowed",
        (e: { code?: string }) => e.code,
      );
      expect(late).toBe("42501");
    } finally {
      h.setPolicies(POLICIES);
      await d.end();
    }
  });

  it("needs db:function under a search path that puts a schema before pg_catalog (its functions replace built-ins)", async () => {
    await pgServer.createDatabase("shadow");
    const setup = await run("psql", [
      `host=127.0.0.1 port=${pgServer.port} user=postgres dbname=shadow`,
      "-X",
      "-q",
      "-v",
      "ON_ERROR_STOP=1",
      "-c",
      `CREATE TABLE calls (n int);
       CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'INSERT INTO calls VALUES (1) RETURNING ''shadowed''';
       ALTER DATABASE shadow SET search_path = public, pg_catalog;`,
    ]);
    expect(setup.stderr).toBe("");
    // Review 13: `SET search_path = public, pg_catalog` was an ordinary setting, and `lower('x')`
    // then ran public.lower (here: an INSERT) under db:read.
    const set = await psql(h, reader, "SET search_path = public, pg_catalog", { user: "reader@example.com" });
    expect(set.stderr).toMatch(/ERROR: .*db:function/);
    const setConfig = await psql(h, reader, "SELECT set_config('search_path', 'public, pg_catalog', false)", {
      user: "reader@example.com",
    });
    expect(setConfig.stderr).toMatch(/ERROR: .*db:function/);
    const fine = await psql(h, reader, "SET search_path = pg_catalog, public; SELECT lower('X')", {
      user: "reader@example.com",
    });
    expect(fine.stdout.trim()).toBe("x");
    // A database (or role) whose default path does so: every statement needs db:function.
    const shadowed = await psql(h, reader, "SELECT lower('X')", { user: "reader@example.com", db: "shadow" });
    expect(shadowed.stderr).toMatch(/db:function .*search_path puts a schema before pg_catalog/);
    const asDba = await psql(h, dba, "SELECT lower('X')", { user: "dba@example.com", db: "shadow" });
    expect(asDba.stdout.trim()).toBe("shadowed");
    const calls = await run("psql", [
      `host=127.0.0.1 port=${pgServer.port} user=postgres dbname=shadow`,
      "-X",
      "-At",
      "-c",
      "SELECT count(*) FROM calls",
    ]);
    expect(calls.stdout.trim()).toBe("1"); // the DBA's call only
  });

  it("decides EXECUTE on every statement a name may hold: a second PREPARE of a taken name fails on the target", async () => {
    const c = await aliceClient();
    const denyVisits = withEngReadRules((rules) => [
      { name: "no-visits", effect: "deny", actions: ["db:*"], tables: ["public.visits"] },
      ...rules,
    ]);
    try {
      await c.query("PREPARE p AS SELECT id FROM visits");
      // Refused by the target (the name is taken): p still runs the first statement.
      await expect(c.query("PREPARE p AS SELECT 1")).rejects.toThrow(/already exists/);
      h.setPolicies(denyVisits);
      const denied = await c.query("EXECUTE p").then(
        () => undefined,
        (e: { code?: string; message: string }) => e,
      );
      expect(denied?.code).toBe("42501");
      expect(denied?.message).toMatch(/no policy allows db:read|visits/);
      // Once deallocated, the name holds only what is prepared next.
      await c.query("DEALLOCATE p");
      await c.query("PREPARE p AS SELECT 1 AS one");
      expect((await c.query("EXECUTE p")).rows).toEqual([{ one: 1 }]);
    } finally {
      h.setPolicies(POLICIES);
      await c.end();
    }
  });

  it("keeps SQL and protocol prepared statements in one namespace, forgetting a name only once a DEALLOCATE or Close sent after it has run", async () => {
    await pgServer.sql(
      `CREATE TABLE IF NOT EXISTS public.pt (v text); CREATE SCHEMA IF NOT EXISTS hr;
       CREATE TABLE IF NOT EXISTS hr.pt (v text); TRUNCATE hr.pt; INSERT INTO hr.pt VALUES ('SECRET hr row')`,
      "app",
    );
    // The reader may read public.* only; after `SET search_path = hr, public`, an unqualified `pt`
    // is hr.pt to the server, which re-plans a prepared statement under the current search path.
    const c = new pg.Client({
      host: "127.0.0.1",
      port: h.port,
      user: "reader@example.com",
      password: reader,
      database: "app",
    });
    await c.connect();
    const outcome = (sql: string | { name: string; text: string }) =>
      c.query(sql).then(
        (r: pg.QueryResult | pg.QueryResult[]) => (Array.isArray(r) ? "ok" : JSON.stringify(r.rows)),
        (e: { code?: string }) => e.code ?? "error",
      );
    try {
      // A DEALLOCATE ALL in the same message as the PREPARE runs before it: the PREPARE stays known.
      expect(await outcome("DEALLOCATE ALL; PREPARE p AS SELECT * FROM pt")).toBe("ok");
      expect(await outcome("PREPARE p AS SELECT 1")).toBe("42P05"); // taken: p is still the first
      // A protocol statement's name, taken by a SQL PREPARE that fails.
      expect(await outcome({ name: "s", text: "SELECT * FROM pt" })).toBe("[]");
      expect(await outcome("PREPARE s AS SELECT 1")).toBe("42P05");
      // A protocol statement deallocated by SQL, its name prepared again by SQL.
      expect(await outcome({ name: "x", text: "SELECT 1 AS one" })).toBe('[{"one":1}]');
      expect(await outcome("DEALLOCATE x")).toBe("[]");
      expect(await outcome("PREPARE x AS SELECT * FROM pt")).toBe("[]");
      expect(await outcome("SET search_path = hr, public")).toBe("[]");
      expect(await outcome("SELECT * FROM pt")).toBe("42501");
      expect(await outcome("EXECUTE p")).toBe("42501");
      expect(await outcome("EXECUTE s")).toBe("42501");
      // node-postgres binds its known statement x again without a Parse: x is now the PREPARE's.
      expect(await outcome({ name: "x", text: "SELECT 1 AS one" })).toBe("42501");
      expect(await outcome("SELECT * FROM public.pt")).toBe("[]");
    } finally {
      await c.end();
    }
  });

  it("needs db:admin to change a catalog, whatever a table-scoped db:write allows (UPDATE pg_settings runs set_config)", async () => {
    const writer = await h.token("writer@example.com", ["writers"]);
    const as = (sql: string) => psql(h, writer, sql, { user: "writer@example.com" });
    expect((await as("INSERT INTO orders VALUES (99, 0); DELETE FROM orders WHERE id = 99")).stderr).toBe("");
    // Review 14: catalog tables are left out of table scopes, so these were db:write on no table,
    // allowed by the writer's `public.*` rule: a search_path change the agent never saw (then
    // unqualified names read another schema), a superuser-only setting, a table moved into public.
    for (const sql of [
      "UPDATE pg_settings SET setting = 'analytics, public' WHERE name = 'search_path'",
      "UPDATE pg_settings SET setting = 'replica' WHERE name = 'session_replication_role'",
      "UPDATE pg_catalog.pg_class SET relnamespace = 'public'::regnamespace WHERE oid = 'analytics.events'::regclass",
      "DELETE FROM pg_catalog.pg_description",
      "LOCK pg_class",
    ]) {
      const r = await as(sql);
      expect(r.stderr, sql).toMatch(/ERROR: .*db:admin/);
    }
    const path = await as(
      "UPDATE pg_settings SET setting = 'analytics, public' WHERE name = 'search_path'; SHOW search_path",
    );
    expect(path.stdout).not.toMatch(/analytics/);
  });

  it("lets the DBA do everything, including DDL and writes", async () => {
    const r = await psql(h, dba, "CREATE TABLE dba_t (x int); INSERT INTO dba_t VALUES (1); DROP TABLE dba_t", {
      user: "dba@example.com",
    });
    expect(r.stderr).toBe("");
  });
});

describe("masking", () => {
  it("leaves rows of the system catalogs to detectors alone, not to column rules (review 41)", async () => {
    // alice's rules mask analytics.events.kind, so a computed column labelled kind anywhere.
    const catalog = await psql(h, alice, "SELECT upper(typname) AS kind FROM pg_type WHERE oid = 23");
    expect(catalog.stdout.trim()).toBe("INT4");
    const mixed = await psql(
      h,
      alice,
      "SELECT upper(t.typname) AS kind, e.kind AS k2 FROM pg_type t, analytics.events e WHERE t.oid = 23 LIMIT 1",
    );
    expect(mixed.stdout.trim()).toBe("****|****");
    const labelled = await psql(h, alice, "SELECT 'plain' AS kind FROM users LIMIT 1");
    expect(labelled.stdout.trim()).toBe("****");
    // Detectors still read catalog rows: a comment holding a card number.
    await psql(h, dba, "COMMENT ON TABLE visits IS 'paid with 4111 1111 1111 1111'", { user: "dba@example.com" });
    const comment = await psql(h, alice, "SELECT description FROM pg_description WHERE description LIKE 'paid%'");
    expect(comment.stdout.trim()).toBe("paid with ****");
  });

  it("masks columns by name and values by detector, in text and with the extended protocol", async () => {
    const r = await psql(h, alice, "SELECT email, note FROM users WHERE id = 1");
    expect(r.stdout).not.toContain("user1@example.com");
    expect(r.stdout).not.toContain("4111 1111 1111 1111");
    expect(r.stdout).toMatch(/\*\*\*\*/);
    const c = await aliceClient();
    const q = await c.query("SELECT id, email, note FROM users WHERE id = $1", [1]);
    expect(q.rows[0].email).not.toBe("user1@example.com");
    expect(String(q.rows[0].note)).not.toContain("4111");
    await c.end();
  });

  it("runs detectors on binary results and on bytea: a card number in a bigint, a numeric or bytes (review 35)", async () => {
    // node-postgres asking for every result column in binary, as pgx and asyncpg do.
    const c = new pg.Client({
      host: "127.0.0.1",
      port: h.port,
      user: "alice@example.com",
      password: alice,
      database: "app",
      binary: true, // a node-postgres option its types do not list
    } as pg.ClientConfig);
    await c.connect();
    try {
      // A parameter: node-postgres sends a query without one as a simple Query (text results).
      const r = await c.query(
        "SELECT 4111111111111111::bigint AS b, 4111111111111111.00::numeric AS n, ARRAY[1, 4111111111111111]::int8[] AS a, convert_to('card 4111 1111 1111 1111', 'UTF8') AS d, $1::bigint AS ok",
        [42],
      );
      expect(r.rows[0]).toMatchObject({ b: null, n: null, a: null, d: null });
      expect(String(r.rows[0].ok)).toBe("42");
    } finally {
      await c.end();
    }
    // In text format, bytea is hex (clients decode it) or, under bytea_output = escape, the bytes.
    const card = "SELECT convert_to('card 4111 1111 1111 1111', 'UTF8'), convert_to('no card', 'UTF8')";
    const hex = await psql(h, alice, card);
    expect(hex.stderr).toBe("");
    expect(hex.stdout.trim()).toBe(`|\\x${Buffer.from("no card").toString("hex")}`);
    const escaped = await psql(h, alice, `SET bytea_output = 'escape'; ${card}`);
    expect(escaped.stderr).toBe("");
    expect(escaped.stdout.trim()).toBe("|no card");
  });

  it("resolves result columns to their tables: an alias does not unmask, a table-qualified rule masks only its table", async () => {
    const setup = await psql(h, dba, "CREATE TABLE kinds (kind text); INSERT INTO kinds VALUES ('visible')", {
      user: "dba@example.com",
    });
    expect(setup.stderr).toBe("");
    const rows = async (sql: string) => {
      const r = await psql(h, alice, sql);
      expect(r.stderr, sql).toBe("");
      return r.stdout.trim().split("\n");
    };
    // Aliases, in the simple protocol (the first query waits for the catalog lookup).
    expect(await rows("SELECT email AS e, id FROM users WHERE id = 2")).toEqual(["u***@example.com|2"]);
    expect(await rows("SELECT u.email AS contact FROM users u WHERE id = 3")).toEqual(["u***@example.com"]);
    expect(await rows("SELECT kind AS k FROM analytics.events WHERE id = 1")).toEqual(["****"]);
    expect(await rows("SELECT e.kind FROM analytics.events e JOIN kinds k ON true WHERE e.id = 1")).toEqual(["****"]);
    // The same column name in another table is not masked by analytics.events.kind ...
    expect(await rows("SELECT kind FROM kinds")).toEqual(["visible"]);
    // ... but a computed column labelled like it is (its table is unknown: fail closed).
    expect(await rows("SELECT 'computed' AS kind")).toEqual(["****"]);
    // Extended protocol (node-postgres): aliases in prepared statements too.
    const c = await aliceClient();
    try {
      const q = await c.query({ name: "aliased", text: "SELECT email AS x FROM users WHERE id = $1", values: [4] });
      expect(q.rows[0].x).toBe("u***@example.com");
      const k = await c.query("SELECT kind AS label FROM kinds");
      expect(k.rows[0].label).toBe("visible");
    } finally {
      await c.end();
    }
    const audit = h
      .events()
      .filter(
        (e) => e.type === "db.query" && e.detail.case === "dbQuery" && e.detail.value.text.includes("AS contact"),
      );
    expect(audit[0]?.detail.case === "dbQuery" && audit[0].detail.value.maskedColumns).toEqual(["users.email"]);
  });

  it("masks computed columns whose values may come from a masked column: expressions, whole rows, subqueries, cursors, prepared statements", async () => {
    const secret = /user5@example\.com|USER5@EXAMPLE\.COM|\bk5\b|\bK5\b/;
    const leaks: string[] = [];
    const check = async (sql: string, o: { extra?: string[]; input?: string } = {}) => {
      const r = await psql(h, alice, o.input === undefined ? sql : "", o);
      expect(r.stderr.replace(/^(psql:<stdin>:\d+: )?ERROR: .* already exists\n/gm, ""), sql).toBe("");
      if (secret.test(r.stdout)) leaks.push(`${sql} -> ${r.stdout.trim()}`);
      return r.stdout.trim();
    };
    // Each of these returned the masked value in clear before (a computed column has no table).
    await check("SELECT lower(email) FROM users WHERE id = 5");
    await check("SELECT email || '' AS x, upper(email) FROM users WHERE id = 5");
    await check("SELECT email::varchar(100) FROM users WHERE id = 5");
    await check("SELECT u FROM users u WHERE id = 5");
    await check("SELECT row_to_json(u) FROM users u WHERE id = 5");
    await check("SELECT to_jsonb(u.*) ->> 'email' FROM users u WHERE id = 5");
    await check("SELECT (u).email FROM users u WHERE id = 5");
    // Attribute notation on the column itself: `(email).upper` is upper(email).
    await check("SELECT (email).upper, (u.email).lower FROM users u WHERE id = 5");
    await check("SELECT (SELECT email FROM users WHERE id = 5)");
    await check("SELECT x FROM (SELECT upper(email) AS x FROM users) s WHERE x LIKE 'USER5@%'");
    await check("SELECT lower(e) FROM (SELECT email AS e FROM users) s WHERE e LIKE 'user5@%'");
    await check("WITH c(x) AS (SELECT email FROM users WHERE id = 5) SELECT x || '' FROM c");
    await check("SELECT lower(b) FROM users u(a, b) WHERE a = 5");
    // An alias list shorter than a set operation's columns: the others are named by the leftmost branch.
    await check(
      "WITH c(x) AS (SELECT 0, 'b' AS b UNION ALL SELECT id, email FROM users WHERE id = 5) SELECT lower(b) FROM c",
    );
    await check("SELECT b || '' FROM (SELECT 0, 'b' AS b UNION ALL SELECT id, email FROM users WHERE id = 5) s(x)");
    await check("WITH v AS (SELECT id, email FROM users WHERE id = 5) SELECT lower(e) FROM v AS v1(i, e)");
    await check("SELECT string_agg(email, ',') FROM users WHERE id BETWEEN 4 AND 6");
    await check("SELECT email AS e FROM users WHERE id = 5 UNION ALL SELECT 'x'");
    await check("SELECT 'x' UNION ALL SELECT email FROM users WHERE id = 5");
    await check("SELECT v.column1 FROM users, LATERAL (VALUES (email)) v WHERE id = 5");
    await check("SELECT upper(kind), kind || '' FROM analytics.events WHERE id = 5");
    // A cursor's and a prepared statement's rows are masked by what DECLARE and PREPARE computed.
    await check("BEGIN; DECLARE c CURSOR FOR SELECT lower(email) FROM users WHERE id = 5; FETCH ALL FROM c; COMMIT");
    await check("", { input: "PREPARE p AS SELECT lower(email) FROM users WHERE id = $1;\nEXECUTE p(5);\n" });
    await check("", { extra: ["-c", "\\set FETCH_COUNT 10", "-c", "SELECT lower(email) FROM users WHERE id = 5"] });
    // A second PREPARE or DECLARE of a taken name fails on the server: masking assumes the first.
    await check("", {
      input:
        "PREPARE q AS SELECT lower(email) FROM users WHERE id = 5;\nPREPARE q AS SELECT 'harmless';\nEXECUTE q;\n" +
        "BEGIN;\nDECLARE d CURSOR FOR SELECT lower(email) FROM users WHERE id = 5;\nSAVEPOINT s;\n" +
        "DECLARE d CURSOR FOR SELECT 'harmless';\nROLLBACK TO s;\nFETCH ALL FROM d;\nCOMMIT;\n",
    });
    // `*` over a subquery or CTE includes its computed columns; a CTE may use one defined after it.
    await check("SELECT * FROM (SELECT lower(email) AS l FROM users WHERE id = 5) s");
    await check("WITH c AS (SELECT upper(kind) AS k FROM analytics.events WHERE id = 5) TABLE c");
    await check("SELECT * FROM users u, LATERAL (SELECT lower(u.email) AS l) x WHERE id = 5");
    await check(
      "WITH RECURSIVE a AS (SELECT l || '' AS m FROM b), b AS (SELECT lower(email) AS l FROM users WHERE id = 5) SELECT m FROM a",
    );
    // Attribute notation: `u.to_json` is to_json(u), the whole row.
    await check("SELECT u.to_json, u.quote_literal FROM users u WHERE id = 5");
    await check("SELECT users.to_jsonb FROM users WHERE id = 5");
    await check("SELECT u.to_jsonb ->> 'email' AS x FROM users u WHERE id = 5");
    await check("SELECT e.to_json FROM analytics.events e WHERE id = 5");
    // A field expansion yields columns the output list does not count.
    await check("SELECT (ROW()).*, lower(email), (ROW(1, 2)).* FROM users WHERE id = 5");
    // A CLOSE, DEALLOCATE or DEALLOCATE ALL that did not run (or does not close cursors) leaves the
    // name taken on the target: the agent still assumes what it held.
    const noLeak = async (input: string) => {
      const r = await psql(h, alice, "", { input });
      if (secret.test(r.stdout) || secret.test(r.stderr)) leaks.push(`${input} -> ${r.stdout}${r.stderr}`);
    };
    await noLeak(
      "BEGIN;\nDECLARE c CURSOR FOR SELECT lower(email) FROM users WHERE id = 5;\nDEALLOCATE ALL;\nSAVEPOINT s;\n" +
        "DECLARE c CURSOR FOR SELECT 'harmless';\nROLLBACK TO s;\nFETCH ALL FROM c;\nCOMMIT;\n",
    );
    await noLeak(
      "DECLARE h CURSOR WITH HOLD FOR SELECT lower(email) FROM users WHERE id = 5;\nSELECT 1/0 \\; CLOSE h;\n" +
        "DECLARE h CURSOR WITH HOLD FOR SELECT 'harmless';\nFETCH ALL FROM h;\nCLOSE h;\n",
    );
    await noLeak(
      "PREPARE r AS SELECT lower(email) FROM users WHERE id = 5;\nSELECT 1/0 \\; DEALLOCATE r;\n" +
        "BEGIN;\nSELECT 1/0;\nDEALLOCATE r;\nROLLBACK;\nPREPARE r AS SELECT 'harmless';\nEXECUTE r;\n",
    );
    expect(leaks).toEqual([]);
    // Extended protocol.
    const c = await aliceClient();
    try {
      const q = await c.query("SELECT lower(email) AS l, length(email) AS n FROM users WHERE id = $1", [5]);
      // Computed: partial masks it whole (the query chooses what the kept part shows); a masked number is NULL.
      expect(q.rows[0]).toEqual({ l: "****", n: null });
    } finally {
      await c.end();
    }
    // What does not come from a masked column is left alone: predicates, counts, other columns.
    expect(await check("SELECT id, note || '!', count(*) OVER () FROM users WHERE id = 2")).toBe("2|ok!|1");
    expect(await check("SELECT count(*) FROM users WHERE email LIKE 'user5@%'")).toBe("1");
    expect(await check("SELECT id, lower(note) FROM users WHERE email = 'user5@example.com'")).toBe("5|ok");
    await pgServer.sql(
      "CREATE TABLE IF NOT EXISTS kinds (kind text); INSERT INTO kinds SELECT 'visible' WHERE NOT EXISTS (SELECT FROM kinds)",
      "app",
    );
    // A computed column's sources are known by name only: analytics.events.kind masks kinds.kind
    // there (fail closed), as it masks a computed column labelled kind.
    expect(await check("SELECT upper(kind) FROM kinds")).toBe("****");
    expect(await check("SELECT lower(email), id + 1 FROM users WHERE id = 5")).toBe("****|6");
    expect(await check("SELECT count(*) FROM (SELECT lower(email) AS l FROM users) s")).toBe("100");
    // A set operation's `*` may be any column, but not in a count or a constant (it nulled them).
    expect(
      await check("SELECT count(*), 'x', max(email) FROM (SELECT * FROM users UNION ALL SELECT * FROM users) s"),
    ).toBe("200|x|****");
    // No table at all, alias lists, counts, windows and FILTER over a masked column.
    expect(await check("SELECT g FROM generate_series(1, 3) g")).toBe("1\n2\n3");
    expect(await check("SELECT name FROM (VALUES (1, 'a')) AS t(id, name)")).toBe("a");
    // A CTE's columns renamed where it is referenced are known: only what they hold counts.
    expect(
      await check(
        "WITH v AS (SELECT id, email, note FROM users WHERE id = 2) SELECT i + 1, upper(n) FROM v AS v1(i, e, n)",
      ),
    ).toBe("3|OK");
    expect(
      await check("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r"),
    ).toBe("1\n2\n3");
    expect(
      await check(
        "SELECT count(email), count(DISTINCT email), count(*) FILTER (WHERE email LIKE 'user1%'), email IS NULL, rank() OVER (ORDER BY email) FROM users WHERE id = 5 GROUP BY email",
      ),
    ).toBe("1|1|0|f|1");
    // A cursor's name is free again once its transaction ends (psql's FETCH_COUNT cursor after an error).
    await check("BEGIN; DECLARE c CURSOR FOR SELECT lower(email) FROM users WHERE id = 5; FETCH ALL FROM c; COMMIT");
    expect(
      await check(
        "BEGIN; DECLARE c CURSOR FOR SELECT id, upper(note) FROM users WHERE id = 2; FETCH ALL FROM c; COMMIT",
      ),
    ).toBe("2|OK");
    const fetchCount = await psql(h, alice, "", {
      extra: [
        "-c",
        "\\set FETCH_COUNT 5",
        "-c",
        "SELECT email, 1/(id - 6) FROM users",
        "-c",
        "SELECT id, upper(note) FROM users WHERE id = 2",
      ],
    });
    expect(fetchCount.stdout).toContain("2|OK");
    expect(fetchCount.stdout).not.toMatch(secret);
    expect(await check("SELECT id + 1, l FROM users, LATERAL (SELECT lower(email) AS l) x WHERE id = 5")).toBe(
      "6|****",
    );
  });

  it("withholds error messages that could quote a masked value, and masks detected values in the others", async () => {
    const err = async (sql: string) => {
      const r = await psql(h, alice, sql);
      expect(r.stdout, sql).toBe("");
      return r.stderr;
    };
    // PostgreSQL quotes the value it could not convert: the masked column, in an output or a predicate.
    for (const sql of [
      "SELECT email::int FROM users WHERE id = 5",
      "SELECT id FROM users WHERE id = 5 AND email::int = 1",
      "SELECT (SELECT email FROM users WHERE id = 5)::int",
      "SELECT 1 FROM users u WHERE id = 5 AND u::text::int = 1",
      "BEGIN; DECLARE e CURSOR FOR SELECT email::int FROM users WHERE id = 5; FETCH e",
    ]) {
      const stderr = await err(sql);
      expect(stderr, sql).not.toMatch(/user5@example\.com/);
      expect(stderr, sql).toMatch(
        /ERROR: {2}the statement failed on the target \(SQLSTATE 22P02\); the server's message is withheld/,
      );
    }
    // The whole row through attribute notation, a renamed column, a WITH HOLD cursor run at COMMIT.
    for (const sql of [
      "SELECT id FROM users u WHERE id = 5 AND (u.to_jsonb ->> 'email')::int = 1",
      "SELECT b::int FROM users u(a, b) WHERE a = 5",
      "WITH c(a, x) AS (SELECT * FROM users) SELECT x::int FROM c WHERE a = 5",
      "BEGIN; DECLARE wh CURSOR WITH HOLD FOR SELECT email::int FROM users WHERE id = 5; COMMIT",
      // Run by the implicit commit of a multi-statement query, before its last statement completes
      // (review 18).
      "DECLARE wh2 CURSOR WITH HOLD FOR SELECT email::int FROM users WHERE id = 5; SELECT 1",
      "DECLARE wh3 CURSOR WITH HOLD FOR SELECT 1 FROM users WHERE id = 5 AND email::int = 1; SELECT 1",
    ]) {
      const stderr = await err(sql);
      expect(stderr, sql).not.toMatch(/user5@example\.com/);
      expect(stderr, sql).toMatch(/SQLSTATE 22P02\); the server's message is withheld/);
    }
    // Once the cursor's transaction has ended, errors and notices are shown again: from the next
    // statement on, transaction control included (review 19).
    const after = await psql(h, alice, "", {
      extra: [
        "-c",
        "DECLARE c6 CURSOR WITH HOLD FOR SELECT email FROM users",
        "-c",
        "SELECT 1/0",
        "-c",
        "COMMIT",
        "-c",
        "ROLLBACK TO nosuch",
      ],
    });
    expect(after.stderr).toMatch(/ERROR: {2}division by zero/);
    expect(after.stderr).toMatch(/WARNING: {2}there is no transaction in progress/);
    expect(after.stderr).not.toMatch(/withheld/);
    // Messages of a fixed text quote nothing: a masked read in a failed block gets 25P02's own (review 48).
    const aborted = await psql(h, alice, "", {
      extra: ["-c", "BEGIN", "-c", "SELECT 1/0", "-c", "SELECT email FROM users", "-c", "ROLLBACK"],
    });
    expect(aborted.stderr).toMatch(
      /ERROR: {2}current transaction is aborted, commands ignored until end of transaction block/,
    );
    // The same through the extended protocol: the commit's error comes at the Sync (review 18).
    const ext = await aliceClient();
    try {
      const e = await ext.query("DECLARE wh4 CURSOR WITH HOLD FOR SELECT email::int FROM users WHERE id = 5").then(
        () => "no error",
        (error: Error) => error.message,
      );
      expect(e).not.toMatch(/user5@example\.com/);
      expect(e).toMatch(/SQLSTATE 22P02\); the server's message is withheld/);
      expect((await ext.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    } finally {
      await ext.end();
    }
    // Lookups by a value name it in errors of any class (42704, 42P01, 42602 here).
    for (const sql of [
      "SELECT current_setting(email) FROM users WHERE id = 5",
      "SELECT 1 FROM analytics.events WHERE id = 5 AND kind::regclass IS NULL",
      "SELECT (email || '.a.b.c')::regclass FROM users WHERE id = 5",
      // Values parsed as type names fail with a position, like an error in the statement (review 14).
      "SELECT email::regtype FROM users WHERE id = 5",
      "SELECT 1 FROM users WHERE id = 5 AND to_regtype(email) IS NULL",
      `SELECT ('int "' || email || '"')::regtype FROM users WHERE id = 5`,
      `SELECT ('x" ' || email || ' "y')::regtype FROM users WHERE id = 5`,
    ]) {
      const stderr = await err(sql);
      expect(stderr, sql).not.toMatch(/user5@example\.com|"k5"/);
      expect(stderr, sql).toMatch(/the server's message is withheld/);
    }
    // Notices quote values too (to_tsquery quotes its input when it finds no lexemes).
    const notice = await psql(h, alice, "SELECT to_tsquery(replace(email, email, ' ')) FROM users WHERE id = 5");
    expect(notice.stderr).toMatch(
      /NOTICE: {2}the target sent a NOTICE \(SQLSTATE 00000\); the server's message is withheld/,
    );
    expect((await psql(h, alice, "SELECT to_tsquery(' ')")).stderr).toMatch(/doesn't contain lexemes/);
    // Not from a masked column: the detectors mask what they find (a card number in note).
    const card = await err("SELECT note::int FROM users WHERE id = 1");
    expect(card).toMatch(/invalid input syntax for type integer: "card \*\*\*\*"/);
    // Nothing to hide: relayed as the server wrote it. Errors the server raised analysing the
    // statement's names (an unknown column or table, with a position in the text, quoting only
    // the text) pass even when the statement reads a masked column.
    expect(await err("SELECT nosuch FROM users")).toMatch(/column "nosuch" does not exist/);
    expect(await err("SELECT lower(email) FROM nosuch")).toMatch(/relation "nosuch" does not exist/);
    expect(await err("SELECT id::text::int / 0 FROM users WHERE id = 5")).toMatch(/division by zero/);
    // Extended protocol.
    const c = await aliceClient();
    try {
      const e = await c.query("SELECT email::int FROM users WHERE id = $1", [5]).then(
        () => undefined,
        (error: { code?: string; message: string }) => error,
      );
      expect(e?.code).toBe("22P02");
      expect(e?.message).not.toMatch(/user5@example\.com/);
      expect((await c.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]); // the session goes on
    } finally {
      await c.end();
    }
    const failures = h
      .events()
      .filter(
        (e) => e.type === "db.query" && e.detail.case === "dbQuery" && e.detail.value.text.includes("email::int"),
      );
    expect(failures.length).toBeGreaterThan(0);
    for (const f of failures) expect(f.message).not.toMatch(/user5@example\.com/);
  });
});

describe("extended protocol (node-postgres)", () => {
  it("runs parameterized and named statements, denies writes and keeps the connection usable", async () => {
    const c = await aliceClient();
    for (let i = 0; i < 10; i++) {
      const q = await c.query({ name: "by-id", text: "SELECT id FROM users WHERE id = $1", values: [i + 1] });
      expect(q.rows[0].id).toBe(i + 1);
    }
    await expect(c.query("DELETE FROM users WHERE id = $1", [1])).rejects.toMatchObject({ code: "42501" });
    await expect(c.query({ name: "del", text: "DELETE FROM users WHERE id = $1", values: [1] })).rejects.toMatchObject({
      code: "42501",
    });
    const after = await c.query("SELECT count(*)::int AS n FROM users");
    expect(after.rows[0].n).toBe(100);
    await c.end();
  });
});

describe("clients", () => {
  it("runs pgbench in simple, extended and prepared modes", async () => {
    const init = await pgbenchInit(pgServer.port);
    expect(init.code).toBe(0);
    for (const mode of ["simple", "extended", "prepared"]) {
      const r = await pgbench(h, alice, ["-n", "-S", "-M", mode, "-c", "2", "-t", "200"]);
      expect(r.stderr + r.stdout, mode).toMatch(/number of transactions actually processed: 400\/400/);
    }
    const w = await pgbench(h, dba, ["-n", "-M", "prepared", "-c", "2", "-t", "50"], "dba@example.com");
    expect(w.stderr + w.stdout).toMatch(/processed: 100\/100/);
  });

  it("runs psql meta-commands", async () => {
    const r = await psql(h, alice, "", { extra: ["-c", "\\dt", "-c", "\\d users"] });
    expect(r.stderr).toBe("");
    expect(r.stdout).toContain("users");
  });

  it("copies out (allowed) and in (denied for a reader, allowed for the DBA)", async () => {
    const out = await psql(h, etl, "\\copy analytics.events TO STDOUT", { user: "etl@example.com" });
    expect(out.stderr).toBe("");
    expect(out.stdout.trim().split("\n")).toHaveLength(1000);
    const query = await psql(h, etl, "\\copy (SELECT kind FROM analytics.events WHERE id < 3) TO STDOUT", {
      user: "etl@example.com",
    });
    // COPY (query) runs the query too: it needs what the query needs (a read here).
    expect(query.stderr).toMatch(/no policy allows db:read/);
    // Only analytics.*: nothing else, not even reads.
    const other = await psql(h, etl, "\\copy users TO STDOUT", { user: "etl@example.com" });
    expect(other.stderr).toMatch(/ERROR: {2}no policy allows db:copy-out/);
    expect((await psql(h, etl, "SELECT count(*) FROM analytics.events", { user: "etl@example.com" })).stderr).toMatch(
      /no policy allows db:read/,
    );
    // COPY output cannot be masked: a user with masking rules gets no COPY TO STDOUT at all.
    const masked = await psql(h, alice, "\\copy users TO STDOUT");
    expect(masked.stdout).toBe("");
    expect(masked.stderr).toMatch(/COPY \.\.\. TO STDOUT is not available while masking rules apply/);
    const denied = await psql(h, alice, "\\copy orders FROM STDIN", { input: "1\t2\n\\.\n" });
    expect(denied.stderr).toMatch(/ERROR/);
    const ok = await psql(h, dba, "\\copy orders FROM STDIN", { user: "dba@example.com", input: "7\t8\n\\.\n" });
    expect(ok.stderr).toBe("");
    expect((await psql(h, alice, "SELECT amount FROM orders WHERE id = 7")).stdout.trim()).toBe("8");
  });

  it("dumps with pg_dump and restores the dump with psql (DBA)", async () => {
    const dump = await run(
      "pg_dump",
      [`host=127.0.0.1 port=${h.port} user=dba@example.com dbname=app sslmode=require`, "--no-owner", "-t", "users"],
      { PGPASSWORD: dba },
    );
    expect(dump.stderr).toBe("");
    expect(dump.stdout).toContain("CREATE TABLE public.users");
    expect(dump.stdout).toContain("user42@example.com"); // the DBA's policy has no masking
    await pgServer.createDatabase("restored");
    const restore = await psql(h, dba, "", {
      user: "dba@example.com",
      db: "restored",
      extra: ["-v", "ON_ERROR_STOP=1"],
      input: dump.stdout,
    });
    expect(restore.stderr).toBe("");
    expect(
      (await psql(h, dba, "SELECT count(*) FROM users", { user: "dba@example.com", db: "restored" })).stdout.trim(),
    ).toBe("100");
    // In one transaction (psql -1, like pg_restore --single-transaction): the dump's
    // `SET client_encoding = 'UTF8'` runs inside it, setting the value already in force.
    await pgServer.createDatabase("restored1");
    const single = await psql(h, dba, "", {
      user: "dba@example.com",
      db: "restored1",
      extra: ["-1", "-v", "ON_ERROR_STOP=1"],
      input: dump.stdout,
    });
    expect(single.stderr).toBe("");
  });

  it("dumps and restores large objects (libpq's fast-path calls), refused and audited for a reader (review 43)", async () => {
    await pgServer.createDatabase("lobs");
    await pgServer.sql("SELECT lo_from_bytea(4242, 'large object bytes')", "lobs");
    const dir = tempDir("moat-lobs-");
    const conn = (db: string) => `host=127.0.0.1 port=${h.port} user=dba@example.com dbname=${db} sslmode=require`;
    const dump = await run("pg_dump", [conn("lobs"), "-Fc", "-f", join(dir, "lobs.dump")], { PGPASSWORD: dba });
    expect(dump.stderr).toBe("");
    expect(dump.code).toBe(0);
    await pgServer.createDatabase("lobs_restored");
    const restore = await run("pg_restore", ["-d", conn("lobs_restored"), "--exit-on-error", join(dir, "lobs.dump")], {
      PGPASSWORD: dba,
    });
    expect(restore.stderr).toBe("");
    expect(await pgServer.sql("SELECT convert_from(lo_get(4242), 'UTF8')", "lobs_restored")).toContain(
      "large object bytes",
    );
    const exported = join(dir, "out.bin");
    const lo = await psql(h, dba, `\\lo_export 4242 '${exported}'`, { user: "dba@example.com", db: "lobs" });
    expect(lo.stderr).toBe("");
    expect(readFileSync(exported, "utf8")).toBe("large object bytes");
    const texts = h.events().flatMap((e) => (e.detail.case === "dbQuery" ? [e.detail.value.text] : []));
    expect(texts).toContain("SELECT pg_catalog.loread($1, $2) -- fast-path function call");

    // A reader: lo_open needs db:admin, as SELECT lo_open(...) does; refused, audited, session usable.
    const refused = await psql(h, alice, `\\lo_export 4242 '${join(dir, "nope.bin")}'`, { db: "lobs" });
    expect(refused.stderr).toMatch(/no policy allows db:admin/);
    const denied = h.events().filter((e) => e.verdict === 2 && e.actor?.user === "alice@example.com");
    expect(denied.at(-1)?.detail.value).toMatchObject({
      text: "SELECT pg_catalog.lo_open($1, $2) -- fast-path function call",
    });
  });

  it("dumps with pg_dump as a user allowed only db:read and db:copy-out, and the dump restores", async () => {
    // With a superuser target role, pg_dump reads subscriptions' connection strings (replication
    // passwords): that needs db:admin, so a backup user without it passes --no-subscriptions.
    const conn = `host=127.0.0.1 port=${h.port} user=backup@example.com dbname=app sslmode=require`;
    const secrets = await run("pg_dump", [conn, "--no-owner", "-t", "users"], { PGPASSWORD: backup });
    expect(secrets.code).not.toBe(0);
    expect(secrets.stderr).toMatch(/no policy allows db:admin[\s\S]*s\.subconninfo[\s\S]*FROM pg_subscription/);
    const dump = await run("pg_dump", [conn, "--no-owner", "--no-subscriptions", "-t", "users"], {
      PGPASSWORD: backup,
    });
    // pg_dump 15.8+ also runs `SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings
    // WHERE name = 'restrict_nonsystem_relation_kind'`: the SET of a harmless setting, so a read.
    expect(dump.stderr).toBe("");
    expect(dump.code).toBe(0);
    expect(dump.stdout).toContain("CREATE TABLE public.users");
    expect(dump.stdout).toContain("user42@example.com"); // no masking rule applies to this user
    await pgServer.createDatabase("restored_from_backup");
    const restore = await psql(h, dba, "", {
      user: "dba@example.com",
      db: "restored_from_backup",
      extra: ["-v", "ON_ERROR_STOP=1"],
      input: dump.stdout,
    });
    expect(restore.stderr).toBe("");
    const restored = await psql(h, dba, "SELECT count(*), min(email) FILTER (WHERE id = 42) FROM users", {
      user: "dba@example.com",
      db: "restored_from_backup",
    });
    expect(restored.stdout.trim()).toBe("100|user42@example.com");
    // Audited as what it is: a read.
    const settings = h
      .events()
      .find(
        (e) =>
          e.type === "db.query" &&
          e.actor?.user === "backup@example.com" &&
          e.detail.case === "dbQuery" &&
          e.detail.value.text.includes("restrict_nonsystem_relation_kind"),
      );
    expect(settings?.verdict).toBe(1);
    expect(settings?.detail.case === "dbQuery" && settings.detail.value.statementClass).toBe("read");
  });

  it("decides the functions PostgreSQL calls unseen by the target's catalog: attribute notation, overloads of built-ins, views", async () => {
    // `v.touch` is attribute notation for touch(v), a function that INSERTs; touched_visits calls
    // it; `initcap(5)` runs public.initcap(int), which INSERTs too. The text shows none of it: the
    // agent reads the target's catalog for such functions (review 55: allowed before, stopped only
    // by the read-only session).
    for (const sql of [
      "SELECT v.touch FROM visits v",
      "SELECT (v).touch FROM visits v",
      "SELECT id FROM visits v WHERE v.touch = 1",
      "SELECT * FROM touched_visits",
      "SELECT initcap(5)",
      "PREPARE t AS SELECT v.touch FROM visits v",
      "BEGIN; DECLARE t CURSOR FOR SELECT * FROM touched_visits; FETCH ALL FROM t; COMMIT",
      // Review 60: EXPLAIN (ANALYZE), EXECUTE's own arguments, a view through a STABLE function,
      // an operator named like a built-in, an extension's function by attribute notation.
      "EXPLAIN ANALYZE SELECT v.touch FROM visits v",
      "EXPLAIN SELECT (ROW(1)::visits).touch",
      "SELECT * FROM stable_visits",
      "SELECT 'a' # 'b'",
      "SELECT ('SELECT 1'::text).dblink_exec",
      // Review 62: a cast to a domain whose CHECK calls the database's own function.
      "SELECT 1::logged_int",
      "SELECT CAST('1' AS public.logged_int)",
      // Review 64: a view casting to it, a composite with a field of it, an array of it.
      "SELECT * FROM logged_view",
      "SELECT ROW(1)::logged_pair",
      "SELECT '{1}'::_logged_int",
    ]) {
      const r = await psql(h, reader, sql, { user: "reader@example.com" });
      expect(r.stderr, sql).toMatch(/ERROR: {2}no policy allows db:function/);
    }
    // Review 62: views and domains calling built-ins with side effects need what calling them needs
    // (PostgreSQL records no dependency on pg_catalog's functions: read from their definitions).
    for (const [sql, why] of <[string, string][]>[
      ["SELECT * FROM notifying", "reading notifying calls pg_notify()"],
      ["SELECT count(*) FROM (SELECT * FROM notifying) n", "reading notifying calls pg_notify()"],
      ["SELECT 1::notified_int", "a cast to notified_int calls pg_notify() (a domain's CHECK or a cast function)"],
    ]) {
      const r = await psql(h, reader, sql, { user: "reader@example.com" });
      expect(r.stderr, sql).toContain(`ERROR:  no policy allows db:write on db for reader@example.com: ${why}`);
    }
    // A view over pg_stat_activity is decided as pg_stat_activity (other sessions' SQL); a
    // materialized view runs nothing when read (review 64).
    expect((await psql(h, reader, "SELECT * FROM activity", { user: "reader@example.com" })).stderr).toContain(
      "no policy allows db:admin on db for reader@example.com: reading activity calls pg_stat_get_activity()",
    );
    expect((await psql(h, reader, "SELECT one FROM notified_mv", { user: "reader@example.com" })).stdout.trim()).toBe(
      "1",
    );
    expect(await psql(h, reader, "SELECT 1::logged_int", { user: "reader@example.com" })).toMatchObject({
      stderr: expect.stringContaining("a cast to logged_int calls log_visit() (a domain's CHECK or a cast function)"),
    });
    const executed = await psql(h, reader, "", {
      user: "reader@example.com",
      input: "PREPARE e(text) AS SELECT $1;\nEXECUTE e(initcap(5));\n",
    });
    expect(executed.stderr).toMatch(/ERROR: {2}no policy allows db:function .*function initcap of its own/);
    const told = await psql(h, reader, "SELECT v.touch FROM visits v", { user: "reader@example.com" });
    expect(told.stderr).toContain(
      "no policy allows db:function on db for reader@example.com: `.touch` may call the database's own function touch (attribute notation)",
    );
    const c = await clientAs("reader@example.com", reader);
    try {
      await expect(c.query("SELECT v.touch FROM visits v WHERE $1::int = 1", [1])).rejects.toMatchObject({
        code: "42501",
      });
      expect((await c.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    } finally {
      await c.end();
    }
    expect(await pgServer.sql("SELECT count(*) FROM visit_log", "app")).toMatch(/^0/);
    // Columns and built-ins are not affected; pg_catalog.initcap is the built-in.
    const plain = await psql(h, reader, "SELECT v.id, pg_catalog.initcap('ab') FROM visits v", {
      user: "reader@example.com",
    });
    expect(plain.stdout.trim()).toBe("1|Ab");
  });

  it("opens a read-only database session for a user no rule lets change anything: writes the text hides fail there", async () => {
    // An implicit cast of visits to int calls visit_number, which INSERTs: neither the text nor the
    // catalog lookups show it (the statement names no type), so the classifier allows `abs(v)`;
    // PostgreSQL refuses the INSERT in the read-only session. Told and recorded as Moat's denial:
    // 42501, PostgreSQL's 25006 in the detail (review 55; a domain's CHECK then, seen since review 62).
    const hidden = await psql(h, reader, "SELECT abs(v) FROM visits v", {
      user: "reader@example.com",
      extra: ["-v", "VERBOSITY=verbose"],
    });
    expect(hidden.stderr).toMatch(
      /ERROR: {2}42501: access denied: this session is read-only \(no policy allows you to change the database\), and the statement tried to: cannot execute INSERT in a read-only transaction\nDETAIL: .*SQLSTATE 25006/,
    );
    const refused = h
      .events()
      .filter((e) => e.actor?.user === "reader@example.com" && e.detail.case === "dbQuery")
      .find((e) => e.detail.case === "dbQuery" && e.detail.value.text === "SELECT abs(v) FROM visits v");
    expect(refused?.verdict).toBe(2);
    expect(refused?.rule).toBe("");
    expect(refused?.message).toMatch(/^failed on the target: access denied: this session is read-only/);
    // The extended protocol alike.
    const c = await clientAs("reader@example.com", reader);
    try {
      await expect(c.query("SELECT abs(v) + $1::int FROM visits v", [1])).rejects.toMatchObject({
        code: "42501",
      });
      expect((await c.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    } finally {
      await c.end();
    }
    const state = await psql(
      h,
      reader,
      "SHOW default_transaction_read_only; RESET default_transaction_read_only; SHOW default_transaction_read_only",
      { user: "reader@example.com", extra: ["-v", "ON_ERROR_STOP=1"] },
    );
    expect(state.stdout.trim().split("\n")).toEqual(["on", "on"]);
    for (const lift of [
      "BEGIN READ WRITE",
      "SET default_transaction_read_only = off",
      "BEGIN; RESET transaction_read_only; SELECT 1::logged_int; COMMIT",
    ]) {
      const r = await psql(h, reader, lift, { user: "reader@example.com" });
      expect(r.stderr).toMatch(/ERROR: {2}no policy allows db:write/);
    }
    expect(await pgServer.sql("SELECT count(*) FROM visit_log", "app")).toMatch(/^0/);
    // A function the agent does not see (an implicit cast's) turns the backstop off: the session
    // ends when the server reports the change, before any later statement (review 62: it ran, and
    // the next one's hidden INSERT was written).
    const lifted = await psql(h, reader, "", {
      user: "reader@example.com",
      input: "SELECT abs(s) FROM switches s;\nSHOW default_transaction_read_only;\nSELECT abs(v) FROM visits v;\n",
    });
    expect(lifted.stderr).toContain(
      "FATAL:  access denied: this session is read-only, and a statement turned default_transaction_read_only off",
    );
    expect(lifted.stdout).not.toContain("off");
    expect(await pgServer.sql("SELECT count(*) FROM visit_log", "app")).toMatch(/^0/);
    // A user some rule may let write (the DBA; alice, whose writes go to review) gets an ordinary session.
    const dbaState = await psql(h, dba, "SHOW default_transaction_read_only; SELECT v.touch FROM visits v", {
      user: "dba@example.com",
    });
    expect(dbaState.stdout.trim().split("\n")).toEqual(["off", "1"]);
    const aliceState = await psql(h, alice, "SHOW default_transaction_read_only");
    expect(aliceState.stdout.trim()).toBe("off");
    expect(await pgServer.sql("SELECT count(*) FROM visit_log", "app")).toMatch(/^1/);
  });

  it("refuses pg_dump to a reader whose policy does not allow what it needs, saying why", async () => {
    // Reading is not enough: the data comes out with COPY ... TO STDOUT.
    const readOnly = await run(
      "pg_dump",
      [
        `host=127.0.0.1 port=${h.port} user=reader@example.com dbname=app sslmode=require`,
        "--no-subscriptions",
        "-t",
        "users",
      ],
      { PGPASSWORD: reader },
    );
    expect(readOnly.code).not.toBe(0);
    expect(readOnly.stdout).not.toContain("user42@example.com");
    expect(readOnly.stderr).toContain(
      "ERROR:  no policy allows db:copy-out on db (table public.users) for reader@example.com",
    );
    expect(readOnly.stderr).toContain("Query was: COPY public.users");
    // COPY output cannot be masked: under masking rules it is refused, whatever the policy allows.
    const masked = await run(
      "pg_dump",
      [
        `host=127.0.0.1 port=${h.port} user=alice@example.com dbname=app sslmode=require`,
        "--no-subscriptions",
        "-t",
        "users",
      ],
      { PGPASSWORD: alice },
    );
    expect(masked.code).not.toBe(0);
    expect(masked.stdout).not.toContain("user42@example.com");
    expect(masked.stderr).toMatch(/COPY \.\.\. TO STDOUT is not available while masking rules apply/);
  });

  it("delivers LISTEN/NOTIFY notifications through the agent", async () => {
    const listener = new pg.Client({
      host: "127.0.0.1",
      port: h.port,
      user: "alice@example.com",
      password: alice,
      database: "app",
      ssl: { rejectUnauthorized: false },
    });
    await listener.connect();
    try {
      const payloads: string[] = [];
      let arrived = () => undefined as void;
      listener.on("notification", (n) => {
        payloads.push(`${n.channel}:${n.payload}`);
        arrived();
      });
      const next = () => new Promise<void>((resolve) => (arrived = resolve));
      await listener.query("LISTEN moat_events");
      let got = next();
      const notify = await psql(h, dba, "NOTIFY moat_events, 'hello'", { user: "dba@example.com" });
      expect(notify.stderr).toBe("");
      await got;
      // Alice's detectors mask what they find in a payload (a trigger may send a row's values).
      got = next();
      await psql(h, dba, "NOTIFY moat_events, 'paid with 4111 1111 1111 1111'", { user: "dba@example.com" });
      await got;
      expect(payloads).toEqual(["moat_events:hello", "moat_events:paid with ****"]);
      // The session is still in step after the asynchronous message.
      expect((await listener.query("SELECT 41 + 1 AS n")).rows[0]).toEqual({ n: 42 });
      // A notification names the notifying session by the process ID its client was given
      // (BackendKeyData), its own and another agent session's alike (review 61: the target's).
      const own = await clientAs("dba@example.com", dba);
      const other = await clientAs("dba@example.com", dba);
      try {
        const pids: number[] = [];
        let heard = () => undefined as void;
        own.on("notification", (n) => {
          pids.push(n.processId ?? 0);
          heard();
        });
        await own.query("LISTEN moat_pids");
        let got = new Promise<void>((r) => (heard = r));
        await own.query("NOTIFY moat_pids, 'mine'");
        await got;
        got = new Promise<void>((r) => (heard = r));
        await other.query("NOTIFY moat_pids, 'theirs'");
        await got;
        const pidOf = (c: pg.Client) => (c as unknown as { processID: number }).processID;
        expect(pids).toEqual([pidOf(own), pidOf(other)]);
        const backend = Number((await own.query("SELECT pg_backend_pid() AS p")).rows[0].p);
        expect(pidOf(own)).not.toBe(backend);
      } finally {
        await own.end();
        await other.end();
      }
    } finally {
      await listener.end();
    }
  });

  it("runs cursors: DECLARE, FETCH in pages, MOVE, CLOSE", async () => {
    const r = await psql(h, alice, "", {
      input:
        "BEGIN;\nDECLARE c CURSOR FOR SELECT id FROM analytics.events ORDER BY id;\nFETCH 3 FROM c;\nMOVE 10 IN c;\nFETCH 2 FROM c;\nCLOSE c;\nCOMMIT;\n",
    });
    expect(r.stderr).toBe("");
    expect(r.stdout.trim().split("\n")).toEqual(["1", "2", "3", "14", "15"]);
  });

  it("cancels a running query when psql gets SIGINT (Ctrl-C), over TLS, and only that query", async () => {
    const child = spawn(
      "psql",
      [
        `host=127.0.0.1 port=${h.port} user=alice@example.com dbname=app sslmode=require`,
        "-X",
        "-At",
        "-c",
        "SELECT pg_sleep(30)",
      ],
      { env: { ...process.env, PGPASSWORD: alice } },
    );
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    // A bystander session of the same user, in a query of its own: the cancel must not reach it.
    const bystander = await aliceClient();
    const other = bystander.query("SELECT pg_sleep(3), 'still here' AS v");
    try {
      await waitFor(
        async () =>
          (await pgServer.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")).trim() ===
          "1",
        10_000,
      );
      const sent = Date.now();
      child.kill("SIGINT");
      expect(await exited).toBe(1);
      expect(Date.now() - sent).toBeLessThan(5_000);
      expect(stderr).toMatch(/canceling statement due to user request/);
      expect((await other).rows[0].v).toBe("still here");
    } finally {
      child.kill("SIGKILL");
      await bystander.end();
    }
  });

  it("cancels a running query through the agent (psycopg2), and a guessed key cancels nothing", async () => {
    const script = `
import psycopg2, threading, time, sys
c = psycopg2.connect(host="127.0.0.1", port=${h.port}, user="alice@example.com", password=sys.argv[1], dbname="app", sslmode="require")
cur = c.cursor()
threading.Timer(0.5, c.cancel).start()
t = time.time()
try:
    cur.execute("SELECT pg_sleep(20)")
    print("not cancelled")
except psycopg2.extensions.QueryCanceledError:
    print("cancelled after %.1f" % (time.time() - t))
`;
    const r = await run("/usr/bin/python3", ["-c", script, alice]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/cancelled after [0-2]\./);

    // A cancel request with made-up keys goes nowhere (and does not crash the listener).
    await new Promise<void>((resolve) => {
      const s = connect(h.port, "127.0.0.1", () => {
        const b = Buffer.alloc(16);
        b.writeInt32BE(16, 0);
        b.writeInt32BE(80877102, 4);
        b.writeInt32BE(12345, 8);
        b.writeInt32BE(678, 12);
        s.end(b);
      });
      s.on("close", () => resolve());
    });
    expect((await psql(h, alice, "SELECT 1")).stdout.trim()).toBe("1");
  });
});

describe("psycopg 3 (libpq pipeline mode)", () => {
  it("answers a pipeline as PostgreSQL does when a statement in it is denied, masked in text and binary", async () => {
    const script = `
import json, sys, psycopg
def run(binary):
    out = []
    with psycopg.connect(host="127.0.0.1", port=${h.port}, user="alice@example.com", password=sys.argv[1], dbname="app",
                         sslmode="require", autocommit=True, prepare_threshold=0) as c:
        curs = []
        with c.pipeline() as p:
            for q in ["SELECT 1", "SELECT email FROM users WHERE id = 1", "SELECT * FROM secrets", "SELECT 3"]:
                cur = c.cursor(binary=binary)
                curs.append(cur)
                cur.execute(q)
            try:
                p.sync()
            except psycopg.errors.InsufficientPrivilege as e:
                out.append(e.sqlstate)
            for q in ["SELECT 4", "SELECT email FROM users WHERE id = 4"]:
                cur = c.cursor(binary=binary)
                curs.append(cur)
                cur.execute(q)
        for cur in curs:
            try:
                out.append(cur.fetchall())
            except psycopg.ProgrammingError:
                out.append("no result")
        out.append(c.execute("SELECT 5").fetchone()[0])
    return out
print(json.dumps([run(False), run(True)]))
`;
    const r = await run("/usr/bin/python3", ["-c", script, alice]);
    expect(r.stderr).toBe("");
    const expected = [
      "42501",
      [[1]],
      [["u***@example.com"]],
      "no result",
      "no result",
      [[4]],
      [["u***@example.com"]],
      5,
    ];
    expect(JSON.parse(r.stdout)).toEqual([expected, expected]);
  });
});

describe("pgjdbc (server-prepared statements, binary transfer, metadata, batches)", () => {
  it("masks through binary transfer, answers metadata, refuses a batch's write and cancels on timeout", async () => {
    const source = `
import java.sql.*;
import java.util.*;
public class Main {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties();
    p.setProperty("user", "alice@example.com");
    p.setProperty("password", a[1]);
    p.setProperty("sslmode", "require");
    p.setProperty("prepareThreshold", "1");
    try (Connection c = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + a[0] + "/app", p)) {
      List<String> emails = new ArrayList<>();
      try (PreparedStatement ps = c.prepareStatement("SELECT email FROM users WHERE id = ?")) {
        for (int i = 0; i < 3; i++) {
          ps.setInt(1, 2);
          try (ResultSet rs = ps.executeQuery()) { rs.next(); emails.add(rs.getString(1)); }
        }
      }
      System.out.println("emails=" + emails);
      int keys = 0;
      try (ResultSet rs = c.getMetaData().getPrimaryKeys(null, "public", "users")) { while (rs.next()) keys++; }
      System.out.println("primaryKeys=" + keys);
      try (PreparedStatement ps = c.prepareStatement("DELETE FROM users WHERE id = ?")) {
        ps.setInt(1, 1); ps.addBatch(); ps.setInt(1, 2); ps.addBatch();
        ps.executeBatch();
        System.out.println("batch=ran");
      } catch (BatchUpdateException e) { System.out.println("batch=" + e.getSQLState()); }
      c.setAutoCommit(false);
      int rows = 0, clear = 0;
      try (PreparedStatement ps = c.prepareStatement("SELECT email FROM users ORDER BY id")) {
        ps.setFetchSize(10);
        try (ResultSet rs = ps.executeQuery()) { while (rs.next()) { rows++; if (rs.getString(1).startsWith("user")) clear++; } }
      }
      c.commit();
      c.setAutoCommit(true);
      System.out.println("paged=" + rows + "/" + clear);
      try (Statement st = c.createStatement()) {
        st.setQueryTimeout(1);
        st.execute("SELECT pg_sleep(10)");
        System.out.println("timeout=none");
      } catch (SQLException e) { System.out.println("timeout=" + e.getSQLState()); }
      try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM users")) {
        rs.next(); System.out.println("after=" + rs.getInt(1));
      }
    }
  }
}
`;
    const dir = tempDir("moat-jdbc-");
    writeFileSync(join(dir, "Main.java"), source);
    const r = await run("java", [
      "-cp",
      "/usr/share/java/postgresql.jar",
      join(dir, "Main.java"),
      String(h.port),
      alice,
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout.trim().split("\n")).toEqual([
      "emails=[u***@example.com, u***@example.com, u***@example.com]",
      "primaryKeys=1",
      "batch=42501",
      "paged=100/0",
      "timeout=57014",
      "after=100",
    ]);
  });
});

describe("asyncpg (binary results, type introspection, pools)", () => {
  it("connects stock asyncpg over TLS, masks records and ranges it reads in binary, and resets pooled connections", async () => {
    await pgServer.sql(
      `CREATE TYPE mood AS ENUM ('sad', 'ok');
       CREATE DOMAIN card_no AS bigint;
       CREATE DOMAIN card_no2 AS card_no;
       CREATE TABLE cards (id int, n8 bigint, m mood, dn card_no2);
       INSERT INTO cards VALUES (1, 4111111111111111, 'ok', 4111111111111111);`,
      "app",
    );
    // asyncpg sends client_encoding 'utf-8' (quotes included), twice with server_settings; it reads
    // every result in binary, looks types up with a recursive catalog query, and resets a pooled
    // connection with "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;".
    const script = `
import asyncio, asyncpg, json, ssl, sys
async def main():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    args = dict(host="127.0.0.1", port=${h.port}, user="alice@example.com", password=sys.argv[1], database="app", ssl=ctx)
    out = {}
    pool = await asyncpg.create_pool(min_size=1, max_size=1, **args)
    async with pool.acquire() as c:
        out["ssl"] = c._transport.get_extra_info("ssl_object") is not None
        await c.execute("SET work_mem = '7MB'")
        out["n8"] = await c.fetchval("SELECT n8 FROM cards")
        out["row"] = await c.fetchval("SELECT ROW(n8) FROM cards")
        out["nested"] = await c.fetchval("SELECT ARRAY[ROW(ROW(n8))] FROM cards")
        out["range"] = await c.fetchval("SELECT int8range(n8, n8 + 1) FROM cards")
        # A domain column is described as its base type (bigint), and read as such.
        out["domain"] = await c.fetchval("SELECT dn FROM cards")
        out["clean_domain"] = await c.fetchval("SELECT 42::card_no2")
        out["clean"] = list(await c.fetchval("SELECT ROW(id, 42::bigint) FROM cards"))
        out["enum"] = await c.fetchval("SELECT m FROM cards")
        out["email"] = await c.fetchval("SELECT email FROM users WHERE id = 2")
        try:
            await c.execute("DELETE FROM users")
        except asyncpg.exceptions.InsufficientPrivilegeError as e:
            out["denied"] = e.sqlstate
    async with pool.acquire() as c:
        out["reset"] = await c.fetchval("SHOW work_mem")
    await pool.close()
    c = await asyncpg.connect(server_settings={"client_encoding": "UTF8"}, **args)
    out["twice"] = await c.fetchval("SELECT 1")
    await c.close()
    print(json.dumps(out))
asyncio.run(asyncio.wait_for(main(), 30))
`;
    const r = await run("/usr/bin/python3", ["-c", script, alice]);
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({
      ssl: true,
      n8: null,
      row: null,
      nested: null,
      range: null,
      domain: null,
      clean_domain: 42,
      clean: [1, 42],
      enum: "ok",
      email: "u***@example.com",
      denied: "42501",
      reset: "4MB",
      twice: 1,
    });
  });
});

describe("audit", () => {
  it("names the columns whose values were masked, not every column a detector reached (review 41)", async () => {
    await psql(h, alice, "SELECT count(*) AS n1 FROM users WHERE id = 2 -- audit-masked-1");
    await psql(h, alice, "SELECT id, note FROM users WHERE id = 2 -- audit-masked-2");
    await psql(h, alice, "SELECT id, note, email FROM users WHERE id = 1 -- audit-masked-3");
    const masked = (tag: string) =>
      h
        .events()
        .flatMap((e) =>
          e.detail.case === "dbQuery" && e.detail.value.text.endsWith(tag) ? [e.detail.value.maskedColumns] : [],
        );
    expect(masked("audit-masked-1")).toEqual([[]]);
    expect(masked("audit-masked-2")).toEqual([[]]);
    expect(masked("audit-masked-3")).toEqual([["users.note", "users.email"]]);
  });

  it("records sessions and statements with verdicts, and never the token nor a password a statement sets", async () => {
    // A password in the text stays out of the trail (the role does not exist: the statement fails
    // on the target and is recorded all the same); a reader's refused attempt too.
    await psql(h, dba, "ALTER ROLE nobody_here PASSWORD 'hunter2-secret'", { user: "dba@example.com" });
    // The same from a DO block: its code is kept, the literals in it are not.
    await psql(h, dba, "DO $$BEGIN EXECUTE 'ALTER ROLE nobody_here PASSWORD ''do-secret'''; END$$", {
      user: "dba@example.com",
    });
    await psql(h, reader, "CREATE USER MAPPING FOR nobody SERVER s OPTIONS (password 'mapping-secret')", {
      user: "reader@example.com",
    });
    const events = h.events();
    const types = new Set(events.map((e) => e.type));
    expect(types).toContain("session.start");
    expect(types).toContain("session.end");
    expect(types).toContain("db.query");
    const denied = events.find(
      (e) =>
        e.type === "db.query" && e.detail.case === "dbQuery" && e.detail.value.text.startsWith("DELETE FROM users"),
    );
    expect(denied?.verdict).toBe(2);
    const json = JSON.stringify(events, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    expect(json).not.toContain(alice);
    expect(json).not.toContain(alice.split(".")[2]);
    expect(json).not.toMatch(/hunter2-secret|mapping-secret|do-secret/);
    expect(json).toContain("ALTER ROLE nobody_here PASSWORD '***'");
    expect(json).toContain("DO $$BEGIN EXECUTE '***'; END$$");
  });

  it("has an answered statement's event in the spool file before the session's next answer (kill -9 safe)", async () => {
    const inFile = (text: string) => {
      const dir = join(h.dataDir, "audit");
      return readdirSync(dir)
        .filter((n) => n.endsWith(".seg"))
        .some((n) => readFileSync(join(dir, n)).includes(text));
    };
    const c = await aliceClient();
    try {
      for (const [first, next] of [
        ["SELECT 'first-answered'", "SELECT 'next-answered'"],
        ["DELETE FROM users WHERE id = 'first-refused'", "SELECT 'after-refused'"],
      ] as const) {
        await c.query(first).catch(() => undefined);
        await c.query(next);
        expect(inFile(first.split("'")[1] as string), first).toBe(true);
      }
      // Pipelined: both answers can come in one chunk; the next message's answer comes after both.
      await Promise.all([c.query("SELECT 'piped-1'"), c.query("SELECT 'piped-2'")]);
      await c.query("SELECT 1");
      expect(inFile("piped-1") && inFile("piped-2")).toBe(true);
    } finally {
      await c.end();
    }
  });

  it("records an implicit commit that fails (a deferred constraint) after the statements it undid", async () => {
    const asDba = { user: "dba@example.com" };
    const setup = await psql(
      h,
      dba,
      "CREATE TABLE IF NOT EXISTS parents (id int PRIMARY KEY); CREATE TABLE IF NOT EXISTS children (pid int REFERENCES parents DEFERRABLE INITIALLY DEFERRED)",
      asDba,
    );
    expect(setup.stderr).toBe("");
    // A simple query: its statement completes, the commit at its end fails.
    expect((await psql(h, dba, "INSERT INTO children VALUES (41)", asDba)).stderr).toMatch(/violates foreign key/);
    // The extended protocol (node-postgres): the commit at the Sync fails.
    const c = await clientAs("dba@example.com", dba);
    try {
      await expect(c.query("INSERT INTO children VALUES ($1)", [42])).rejects.toThrow(/violates foreign key/);
    } finally {
      await c.end();
    }
    const queries = h
      .events()
      .flatMap((e) => (e.type === "db.query" && e.detail.case === "dbQuery" ? [{ e, q: e.detail.value }] : []));
    const failure = /^failed on the target: insert or update on table "children" violates foreign key constraint/;
    // The simple query's statement is still the one at hand when its commit fails: it carries the error.
    const simple = queries.find(({ q }) => q.text === "INSERT INTO children VALUES (41)");
    expect(simple?.e.message).toMatch(failure);
    // At a Sync no statement is: the commit is an event of its own, after the statement it undid.
    const i = queries.findIndex(({ q }) => q.text.startsWith("INSERT INTO children VALUES ($1)"));
    const j = queries.findIndex(({ q }, k) => k > i && q.text === "-- commit at Sync (implicit transaction)");
    expect(i).toBeGreaterThanOrEqual(0);
    expect(j).toBeGreaterThan(i);
    expect(queries[j]?.e.message).toMatch(failure);
    expect(queries[j]?.e.verdict).toBe(queries[i]?.e.verdict);
    expect(await pgServer.sql("SELECT count(*) FROM children", "app")).toMatch(/^0/);
  });

  it("keeps secrets out of bound parameters, EXECUTE arguments, error messages and the application name (review 18)", async () => {
    const dbaPsql = (sql: string, env?: Record<string, string>) => psql(h, dba, sql, { user: "dba@example.com", env });
    // A stand-in for dblink's function (the extension is not installed): the name is what counts.
    await dbaPsql(
      "CREATE OR REPLACE FUNCTION public.dblink_connect(text, text) RETURNS text LANGUAGE sql AS $$SELECT 'OK'$$",
    );
    const c = await clientAs("dba@example.com", dba);
    try {
      // node-postgres sends its parameters in a Bind.
      const bound = await c.query("SELECT dblink_connect('c1', $1) AS r", ["host=h password=bind-secret"]);
      expect(bound.rows).toEqual([{ r: "OK" }]);
      // EXECUTE of a prepared dblink call, its argument in the EXECUTE.
      await c.query("PREPARE conn_p(text) AS SELECT dblink_connect('c2', $1)");
      expect((await c.query("EXECUTE conn_p('password=execute-secret')")).rows).toEqual([{ dblink_connect: "OK" }]);
      // set_config with its name and value bound (review 19).
      await c.query("SELECT set_config($1, $2, false)", ["app.password", "param-secret"]);
    } finally {
      await c.end();
    }
    // The PREPARE and its EXECUTE in one message (refused: the EXECUTE's statement is not known
    // yet when it is decided; recorded all the same).
    const both = await dbaPsql(
      "PREPARE conn_q(text) AS SELECT dblink_connect('c3', $1); EXECUTE conn_q('password=same-secret')",
    );
    expect(both.stderr).toMatch(/not prepared through Moat/);
    // A statement the parser refuses, the password unquoted or in double quotes; and one the
    // target refuses, quoting it.
    await dbaPsql("ALTER ROLE nobody_here PASSWORD bare-secret");
    await dbaPsql('ALTER ROLE nobody_here PASSWORD "quoted-secret"');
    const sub = await dbaPsql("CREATE SUBSCRIPTION s18 CONNECTION 'password=correct message-secret' PUBLICATION p");
    expect(sub.stderr).toMatch(/message-secret/); // the client sees its own error; the trail does not
    // A client's application_name naming a password.
    await dbaPsql("SELECT 1", { PGAPPNAME: "etl password=app-secret" });
    const events = h.events();
    const json = JSON.stringify(events, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    expect(json).not.toMatch(
      /param-secret|bind-secret|execute-secret|same-secret|bare-secret|quoted-secret|message-secret|app-secret/,
    );
    expect(json).toContain("SELECT dblink_connect('***', $1) AS r -- parameters: ***");
    expect(json).toContain("EXECUTE conn_p('***')");
  });
});
