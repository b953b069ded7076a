// Read-only escapes: texts a user allowed only db:read might send to change something. None may
// come out as nothing but reads (or session statements), cached or not.
import { beforeAll, describe, expect, it } from "vitest";
import { createClassifier, loadSqlParser, type Classification, type Classifier } from "./index.js";
import { PG_RESTRICTED_FUNCTIONS, PG_RESTRICTED_RELATIONS } from "./gen/pg-catalog.js";
import { OFF, ON } from "./test-helpers.js";

let uncached: Classifier;
let cached: Classifier;
beforeAll(async () => {
  await loadSqlParser();
  uncached = createClassifier({ cacheEntries: 0 });
  cached = createClassifier();
});

const ATTACKS: string[] = [
  // writable CTEs, nested anywhere
  "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
  "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT 1",
  "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1",
  "SELECT * FROM (WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x) s",
  "SELECT (WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x)",
  "SELECT 1 WHERE 1 IN (WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x)",
  "SELECT * FROM a, LATERAL (WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x) l",
  "WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM t RETURNING 1) SELECT * FROM c) SELECT * FROM b",
  "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT 1 FROM r), d AS (DELETE FROM t) SELECT * FROM r",
  "SELECT 1 UNION ALL (WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x)",
  "VALUES ((WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x))",
  "WITH x AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE RETURNING *) SELECT 1",
  // built-ins called in attribute notation: `(x).f` and `col.f` are f(x) (review 13)
  "SELECT ('public.s'::regclass).nextval",
  "SELECT (777::bigint).pg_advisory_lock",
  "SELECT ('PG_VERSION'::text).pg_read_file",
  "SELECT ('.'::text).\"pg_ls_dir\"",
  "SELECT convert_from((424242::oid).lo_get, 'UTF8')",
  "SELECT ('/etc/hostname'::text).lo_import",
  "SELECT ('SELECT v FROM secret.t'::text).ts_stat",
  "SELECT (NULL::int).pg_stat_get_activity",
  "SELECT (pg_stat_get_backend_pid(id)).pg_terminate_backend FROM pg_stat_get_backend_idset() b(id)",
  "SELECT ('slot'::name).pg_create_physical_replication_slot",
  "SELECT ((('a'::text).pg_stat_file)).size",
  "SELECT 1 FROM t ORDER BY (t.a).pg_cancel_backend",
  "PREPARE p AS SELECT ($1::text).pg_read_file",
  "DECLARE c CURSOR FOR SELECT ('PG_VERSION'::text).pg_read_file",
  "WITH x AS (SELECT ('public.s'::regclass).nextval) SELECT * FROM x",
  // ... and `t.f` over a FROM function returning a scalar: t is that value (review 15)
  "SELECT t.pg_read_file FROM unnest(ARRAY['PG_VERSION'::text]) t",
  "SELECT f.pg_read_file FROM CAST('postmaster.opts' AS text) f",
  "SELECT v.pg_ls_dir FROM unnest(ARRAY['.']) v",
  "SELECT x.nextval FROM to_regclass('s') x",
  // SELECT INTO, CREATE TABLE AS
  "SELECT * INTO copy_of_secrets FROM secrets",
  "SELECT * INTO TEMP t FROM secrets",
  "CREATE TABLE x AS SELECT 1",
  "CREATE MATERIALIZED VIEW mv AS SELECT 1",
  // EXPLAIN ANALYZE executes
  "EXPLAIN ANALYZE DELETE FROM t",
  "EXPLAIN (ANALYZE) DELETE FROM t",
  "EXPLAIN (ANALYZE TRUE, FORMAT JSON) DELETE FROM t",
  "EXPLAIN (ANALYZE on) UPDATE t SET a = 1",
  "EXPLAIN (ANALYZE 'yes please') INSERT INTO t VALUES (1)",
  "EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM t",
  "EXPLAIN ANALYZE WITH x AS (DELETE FROM t RETURNING 1) SELECT 1",
  "EXPLAIN SELECT pg_terminate_backend(1)",
  "EXPLAIN SELECT * FROM t WHERE x = query_to_xml('DELETE FROM t RETURNING 1', true, true, '')::text",
  // COPY
  "COPY t TO PROGRAM 'rm -rf /'",
  "COPY (SELECT 1) TO PROGRAM 'sh -c id'",
  "COPY t FROM '/etc/passwd'",
  "COPY t TO '/tmp/out'",
  "COPY t FROM STDIN",
  "COPY t TO STDOUT",
  "COPY (SELECT * FROM secrets) TO STDOUT",
  // procedural and prepared
  "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
  "DO $body$ BEGIN NULL; END $body$",
  "PREPARE p AS DELETE FROM t",
  "EXECUTE p",
  "EXPLAIN ANALYZE EXECUTE p",
  "CREATE TABLE x AS EXECUTE p",
  "CALL p()",
  "CALL public.harmless_looking()",
  // roles and settings
  "SET ROLE postgres",
  "SET role = 'postgres'",
  'SET "role" TO postgres',
  "SET SESSION AUTHORIZATION postgres",
  "SET LOCAL SESSION AUTHORIZATION postgres",
  "SELECT set_config('role', 'postgres', false)",
  "SELECT set_config('ROLE', 'postgres', true)",
  "SELECT set_config('session_authorization', 'postgres', false)",
  "SELECT set_config('session_replication_role', 'replica', false)",
  // (set_config with constants is the SET it equals: search_path tracked, work_mem harmless; see set-config.test.ts)
  "SELECT pg_catalog.set_config('search_path', current_setting('my.path'), false)",
  "SELECT set_config('search_path', v, false) FROM t",
  "SELECT set_config('client_encoding', 'UTF8', false), 'x'",
  // pg_dump's pg_settings form, only in its exact shape and for a harmless setting
  "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'role'",
  "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name LIKE '%'",
  "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'work_mem' OR true",
  "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'work_mem' OR name = 'role'",
  "SELECT set_config(name, 'postgres', false) FROM pg_settings, (VALUES (1)) v WHERE name = 'work_mem'",
  "SELECT set_config(name, 'postgres', false) FROM (SELECT 'role' AS name) pg_settings WHERE name = 'role'",
  "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' UNION ALL SELECT set_config('role', 'x', false)",
  "ALTER SYSTEM SET shared_preload_libraries = 'evil'",
  "ALTER ROLE me SUPERUSER",
  "GRANT ALL ON secrets TO me",
  // admin functions
  "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
  "SELECT pg_catalog.pg_terminate_backend(1)",
  'SELECT "pg_terminate_backend"(1)',
  "SELECT PG_TERMINATE_BACKEND(1)",
  "SELECT lo_import('/etc/passwd')",
  "SELECT lo_export(16385, '/tmp/x')",
  "SELECT lo_unlink(16385)",
  "SELECT dblink_exec('dbname=x', 'DROP TABLE t')",
  "SELECT extensions.dblink_exec('dbname=x', 'DROP TABLE t')",
  "SELECT * FROM dblink('dbname=x', 'DELETE FROM t RETURNING 1') AS r(a int)",
  "SELECT pg_read_file('/etc/passwd')",
  "SELECT pg_read_binary_file('postgresql.conf')",
  "SELECT query_to_xml('delete from t returning 1', true, true, '')",
  "SELECT query_to_xml_and_xmlschema('delete from t returning 1', true, true, '')",
  "SELECT pg_reload_conf()",
  "SELECT pg_advisory_lock(42)",
  "SELECT nextval('orders_id_seq')",
  // functions hidden everywhere
  "SELECT my_func()",
  "SELECT * FROM t ORDER BY my_func()",
  "SELECT * FROM t ORDER BY pg_terminate_backend(1)",
  "SELECT * FROM t LIMIT my_func()",
  "SELECT * FROM t OFFSET (SELECT pg_terminate_backend(1))::int",
  "SELECT * FROM t WHERE id = (SELECT my_func())",
  "SELECT * FROM t GROUP BY my_func(x)",
  "SELECT * FROM t GROUP BY x HAVING my_func(count(*))",
  "VALUES (my_func())",
  "VALUES (1), (pg_terminate_backend(1))",
  "SELECT * FROM (VALUES (my_func())) v",
  "WITH c AS (SELECT my_func()) SELECT * FROM c",
  "SELECT * FROM t, LATERAL my_srf(t.id)",
  "SELECT * FROM ROWS FROM (generate_series(1, 2), my_srf())",
  "SELECT count(*) FILTER (WHERE my_func(x)) FROM t",
  "SELECT sum(x) OVER (PARTITION BY my_func(y)) FROM t",
  "SELECT CASE WHEN true THEN my_func() END",
  "SELECT coalesce(NULL, my_func())",
  "SELECT ARRAY[my_func()]",
  "SELECT ROW(my_func())",
  "SELECT (my_func()).x",
  'SELECT x::text COLLATE "C" FROM t WHERE my_func() IS NULL',
  "SELECT 1 FROM t WHERE x = ANY (ARRAY(SELECT my_func()))",
  "SELECT json_agg(my_func()) FROM t",
  "SELECT * FROM xmltable('/a' PASSING my_func() COLUMNS x int)",
  "SELECT * FROM t TABLESAMPLE my_sampler(1)",
  "SELECT 1 +=+ 2",
  "SELECT 1 OPERATOR(evil.=) 1",
  "SELECT myschema.lower('x')",
  "SELECT pg_catalog.my_func()",
  "SELECT x FROM t ORDER BY x USING ~<~~",
  // locking reads
  "SELECT * FROM t FOR UPDATE",
  "SELECT * FROM t FOR SHARE",
  "SELECT * FROM t FOR NO KEY UPDATE",
  "SELECT * FROM t FOR KEY SHARE",
  "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
  "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
  // DDL
  "CREATE RULE r AS ON SELECT TO t DO INSTEAD SELECT 1",
  "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
  "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM t RETURNING 1'",
  "CREATE OR REPLACE VIEW v AS SELECT 1",
  "CREATE INDEX ON t (x)",
  "ALTER TABLE t ADD COLUMN x int",
  "DROP TABLE t",
  "TRUNCATE t",
  "LOCK t",
  "NOTIFY c",
  "VACUUM FULL t",
  "REFRESH MATERIALIZED VIEW mv",
  "COMMENT ON TABLE t IS 'pwned'",
  "PREPARE TRANSACTION 'x'",
  // multi-statement
  "SELECT 1; DELETE FROM t",
  "SELECT 1;DELETE FROM t",
  "SELECT ';'; DELETE FROM t",
  'SELECT 1 AS ";"; DELETE FROM t',
  "SELECT $$;$$; DELETE FROM t",
  "SELECT 1 -- ; \n; DELETE FROM t",
  "SELECT /* ; */ 1; DELETE FROM t",
  "BEGIN; DELETE FROM t; COMMIT",
  "SET search_path = public; DROP TABLE t",
  // comments and odd quoting around keywords
  "/* harmless */ DELETE /* from */ FROM t",
  "-- select\nDELETE FROM t",
  "DELETE--\nFROM t",
  "DeLeTe FrOm t",
  "\tDELETE\nFROM\r\nt",
  'DELETE FROM "t"',
  'DELETE FROM "select"',
  'DELETE FROM U&"t"',
  "SELECT 1 /* nested /* comment */ still comment */; DELETE FROM t",
  'WITH "x" AS (DELETE FROM t RETURNING *) SELECT * FROM "x"',
  "SELECT E'\\''; DELETE FROM t; -- '",
  "SELECT U&'\\0027'; DELETE FROM t",
  "SELECT $a$ $b$ $a$; DELETE FROM t",
  "SELECT 'a'\n'b'; DELETE FROM t",
  "SELECT 1e1; DELETE FROM t",
  "SELECT 0x1F; DELETE FROM t",
  // reads of catalogs holding secrets or other tables' data (a review's finds)
  "SELECT rolname, rolpassword FROM pg_authid",
  "SELECT usename, passwd FROM pg_catalog.pg_shadow",
  "SELECT umoptions FROM pg_user_mappings",
  "SELECT most_common_vals FROM pg_stats WHERE schemaname = 'vault'",
  "SELECT stxdmcv FROM pg_statistic_ext_data",
  "SELECT convert_from(data, 'UTF8') FROM pg_largeobject",
  "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
  "SELECT * FROM pg_stat_get_activity(NULL)",
  "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
  "SELECT * FROM pg_hba_file_rules",
  "SELECT * FROM pg_file_settings",
  "SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_authid WHERE rolpassword LIKE 'SCRAM%')",
  "COPY (SELECT * FROM pg_authid) TO STDOUT",
  // a read-only default lifted (the operator's backstop), the server's own logging silenced
  "SET default_transaction_read_only = off",
  "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
  "BEGIN READ WRITE",
  "SELECT set_config('transaction_read_only', 'off', true)",
  "SET log_statement = 'none'",
  "SET pgaudit.log = 'none'",
  "RESET transaction_read_only",
  "SET transaction_read_only TO DEFAULT",
  "BEGIN; SET LOCAL transaction_read_only TO DEFAULT; SELECT 1; COMMIT",
  "SELECT umoptions FROM information_schema._pg_user_mappings",
  "SELECT * FROM user_mapping_options",
  "SELECT query FROM public.pg_stat_statements",
  "SELECT * FROM pg_show_all_file_settings()",
  // a third review's finds: replication passwords, TOAST tables of denied tables, transaction IDs
  "SELECT subname, subconninfo FROM pg_subscription",
  "SELECT * FROM pg_catalog.pg_subscription",
  "SELECT s::text FROM pg_subscription s",
  "COPY pg_subscription TO STDOUT",
  "SELECT convert_from(chunk_data, 'UTF8') FROM pg_toast.pg_toast_16399",
  "SELECT chunk_data FROM pg_toast_16399",
  "SELECT * FROM pg_toast_temp_3.pg_toast_16500",
  "SELECT txid_current()",
  "SELECT pg_catalog.pg_current_xact_id()",
  // what PostgreSQL keeps from PUBLIC by default (found by scripts/readonly-oracle.mjs's second
  // oracle over PostgreSQL's regression suite): the target role may be allowed them
  "SELECT * FROM pg_config",
  "SELECT setting FROM pg_catalog.pg_config WHERE name = 'CONFIGURE'",
  "SELECT pg_current_logfile()",
  "SELECT * FROM pg_shmem_allocations",
  "SELECT * FROM pg_get_shmem_allocations()",
  "SELECT * FROM pg_backend_memory_contexts",
  "SELECT * FROM pg_replication_origin_status",
  "SELECT * FROM pg_show_replication_origin_status()",
  "SELECT pg_stat_have_stats('relation', 0, 0)",
  // newer servers' syntax that PostgreSQL 15 reads as a call of a (user's) function of that name
  "SELECT merge_action()",
  "SELECT json_value('{}', '$')",
  "SELECT json_array(1)",
  "SELECT * FROM json_table('{}', '$' COLUMNS (a int PATH '$.a'))",
];

function notOnlyReads(result: Classification): boolean {
  return !result.ok || result.statements.some((s) => s.statementClass !== "read" && s.statementClass !== "session");
}

describe("read-only escapes", () => {
  it.each(ATTACKS)("%s", (sql) => {
    for (const lexical of [ON, OFF]) {
      const fresh = uncached.classify(sql, lexical);
      expect(notOnlyReads(fresh), JSON.stringify(fresh)).toBe(true);
      // Twice through the cache: the miss, then the hit.
      expect(cached.classify(sql, lexical)).toEqual(fresh);
      expect(notOnlyReads(cached.classify(sql, lexical))).toBe(true);
    }
  });

  it("needs db:admin for every function and relation of pg_catalog PostgreSQL keeps from PUBLIC", () => {
    expect(PG_RESTRICTED_FUNCTIONS.size).toBeGreaterThan(40);
    expect(PG_RESTRICTED_RELATIONS.size).toBeGreaterThan(10);
    const needsAdmin = (sql: string) => {
      const result = uncached.classify(sql, ON);
      return result.ok && result.statements.some((s) => s.actions.some((use) => use.action === "db:admin"));
    };
    for (const name of PG_RESTRICTED_FUNCTIONS) {
      expect(needsAdmin(`SELECT ${name}()`), name).toBe(true);
      expect(needsAdmin(`SELECT * FROM pg_catalog.${name}(NULL)`), name).toBe(true);
    }
    for (const name of PG_RESTRICTED_RELATIONS) {
      expect(needsAdmin(`SELECT count(*) FROM ${name}`), name).toBe(true);
      expect(needsAdmin(`SELECT 1 FROM pg_catalog.${name} LIMIT 1`), name).toBe(true);
    }
  });

  it("keeps the table of `SELECT * FROM secrets` visible next to a same-named CTE in a subquery", () => {
    const result = uncached.classify("SELECT * FROM secrets, (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s", ON);
    expect(result.ok && result.statements[0]!.tables).toEqual([{ name: "secrets" }]);
  });
});
