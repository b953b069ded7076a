/**
 * What calling a function (or using an operator) needs. Built-in functions of pg_catalog need
 * nothing of their own, except the lists below: functions with side effects outside the rows a
 * statement names and those PostgreSQL does not let PUBLIC execute (admin), functions that run SQL
 * given as a string (dynamic), and functions that change shared state (write). Everything else,
 * user-defined or from an extension, is db:function.
 *
 * The danger lists match the bare name in ANY schema (an extension installs dblink_exec wherever it
 * likes; a same-named user function gets the stricter treatment, which is safe). The built-in list
 * matches only unqualified names and `pg_catalog.x`: `myschema.lower(...)` is a user function.
 */
import { PG_CATALOG_FUNCTIONS, PG_CATALOG_OPERATORS, PG_RESTRICTED_FUNCTIONS } from "./gen/pg-catalog.js";
import type { DbAction } from "./types.js";

/** Side effects on the server, files, other sessions, replication or configuration. */
const ADMIN_FUNCTIONS: ReadonlySet<string> = new Set([
  "pg_terminate_backend",
  "pg_cancel_backend",
  "pg_reload_conf",
  "pg_rotate_logfile",
  "pg_rotate_logfile_old",
  "pg_switch_wal",
  "pg_create_restore_point",
  "pg_backup_start",
  "pg_backup_stop",
  "pg_start_backup",
  "pg_stop_backup",
  "pg_promote",
  "pg_logical_emit_message",
  // Other sessions' query texts (pg_stat_activity's source, pg_stat_statements), server files.
  "pg_stat_get_activity",
  "pg_stat_get_backend_activity",
  "pg_stat_statements",
  "pg_stat_statements_info",
  "pg_show_all_file_settings",
  "pg_hba_file_rules",
  "pg_ident_file_mappings",
  "pg_read_file",
  "pg_read_file_old",
  "pg_read_binary_file",
  "pg_stat_file",
  "loread",
  "lowrite",
  // set_config('role', ...) is SET ROLE; a computed setting name could be anything. A call with
  // constant arguments (or pg_dump's pg_settings form) of an ordinary setting is read as the SET it
  // equals before it gets here (classify-statement.ts); what is left is admin.
  "set_config",
  "pg_import_system_collations",
  "pg_log_backend_memory_contexts",
  "pg_log_standby_snapshot",
  "pg_nextoid",
  "pg_stop_making_pinned_objects",
  "pg_extension_config_dump",
  // Loads the shared library of a C function (dlopen and its _PG_init), as LOAD does (review 34).
  "fmgr_c_validator",
  // Index maintenance, like VACUUM.
  "gin_clean_pending_list",
  "brin_summarize_new_values",
  "brin_summarize_range",
  "brin_desummarize_range",
  "dblink_exec",
]);

const ADMIN_PATTERNS: readonly RegExp[] = [
  /^pg_wal_replay_/,
  /replication_slot/,
  /^pg_replication_origin_/,
  /^pg_logical_slot_/,
  /^pg_ls_/,
  /^pg_file_/,
  /^lo_/,
  /^pg_stat_(.*_)?reset/,
  /^binary_upgrade_/,
  /^dblink_connect/,
  /^pg_(restore|clear)_\w*stats$/,
  // Language and foreign-data validators belong inside CREATE FUNCTION / CREATE FOREIGN ...; called
  // on a SQL function they plan its body and take its tables' write locks (review 62).
  /_validator$/,
];

/** Run SQL (or read whole tables, schemas, databases) named in a string argument. */
const DYNAMIC_FUNCTIONS: ReadonlySet<string> = new Set([
  "query_to_xml",
  "query_to_xml_and_xmlschema",
  "query_to_xmlschema",
  // ts_stat(sqlquery) and ts_rewrite(query, select) execute their text argument.
  "ts_stat",
  "ts_rewrite",
]);

const DYNAMIC_PATTERNS: readonly RegExp[] = [
  /^cursor_to_xml/,
  /^table_to_xml/,
  /^schema_to_xml/,
  /^database_to_xml/,
  /^dblink/,
];

/** What a dynamic function does that the agent cannot inspect, for its denial message. */
function dynamicReason(name: string): string {
  if (name.startsWith("dblink")) return "runs SQL given as text over another connection, which cannot be inspected";
  if (/^(table|schema|database)_to_xml/.test(name))
    return "reads tables named in a string, which cannot be checked against table scopes or masking";
  if (name.startsWith("cursor_to_xml")) return "reads a cursor named in a string, which cannot be masked";
  return "runs SQL given as text, which cannot be inspected";
}

/**
 * Change state other sessions see, without naming a table: sequences, notifications, transaction
 * IDs, and taking advisory locks. Advisory locks change no data, but holding one blocks other
 * sessions and steers applications that coordinate through them, like LOCK TABLE (a write); admin
 * would be too much for what applications call routinely. Releasing the session's own locks
 * (`pg_advisory_unlock*`) needs nothing: connection pools run `pg_advisory_unlock_all()` on every
 * connection they take back (asyncpg's reset).
 */
const WRITE_FUNCTIONS: ReadonlySet<string> = new Set([
  "nextval",
  "setval",
  "pg_notify",
  // Assign a transaction ID (a read-only transaction has none): each one brings wraparound nearer.
  "txid_current",
  "pg_current_xact_id",
]);
const WRITE_PATTERNS: readonly RegExp[] = [/^pg_(try_)?advisory_(xact_)?lock/];

/** What a call needs: an action (with a reason for dynamic), or nothing for a plain built-in. */
export interface FunctionVerdict {
  action?: DbAction;
  reason?: string;
}

const matches = (name: string, set: ReadonlySet<string>, patterns: readonly RegExp[]) =>
  set.has(name) || patterns.some((pattern) => pattern.test(name));

/**
 * The functions of information_schema (PostgreSQL 15: SQL functions reading the catalogs, created
 * with the database): drivers' metadata queries call them qualified (pgjdbc's getPrimaryKeys calls
 * `information_schema._pg_expandarray`; review 46).
 */
const INFORMATION_SCHEMA_FUNCTIONS: ReadonlySet<string> = new Set([
  "_pg_char_max_length",
  "_pg_char_octet_length",
  "_pg_datetime_precision",
  "_pg_expandarray",
  "_pg_index_position",
  "_pg_interval_type",
  "_pg_numeric_precision",
  "_pg_numeric_precision_radix",
  "_pg_numeric_scale",
  "_pg_truetypid",
  "_pg_truetypmod",
]);

/**
 * True when `parts` (a possibly qualified name) names a built-in function of pg_catalog, or one of
 * information_schema's called by its qualified name (unqualified, it is found there only when the
 * search path names that schema: taken as a user function).
 */
export function isBuiltinFunction(parts: readonly string[]): boolean {
  const name = parts[parts.length - 1];
  if (name === undefined) return false;
  if (parts.length === 2 && parts[0] === "information_schema") return INFORMATION_SCHEMA_FUNCTIONS.has(name);
  if (!PG_CATALOG_FUNCTIONS.has(name)) return false;
  return parts.length === 1 || (parts.length === 2 && parts[0] === "pg_catalog");
}

/**
 * The action a function call needs. `procedure` is set for CALL: procedures always need
 * db:function (there are no built-in procedures worth exempting).
 */
export function functionVerdict(parts: readonly string[], procedure = false): FunctionVerdict {
  const name = parts[parts.length - 1] ?? "";
  // What PostgreSQL itself keeps for privileged roles by default (pg_config, pg_current_logfile,
  // pg_get_shmem_allocations...) is admin too: the target role the agent logs in as may hold them.
  if (
    ADMIN_FUNCTIONS.has(name) ||
    ADMIN_PATTERNS.some((pattern) => pattern.test(name)) ||
    PG_RESTRICTED_FUNCTIONS.has(name)
  ) {
    return { action: "db:admin" };
  }
  if (matches(name, DYNAMIC_FUNCTIONS, DYNAMIC_PATTERNS)) {
    return { action: "db:dynamic", reason: `${name}() ${dynamicReason(name)}` };
  }
  if (matches(name, WRITE_FUNCTIONS, WRITE_PATTERNS)) return { action: "db:write" };
  if (!procedure && isBuiltinFunction(parts)) return {};
  return { action: "db:function" };
}

/**
 * True when an operator name (possibly `schema.op`) is one of pg_catalog's. Others are
 * user-defined and run a user function, so they need db:function like one.
 */
export function isBuiltinOperator(parts: readonly string[]): boolean {
  const name = parts[parts.length - 1];
  if (name === undefined || !PG_CATALOG_OPERATORS.has(name)) return false;
  return parts.length === 1 || (parts.length === 2 && parts[0] === "pg_catalog");
}
