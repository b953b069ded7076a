// set_config is SET by another name: with constant arguments it needs what the equivalent SET
// needs, and pg_dump's `set_config(name, ...) FROM pg_settings WHERE name = '<setting>'` is read as
// the constant setting it is, in exactly that shape. Everything else stays an admin function.
import { beforeAll, describe, expect, it } from "vitest";
import {
  createClassifier,
  loadSqlParser,
  REASON_LEXICAL_CHANGE,
  type Classifier,
  type StatementInfo,
} from "./index.js";
import { ON, statementsOf, summarize } from "./test-helpers.js";

let classifier: Classifier;
beforeAll(async () => {
  await loadSqlParser();
  classifier = createClassifier({ cacheEntries: 0 });
});

const one = (sql: string): StatementInfo => {
  const statements = statementsOf(classifier.classify(sql, ON));
  expect(statements).toHaveLength(1);
  return statements[0]!;
};

const needsAdmin = (info: StatementInfo) => info.actions.some((use) => use.action === "db:admin");

/** set_config's own admin verdict, as every set_config had before. */
const ADMIN_CALL = { class: "admin", "db:admin": ["set_config"], "db:read": [] };
const ADMIN_CALL_ON_SETTINGS = { class: "admin", "db:admin": ["set_config"], "db:read": ["pg_settings"] };

/**
 * [setting as written, value, needs db:admin]: each through SET, SET LOCAL, set_config with
 * is_local false and true, and pg_dump's pg_settings form; all must agree with SET.
 */
const SETTINGS: Array<[string, string, boolean]> = [
  ["work_mem", "64MB", false],
  ["statement_timeout", "0", false],
  ["lock_timeout", "0", false],
  ["DateStyle", "ISO", false],
  ["IntervalStyle", "postgres", false],
  ["extra_float_digits", "3", false],
  ["synchronize_seqscans", "off", false],
  ["idle_in_transaction_session_timeout", "0", false],
  ["row_security", "off", false],
  ["restrict_nonsystem_relation_kind", "view, foreign-table", false],
  ["transaction_isolation", "serializable", false],
  ["my.custom_setting", "x", false],
  ["search_path", "public", false],
  ["Search_Path", "public", false],
  // SET ROLE NONE (the string 'none', as PostgreSQL compares it) returns to the login user.
  ["role", "none", false],
  ["ROLE", "none", false],
  ["role", "NONE", true],
  ["role", "postgres", true],
  ["Role", "postgres", true],
  ["session_authorization", "postgres", true],
  ["session_authorization", "default", true],
  ["SESSION_AUTHORIZATION", "postgres", true],
  ["session_replication_role", "replica", true],
  ["session_replication_role", "origin", true],
  // Settings no SET may change: the server refuses them (55P02); Moat says 42501 (review 55).
  ["ignore_system_indexes", "on", true],
  ["max_connections", "10", true],
  ["server_version", "99", true],
];

describe("set_config with constant arguments is SET", () => {
  const cases = SETTINGS.flatMap(([name, value, admin]) => [false, true].map((local) => [name, value, admin, local]));

  it.each(cases)("set_config('%s', '%s') (admin: %s, is_local: %s)", (name, value, admin, local) => {
    const set = one(`SET ${local ? "LOCAL " : ""}"${String(name)}" = '${String(value)}'`);
    const fn = one(`SELECT set_config('${String(name)}', '${String(value)}', ${String(local)})`);
    const qualified = one(`SELECT pg_catalog.set_config('${String(name)}', '${String(value)}', ${String(local)})`);
    const dump = one(
      `SELECT set_config(name, '${String(value)}', ${String(local)}) FROM pg_settings WHERE name = '${String(name)}'`,
    );
    expect(needsAdmin(set)).toBe(admin);
    for (const info of [fn, qualified, dump]) {
      expect(needsAdmin(info), info.text).toBe(admin);
      expect(info.searchPath, info.text).toEqual(set.searchPath);
      expect(info.searchPathLocal, info.text).toBe(set.searchPathLocal);
      expect(info.lexicalChange, info.text).toBeUndefined();
    }
    if (admin) {
      expect(summarize(fn)).toEqual(ADMIN_CALL);
      expect(summarize(dump)).toEqual(ADMIN_CALL_ON_SETTINGS);
    } else {
      // A SELECT: db:read, on nothing (or on the catalog view pg_settings, which the agent leaves
      // out of table scopes), and nothing for set_config.
      expect(set.statementClass).toBe("session");
      expect(summarize(fn)).toEqual({ class: "read", "db:read": [] });
      expect(summarize(qualified)).toEqual({ class: "read", "db:read": [] });
      expect(summarize(dump)).toEqual({ class: "read", "db:read": ["pg_settings"] });
    }
  });

  it("reports the function call and the search_path as SET does", () => {
    const info = one("SELECT set_config('work_mem', '1MB', false)");
    expect(info.functions).toEqual(["set_config"]);
    expect(info.searchPath).toBeUndefined();
    expect(one("SELECT set_config('search_path', 'a, \"B\"', false)").searchPath).toEqual(["a", "B"]);
    // Only the server's five whitespace characters separate names: \v is part of one.
    expect(one("SELECT set_config('search_path', E'x,\\vfoo', false)").searchPath).toEqual(["x", "\vfoo"]);
    expect(one("SELECT set_config('search_path', 'x', true)").searchPathLocal).toBe(true);
    // Every string spelling is the same constant to the server.
    for (const value of ["E'64MB'", "$$64MB$$", "$v$64MB$v$", "U&'64MB'"]) {
      expect(summarize(one(`SELECT set_config('work_mem', ${value}, false)`)), value).toEqual({
        class: "read",
        "db:read": [],
      });
    }
    expect(summarize(one("SELECT set_config(E'rol\\x65', 'x', false)"))).toEqual(ADMIN_CALL);
    // Next to other work: the SELECT needs what it needs besides.
    expect(summarize(one("SELECT set_config('work_mem', '1MB', false), x FROM t"))).toEqual({
      class: "read",
      "db:read": ["t"],
    });
  });

  it("keeps the lexical settings admin: a SELECT can carry more than the value past the encoding check", () => {
    for (const sql of [
      "SELECT set_config('standard_conforming_strings', 'off', false)",
      "SELECT set_config('client_encoding', 'UTF8', false)",
      "SELECT pg_catalog.set_config('Client_Encoding', 'SJIS', true)",
      "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'",
      "SELECT set_config(name, 'UTF8', false) FROM pg_settings WHERE name = 'client_encoding'",
    ]) {
      const info = one(sql);
      expect(needsAdmin(info), sql).toBe(true);
      expect(info.lexicalChange, sql).toBeUndefined();
    }
    // SET of them is unchanged: session, a lexical change, and what follows it in the message is dynamic.
    const [set, after] = statementsOf(classifier.classify("SET client_encoding = 'UTF8'; SELECT 1", ON));
    expect(set!.lexicalChange).toBe(true);
    expect(after!.reason).toBe(REASON_LEXICAL_CHANGE);
  });

  it("stays an admin function for anything but constants and a known setting", () => {
    for (const sql of [
      // privileged settings
      "SELECT set_config('role', 'postgres', false)",
      "SELECT set_config('session_authorization', 'postgres', false)",
      "SELECT set_config('session_replication_role', 'replica', true)",
      // names PostgreSQL would not take as written, or that JavaScript folds differently
      "SELECT set_config(' role', 'postgres', false)",
      "SELECT set_config('role ', 'postgres', false)",
      "SELECT set_config('\"role\"', 'postgres', false)",
      "SELECT set_config('', 'x', false)",
      "SELECT set_config('wor\u212a_mem', '1MB', false)",
      // computed or non-string arguments
      "SELECT set_config('rol' || 'e', 'postgres', false)",
      "SELECT set_config(lower('ROLE'), 'postgres', false)",
      "SELECT set_config('role'::text, 'postgres', false)",
      "SELECT set_config(current_setting('my.name'), 'postgres', false)",
      "SELECT set_config('work_mem', current_setting('my.value'), false)",
      "SELECT set_config('work_mem', 'x' || 'y', false)",
      "SELECT set_config('work_mem', '1MB'::text, false)",
      "SELECT set_config('work_mem', NULL, false)",
      "SELECT set_config('role', NULL, false)",
      "SELECT set_config('work_mem', 1, false)",
      "SELECT set_config('work_mem', '1MB', is_local) FROM t",
      "SELECT set_config('work_mem', '1MB', NULL)",
      "SELECT set_config(name, '1MB', false) FROM t",
      "SELECT set_config($1, '1MB', false)",
      "SELECT set_config('work_mem', $1, false)",
      // named arguments can reorder: not read
      "SELECT set_config(setting_name => 'work_mem', new_value => '1MB', is_local => false)",
      "SELECT set_config(new_value => 'postgres', setting_name => 'role', is_local => false)",
      // other arities and call forms
      "SELECT set_config('work_mem', '1MB')",
      "SELECT set_config('work_mem', '1MB', false, true)",
      "SELECT set_config(VARIADIC ARRAY['work_mem'])",
      "SELECT set_config('work_mem', '1MB', false) OVER ()",
      "SELECT set_config('work_mem', '1MB', false) FILTER (WHERE true)",
      "SELECT set_config(DISTINCT 'work_mem', '1MB', false)",
    ]) {
      const info = one(sql);
      expect(needsAdmin(info), sql).toBe(true);
      expect(info.searchPath, sql).toBeUndefined();
    }
  });

  it("treats a set_config of another schema as what it is (admin by name, never SET)", () => {
    for (const sql of [
      "SELECT myschema.set_config('work_mem', '1MB', false)",
      "SELECT public.set_config('search_path', 'x', false)",
      "SELECT pg_temp.set_config('work_mem', '1MB', false)",
      "SELECT other.pg_catalog.set_config('work_mem', '1MB', false)",
      "SELECT set_config(name, '1MB', false) FROM pg_settings WHERE name = 'work_mem' AND myschema.set_config('role', 'x', false) IS NULL",
      "SELECT myschema.set_config(name, '1MB', false) FROM pg_settings WHERE name = 'work_mem'",
    ]) {
      const info = one(sql);
      expect(needsAdmin(info), sql).toBe(true);
      expect(info.searchPath, sql).toBeUndefined();
    }
    // A quoted name of another spelling is not the built-in: a user function.
    expect(summarize(one("SELECT \"SET_CONFIG\"('work_mem', '1MB', false)"))).toEqual({
      class: "function",
      "db:function": ["SET_CONFIG"],
      "db:read": [],
    });
  });
});

describe("pg_dump's set_config(name, ...) FROM pg_settings WHERE name = '<setting>'", () => {
  const PG_DUMP =
    "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'";

  it("is the SET of that setting", () => {
    const info = one(PG_DUMP);
    expect(info.statementClass).toBe("read");
    expect(info.actions).toEqual([{ action: "db:read", tables: [{ name: "pg_settings" }] }]);
    expect(info.functions).toEqual(["set_config"]);
    expect(info.searchPath).toBeUndefined();
    expect(info.lexicalChange).toBeUndefined();
  });

  it("leaves nothing of pg_dump's set-up needing more than db:read, and its COPY db:copy-out", () => {
    // What pg_dump 15.18 sends before its catalog queries, and its COPY (PostgreSQL's log_statement=all).
    const needs = (sql: string) => one(sql).actions.map((use) => use.action);
    for (const sql of [
      "SELECT pg_catalog.set_config('search_path', '', false);",
      "SELECT pg_catalog.pg_is_in_recovery()",
      "SET DATESTYLE = ISO",
      "SET INTERVALSTYLE = POSTGRES",
      "SET extra_float_digits TO 3",
      "SET synchronize_seqscans TO off",
      "SET statement_timeout = 0",
      "SET lock_timeout = 0",
      "SET idle_in_transaction_session_timeout = 0",
      "SET row_security = off",
      PG_DUMP,
      "BEGIN",
      "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
      "RESET search_path",
      "SELECT pg_catalog.current_schemas(false)",
      "LOCK TABLE public.users IN ACCESS SHARE MODE",
    ]) {
      expect(
        needs(sql).filter((action) => action !== "db:read"),
        sql,
      ).toEqual([]);
    }
    expect(needs("COPY public.users (id, email) TO stdout;")).toEqual(["db:copy-out"]);
  });

  it("accepts only spellings of the same shape", () => {
    for (const sql of [
      "SELECT set_config(name, 'view', false) FROM pg_catalog.pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
      "SELECT pg_catalog.set_config(name, 'view', true) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
      "SELECT set_config(\"name\", '1MB', false) FROM pg_settings WHERE \"name\" = 'work_mem'",
      "select SET_CONFIG(NAME, '1MB', FALSE) from PG_SETTINGS where NAME = 'work_mem'",
      "SELECT set_config(name, '1MB', false) FROM ONLY pg_settings WHERE name = 'work_mem'",
      "SELECT set_config(name, '1MB', false) FROM pg_settings WHERE name OPERATOR(pg_catalog.=) 'work_mem'",
      "SELECT set_config(name, '1MB', 'on') FROM pg_settings WHERE name = E'work_mem'",
      "SELECT set_config(name, '1MB', false) FROM pg_settings WHERE name = 'DateStyle'",
      "SELECT set_config(name, 'none', false) FROM pg_settings WHERE name = 'role'",
      // Parentheses leave no trace in the parse tree: the same statement.
      "SELECT (set_config(name, '1MB', false)) FROM pg_settings WHERE (name = 'work_mem')",
    ]) {
      const info = one(sql);
      expect(info.statementClass, sql).toBe("read");
      expect(info.actions.map((use) => use.action)).toEqual(["db:read"]);
    }
    const path = one("SELECT set_config(name, 'a, b', true) FROM pg_settings WHERE name = 'search_path'");
    expect(path.searchPath).toEqual(["a", "b"]);
    expect(path.searchPathLocal).toBe(true);
    // Inside PREPARE, DECLARE and EXPLAIN ANALYZE: what the statement itself needs.
    for (const sql of [`PREPARE p AS ${PG_DUMP}`, `DECLARE c CURSOR FOR ${PG_DUMP}`, `EXPLAIN ANALYZE ${PG_DUMP}`]) {
      expect(summarize(one(sql)), sql).toEqual({ class: "read", "db:read": ["pg_settings"] });
    }
  });

  // Each could call set_config for another setting (or for every one), or is simply not the shape.
  const NOT_THE_SHAPE = [
    // privileged settings
    "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'role'",
    "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'session_authorization'",
    "SELECT set_config(name, 'replica', false) FROM pg_settings WHERE name = 'session_replication_role'",
    "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'ROLE'",
    // the WHERE clause
    "SELECT set_config(name, 'x', false) FROM pg_settings",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name LIKE '%'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name ILIKE 'ROLE'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name ~ '.'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name SIMILAR TO '%'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' OR true",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' OR name = 'role'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' AND true",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE (name = 'work_mem') IS NOT FALSE",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE NOT name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name <> 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name != 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name IS DISTINCT FROM 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name IN ('work_mem', 'role')",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = ANY (ARRAY['work_mem', 'role'])",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = (SELECT 'role')",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = current_setting('my.name')",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'wo' || 'rk_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'::text",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' COLLATE \"C\"",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = $1",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE 'work_mem' = name",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE lower(name) = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE setting = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE pg_settings.name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name OPERATOR(myschema.=) 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'no such setting'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = ''",
    // the FROM clause
    "SELECT set_config(name, 'x', false) FROM t WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM myschema.pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM db.pg_catalog.pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings s WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings AS s (name) WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings, t WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings JOIN t ON true WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings CROSS JOIN (VALUES ('role')) v(n) WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM (SELECT 'role' AS name) pg_settings WHERE name = 'role'",
    "SELECT set_config(name, 'x', false) FROM (SELECT * FROM pg_settings) s WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings TABLESAMPLE system (100) WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_show_all_settings() WHERE name = 'work_mem'",
    // the target list and the call
    "SELECT set_config(name, 'x', false), set_config('role', 'postgres', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false), name FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) AS v FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(setting, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name || '', 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(lower(name), 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name::text, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(pg_settings.name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, setting, false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, current_setting('my.value'), false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', name = 'role') FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, NULL, false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x') FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(new_value => 'x', setting_name => name, is_local => false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) || '' FROM pg_settings WHERE name = 'work_mem'",
    "SELECT coalesce(set_config(name, 'x', false)) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT * FROM set_config('role', 'x', false), pg_settings WHERE name = 'work_mem'",
    // other clauses
    "SELECT DISTINCT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT DISTINCT ON (name) set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' GROUP BY name",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' HAVING true",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' ORDER BY 1",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' LIMIT 1",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' OFFSET 0",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' FETCH FIRST 1 ROW ONLY",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' WINDOW w AS ()",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' FOR UPDATE",
    "SELECT set_config(name, 'x', false) INTO t2 FROM pg_settings WHERE name = 'work_mem'",
    "WITH s AS (SELECT 1) SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "WITH pg_settings AS (SELECT 'role' AS name) SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' UNION ALL SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'",
    "(SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem') UNION SELECT 'y'",
    // not at the top of the statement
    "SELECT * FROM (SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem') s",
    "SELECT (SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem')",
    "SELECT 1 WHERE EXISTS (SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem')",
    "WITH s AS (SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem') SELECT * FROM s",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' AND name IN (SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem')",
    "INSERT INTO t SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
    "COPY (SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem') TO STDOUT",
  ];

  it.each(NOT_THE_SHAPE)("stays an admin function: %s", (sql) => {
    const info = one(sql);
    expect(needsAdmin(info), JSON.stringify(info.actions)).toBe(true);
    expect(info.searchPath).toBeUndefined();
  });
});

describe("search_path values read as PostgreSQL reads them", () => {
  const path = (value: string) => one(`SELECT set_config('search_path', '${value}', false)`).searchPath;

  it("folds only ASCII letters of unquoted names, and keeps quoted ones", () => {
    expect(path("Public, ÉTÉ")).toEqual(["public", "ÉtÉ"]); // É is not ASCII: kept, T folded
    expect(path('"Public", x')).toEqual(["Public", "x"]);
  });

  it("cuts every name to 63 bytes of UTF-8, never inside a character", () => {
    const long = "a".repeat(70);
    expect(path(long)).toEqual(["a".repeat(63)]);
    expect(path(`"${long}"`)).toEqual(["a".repeat(63)]);
    // 62 ASCII bytes then a 2-byte character: it does not fit whole, so it goes.
    expect(path(`${"b".repeat(62)}é`)).toEqual(["b".repeat(62)]);
    expect(path("é".repeat(40))).toEqual(["é".repeat(31)]);
  });
});
