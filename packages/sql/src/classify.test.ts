import { beforeAll, describe, expect, it } from "vitest";
import { createClassifier, loadSqlParser, REASON_BACKSLASH, REASON_LEXICAL_CHANGE, type Classifier } from "./index.js";
import { classifyStatement } from "./classify-statement.js";
import { OFF, ON, statementsOf, summarize } from "./test-helpers.js";

let classifier: Classifier;
beforeAll(async () => {
  await loadSqlParser();
  classifier = createClassifier({ cacheEntries: 0 });
});

const one = (sql: string, lexical = ON) => {
  const statements = statementsOf(classifier.classify(sql, lexical));
  expect(statements).toHaveLength(1);
  return statements[0]!;
};

/**
 * [sql, expected summary]: the class, and for each action the tables (then functions) it needs.
 * Every action the statement needs must be listed: the summary is compared exactly.
 */
const CORPUS: Array<[string, Record<string, string | string[]>]> = [
  // --- reads
  ["SELECT 1", { class: "read", "db:read": [] }],
  ["VALUES (1), (2)", { class: "read", "db:read": [] }],
  ["SELECT * FROM t", { class: "read", "db:read": ["t"] }],
  ["select * from S.T", { class: "read", "db:read": ["s.t"] }],
  ['SELECT * FROM "S"."T"', { class: "read", "db:read": ["S.T"] }],
  ["SELECT * FROM db.s.t", { class: "read", "db:read": ["db.s.t"] }],
  ["TABLE t", { class: "read", "db:read": ["t"] }],
  ["SELECT * FROM ONLY s.t", { class: "read", "db:read": ["s.t"] }],
  ["SELECT * FROM a JOIN b USING (id) LEFT JOIN c ON true", { class: "read", "db:read": ["a", "b", "c"] }],
  [
    "SELECT * FROM a WHERE id IN (SELECT id FROM b) AND EXISTS (SELECT FROM c)",
    { class: "read", "db:read": ["a", "b", "c"] },
  ],
  ["SELECT (SELECT max(x) FROM b) FROM a", { class: "read", "db:read": ["b", "a"] }],
  ["SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.id = a.id) l", { class: "read", "db:read": ["a", "b"] }],
  ["SELECT 1 UNION SELECT x FROM a INTERSECT SELECT y FROM b", { class: "read", "db:read": ["a", "b"] }],
  ["SELECT * FROM t TABLESAMPLE SYSTEM (10)", { class: "read", "db:read": ["t"] }],
  ["SELECT lower(name), count(*), now(), coalesce(a, b) FROM t GROUP BY 1", { class: "read", "db:read": ["t"] }],
  ["SELECT pg_catalog.lower('X')", { class: "read", "db:read": [] }],
  ["SELECT extract(year FROM now()), substring('abc' FROM 2), current_user", { class: "read", "db:read": [] }],
  ["SELECT * FROM generate_series(1, 10) g", { class: "read", "db:read": [] }],
  ["SELECT * FROM pg_catalog.pg_class", { class: "read", "db:read": ["pg_catalog.pg_class"] }],
  // pg_subscription is metadata but for its connection string (psql's \dRs reads the rest).
  [
    "SELECT subname, subenabled FROM pg_catalog.pg_subscription WHERE subdbid = 1",
    { class: "read", "db:read": ["pg_catalog.pg_subscription"] },
  ],
  [
    "SELECT subname, subconninfo FROM pg_subscription",
    { class: "admin", "db:admin": ["pg_subscription"], "db:read": ["pg_subscription"] },
  ],
  // Catalogs holding secrets or other tables' data: password hashes, statistics' sample values,
  // large objects, other sessions' queries, server configuration.
  ["SELECT rolname, rolpassword FROM pg_authid", { class: "admin", "db:admin": ["pg_authid"], "db:read": [] }],
  ["SELECT * FROM pg_catalog.pg_shadow", { class: "admin", "db:admin": ["pg_catalog.pg_shadow"], "db:read": [] }],
  [
    "SELECT most_common_vals FROM pg_stats WHERE schemaname = 'vault'",
    { class: "admin", "db:admin": ["pg_stats"], "db:read": [] },
  ],
  ["SELECT data FROM pg_largeobject", { class: "admin", "db:admin": ["pg_largeobject"], "db:read": [] }],
  ["SELECT query FROM pg_stat_activity", { class: "admin", "db:admin": ["pg_stat_activity"], "db:read": [] }],
  [
    "TABLE pg_catalog.pg_hba_file_rules",
    { class: "admin", "db:admin": ["pg_catalog.pg_hba_file_rules"], "db:read": [] },
  ],
  [
    "SELECT * FROM pg_class c JOIN pg_statistic s ON s.starelid = c.oid",
    { class: "admin", "db:admin": ["pg_statistic"], "db:read": ["pg_class"] },
  ],
  [
    "SELECT query FROM pg_stat_get_activity(NULL)",
    { class: "admin", "db:admin": ["pg_stat_get_activity"], "db:read": [] },
  ],
  ["COPY pg_authid TO STDOUT", { class: "admin", "db:admin": ["pg_authid"], "db:copy-out": ["pg_authid"] }],
  [
    "SELECT * FROM information_schema.user_mapping_options",
    { class: "admin", "db:admin": ["information_schema.user_mapping_options"], "db:read": [] },
  ],
  ["SELECT query FROM pg_stat_statements", { class: "admin", "db:admin": ["pg_stat_statements"], "db:read": [] }],
  [
    "SELECT query FROM ext.pg_stat_statements(true)",
    { class: "admin", "db:admin": ["ext.pg_stat_statements"], "db:read": [] },
  ],
  ["SELECT * FROM pg_hba_file_rules()", { class: "admin", "db:admin": ["pg_hba_file_rules"], "db:read": [] }],
  // Another schema's table of that name is an ordinary table; a CTE of that name is the CTE.
  ["SELECT * FROM app.pg_stats", { class: "read", "db:read": ["app.pg_stats"] }],
  ["WITH pg_authid AS (SELECT 1 AS x) SELECT x FROM pg_authid", { class: "read", "db:read": [] }],
  ["SELECT currval('s'), lastval()", { class: "read", "db:read": [] }],
  ["SELECT x FROM t ORDER BY x USING <", { class: "read", "db:read": ["t"] }],
  ["SELECT a @> b, a || b, a ->> 'k' FROM t", { class: "read", "db:read": ["t"] }],
  // --- CTEs and their scoping
  ["WITH c AS (SELECT * FROM t) SELECT * FROM c", { class: "read", "db:read": ["t"] }],
  ["WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b", { class: "read", "db:read": [] }],
  // A plain CTE does not see itself or later CTEs: those names are tables.
  ["WITH a AS (SELECT * FROM a) SELECT * FROM a", { class: "read", "db:read": ["a"] }],
  ["WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", { class: "read", "db:read": ["b"] }],
  [
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    { class: "read", "db:read": [] },
  ],
  ["WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", { class: "read", "db:read": [] }],
  // A CTE defined in a subquery does not shadow the same-named table outside it.
  [
    "SELECT * FROM secrets, (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s",
    { class: "read", "db:read": ["secrets"] },
  ],
  [
    "SELECT (WITH secrets AS (SELECT 1) SELECT 1 FROM secrets), * FROM secrets",
    { class: "read", "db:read": ["secrets"] },
  ],
  ["WITH t AS (SELECT 1) SELECT * FROM s.t", { class: "read", "db:read": ["s.t"] }],
  ["WITH c AS (SELECT 1) SELECT * FROM (SELECT * FROM c) x", { class: "read", "db:read": [] }],
  // --- locking reads
  ["SELECT * FROM t FOR UPDATE", { class: "write", "db:write": ["t"], "db:read": [] }],
  // Changing a catalog is administration, whatever table scopes say (review 14).
  [
    "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
    { class: "admin", "db:admin": ["pg_settings"], "db:write": ["pg_settings"] },
  ],
  [
    "UPDATE pg_catalog.pg_class SET relname = 'x'",
    { class: "admin", "db:admin": ["pg_catalog.pg_class"], "db:write": ["pg_catalog.pg_class"] },
  ],
  [
    "INSERT INTO information_schema.sql_features VALUES ('x')",
    {
      class: "admin",
      "db:admin": ["information_schema.sql_features"],
      "db:write": ["information_schema.sql_features"],
    },
  ],
  [
    "COPY pg_description FROM STDIN",
    { class: "admin", "db:admin": ["pg_description"], "db:copy-in": ["pg_description"] },
  ],
  ["UPDATE public.pg_class SET x = 1", { class: "write", "db:write": ["public.pg_class"] }],
  ["COPY pg_class TO STDOUT", { class: "copy-out", "db:copy-out": ["pg_class"] }],
  ["SELECT * FROM t FOR SHARE", { class: "write", "db:write": ["t"], "db:read": [] }],
  ["SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", { class: "write", "db:write": ["t"], "db:read": [] }],
  ["SELECT * FROM t FOR KEY SHARE NOWAIT", { class: "write", "db:write": ["t"], "db:read": [] }],
  ["SELECT * FROM a JOIN b ON true FOR UPDATE OF a", { class: "write", "db:write": ["a"], "db:read": ["b"] }],
  ["SELECT * FROM a x JOIN b y ON true FOR UPDATE OF y", { class: "write", "db:write": ["b"], "db:read": ["a"] }],
  [
    "SELECT * FROM a WHERE id IN (SELECT id FROM b) FOR UPDATE",
    { class: "write", "db:write": ["a"], "db:read": ["b"] },
  ],
  ["SELECT * FROM (SELECT * FROM a) s FOR UPDATE", { class: "write", "db:write": ["a"], "db:read": [] }],
  [
    "SELECT * FROM a WHERE id IN (SELECT id FROM b FOR UPDATE)",
    { class: "write", "db:write": ["b"], "db:read": ["a"] },
  ],
  [
    "WITH c AS (SELECT * FROM a) SELECT * FROM c, b FOR UPDATE",
    { class: "write", "db:write": ["b"], "db:read": ["a"] },
  ],
  // --- writes
  ["INSERT INTO t VALUES (1)", { class: "write", "db:write": ["t"] }],
  ["INSERT INTO s.t (a) SELECT a FROM u", { class: "write", "db:write": ["s.t"], "db:read": ["u"] }],
  ["INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2", { class: "write", "db:write": ["t"] }],
  [
    "INSERT INTO t SELECT * FROM s RETURNING (SELECT 1 FROM u)",
    { class: "write", "db:write": ["t"], "db:read": ["s", "u"] },
  ],
  ["UPDATE t SET x = 1 WHERE id = 2", { class: "write", "db:write": ["t"] }],
  ["UPDATE t SET x = u.x FROM u WHERE t.id = u.id", { class: "write", "db:write": ["t"], "db:read": ["u"] }],
  ["DELETE FROM t USING u WHERE t.id = u.id RETURNING *", { class: "write", "db:write": ["t"], "db:read": ["u"] }],
  [
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = 1 WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    { class: "write", "db:write": ["t"], "db:read": ["s"] },
  ],
  // A DML target is never a CTE (PostgreSQL refuses), so it is reported as a table.
  ["WITH t AS (SELECT 1) DELETE FROM t", { class: "write", "db:write": ["t"] }],
  // --- writable CTEs, wherever they are
  ["WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", { class: "write", "db:write": ["t"], "db:read": [] }],
  [
    "SELECT * FROM (WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x) s",
    { class: "write", "db:write": ["t"], "db:read": [] },
  ],
  [
    "SELECT 1 WHERE EXISTS (WITH x AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT * FROM x)",
    { class: "write", "db:write": ["t"], "db:read": [] },
  ],
  ["INSERT INTO a WITH x AS (DELETE FROM b RETURNING *) SELECT * FROM x", { class: "write", "db:write": ["a", "b"] }],
  [
    "UPDATE t SET x = (WITH d AS (DELETE FROM u RETURNING 1) SELECT 1 FROM d)",
    { class: "write", "db:write": ["t", "u"] },
  ],
  // --- DDL
  ["CREATE TABLE t (id int)", { class: "ddl", "db:ddl": ["t"] }],
  ["CREATE TABLE t (id int REFERENCES u (id))", { class: "ddl", "db:ddl": ["t", "u"] }],
  ["CREATE TABLE t AS SELECT * FROM s", { class: "ddl", "db:ddl": ["t"], "db:read": ["s"] }],
  ["SELECT * INTO t2 FROM s", { class: "ddl", "db:ddl": ["t2"], "db:read": ["s"] }],
  ["CREATE MATERIALIZED VIEW mv AS SELECT * FROM t WITH NO DATA", { class: "ddl", "db:ddl": ["mv"], "db:read": ["t"] }],
  ["CREATE VIEW v AS SELECT * FROM t", { class: "ddl", "db:ddl": ["v"], "db:read": ["t"] }],
  ["ALTER TABLE s.t ADD COLUMN c int", { class: "ddl", "db:ddl": ["s.t"] }],
  ["ALTER TABLE t RENAME TO u", { class: "ddl", "db:ddl": ["t"] }],
  ["ALTER TABLE t SET SCHEMA s", { class: "ddl", "db:ddl": ["t"] }],
  ["DROP TABLE a.b, c", { class: "ddl", "db:ddl": ["a.b", "c"] }],
  ["DROP VIEW IF EXISTS v CASCADE", { class: "ddl", "db:ddl": ["v"] }],
  ["CREATE INDEX i ON t (x)", { class: "ddl", "db:ddl": ["t"] }],
  ["CREATE INDEX i ON t (lower(x))", { class: "ddl", "db:ddl": ["t"] }],
  ["CREATE SEQUENCE s", { class: "ddl", "db:ddl": ["s"] }],
  ["CREATE SCHEMA s", { class: "ddl", "db:ddl": [] }],
  ["CREATE SCHEMA s CREATE TABLE t (id int)", { class: "ddl", "db:ddl": ["t"] }],
  ["CREATE TYPE mood AS ENUM ('a', 'b')", { class: "ddl", "db:ddl": [] }],
  ["CREATE DOMAIN d AS int CHECK (VALUE > 0)", { class: "ddl", "db:ddl": [] }],
  ["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", { class: "ddl", "db:ddl": [] }],
  ["CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t $$", { class: "ddl", "db:ddl": [] }],
  ["CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", { class: "ddl", "db:ddl": ["t"] }],
  // The rule's action is recorded too (conservative: creating it needs what it would do).
  ["CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u", { class: "ddl", "db:ddl": ["t"], "db:write": ["u"] }],
  ["CREATE POLICY p ON t USING (owner = current_user)", { class: "ddl", "db:ddl": ["t"] }],
  ["DROP POLICY p ON s.t", { class: "ddl", "db:ddl": ["s.t"] }],
  ["COMMENT ON TABLE t IS 'x'", { class: "ddl", "db:ddl": ["t"] }],
  ["COMMENT ON COLUMN s.t.c IS 'x'", { class: "ddl", "db:ddl": ["s.t"] }],
  ["ALTER SEQUENCE s RESTART", { class: "ddl", "db:ddl": ["s"] }],
  ["CREATE STATISTICS st ON a, b FROM t", { class: "ddl", "db:ddl": ["t"] }],
  ["ALTER FUNCTION f() SECURITY DEFINER", { class: "ddl", "db:ddl": [] }],
  // --- admin
  ["ALTER TABLE t OWNER TO bob", { class: "admin", "db:admin": ["t"], "db:ddl": ["t"] }],
  ["ALTER FUNCTION f() OWNER TO bob", { class: "admin", "db:admin": [] }],
  ["GRANT SELECT ON t TO bob", { class: "admin", "db:admin": ["t"] }],
  ["REVOKE ALL ON ALL TABLES IN SCHEMA public FROM bob", { class: "admin", "db:admin": [] }],
  ["GRANT admin TO bob", { class: "admin", "db:admin": [] }],
  ["CREATE ROLE bob LOGIN PASSWORD 'x'", { class: "admin", "db:admin": [] }],
  ["ALTER ROLE bob SET search_path = evil", { class: "admin", "db:admin": [] }],
  ["DROP ROLE bob", { class: "admin", "db:admin": [] }],
  ["ALTER SYSTEM SET work_mem = '1GB'", { class: "admin", "db:admin": [] }],
  ["LOAD 'auto_explain'", { class: "admin", "db:admin": [] }],
  ["CREATE DATABASE d", { class: "admin", "db:admin": [] }],
  ["DROP DATABASE d", { class: "admin", "db:admin": [] }],
  ["ALTER DATABASE d SET work_mem = 1", { class: "admin", "db:admin": [] }],
  ["CREATE EXTENSION dblink", { class: "admin", "db:admin": [] }],
  ["DROP EXTENSION dblink", { class: "admin", "db:admin": [] }],
  ["ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", { class: "admin", "db:admin": [] }],
  ["CREATE SERVER srv FOREIGN DATA WRAPPER postgres_fdw", { class: "admin", "db:admin": [] }],
  ["CREATE USER MAPPING FOR bob SERVER srv", { class: "admin", "db:admin": [] }],
  ["IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO t", { class: "admin", "db:admin": [] }],
  ["SECURITY LABEL ON TABLE t IS 'x'", { class: "admin", "db:admin": [] }],
  ["CREATE TABLESPACE ts LOCATION '/x'", { class: "admin", "db:admin": [] }],
  ["DROP TABLESPACE ts", { class: "admin", "db:admin": [] }],
  ["CREATE SUBSCRIPTION sub CONNECTION 'x' PUBLICATION p", { class: "admin", "db:admin": [] }],
  ["CREATE PUBLICATION p FOR TABLE t", { class: "admin", "db:admin": ["t"] }],
  ["VACUUM t", { class: "admin", "db:admin": ["t"] }],
  ["VACUUM (ANALYZE) t", { class: "admin", "db:admin": ["t"] }],
  ["ANALYZE t", { class: "admin", "db:admin": ["t"] }],
  ["CLUSTER t USING i", { class: "admin", "db:admin": ["t"] }],
  ["REINDEX TABLE t", { class: "admin", "db:admin": ["t"] }],
  ["CHECKPOINT", { class: "admin", "db:admin": [] }],
  ["REASSIGN OWNED BY a TO b", { class: "admin", "db:admin": [] }],
  ["DROP OWNED BY a", { class: "admin", "db:admin": [] }],
  ["CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", { class: "admin", "db:admin": [] }],
  ["PREPARE TRANSACTION 'x'", { class: "admin", "db:admin": [] }],
  ["COMMIT PREPARED 'x'", { class: "admin", "db:admin": [] }],
  ["ROLLBACK PREPARED 'x'", { class: "admin", "db:admin": [] }],
  ["SET ROLE admin", { class: "admin", "db:admin": [] }],
  ["SET LOCAL ROLE admin", { class: "admin", "db:admin": [] }],
  ["SET SESSION AUTHORIZATION admin", { class: "admin", "db:admin": [] }],
  ['SET "ROLE" = admin', { class: "admin", "db:admin": [] }],
  ["SET session_replication_role = replica", { class: "admin", "db:admin": [] }],
  // Settings only a superuser may change (the server's own logging among them).
  ["SET log_statement = 'none'", { class: "admin", "db:admin": [] }],
  ["SET zero_damaged_pages = on", { class: "admin", "db:admin": [] }],
  ["SET LOCAL pgaudit.log = 'none'", { class: "admin", "db:admin": [] }],
  ["RESET log_min_duration_statement", { class: "admin", "db:admin": [] }],
  ["SET work_mem = '64MB'", { class: "session" }],
  ["SET app.tenant_id = '42'", { class: "session" }],
  // Lifting a read-only default (an operator's backstop) is a write; keeping or setting it is not.
  ["SET default_transaction_read_only = off", { class: "write", "db:write": [] }],
  ["SET SESSION transaction_read_only TO 0", { class: "write", "db:write": [] }],
  ["SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", { class: "write", "db:write": [] }],
  ["SET TRANSACTION READ WRITE", { class: "write", "db:write": [] }],
  ["BEGIN READ WRITE", { class: "write", "db:write": [] }],
  ["START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", { class: "write", "db:write": [] }],
  [
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    { class: "admin", "db:admin": ["set_config"], "db:read": [] },
  ],
  ["RESET transaction_read_only", { class: "write", "db:write": [] }],
  ["SET LOCAL transaction_read_only TO DEFAULT", { class: "write", "db:write": [] }],
  ["SET auto_explain.log_min_duration = 0", { class: "admin", "db:admin": [] }],
  // A procedural language's start-up code runs as the server when the language loads (review 34).
  ["SET plperl.on_plperl_init = 'system(\"id\")'", { class: "admin", "db:admin": [] }],
  ["SET pltcl.start_proc = 'public.f'", { class: "admin", "db:admin": [] }],
  ["SET SESSION pltclu.start_proc = 'public.f'", { class: "admin", "db:admin": [] }],
  ["RESET plv8.start_proc", { class: "admin", "db:admin": [] }],
  ["SET app.tenant = '42'", { class: "session" }],
  ["SET default_transaction_read_only = on", { class: "session" }],
  ["RESET default_transaction_read_only", { class: "session" }],
  ["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", { class: "session" }],
  ["BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", { class: "session" }],
  ["BEGIN", { class: "session" }],
  ["SELECT set_config('default_transaction_read_only', 'on', false)", { class: "read", "db:read": [] }],
  // --- other writes
  ["LOCK TABLE t IN ACCESS EXCLUSIVE MODE", { class: "write", "db:write": ["t"] }],
  ["TRUNCATE a, s.b", { class: "write", "db:write": ["a", "s.b"] }],
  ["REFRESH MATERIALIZED VIEW CONCURRENTLY mv", { class: "write", "db:write": ["mv"] }],
  ["NOTIFY chan, 'payload'", { class: "write", "db:write": [] }],
  ["SELECT nextval('s')", { class: "write", "db:write": ["nextval"], "db:read": [] }],
  ["SELECT setval('s', 1)", { class: "write", "db:write": ["setval"], "db:read": [] }],
  ["SELECT pg_notify('c', 'x')", { class: "write", "db:write": ["pg_notify"], "db:read": [] }],
  ["SELECT pg_advisory_lock(1)", { class: "write", "db:write": ["pg_advisory_lock"], "db:read": [] }],
  ["SELECT pg_try_advisory_xact_lock(1)", { class: "write", "db:write": ["pg_try_advisory_xact_lock"], "db:read": [] }],
  ["SELECT pg_advisory_lock_shared(1)", { class: "write", "db:write": ["pg_advisory_lock_shared"], "db:read": [] }],
  ["SELECT pg_advisory_unlock_all()", { class: "read", "db:read": [] }],
  // information_schema's own functions, qualified (pgjdbc's getPrimaryKeys, review 46); unqualified,
  // or another name there, a user's function.
  ["SELECT (information_schema._pg_expandarray(ARRAY[1])).n", { class: "read", "db:read": [] }],
  ["SELECT _pg_expandarray(ARRAY[1])", { class: "function", "db:function": ["_pg_expandarray"], "db:read": [] }],
  [
    "SELECT information_schema.my_function(1)",
    { class: "function", "db:function": ["information_schema.my_function"], "db:read": [] },
  ],
  ["SELECT pg_advisory_unlock(1), pg_advisory_unlock_shared(2)", { class: "read", "db:read": [] }],
  // --- EXPLAIN
  ["EXPLAIN SELECT * FROM t", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN DELETE FROM t", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN (ANALYZE false) DELETE FROM t", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN (ANALYZE off, VERBOSE) DELETE FROM t", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN (ANALYZE 0) DELETE FROM t", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN ANALYZE DELETE FROM t", { class: "write", "db:write": ["t"] }],
  ["EXPLAIN (ANALYZE) UPDATE t SET x = 1 FROM u", { class: "write", "db:write": ["t"], "db:read": ["u"] }],
  ["EXPLAIN (ANALYZE true, BUFFERS) SELECT * FROM t", { class: "read", "db:read": ["t"] }],
  ["EXPLAIN (ANALYZE 'on') DELETE FROM t", { class: "write", "db:write": ["t"] }],
  ["EXPLAIN (ANALYZE 1) DELETE FROM t", { class: "write", "db:write": ["t"] }],
  ["EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", { class: "write", "db:write": ["t"], "db:read": [] }],
  ["EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT * FROM t", { class: "ddl", "db:ddl": ["t2"], "db:read": ["t"] }],
  // Planning may evaluate functions (constant folding, estimates): their actions stay.
  ["EXPLAIN SELECT my_func(1) FROM t", { class: "function", "db:function": ["my_func"], "db:read": ["t"] }],
  ["EXPLAIN SELECT pg_terminate_backend(1)", { class: "admin", "db:admin": ["pg_terminate_backend"], "db:read": [] }],
  // --- COPY
  ["COPY t TO STDOUT", { class: "copy-out", "db:copy-out": ["t"] }],
  ["COPY s.t (a, b) TO STDOUT WITH (FORMAT csv)", { class: "copy-out", "db:copy-out": ["s.t"] }],
  [
    "COPY (SELECT * FROM t JOIN u USING (id)) TO STDOUT",
    { class: "copy-out", "db:copy-out": ["t", "u"], "db:read": ["t", "u"] },
  ],
  ["COPY (DELETE FROM t RETURNING *) TO STDOUT", { class: "write", "db:write": ["t"], "db:copy-out": ["t"] }],
  ["COPY t FROM STDIN", { class: "copy-in", "db:copy-in": ["t"] }],
  ["COPY t FROM STDIN WITH (FORMAT binary) WHERE x > 1", { class: "copy-in", "db:copy-in": ["t"] }],
  ["COPY t FROM STDIN WHERE f(x)", { class: "function", "db:function": ["f"], "db:copy-in": ["t"] }],
  ["COPY t TO '/tmp/x'", { class: "admin", "db:admin": ["t"] }],
  ["COPY t FROM '/etc/passwd'", { class: "admin", "db:admin": ["t"] }],
  ["COPY t FROM PROGRAM 'curl x'", { class: "admin", "db:admin": ["t"] }],
  ["COPY (SELECT * FROM t) TO PROGRAM 'sh'", { class: "admin", "db:admin": [], "db:read": ["t"] }],
  // --- dynamic
  ["DO $$ BEGIN DELETE FROM t; END $$", { class: "dynamic", "db:dynamic": [] }],
  ["DO LANGUAGE plpgsql 'BEGIN NULL; END'", { class: "dynamic", "db:dynamic": [] }],
  ["EXECUTE p", { class: "dynamic", "db:dynamic": [] }],
  ["EXECUTE p (1, 'a')", { class: "dynamic", "db:dynamic": [] }],
  ["EXECUTE p (pg_terminate_backend(1))", { class: "dynamic", "db:dynamic": [], "db:admin": ["pg_terminate_backend"] }],
  ["EXPLAIN EXECUTE p", { class: "dynamic", "db:dynamic": [], "db:read": [] }],
  ["CREATE TABLE x AS EXECUTE p", { class: "dynamic", "db:dynamic": [], "db:ddl": ["x"] }],
  [
    "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')",
    { class: "dynamic", "db:dynamic": ["query_to_xml"], "db:read": [] },
  ],
  [
    "SELECT table_to_xml('secrets', true, true, '')",
    { class: "dynamic", "db:dynamic": ["table_to_xml"], "db:read": [] },
  ],
  [
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    { class: "dynamic", "db:dynamic": ["cursor_to_xml"], "db:read": [] },
  ],
  [
    "SELECT * FROM dblink('conn', 'DELETE FROM t') AS x(a int)",
    { class: "dynamic", "db:dynamic": ["dblink"], "db:read": [] },
  ],
  ["SELECT * FROM ts_stat('SELECT v FROM docs')", { class: "dynamic", "db:dynamic": ["ts_stat"], "db:read": [] }],
  // --- functions
  ["SELECT my_func()", { class: "function", "db:function": ["my_func"], "db:read": [] }],
  // SQL/JSON and MERGE syntax of newer servers is a plain function call on PostgreSQL 15 (a user's
  // function of that name would run): checked as a call of that name.
  ["SELECT merge_action()", { class: "function", "db:function": ["merge_action"], "db:read": [] }],
  ["SELECT json_value('{}', '$')", { class: "function", "db:function": ["json_value"], "db:read": [] }],
  ["SELECT json_query('{}', '$')", { class: "function", "db:function": ["json_query"], "db:read": [] }],
  ["SELECT json_exists('{}', '$')", { class: "function", "db:function": ["json_exists"], "db:read": [] }],
  [
    "SELECT json_scalar(1), json_serialize('{}')",
    { class: "function", "db:function": ["json_scalar", "json_serialize"], "db:read": [] },
  ],
  ["SELECT json('{}')", { class: "function", "db:function": ["json"], "db:read": [] }],
  ["SELECT json_array(1, 2)", { class: "function", "db:function": ["json_array"], "db:read": [] }],
  [
    "SELECT json_arrayagg(v), json_objectagg(k : v) FROM t",
    { class: "function", "db:function": ["json_arrayagg", "json_objectagg"], "db:read": ["t"] },
  ],
  [
    "SELECT * FROM json_table('{}', '$' COLUMNS (a int PATH '$.a'))",
    { class: "function", "db:function": ["json_table"], "db:read": [] },
  ],
  ["SELECT json_object('a' : 1), json_object('{a,1}')", { class: "read", "db:read": [] }],
  ["SELECT s.my_func(x) FROM t", { class: "function", "db:function": ["s.my_func"], "db:read": ["t"] }],
  ["SELECT myschema.lower('x')", { class: "function", "db:function": ["myschema.lower"], "db:read": [] }],
  ["SELECT \"Lower\"('x')", { class: "function", "db:function": ["Lower"], "db:read": [] }],
  ["SELECT * FROM my_srf() f", { class: "function", "db:function": ["my_srf"], "db:read": [] }],
  ["SELECT my_agg(x) OVER (ORDER BY y) FROM t", { class: "function", "db:function": ["my_agg"], "db:read": ["t"] }],
  ["SELECT 1 <~> 2", { class: "function", "db:function": ["OPERATOR(<~>)"], "db:read": [] }],
  ["SELECT 1 OPERATOR(myschema.+) 2", { class: "function", "db:function": ["OPERATOR(myschema.+)"], "db:read": [] }],
  ["SELECT 1 OPERATOR(pg_catalog.+) 2", { class: "read", "db:read": [] }],
  [
    "SELECT * FROM t TABLESAMPLE system_rows(10)",
    { class: "function", "db:function": ["system_rows"], "db:read": ["t"] },
  ],
  ["CALL myproc(1)", { class: "function", "db:function": ["myproc"] }],
  ["CALL s.proc(my_func())", { class: "function", "db:function": ["s.proc", "my_func"] }],
  ["CALL pg_terminate_backend(1)", { class: "admin", "db:admin": ["pg_terminate_backend"] }],
  // --- admin functions, wherever they are
  ["SELECT pg_terminate_backend(1)", { class: "admin", "db:admin": ["pg_terminate_backend"], "db:read": [] }],
  [
    "SELECT pg_catalog.pg_cancel_backend(1)",
    { class: "admin", "db:admin": ["pg_catalog.pg_cancel_backend"], "db:read": [] },
  ],
  ["SELECT set_config('role', 'admin', false)", { class: "admin", "db:admin": ["set_config"], "db:read": [] }],
  ["SELECT lo_import('/etc/passwd')", { class: "admin", "db:admin": ["lo_import"], "db:read": [] }],
  ["SELECT lo_export(1, '/tmp/x')", { class: "admin", "db:admin": ["lo_export"], "db:read": [] }],
  ["SELECT loread(0, 1)", { class: "admin", "db:admin": ["loread"], "db:read": [] }],
  ["SELECT pg_read_file('/etc/passwd')", { class: "admin", "db:admin": ["pg_read_file"], "db:read": [] }],
  [
    "SELECT fmgr_c_validator('plpgsql_call_handler'::regproc)",
    { class: "admin", "db:admin": ["fmgr_c_validator"], "db:read": [] },
  ],
  // Review 62: on a SQL function, plans its body and takes its tables' write locks.
  [
    "SELECT fmgr_sql_validator('f()'::regprocedure)",
    { class: "admin", "db:admin": ["fmgr_sql_validator"], "db:read": [] },
  ],
  [
    "SELECT plpgsql_validator(1), postgresql_fdw_validator('{}', 0)",
    { class: "admin", "db:admin": ["plpgsql_validator", "postgresql_fdw_validator"], "db:read": [] },
  ],
  ["SELECT * FROM pg_ls_dir('.')", { class: "admin", "db:admin": ["pg_ls_dir"], "db:read": [] }],
  ["SELECT pg_reload_conf()", { class: "admin", "db:admin": ["pg_reload_conf"], "db:read": [] }],
  ["SELECT pg_stat_reset()", { class: "admin", "db:admin": ["pg_stat_reset"], "db:read": [] }],
  ["SELECT pg_stat_statements_reset()", { class: "admin", "db:admin": ["pg_stat_statements_reset"], "db:read": [] }],
  [
    "SELECT pg_create_logical_replication_slot('s', 'p')",
    { class: "admin", "db:admin": ["pg_create_logical_replication_slot"], "db:read": [] },
  ],
  [
    "SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)",
    { class: "admin", "db:admin": ["pg_logical_slot_get_changes"], "db:read": [] },
  ],
  ["SELECT dblink_exec('c', 'DROP TABLE t')", { class: "admin", "db:admin": ["dblink_exec"], "db:read": [] }],
  [
    "SELECT public.dblink_connect('c', 'host=x')",
    { class: "admin", "db:admin": ["public.dblink_connect"], "db:read": [] },
  ],
  ["SELECT pg_switch_wal()", { class: "admin", "db:admin": ["pg_switch_wal"], "db:read": [] }],
  ["SELECT pg_backup_start('x')", { class: "admin", "db:admin": ["pg_backup_start"], "db:read": [] }],
  ["SELECT gin_clean_pending_list('i')", { class: "admin", "db:admin": ["gin_clean_pending_list"], "db:read": [] }],
  // --- prepared statements and cursors
  ["PREPARE p AS SELECT * FROM t", { class: "read", "db:read": ["t"] }],
  ["PREPARE p (int) AS DELETE FROM t WHERE id = $1", { class: "write", "db:write": ["t"] }],
  ["DECLARE c CURSOR FOR SELECT * FROM t", { class: "read", "db:read": ["t"] }],
  ["DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t FOR UPDATE", { class: "write", "db:write": ["t"], "db:read": [] }],
  // --- session statements
  ["BEGIN", { class: "session" }],
  ["BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", { class: "session" }],
  ["START TRANSACTION", { class: "session" }],
  ["COMMIT", { class: "session" }],
  ["ROLLBACK", { class: "session" }],
  ["SAVEPOINT a", { class: "session" }],
  ["RELEASE SAVEPOINT a", { class: "session" }],
  ["ROLLBACK TO SAVEPOINT a", { class: "session" }],
  ["SET statement_timeout = 1000", { class: "session" }],
  ["SET TIME ZONE 'UTC'", { class: "session" }],
  ["SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", { class: "session" }],
  ["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", { class: "session" }],
  ["RESET statement_timeout", { class: "session" }],
  ["SHOW search_path", { class: "session" }],
  // Settings holding credentials, shown only to superusers and pg_read_all_settings (review 18).
  ["SHOW ALL", { class: "admin", "db:admin": [] }],
  ["SHOW primary_conninfo", { class: "admin", "db:admin": [] }],
  ["SHOW ARCHIVE_COMMAND", { class: "admin", "db:admin": [] }],
  ["SELECT current_setting('primary_conninfo')", { class: "admin", "db:admin": [], "db:read": [] }],
  [
    "SELECT pg_catalog.current_setting('ssl_passphrase_command', true)",
    { class: "admin", "db:admin": [], "db:read": [] },
  ],
  ["SELECT current_setting('search_path')", { class: "read", "db:read": [] }],
  ["SELECT current_setting('restore_command'::text)", { class: "admin", "db:admin": [], "db:read": [] }],
  ["SELECT current_setting(text 'restore_command')", { class: "admin", "db:admin": [], "db:read": [] }],
  [
    "SELECT current_setting(CAST('restore_command' AS varchar)::text)",
    { class: "admin", "db:admin": [], "db:read": [] },
  ],
  ["SELECT current_setting('restore_command' COLLATE \"C\")", { class: "admin", "db:admin": [], "db:read": [] }],
  ["LISTEN chan", { class: "read", "db:read": [] }],
  ["UNLISTEN *", { class: "session" }],
  ["FETCH 10 FROM c", { class: "session" }],
  ["MOVE NEXT IN c", { class: "session" }],
  ["CLOSE c", { class: "session" }],
  ["DISCARD PLANS", { class: "session" }],
  ["DISCARD TEMP", { class: "session" }],
  ["DEALLOCATE p", { class: "session" }],
  ["DEALLOCATE ALL", { class: "session" }],
  ["SET CONSTRAINTS ALL DEFERRED", { class: "session" }],
  // RESET ROLE / SET ROLE NONE / SESSION AUTHORIZATION DEFAULT only return to the login user.
  ["RESET ROLE", { class: "session" }],
  ["SET ROLE NONE", { class: "session" }],
  ["RESET SESSION AUTHORIZATION", { class: "session" }],
  ["SET SESSION AUTHORIZATION DEFAULT", { class: "session" }],
  ["SET search_path = a, b", { class: "session" }],
  ["SET search_path = pg_catalog, public", { class: "session" }],
  ["SET search_path = pg_temp, pg_catalog, public", { class: "session" }],
  // A schema before pg_catalog: its functions and operators replace the built-ins (review 13).
  ["SET search_path = public, pg_catalog", { class: "function", "db:function": [] }],
  ['SET LOCAL search_path = "$user", PG_CATALOG', { class: "function", "db:function": [] }],
  [
    "SELECT set_config('search_path', 'public, pg_catalog', false)",
    { class: "function", "db:function": [], "db:read": [] },
  ],
  ["SELECT set_config('search_path', 'pg_catalog, public', false)", { class: "read", "db:read": [] }],
  ["SET standard_conforming_strings = on", { class: "session" }],
  ["SET NAMES 'UTF8'", { class: "session" }],
  ["RESET ALL", { class: "session" }],
  ["DISCARD ALL", { class: "session" }],
];

describe("the statement corpus", () => {
  it.each(CORPUS)("%s", (sql, expected) => {
    expect(summarize(one(sql))).toEqual(expected);
  });
});

describe("statement facts", () => {
  it("reports kinds, texts, tables and functions", () => {
    const info = one("  SELECT lower(a.x), my_func() FROM s.a JOIN b ON true;  ");
    expect(info.kind).toBe("SelectStmt");
    expect(info.text).toBe("SELECT lower(a.x), my_func() FROM s.a JOIN b ON true");
    expect(info.tables).toEqual([{ schema: "s", name: "a" }, { name: "b" }]);
    expect(info.functions).toEqual(["lower", "my_func"]);
  });

  it("deduplicates tables and keeps them once per action", () => {
    const info = one("SELECT * FROM t, t AS u, s.t WHERE x IN (SELECT x FROM t)");
    expect(info.tables).toEqual([{ name: "t" }, { schema: "s", name: "t" }]);
  });

  it("tracks search_path", () => {
    expect(one('SET search_path = a, "B", \'c\', "$user"').searchPath).toEqual(["a", "B", "c", "$user"]);
    expect(one("SET search_path TO public").searchPath).toEqual(["public"]);
    // A string argument is one name to the server (quoted as an identifier), cut to 63 bytes.
    expect(one("SET search_path = 'hr, public'").searchPath).toEqual(["hr, public"]);
    expect(one(`SET search_path = '${"s".repeat(70)}', x`).searchPath).toEqual(["s".repeat(63), "x"]);
    expect(one("SET SESSION search_path = x").searchPath).toEqual(["x"]);
    expect(one('SET "Search_Path" = evil').searchPath).toEqual(["evil"]);
    const local = one("SET LOCAL search_path = x");
    expect(local.searchPath).toEqual(["x"]);
    expect(local.searchPathLocal).toBe(true);
    expect(one("SET search_path TO DEFAULT").searchPath).toBeNull();
    expect(one("RESET search_path").searchPath).toBeNull();
    expect(one("RESET ALL").searchPath).toBeNull();
    expect(one("DISCARD ALL").searchPath).toBeNull();
    expect(one("SET statement_timeout = 1").searchPath).toBeUndefined();
    expect(one("SELECT 1").searchPath).toBeUndefined();
  });

  it("treats set_config('search_path', constant, constant) as SET search_path (pg_dump's first statement)", () => {
    const dump = one("SELECT pg_catalog.set_config('search_path', '', false)");
    expect(dump.statementClass).toBe("read");
    expect(dump.actions.map((a) => a.action)).toEqual(["db:read"]);
    expect(dump.searchPath).toEqual([]);
    expect(one("SELECT set_config('search_path', 'evil, \"My Schema\", $user', false)").searchPath).toEqual([
      "evil",
      "My Schema",
      "$user",
    ]);
    const local = one("SELECT set_config('Search_Path', 'x', true)");
    expect(local.searchPath).toEqual(["x"]);
    expect(local.searchPathLocal).toBe(true);
    // Two in one statement: the session widens with both.
    expect(
      one("SELECT set_config('search_path', 'a', false), set_config('search_path', 'b', false)").searchPath,
    ).toEqual(["a", "b"]);
    // Anything not constant, another setting, or an unreadable path stays an admin function.
    for (const sql of [
      "SELECT set_config('search_path', current_setting('x'), false)",
      "SELECT set_config(name, 'evil', false) FROM t",
      "SELECT set_config('search_path', 'evil', is_local) FROM t",
      "SELECT set_config('role', 'postgres', false)",
      "SELECT set_config('search_path', 'a b', false)",
      "SELECT set_config('search_path', '\"unterminated', false)",
      "SELECT myschema.set_config('search_path', 'x', false)",
    ]) {
      expect(
        one(sql).actions.map((a) => a.action),
        sql,
      ).toContain("db:admin");
      expect(one(sql).searchPath, sql).toBeUndefined();
    }
    // Different paths are different statements for the cache.
    expect(one("SELECT pg_catalog.set_config('search_path', 'a', false)").searchPath).toEqual(["a"]);
    expect(one("SELECT pg_catalog.set_config('search_path', 'b', false)").searchPath).toEqual(["b"]);
  });

  it("reads LOCK ... IN ACCESS SHARE MODE as a read and every stronger lock as a write", () => {
    const share = one("LOCK TABLE public.users IN ACCESS SHARE MODE");
    expect(share.statementClass).toBe("read");
    expect(share.actions).toEqual([{ action: "db:read", tables: [{ schema: "public", name: "users" }] }]);
    for (const mode of [
      "",
      " IN ROW SHARE MODE",
      " IN SHARE MODE",
      " IN ACCESS EXCLUSIVE MODE",
      " IN EXCLUSIVE MODE",
    ]) {
      expect(
        one(`LOCK TABLE users${mode}`).actions.map((a) => a.action),
        mode,
      ).toEqual(["db:write"]);
    }
  });

  it("marks lexical changes", () => {
    for (const sql of [
      "SET standard_conforming_strings = off",
      "SET LOCAL standard_conforming_strings TO on",
      "RESET standard_conforming_strings",
      "SET client_encoding = 'SJIS'",
      "SET \"Client_Encoding\" = 'SJIS'",
      "SET NAMES 'LATIN1'",
      "RESET client_encoding",
      "RESET ALL",
      "DISCARD ALL",
    ]) {
      expect(one(sql).lexicalChange, sql).toBe(true);
    }
    expect(one("SET work_mem = '1MB'").lexicalChange).toBeUndefined();
  });

  it("reports PREPARE, EXECUTE and DEALLOCATE names", () => {
    const prepared = one("PREPARE q (int) AS SELECT * FROM t WHERE id = $1");
    expect(prepared.prepare).toEqual({ name: "q" });
    expect(prepared.kind).toBe("PrepareStmt");
    const executed = one("EXECUTE q (1)");
    expect(executed.execute).toEqual({ name: "q" });
    expect(executed.reason).toMatch(/prepared statement "q"/);
    expect(one("DEALLOCATE q").deallocate).toEqual({ name: "q" });
    expect(one("DEALLOCATE PREPARE q").deallocate).toEqual({ name: "q" });
    expect(one("DEALLOCATE ALL").deallocate).toEqual({ name: null });
    expect(one("DISCARD ALL").deallocate).toEqual({ name: null });
  });

  it("says which statements end the transaction (COMMIT, END, ROLLBACK, ABORT, PREPARE TRANSACTION)", () => {
    for (const sql of ["COMMIT", "/* c */ commit and chain", "END", "ROLLBACK", "ABORT", "PREPARE TRANSACTION 'x'"])
      expect(one(sql).endsTransaction, sql).toBe(true);
    for (const sql of ["BEGIN", "START TRANSACTION READ ONLY", "ROLLBACK TO SAVEPOINT s", "SAVEPOINT s", "SELECT 1"])
      expect(one(sql).endsTransaction, sql).toBeUndefined();
  });

  it("reports the types a statement names (casts to domains and user types run functions)", () => {
    expect(one("SELECT 1::d_notify, CAST(x AS public.stamp), int4 '1' FROM t").typeNames).toEqual([
      "d_notify",
      "stamp",
      "int4",
    ]);
    expect(one("EXPLAIN ANALYZE SELECT '{1}'::dd[]").typeNames).toEqual(["dd"]);
    expect(one("SELECT * FROM t WHERE x = ANY ($1::s.arr)").typeNames).toEqual(["arr"]);
    expect(one("SELECT 1").typeNames).toBeUndefined();
  });

  it("names the savepoint of SAVEPOINT, RELEASE and ROLLBACK TO", () => {
    expect(one("SAVEPOINT a").savepoint).toEqual({ op: "savepoint", name: "a" });
    expect(one('RELEASE SAVEPOINT "A b"').savepoint).toEqual({ op: "release", name: "A b" });
    expect(one("RELEASE a").savepoint).toEqual({ op: "release", name: "a" });
    expect(one("ROLLBACK TO SAVEPOINT a").savepoint).toEqual({ op: "rollback", name: "a" });
    expect(one("ROLLBACK TO A").savepoint).toEqual({ op: "rollback", name: "a" });
    expect(one("ROLLBACK").savepoint).toBeUndefined();
    expect(one("BEGIN").savepoint).toBeUndefined();
  });

  it("gives reasons for dynamic statements", () => {
    expect(one("DO $$ BEGIN END $$").reason).toBe("DO blocks run procedural code that cannot be inspected");
    expect(one("SELECT query_to_xml('x', true, true, '')").reason).toBe(
      "query_to_xml() runs SQL given as text, which cannot be inspected",
    );
    // Review 55: these take names, not SQL.
    expect(one("SELECT table_to_xmlschema('docs', true, false, '')").reason).toBe(
      "table_to_xmlschema() reads tables named in a string, which cannot be checked against table scopes or masking",
    );
    expect(one("SELECT cursor_to_xml('c', 10, true, false, '')").reason).toMatch(/reads a cursor named in a string/);
    expect(one("SELECT dblink('dbname=x', 'SELECT 1')").reason).toMatch(/over another connection/);
    expect(one("SELECT 1").reason).toBeUndefined();
  });

  it("refuses statement kinds it does not know, never defaulting to read", () => {
    for (const kind of ["ReturnStmt", "PLAssignStmt", "SomeFutureStmt"]) {
      const { shape } = classifyStatement({ [kind]: { val: { SelectStmt: {} } } });
      expect(shape.statementClass).toBe("dynamic");
      expect(shape.reason).toBe(`statement kind ${kind} is not classified`);
    }
    expect(classifyStatement({}).shape.statementClass).toBe("dynamic");
    for (const sql of ["ALTER COLLATION c REFRESH VERSION", "CREATE ACCESS METHOD am TYPE INDEX HANDLER h"]) {
      expect(one(sql).statementClass, sql).not.toBe("read");
    }
  });

  it("finds table references in fields the generated field table does not know", () => {
    const { shape } = classifyStatement({
      SelectStmt: { someNewField: { relname: "hidden", inh: true }, other: [{ RangeVar: { relname: "t2" } }] },
    });
    expect(shape.tables).toEqual([{ name: "hidden" }, { name: "t2" }]);
  });
});

describe("multi-statement texts", () => {
  it("returns one statement per statement, in order, with its own text", () => {
    const statements = statementsOf(classifier.classify("SELECT 1; DELETE FROM t ;\n  INSERT INTO u VALUES (';')", ON));
    expect(statements.map((s) => [s.kind, s.text, s.statementClass])).toEqual([
      ["SelectStmt", "SELECT 1", "read"],
      ["DeleteStmt", "DELETE FROM t", "write"],
      ["InsertStmt", "INSERT INTO u VALUES (';')", "write"],
    ]);
  });

  it("slices statements by character, not byte, offsets", () => {
    const statements = statementsOf(classifier.classify("SELECT 'ünïcødé 😀'; SELECT 'ß' FROM t", ON));
    expect(statements.map((s) => s.text)).toEqual(["SELECT 'ünïcødé 😀'", "SELECT 'ß' FROM t"]);
  });

  it("makes everything after a lexical change dynamic", () => {
    const statements = statementsOf(
      classifier.classify("SELECT 1; SET standard_conforming_strings = off; SELECT 2; DELETE FROM t", ON),
    );
    expect(statements.map((s) => s.statementClass)).toEqual(["read", "session", "dynamic", "dynamic"]);
    expect(statements[2]!.reason).toBe(REASON_LEXICAL_CHANGE);
    expect(statementsOf(classifier.classify("SET client_encoding = 'SJIS'; SELECT 1", ON))[1]!.statementClass).toBe(
      "dynamic",
    );
    expect(statementsOf(classifier.classify("RESET ALL; SELECT 1", ON))[1]!.statementClass).toBe("dynamic");
    // On its own, the change is fine.
    expect(statementsOf(classifier.classify("SET standard_conforming_strings = off;", ON))).toHaveLength(1);
  });
});

describe("lexical safety", () => {
  const attack = "SELECT '\\' , $$ '; DROP TABLE x; -- $$";

  it("reads the backslash attack as one string literal with standard_conforming_strings on", () => {
    const statements = statementsOf(classifier.classify(attack, ON));
    expect(statements).toHaveLength(1);
    expect(statements[0]!.statementClass).toBe("read");
  });

  it("refuses any backslash when standard_conforming_strings is off", () => {
    const statements = statementsOf(classifier.classify(attack, OFF));
    expect(statements.length).toBeGreaterThan(0);
    for (const info of statements) {
      expect(info.statementClass).toBe("dynamic");
      expect(info.reason).toBe(REASON_BACKSLASH);
      expect(info.reason).toMatch(/standard_conforming_strings/);
    }
    // Text the standard-conforming parser rejects is still refused, not reported as an error.
    const unparsable = statementsOf(classifier.classify("SELECT 'it\\'s'; DROP TABLE x; --'", OFF));
    expect(unparsable.map((s) => s.statementClass)).toEqual(["dynamic"]);
    expect(statementsOf(classifier.classify("SELECT E'\\\\'", OFF))[0]!.statementClass).toBe("dynamic");
  });

  it("classifies normally without backslashes when standard_conforming_strings is off", () => {
    expect(summarize(one("SELECT 'it''s' FROM t", OFF))).toEqual({ class: "read", "db:read": ["t"] });
  });

  it("rejects NUL characters and broken UTF-16", () => {
    const nul = classifier.classify("SELECT 1\u0000; DROP TABLE t", ON);
    expect(nul.ok).toBe(false);
    expect(classifier.classify("SELECT '\uD800'", ON).ok).toBe(false);
  });
});

describe("syntax errors and empty texts", () => {
  it("reports PostgreSQL-like errors with 1-based character positions", () => {
    expect(classifier.classify("SELEC 1", ON)).toEqual({
      ok: false,
      error: { message: 'syntax error at or near "SELEC"', position: 1, sqlstate: "42601" },
    });
    const late = classifier.classify("SELECT 'é'; SELEC 1", ON);
    expect(late.ok || late.error.position).toBe(13);
    const end = classifier.classify("SELECT * FROM", ON);
    expect(end.ok || end.error.message).toBe("syntax error at end of input");
    const unterminated = classifier.classify("SELECT 'abc", ON);
    expect(unterminated.ok || unterminated.error.message).toMatch(/unterminated quoted string/);
  });

  it("refuses a statement nested deeper than its checks can follow (54001), never throwing", () => {
    for (const sql of [
      `SELECT ${"(SELECT ".repeat(1000)}1${")".repeat(1000)}`,
      `SELECT ${"ARRAY[".repeat(3000)}1${"]".repeat(3000)}`,
      `SELECT 1 FROM t WHERE ${"NOT ".repeat(5000)}true`,
    ]) {
      const result = classifier.classify(sql, ON);
      expect(result.ok, sql.slice(0, 30)).toBe(false);
      if (!result.ok) expect(["54001", "42601"]).toContain(result.error.sqlstate);
    }
  });

  it("treats whitespace and comments as an empty query", () => {
    for (const sql of ["", "   ", "\n\t", "-- nothing", "/* a /* nested */ comment */", ";", " ; ; "]) {
      const result = classifier.classify(sql, ON);
      expect(result.ok && result.statements, JSON.stringify(sql)).toEqual([]);
    }
  });
});
