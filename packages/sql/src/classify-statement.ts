/**
 * Classifies ONE parsed statement (a libpg-query parse node) into the permissions it needs. Pure:
 * parse tree in, shape out; no parser, cache or text here.
 *
 * The walker visits every node of the tree generically (every field of every object), so anything
 * nested anywhere (a writable CTE inside a subquery inside an INSERT, a function in ORDER BY) is
 * seen. Only a few node types get special treatment: table references (RangeVar), function calls,
 * operators, SELECT (CTE scopes, row locks, SELECT INTO) and INSERT/UPDATE/DELETE/MERGE (their
 * target). Statement kinds are decided by explicit tables; an unknown kind is dynamic, never read.
 *
 * libpg-query writes `Node` fields wrapped (`{ "RangeVar": {...} }`) but fields of one specific
 * type unwrapped; the generated NODE_FIELD_TYPES table says which is which.
 */
import { functionVerdict, isBuiltinFunction, isBuiltinOperator } from "./functions.js";
import { isCatalogRelation, pathShadowsCatalog } from "./qualify.js";
import { statementLineage } from "./lineage.js";
import { aliasOf, isObj, nameParts, unwrap, walkNodes, type Obj } from "./tree.js";
import { NODE_FIELD_TYPES } from "./gen/node-fields.js";
import { PG_FIXED_SETTINGS, PG_RESTRICTED_RELATIONS, PG_SUPERUSER_SETTINGS } from "./gen/pg-catalog.js";
import {
  actionRank,
  classOfActions,
  type ActionUse,
  type ColumnSources,
  type DbAction,
  type StatementInfo,
  type TableRef,
} from "./types.js";

/** A statement's classification without its text. */
export type StatementShape = Omit<StatementInfo, "text">;

export interface ShapeResult {
  shape: StatementShape;
  /** The result depends on literal values (SET arguments, EXPLAIN option values): cache by exact text only. */
  literalSensitive: boolean;
}

interface Use {
  action: DbAction;
  table?: TableRef;
  fn?: string;
  /** Needed because of a function or operator call (kept by EXPLAIN without ANALYZE: planning may run functions). */
  viaFunction: boolean;
}

/** Statement-level facts other than actions. */
type Extra = Pick<
  StatementShape,
  | "reason"
  | "searchPath"
  | "searchPathLocal"
  | "lexicalChange"
  | "lexicalSetting"
  | "prepare"
  | "execute"
  | "deallocate"
  | "result"
  | "reads"
  | "cursor"
  | "savepoint"
  | "endsTransaction"
  | "fieldNames"
  | "operators"
  | "typeNames"
>;

class Collector {
  readonly uses: Use[] = [];
  readonly functions = new Set<string>();
  readonly extra: Extra = {};
  literalSensitive = false;
  /**
   * A set_config call whose setting-name argument (a column) is proven to hold this constant:
   * pg_dump's `SELECT set_config(name, ...) FROM pg_settings WHERE name = '<setting>'`.
   */
  knownSetting: { call: Obj; name: string } | undefined;
  /** Catalogs with a secret column the statement reads from (see SECRET_CATALOG_COLUMNS). */
  readonly secretColumns: TableRef[] = [];
  /** Names selected from rows and values (StatementInfo.fieldNames). */
  readonly fieldNames = new Set<string>();
  /** Operators used, unqualified (StatementInfo.operators). */
  readonly operators = new Set<string>();
  /** Types named (StatementInfo.typeNames). */
  readonly typeNames = new Set<string>();

  /** Records that the statement needs `action` (possibly on no table at all). */
  action(action: DbAction): void {
    this.uses.push({ action, viaFunction: false });
  }

  table(action: DbAction, table: TableRef): void {
    this.uses.push({ action, table, viaFunction: false });
    // The catalogs define the database (and `UPDATE pg_settings` runs set_config): changing one, by
    // a write, a lock, DDL or COPY into it, is administration. Table scopes leave catalog relations
    // out (qualifyTables), so without this a table-scoped db:write allowed it (review 14).
    if (action !== "db:read" && action !== "db:copy-out" && isCatalogRelation(table))
      this.uses.push({ action: "db:admin", table, viaFunction: false });
  }

  viaFunction(action: DbAction, fn: string, reason?: string): void {
    this.uses.push({ action, fn, viaFunction: true });
    if (reason !== undefined) this.dynamicReason(reason);
  }

  dynamic(reason: string): void {
    this.uses.push({ action: "db:dynamic", viaFunction: false });
    this.dynamicReason(reason);
  }

  private dynamicReason(reason: string): void {
    this.extra.reason ??= reason;
  }
}

interface CteNames {
  names: readonly string[];
  parent: CteNames | undefined;
}

/** What the walker knows at a point of the tree. */
interface Scope {
  /** The action a plain table reference found here needs. */
  mode: DbAction;
  /** Inside a FROM item that a locking clause (FOR UPDATE/SHARE) locks: reads become writes. */
  locked: boolean;
  /** CTE names visible here, innermost first. */
  ctes: CteNames | undefined;
}

const ROOT: Scope = { mode: "db:read", locked: false, ctes: undefined };
const withMode = (scope: Scope, mode: DbAction): Scope => ({ ...scope, mode });

/** True when every field of `node` is one of `keys` (libpg-query leaves out fields at their defaults). */
const hasOnlyKeys = (node: Obj, keys: ReadonlySet<string>): boolean => Object.keys(node).every((key) => keys.has(key));

/** COMMIT (END), ROLLBACK (ABORT), PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED. */
const ENDING_TRANSACTION_KINDS: ReadonlySet<string> = new Set([
  "TRANS_STMT_COMMIT",
  "TRANS_STMT_ROLLBACK",
  "TRANS_STMT_PREPARE",
  "TRANS_STMT_COMMIT_PREPARED",
  "TRANS_STMT_ROLLBACK_PREPARED",
]);

const SAVEPOINT_OPS: Record<string, "savepoint" | "release" | "rollback"> = {
  TRANS_STMT_SAVEPOINT: "savepoint",
  TRANS_STMT_RELEASE: "release",
  TRANS_STMT_ROLLBACK_TO: "rollback",
};

function tableRef(rangeVar: Obj): TableRef {
  const ref: TableRef = { name: String(rangeVar.relname ?? "") };
  if (typeof rangeVar.schemaname === "string") ref.schema = rangeVar.schemaname;
  if (typeof rangeVar.catalogname === "string") ref.catalog = rangeVar.catalogname;
  return ref;
}

/** A table ref from a qualified name list ([schema,] name), e.g. DROP TABLE's objects. */
function tableFromParts(parts: readonly string[]): TableRef | undefined {
  const name = parts[parts.length - 1];
  if (name === undefined || name === "") return undefined;
  const ref: TableRef = { name };
  if (parts.length >= 2) ref.schema = parts[parts.length - 2] as string;
  if (parts.length >= 3) ref.catalog = parts[parts.length - 3] as string;
  return ref;
}

function isCte(scope: Scope, name: string): boolean {
  for (let ctes = scope.ctes; ctes; ctes = ctes.parent) if (ctes.names.includes(name)) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------
// The generic walk

function walk(value: unknown, type: string | undefined, scope: Scope, out: Collector): void {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    for (const item of value) walk(item, undefined, scope, out);
    return;
  }
  const obj = value as Obj;
  if (type !== undefined) {
    walkNode(type, obj, scope, out);
    return;
  }
  const wrapped = unwrap(obj);
  if (wrapped) {
    walkNode(wrapped[0], wrapped[1], scope, out);
  } else if (typeof obj.relname === "string") {
    // Defence in depth: an unwrapped RangeVar in a field the generated table does not know.
    visitRangeVar(obj, scope, out);
  } else {
    walkFields(obj, undefined, scope, out);
  }
}

function walkFields(node: Obj, type: string | undefined, scope: Scope, out: Collector, skip?: ReadonlySet<string>) {
  const fieldTypes = type === undefined ? undefined : NODE_FIELD_TYPES[type];
  for (const key in node) {
    if (skip?.has(key)) continue;
    const value = node[key];
    if (value !== null && typeof value === "object") walk(value, fieldTypes?.[key], scope, out);
  }
}

function walkNode(type: string, node: Obj, scope: Scope, out: Collector): void {
  switch (type) {
    case "RangeVar":
      visitRangeVar(node, scope, out);
      return;
    case "FuncCall":
      visitFuncCall(node, scope, out, false);
      return;
    case "A_Expr":
      if (node.kind === "AEXPR_OP" || node.kind === "AEXPR_OP_ANY" || node.kind === "AEXPR_OP_ALL") {
        visitOperator(node.name, out);
      }
      break;
    case "SubLink":
      if (node.operName !== undefined) visitOperator(node.operName, out);
      break;
    case "A_Indirection":
      // `(expr).name` is a call of the function `name` when `expr` has no field of that name.
      visitFieldSelections(node.indirection, 0, out);
      break;
    case "ColumnRef":
      // So is `t.name` (see visitFieldSelections); the first name is never a function.
      visitFieldSelections(node.fields, 1, out);
      break;
    case "SortBy":
      if (node.useOp !== undefined) visitOperator(node.useOp, out);
      break;
    case "TypeName": {
      // A cast to a domain runs its CHECK constraints, a cast to a user type may run a cast function.
      const parts = nameParts(node.names);
      const name = parts[parts.length - 1];
      if (name !== undefined) out.typeNames.add(name);
      break;
    }
    case "RangeTableSample":
      // TABLESAMPLE method(...) calls the method's handler function.
      visitFunctionName(nameParts(node.method), out, false);
      break;
    case "JsonFuncExpr":
    case "JsonScalarExpr":
    case "JsonSerializeExpr":
    case "JsonParseExpr":
    case "JsonObjectConstructor":
    case "JsonArrayConstructor":
    case "JsonArrayQueryConstructor":
    case "JsonObjectAgg":
    case "JsonArrayAgg":
    case "JsonTable":
    case "MergeSupportFunc":
      visitFunctionName([sqlSyntaxFunctionName(type, node)], out, false);
      break;
    case "SelectStmt":
      visitSelect(node, scope, out);
      return;
    case "InsertStmt":
    case "UpdateStmt":
    case "DeleteStmt":
    case "MergeStmt":
      visitModify(type, node, scope, out);
      return;
    case "ExecuteStmt":
      // Wherever it is (CREATE TABLE AS EXECUTE, EXPLAIN EXECUTE), EXECUTE runs unseen SQL.
      classifyExecute(node, out);
      return;
  }
  walkFields(node, type, scope, out);
}

/**
 * Catalog relations that are not "just metadata": password hashes (pg_authid, pg_shadow), FDW
 * credentials (user mappings), large-object contents, column statistics (most common values and
 * histograms: the data of tables a policy may deny), other sessions' query texts (every Moat user
 * shares the target role), server configuration files; and, from PG_RESTRICTED_RELATIONS, whatever
 * else PostgreSQL keeps from PUBLIC by default (pg_config, pg_shmem_allocations: the target role
 * the agent logs in as may be allowed them). Reading them needs db:admin. Matched
 * unqualified (PostgreSQL finds them in pg_catalog first unless the search path says otherwise; a
 * user table of that name gets the stricter treatment) and in pg_catalog.
 */
const SENSITIVE_CATALOG_RELATIONS: ReadonlySet<string> = new Set([
  "pg_authid",
  "pg_shadow",
  "pg_user_mapping",
  "pg_user_mappings",
  "pg_largeobject",
  "pg_statistic",
  "pg_statistic_ext_data",
  "pg_stats",
  "pg_stats_ext",
  "pg_stats_ext_exprs",
  "pg_stat_activity",
  "pg_hba_file_rules",
  "pg_ident_file_mappings",
  "pg_file_settings",
]);

/**
 * Catalog columns holding a secret, in catalogs whose other columns are ordinary metadata (psql's
 * `\dRs` and pg_dump read them): reading the column (or `*`, or the whole row) needs db:admin.
 */
const SECRET_CATALOG_COLUMNS: ReadonlyMap<string, string> = new Map([
  // A subscription's connection string, replication password included (readable by superusers).
  ["pg_subscription", "subconninfo"],
]);

/** information_schema's views of the same secrets (foreign servers' user mapping options). */
const SENSITIVE_INFORMATION_SCHEMA_RELATIONS: ReadonlySet<string> = new Set([
  "user_mapping_options",
  "_pg_user_mappings",
]);

/** Extensions' views as sensitive as the catalogs above, wherever the extension is installed. */
const SENSITIVE_EXTENSION_RELATIONS: ReadonlySet<string> = new Set(["pg_stat_statements", "pg_stat_statements_info"]);

/** A TOAST table's or index's name (`pg_toast_16399`), unqualified with pg_toast on the search path. */
const TOAST_RELATION = /^pg_toast_\d+(_index)?$/;

function isSensitiveCatalog(rangeVar: Obj): boolean {
  const name = rangeVar.relname;
  if (typeof name !== "string") return false;
  if (SENSITIVE_EXTENSION_RELATIONS.has(name)) return true;
  const schema = rangeVar.schemaname;
  // TOAST tables hold the long values of every table, whatever the policy says of those tables.
  if (typeof schema === "string" && schema.startsWith("pg_toast")) return true;
  if (TOAST_RELATION.test(name)) return true;
  if (SENSITIVE_CATALOG_RELATIONS.has(name) || PG_RESTRICTED_RELATIONS.has(name))
    return schema === undefined || schema === "pg_catalog";
  // Unqualified, information_schema's views are found only with it on the search path: counted too.
  if (SENSITIVE_INFORMATION_SCHEMA_RELATIONS.has(name)) return schema === undefined || schema === "information_schema";
  return false;
}

function visitRangeVar(node: Obj, scope: Scope, out: Collector): void {
  const name = node.relname;
  if (typeof name !== "string" || name === "") return;
  // An unqualified name matching a CTE in scope is the CTE, not a table.
  if (node.schemaname === undefined && node.catalogname === undefined && isCte(scope, name)) return;
  if (isSensitiveCatalog(node)) {
    out.table("db:admin", tableRef(node));
    return;
  }
  if (SECRET_CATALOG_COLUMNS.has(name) && (node.schemaname === undefined || node.schemaname === "pg_catalog"))
    out.secretColumns.push(tableRef(node));
  out.table(scope.locked && scope.mode === "db:read" ? "db:write" : scope.mode, tableRef(node));
}

/** Whether a statement reads `column` by name, `*` or a whole row (see SECRET_CATALOG_COLUMNS). */
function readsColumnOrStar(stmt: Obj, reads: ColumnSources, column: string): boolean {
  if (reads.anyColumn || reads.names.includes(column)) return true;
  let star = false;
  walkNodes(stmt, (kind) => {
    if (kind === "A_Star") star = true;
  });
  return star;
}

/**
 * SQL/JSON and MERGE syntax of PostgreSQL 16-18 (the parser's version) is an ordinary function call
 * on older servers: `json_value('{}', '$')` or `merge_action()` on PostgreSQL 15 calls whatever
 * function of that name the search path finds, a user's included. Each is checked as a call of its
 * name: allowed where the catalog the lists were read from has it built in (json_object), else it
 * needs db:function like any function that is not a built-in.
 */
const JSON_FUNC_NAMES: ReadonlyMap<unknown, string> = new Map([
  ["JSON_QUERY_OP", "json_query"],
  ["JSON_EXISTS_OP", "json_exists"],
  ["JSON_VALUE_OP", "json_value"],
]);

function sqlSyntaxFunctionName(type: string, node: Obj): string {
  switch (type) {
    case "JsonFuncExpr":
      return JSON_FUNC_NAMES.get(node.op) ?? "json_table";
    case "JsonScalarExpr":
      return "json_scalar";
    case "JsonSerializeExpr":
      return "json_serialize";
    case "JsonParseExpr":
      return "json";
    case "JsonObjectConstructor":
      return "json_object";
    case "JsonArrayConstructor":
    case "JsonArrayQueryConstructor":
      return "json_array";
    case "JsonObjectAgg":
      return "json_objectagg";
    case "JsonArrayAgg":
      return "json_arrayagg";
    case "JsonTable":
      return "json_table";
    default:
      return "merge_action";
  }
}

function visitFunctionName(parts: string[], out: Collector, procedure: boolean): void {
  const written = parts.join(".");
  out.functions.add(written);
  const verdict = functionVerdict(parts, procedure);
  if (verdict.action) out.viaFunction(verdict.action, written, verdict.reason);
}

/**
 * Field selections that may be function calls in attribute notation: PostgreSQL reads `(x).f` as
 * `f(x)` when the value has no field `f`, so `('PG_VERSION'::text).pg_read_file` runs pg_read_file,
 * and `t.f` as `f(t)` when `t` has no column `f`: `SELECT t.pg_read_file FROM
 * unnest(ARRAY['PG_VERSION']) t` reads the file (t is the function's scalar value). Built-ins that
 * need more than db:read count as called (a column or field named like one too: fails closed);
 * other names are taken as columns and fields (a user function called this way is the documented
 * limit of attribute notation), and so are built-ins that need nothing.
 */
function visitFieldSelections(items: unknown, from: number, out: Collector): void {
  if (!Array.isArray(items)) return;
  for (let i = from; i < items.length; i++) {
    const item = unwrap(items[i]);
    if (!item || item[0] !== "String" || typeof item[1].sval !== "string") continue;
    const name = item[1].sval;
    out.fieldNames.add(name);
    // Only names of built-ins: the admin name patterns (`lo_*` ...) would also match composite fields.
    if (!isBuiltinFunction([name])) continue;
    const verdict = functionVerdict([name]);
    if (verdict.action === undefined) continue;
    out.functions.add(name);
    out.viaFunction(verdict.action, name, verdict.reason);
  }
}

function visitFuncCall(node: Obj, scope: Scope, out: Collector, procedure: boolean): void {
  const parts = nameParts(node.funcname);
  if (!procedure && setConfigAsSet(parts, node, out)) {
    out.functions.add(parts.join("."));
    walkFields(node, "FuncCall", scope, out, SKIP_FUNCNAME);
    return;
  }
  visitFunctionName(parts, out, procedure);
  // current_setting('primary_conninfo'): a setting holding a credential (review 18).
  if (isCatalogFunction(parts, "current_setting") && Array.isArray(node.args)) {
    const name = settingNameConstant(node.args[0]);
    if (name !== undefined && CREDENTIAL_SETTINGS.has(name.toLowerCase())) out.action("db:admin");
  }
  walkFields(node, "FuncCall", scope, out, SKIP_FUNCNAME);
}

/**
 * Settings whose value may hold a password or a command with credentials (PostgreSQL shows them
 * only to superusers and pg_read_all_settings): reading one by name, or `SHOW ALL`, needs db:admin.
 * `pg_settings` and a computed name are not covered (docs/postgres.md: a target role that can read
 * them reads them).
 */
const CREDENTIAL_SETTINGS: ReadonlySet<string> = new Set([
  "primary_conninfo",
  "ssl_passphrase_command",
  "archive_command",
  "restore_command",
  "archive_cleanup_command",
  "recovery_end_command",
]);

/** A constant under casts and COLLATE (`'primary_conninfo'::text COLLATE "C"`, review 19). */
function settingNameConstant(value: unknown): string | undefined {
  let v = value;
  for (let depth = 0; depth < 64; depth++) {
    const w = unwrap(v);
    if (!w) return undefined;
    if (w[0] === "TypeCast") v = w[1].arg;
    else if (w[0] === "CollateClause") v = w[1].arg;
    else return stringConstant(v);
  }
  return undefined;
}

/** True when `parts` names the built-in `name` (unqualified or pg_catalog's). */
function isCatalogFunction(parts: readonly string[], name: string): boolean {
  return (parts.length === 1 || (parts.length === 2 && parts[0] === "pg_catalog")) && parts.at(-1) === name;
}

/** Settings that change how the server reads the text that follows. */
const LEXICAL_SETTINGS: ReadonlySet<string> = new Set(["standard_conforming_strings", "client_encoding"]);

/** What a set_config call changes: one setting (name in lower case), to one value. */
interface SettingChange {
  name: string;
  value: string;
  local: boolean;
}

/**
 * A GUC name PostgreSQL could accept: an identifier, or dotted identifiers (custom settings). Its
 * names compare case-insensitively in ASCII only, so anything else (spaces, quotes, non-ASCII
 * letters that JavaScript would fold) stays unrecognised and set_config with it an admin function.
 */
const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*$/;

/** The fields of a plain call `f(a, b, c)`: no FILTER, OVER, ORDER BY, DISTINCT, VARIADIC or `*`. */
const PLAIN_CALL_KEYS: ReadonlySet<string> = new Set(["funcname", "args", "funcformat", "location"]);

/** True when `parts` names the built-in set_config (unqualified or pg_catalog's). */
function isSetConfig(parts: readonly string[]): boolean {
  return isCatalogFunction(parts, "set_config");
}

/**
 * The change `set_config(<setting>, <value>, <is_local>)` makes, when all three are constants (or
 * the setting is proven constant, see {@link Collector.knownSetting}); undefined otherwise.
 */
function setConfigChange(node: Obj, out: Collector): SettingChange | undefined {
  if (node.funcformat !== "COERCE_EXPLICIT_CALL" || !hasOnlyKeys(node, PLAIN_CALL_KEYS)) return undefined;
  const args = node.args;
  if (!Array.isArray(args) || args.length !== 3) return undefined;
  const setting = out.knownSetting?.call === node ? out.knownSetting.name : stringConstant(args[0]);
  const value = stringConstant(args[1]);
  const local = constantText(args[2]);
  if (setting === undefined || !SETTING_NAME.test(setting) || value === undefined || local === undefined) {
    return undefined;
  }
  return { name: setting.toLowerCase(), value, local: local === "true" || local === "t" || local === "on" };
}

/**
 * `set_config('<setting>', '<value>', <is_local>)` with constant arguments is
 * `SET [LOCAL] <setting> = '<value>'` and needs what that SET needs (see {@link classifySet}):
 * nothing for ordinary settings, the new path for search_path. Returns false when that SET is
 * privileged (role, session_authorization, session_replication_role) or the call is anything else
 * (computed arguments, a NULL value, an unknown name): the caller then treats it as the admin
 * function it is.
 *
 * search_path: pg_dump starts with `set_config('search_path', '', false)`; the new path is known,
 * so the session can check unqualified names in it too. Unlike SET (whose string arguments are
 * each one name), set_config's value is the whole list, read as PostgreSQL reads it.
 *
 * The lexical settings (standard_conforming_strings, client_encoding) stay admin, as before: the
 * agent lets a statement that changes them through while the session's encoding is unsafe (so
 * the user can switch back), which is safe for a SET, whose grammar holds only the value, but not
 * for a SELECT, which can carry any expression next to the call.
 */
function setConfigAsSet(parts: readonly string[], node: Obj, out: Collector): boolean {
  if (!isSetConfig(parts)) return false;
  // Whatever the outcome, it depends on the literals: `set_config('role', ...)` and
  // `set_config('work_mem', ...)` share a normalized cache key.
  out.literalSensitive = true;
  const change = setConfigChange(node, out);
  if (
    !change ||
    LEXICAL_SETTINGS.has(change.name) ||
    settingIsPrivileged(change.name, false, change.value) ||
    settingLiftsReadOnly(change.name, change.value)
  ) {
    return false;
  }
  if (change.name === "search_path") {
    const path = splitSearchPath(change.value);
    if (path === undefined) return false;
    // Several in one statement: the session widens with all of them.
    out.extra.searchPath = [...(out.extra.searchPath ?? []), ...path];
    if (pathShadowsCatalog(path)) out.action("db:function");
    if (change.local) out.extra.searchPathLocal = true;
  }
  return true;
}

/** PostgreSQL's identifier folding (downcase_identifier, multibyte encodings): ASCII letters only. */
const asciiLower = (name: string): string => name.replace(/[A-Z]+/g, (m) => m.toLowerCase());

/** An identifier cut to NAMEDATALEN - 1 = 63 bytes of UTF-8, never inside a character (truncate_identifier). */
export function truncateIdentifier(name: string): string {
  let bytes = 0;
  let end = 0;
  for (const ch of name) {
    const cp = ch.codePointAt(0) as number;
    const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (bytes + n > 63) return name.slice(0, end);
    bytes += n;
    end += ch.length;
  }
  return name;
}

/**
 * A search_path value as PostgreSQL reads it (SplitIdentifierString): comma-separated names,
 * unquoted ones folded to lower case (ASCII letters only), every one cut to 63 bytes.
 */
export function splitSearchPath(value: string): string[] | undefined {
  const names: string[] = [];
  let i = 0;
  // scanner_isspace: only these five (not \v, not Unicode spaces) separate names.
  const isSpace = (ch: string | undefined) => ch === " " || ch === "\t" || ch === "\n" || ch === "\r" || ch === "\f";
  const skipSpace = () => {
    while (i < value.length && isSpace(value[i])) i++;
  };
  skipSpace();
  if (i === value.length) return [];
  for (;;) {
    skipSpace();
    let name = "";
    if (value[i] === '"') {
      i++;
      for (;;) {
        if (i >= value.length) return undefined;
        if (value[i] === '"') {
          if (value[i + 1] === '"') {
            name += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        name += value[i++];
      }
    } else {
      while (i < value.length && value[i] !== "," && !isSpace(value[i])) name += value[i++];
      if (name === "") return undefined;
      name = asciiLower(name);
    }
    names.push(truncateIdentifier(name));
    skipSpace();
    if (i === value.length) return names;
    if (value[i] !== ",") return undefined;
    i++;
  }
}
const SKIP_FUNCNAME: ReadonlySet<string> = new Set(["funcname"]);

function visitOperator(list: unknown, out: Collector): void {
  const parts = nameParts(list);
  if (parts.length > 0 && !isBuiltinOperator(parts)) out.viaFunction("db:function", `OPERATOR(${parts.join(".")})`);
  else if (parts.length === 1) out.operators.add(parts[0] as string);
}

/** WITH: walks the CTE bodies with the right names visible; returns the scope for the main query. */
function visitWith(withClause: Obj, scope: Scope, out: Collector): CteNames | undefined {
  const ctes = (Array.isArray(withClause.ctes) ? withClause.ctes : [])
    .map(unwrap)
    .filter((cte): cte is [string, Obj] => cte !== undefined);
  const names = ctes.map(([, cte]) => String(cte.ctename ?? ""));
  if (withClause.recursive === true) {
    // WITH RECURSIVE: every CTE of the list is visible in every CTE body.
    const all: CteNames = { names, parent: scope.ctes };
    for (const [kind, cte] of ctes) walk(cte, kind, { ...scope, ctes: all }, out);
    return all;
  }
  // Plain WITH: a CTE body sees only the CTEs before it; its own name there is a table.
  let visible = scope.ctes;
  ctes.forEach(([kind, cte], i) => {
    walk(cte, kind, { ...scope, ctes: visible }, out);
    visible = { names: [names[i] as string], parent: visible };
  });
  return visible;
}

const SKIP_SELECT: ReadonlySet<string> = new Set(["withClause", "intoClause", "lockingClause"]);
const SKIP_SELECT_LOCKED: ReadonlySet<string> = new Set(["withClause", "intoClause", "lockingClause", "fromClause"]);

function visitSelect(node: Obj, outer: Scope, out: Collector): void {
  let scope: Scope = { mode: "db:read", locked: outer.locked, ctes: outer.ctes };
  if (isObj(node.withClause)) scope = { ...scope, ctes: visitWith(node.withClause, scope, out) };
  if (isObj(node.intoClause)) {
    // SELECT INTO creates a table.
    out.action("db:ddl");
    walk(node.intoClause, "IntoClause", withMode(scope, "db:ddl"), out);
  }
  const locking = Array.isArray(node.lockingClause) ? node.lockingClause : [];
  if (locking.length === 0) {
    walkFields(node, "SelectStmt", scope, out, SKIP_SELECT);
    return;
  }
  out.action("db:write");
  const locked = lockedNames(locking);
  for (const item of Array.isArray(node.fromClause) ? node.fromClause : []) walkFromItem(item, locked, scope, out);
  walkFields(node, "SelectStmt", scope, out, SKIP_SELECT_LOCKED);
}

/** The FROM-item names a locking clause names; undefined when one locks everything. */
function lockedNames(locking: unknown[]): Set<string> | undefined {
  const names = new Set<string>();
  for (const clause of locking) {
    const node = unwrap(clause)?.[1];
    const rels = node && Array.isArray(node.lockedRels) ? node.lockedRels : [];
    if (rels.length === 0) return undefined;
    for (const rel of rels) {
      const rangeVar = unwrap(rel)?.[1];
      if (rangeVar && typeof rangeVar.relname === "string") names.add(rangeVar.relname);
    }
  }
  return names;
}

/** Walks one FROM item of a SELECT with a locking clause; locked items' tables need db:write. */
function walkFromItem(item: unknown, locked: Set<string> | undefined, scope: Scope, out: Collector): void {
  const lockedScope: Scope = { ...scope, locked: true };
  const wrapped = unwrap(item);
  if (locked === undefined || !wrapped) {
    walk(item, undefined, locked === undefined ? lockedScope : scope, out);
    return;
  }
  const [kind, node] = wrapped;
  if (kind === "JoinExpr") {
    const alias = aliasOf(node);
    if (alias !== undefined && locked.has(alias)) {
      walk(item, undefined, lockedScope, out);
    } else {
      walkFromItem(node.larg, locked, scope, out);
      walkFromItem(node.rarg, locked, scope, out);
      walkFields(node, kind, scope, out, SKIP_JOIN_SIDES);
    }
    return;
  }
  let name = aliasOf(node);
  if (name === undefined && kind === "RangeVar" && typeof node.relname === "string") name = node.relname;
  if (name === undefined && kind === "RangeTableSample") {
    const relation = unwrap(node.relation)?.[1];
    if (relation) name = aliasOf(relation) ?? (typeof relation.relname === "string" ? relation.relname : undefined);
  }
  walk(item, undefined, name !== undefined && locked.has(name) ? lockedScope : scope, out);
}
const SKIP_JOIN_SIDES: ReadonlySet<string> = new Set(["larg", "rarg"]);

const SKIP_MODIFY: ReadonlySet<string> = new Set(["relation", "withClause"]);

/** INSERT/UPDATE/DELETE/MERGE: db:write on the target (never a CTE), reads elsewhere. */
function visitModify(type: string, node: Obj, outer: Scope, out: Collector): void {
  let scope: Scope = { mode: "db:read", locked: outer.locked, ctes: outer.ctes };
  if (isObj(node.withClause)) scope = { ...scope, ctes: visitWith(node.withClause, scope, out) };
  out.action("db:write");
  if (isObj(node.relation)) out.table("db:write", tableRef(node.relation));
  walkFields(node, type, scope, out, SKIP_MODIFY);
}

// ---------------------------------------------------------------------------------------------
// Statement kinds

/** Need no permission: transaction control, session settings, cursors already declared, UNLISTEN. */
const SESSION_KINDS: ReadonlySet<string> = new Set([
  "VariableShowStmt",
  "UnlistenStmt",
  "FetchStmt",
  "ClosePortalStmt",
  "ConstraintsSetStmt",
]);

/** LockStmt.mode of LOCK ... IN ACCESS SHARE MODE (PostgreSQL's lockdefs.h). */
const ACCESS_SHARE_LOCK = 1;

/** Change data (or state other sessions see) without being INSERT/UPDATE/DELETE/MERGE. */
const WRITE_KINDS: ReadonlySet<string> = new Set(["LockStmt", "TruncateStmt", "RefreshMatViewStmt", "NotifyStmt"]);

/** Schema changes inside the database. */
const DDL_KINDS: ReadonlySet<string> = new Set([
  "CreateStmt",
  "CreateSchemaStmt",
  "CreateForeignTableStmt",
  "CreatePolicyStmt",
  "AlterPolicyStmt",
  "CreateTrigStmt",
  "CreateSeqStmt",
  "AlterSeqStmt",
  "DefineStmt",
  "CreateDomainStmt",
  "AlterDomainStmt",
  "CreateOpClassStmt",
  "CreateOpFamilyStmt",
  "AlterOpFamilyStmt",
  "IndexStmt",
  "CreateStatsStmt",
  "AlterStatsStmt",
  "CreateFunctionStmt",
  "AlterFunctionStmt",
  "AlterObjectDependsStmt",
  "AlterOperatorStmt",
  "AlterTypeStmt",
  "RuleStmt",
  "CompositeTypeStmt",
  "CreateEnumStmt",
  "CreateRangeStmt",
  "AlterEnumStmt",
  "ViewStmt",
  "CreateConversionStmt",
  "CreateCastStmt",
  "CreateTransformStmt",
  "AlterTSDictionaryStmt",
  "AlterTSConfigurationStmt",
  "AlterCollationStmt",
  "ReplicaIdentityStmt",
]);

/** Privileges, roles, cluster and server configuration, maintenance, replication, foreign servers. */
const ADMIN_KINDS: ReadonlySet<string> = new Set([
  "GrantStmt",
  "GrantRoleStmt",
  "CreateRoleStmt",
  "AlterRoleStmt",
  "AlterRoleSetStmt",
  "DropRoleStmt",
  "AlterSystemStmt",
  "LoadStmt",
  "CreatedbStmt",
  "DropdbStmt",
  "AlterDatabaseStmt",
  "AlterDatabaseSetStmt",
  "AlterDatabaseRefreshCollStmt",
  "CreateExtensionStmt",
  "AlterExtensionStmt",
  "AlterExtensionContentsStmt",
  "AlterDefaultPrivilegesStmt",
  "CreateFdwStmt",
  "AlterFdwStmt",
  "CreateForeignServerStmt",
  "AlterForeignServerStmt",
  "CreateUserMappingStmt",
  "AlterUserMappingStmt",
  "DropUserMappingStmt",
  "ImportForeignSchemaStmt",
  "SecLabelStmt",
  "CreateTableSpaceStmt",
  "DropTableSpaceStmt",
  "AlterTableSpaceOptionsStmt",
  "AlterTableMoveAllStmt",
  "CreateSubscriptionStmt",
  "AlterSubscriptionStmt",
  "DropSubscriptionStmt",
  "CreatePublicationStmt",
  "AlterPublicationStmt",
  "ReassignOwnedStmt",
  "DropOwnedStmt",
  "CreateEventTrigStmt",
  "AlterEventTrigStmt",
  "CreatePLangStmt",
  "CreateAmStmt",
  // Ownership changes give objects away: a privilege change like GRANT.
  "AlterOwnerStmt",
  "VacuumStmt",
  "ClusterStmt",
  "ReindexStmt",
  "CheckPointStmt",
]);

/** Object types whose DROP/RENAME/ALTER ... SET SCHEMA reach beyond one database's schema. */
const ADMIN_OBJECT_TYPES: ReadonlySet<string> = new Set([
  "OBJECT_DATABASE",
  "OBJECT_ROLE",
  "OBJECT_TABLESPACE",
  "OBJECT_EXTENSION",
  "OBJECT_FOREIGN_SERVER",
  "OBJECT_FDW",
  "OBJECT_USER_MAPPING",
  "OBJECT_SUBSCRIPTION",
  "OBJECT_PUBLICATION",
  "OBJECT_EVENT_TRIGGER",
  "OBJECT_LANGUAGE",
  "OBJECT_ACCESS_METHOD",
  "OBJECT_PARAMETER_ACL",
]);

/** Object types named by a relation name, and those named "[schema.]table.object". */
const RELATION_OBJECT_TYPES: ReadonlySet<string> = new Set([
  "OBJECT_TABLE",
  "OBJECT_VIEW",
  "OBJECT_MATVIEW",
  "OBJECT_SEQUENCE",
  "OBJECT_FOREIGN_TABLE",
  "OBJECT_INDEX",
]);
const TABLE_MEMBER_OBJECT_TYPES: ReadonlySet<string> = new Set([
  "OBJECT_COLUMN",
  "OBJECT_POLICY",
  "OBJECT_TRIGGER",
  "OBJECT_RULE",
  "OBJECT_TABCONSTRAINT",
]);

/** The table an object name of a DROP/COMMENT refers to, when obvious. */
function objectTable(objectType: unknown, object: unknown): TableRef | undefined {
  const list = unwrap(object);
  const parts = list && list[0] === "List" ? nameParts(list[1].items) : [];
  if (RELATION_OBJECT_TYPES.has(String(objectType))) return tableFromParts(parts);
  if (TABLE_MEMBER_OBJECT_TYPES.has(String(objectType))) return tableFromParts(parts.slice(0, -1));
  return undefined;
}

/** The value of a constant argument (A_Const or a bare value node), as a string. */
function constantText(value: unknown): string | undefined {
  const wrapped = unwrap(value);
  if (!wrapped) return undefined;
  let [kind, node] = wrapped;
  if (kind === "A_Const") {
    const inner = Object.entries(node).find(([key]) => key !== "location" && key !== "isnull");
    if (!inner || !isObj(inner[1])) return undefined;
    node = inner[1];
    kind = inner[0];
  }
  if (kind === "sval" || kind === "String") return String(node.sval ?? "");
  if (kind === "ival" || kind === "Integer") return String(node.ival ?? 0);
  if (kind === "fval" || kind === "Float") return String(node.fval ?? "");
  if (kind === "boolval" || kind === "Boolean") return node.boolval === true ? "true" : "false";
  return undefined;
}

/** The value of a string constant (`'x'`, `E'x'`, `$$x$$`, ...), undefined for anything else (NULL, numbers, casts). */
function stringConstant(value: unknown): string | undefined {
  const wrapped = unwrap(value);
  if (!wrapped || wrapped[0] !== "A_Const" || !isObj(wrapped[1].sval)) return undefined;
  return String(wrapped[1].sval.sval ?? "");
}

/** EXPLAIN's ANALYZE option: on unless clearly turned off (PostgreSQL's defGetBoolean). */
function explainAnalyzes(options: unknown): boolean {
  if (!Array.isArray(options)) return false;
  let analyze = false;
  for (const option of options) {
    const node = unwrap(option)?.[1];
    if (!node || node.defname !== "analyze") continue;
    if (node.arg === undefined) {
      analyze = true;
      continue;
    }
    const value = constantText(node.arg)?.toLowerCase();
    if (value !== "false" && value !== "off" && value !== "0") analyze = true;
  }
  return analyze;
}

/**
 * Extensions' settings a superuser sets (the generated list has core settings only): the audit and
 * logging ones, and the procedural languages' start-up code (`plperl.on_plperl_init`,
 * `pltcl.start_proc`: code run with the server's rights when the language next loads in the
 * session, which a view or a default can make happen unseen; review 34).
 */
const SUPERUSER_SETTING_PREFIXES = [
  "pgaudit.",
  "auto_explain.",
  "pg_stat_statements.",
  "plperl.",
  "plperlu.",
  "pltcl.",
  "pltclu.",
  "plv8.",
  "pljava.",
];

/**
 * True when setting `name` (lower case) needs db:admin, SET and set_config alike: a new role or
 * session user is new power, except going back to the login user (RESET ROLE, SET ROLE NONE:
 * `value` "none", exactly as PostgreSQL compares it; RESET/DEFAULT: `resets`);
 * session_replication_role turns off triggers and foreign keys (superuser only), whatever the value.
 */
function settingIsPrivileged(name: string, resets: boolean, value: string | undefined): boolean {
  switch (name) {
    case "role":
      return !resets && value !== "none";
    case "session_authorization":
      return !resets;
    default:
      // Only a superuser may change them (session_replication_role skips triggers, log_statement
      // and pgaudit.* silence the server's own logs, zero_damaged_pages destroys data, ...): they
      // need db:admin whatever the target role is. So do those no SET may change (max_connections,
      // ignore_system_indexes: the server refuses them, 55P02; review 55 wanted Moat's 42501).
      return (
        PG_SUPERUSER_SETTINGS.has(name) ||
        PG_FIXED_SETTINGS.has(name) ||
        SUPERUSER_SETTING_PREFIXES.some((prefix) => name.startsWith(prefix))
      );
  }
}

function classifySet(node: Obj, out: Collector): void {
  out.literalSensitive = true;
  const kind = node.kind;
  // GUC names are case-insensitive: SET "Search_Path" = x sets search_path.
  const name = typeof node.name === "string" ? node.name.toLowerCase() : "";
  const resets = kind === "VAR_RESET" || kind === "VAR_SET_DEFAULT";
  if (kind === "VAR_RESET_ALL") {
    out.extra.lexicalChange = true;
    out.extra.searchPath = null;
    return;
  }
  const args = Array.isArray(node.args) ? node.args : [];
  if (LEXICAL_SETTINGS.has(name)) {
    out.extra.lexicalChange = true;
    const value = kind === "VAR_SET_VALUE" && args.length === 1 ? constantText(args[0]) : undefined;
    if (value !== undefined) out.extra.lexicalSetting = { name, value };
  }
  if (name === "search_path") {
    if (resets) out.extra.searchPath = null;
    // Each argument is one name (the server quotes a string argument as an identifier, commas and
    // all), cut to 63 bytes like every identifier when the path is used.
    else if (kind === "VAR_SET_VALUE") {
      out.extra.searchPath = args.map((arg) => truncateIdentifier(constantText(arg) ?? ""));
      // Functions and operators of a schema placed before pg_catalog replace the built-ins.
      if (pathShadowsCatalog(out.extra.searchPath)) out.action("db:function");
    }
    if (out.extra.searchPath !== undefined && node.is_local === true) out.extra.searchPathLocal = true;
  }
  const value = kind === "VAR_SET_VALUE" && args.length === 1 ? constantText(args[0]) : undefined;
  if (settingIsPrivileged(name, resets, value)) out.action("db:admin");
  if (kind === "VAR_SET_VALUE" && settingLiftsReadOnly(name, value)) out.action("db:write");
  // transaction_read_only's default is off, not the session's default_transaction_read_only:
  // RESET or DEFAULT of it makes the transaction read-write (PostgreSQL 15 allows it mid-transaction).
  if (resets && name === "transaction_read_only") out.action("db:write");
  // SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION ... READ WRITE
  if (kind === "VAR_SET_MULTI" && optionsLiftReadOnly(args)) out.action("db:write");
}

const READ_ONLY_SETTINGS: ReadonlySet<string> = new Set(["default_transaction_read_only", "transaction_read_only"]);

/**
 * Whether setting `name` to `value` can turn off a read-only default (a target role created with
 * `default_transaction_read_only = on`, which operators may use as a backstop for read-only
 * resources, or the agent's read-only sessions): that needs db:write. Turning it on needs nothing,
 * and so does RESET/DEFAULT of default_transaction_read_only (back to the session's start value);
 * RESET/DEFAULT of transaction_read_only, whose own default is off, is checked in classifySet. A
 * value that is not a constant counts as off. PostgreSQL's parse_bool prefixes.
 */
function settingLiftsReadOnly(name: string, value: string | undefined): boolean {
  if (!READ_ONLY_SETTINGS.has(name)) return false;
  return value === undefined || !/^\s*(t|tr|tru|true|y|ye|yes|on|1)\s*$/i.test(value);
}

/** BEGIN/START TRANSACTION/SET TRANSACTION options holding READ WRITE (transaction_read_only = 0). */
function optionsLiftReadOnly(options: unknown): boolean {
  if (!Array.isArray(options)) return false;
  return options.some((option) => {
    const def = unwrap(option);
    return def?.[0] === "DefElem" && def[1].defname === "transaction_read_only" && constantText(def[1].arg) !== "1";
  });
}

const SETTINGS_SELECT_KEYS: ReadonlySet<string> = new Set([
  "targetList",
  "fromClause",
  "whereClause",
  "limitOption",
  "op",
]);
const SETTINGS_RELATION_KEYS: ReadonlySet<string> = new Set([
  "relname",
  "schemaname",
  "inh",
  "relpersistence",
  "location",
]);
const TARGET_KEYS: ReadonlySet<string> = new Set(["val", "location"]);
const COLUMN_REF_KEYS: ReadonlySet<string> = new Set(["fields", "location"]);
const EXPR_KEYS: ReadonlySet<string> = new Set(["kind", "name", "lexpr", "rexpr", "location"]);

/** True when `value` is the bare column reference `name`. */
function isNameColumn(value: unknown): boolean {
  const ref = unwrap(value);
  if (!ref || ref[0] !== "ColumnRef" || !hasOnlyKeys(ref[1], COLUMN_REF_KEYS)) return false;
  const fields = nameParts(ref[1].fields);
  return fields.length === 1 && fields[0] === "name";
}

/**
 * Recognises pg_dump's (15.8+) way of setting a setting only where the server has it:
 * `SELECT set_config(name, <const>, <const>) FROM [pg_catalog.]pg_settings WHERE name = '<setting>'`.
 * Every row it calls set_config for has name = '<setting>', so the call is
 * `set_config('<setting>', ...)`: returns that call and the setting. Exactly this shape, nothing
 * more: another target, table, alias, join, clause, operator or a computed comparison (OR, LIKE,
 * casts, subqueries) could call set_config for other settings, so anything else gets undefined and
 * the call stays an admin function.
 */
function pgSettingsSetConfig(select: Obj): { call: Obj; name: string } | undefined {
  if (!hasOnlyKeys(select, SETTINGS_SELECT_KEYS)) return undefined;
  if (select.op !== undefined && select.op !== "SETOP_NONE") return undefined;
  if (select.limitOption !== undefined && select.limitOption !== "LIMIT_OPTION_DEFAULT") return undefined;
  const { targetList, fromClause } = select;
  if (!Array.isArray(targetList) || targetList.length !== 1) return undefined;
  if (!Array.isArray(fromClause) || fromClause.length !== 1) return undefined;

  const target = unwrap(targetList[0]);
  if (!target || target[0] !== "ResTarget" || !hasOnlyKeys(target[1], TARGET_KEYS)) return undefined;
  const call = unwrap(target[1].val);
  if (!call || call[0] !== "FuncCall" || !isSetConfig(nameParts(call[1].funcname))) return undefined;
  const args = call[1].args;
  if (!Array.isArray(args) || !isNameColumn(args[0])) return undefined;

  const from = unwrap(fromClause[0]);
  if (!from || from[0] !== "RangeVar" || !hasOnlyKeys(from[1], SETTINGS_RELATION_KEYS)) return undefined;
  const relation = from[1];
  if (relation.relname !== "pg_settings") return undefined;
  if (relation.schemaname !== undefined && relation.schemaname !== "pg_catalog") return undefined;
  if (relation.relpersistence !== undefined && relation.relpersistence !== "p") return undefined;

  const where = unwrap(select.whereClause);
  if (!where || where[0] !== "A_Expr" || !hasOnlyKeys(where[1], EXPR_KEYS)) return undefined;
  const operator = nameParts(where[1].name);
  const equals = operator.length === 1 || (operator.length === 2 && operator[0] === "pg_catalog");
  if (where[1].kind !== "AEXPR_OP" || !equals || operator.at(-1) !== "=") return undefined;
  if (!isNameColumn(where[1].lexpr)) return undefined;
  const name = stringConstant(where[1].rexpr);
  return name === undefined ? undefined : { call: call[1], name };
}

/** Adds what one statement node (`kind` with its fields) needs to `out`. */
function classifyInto(kind: string, node: Obj, out: Collector): void {
  switch (kind) {
    case "SelectStmt":
      out.action("db:read");
      out.knownSetting = pgSettingsSetConfig(node);
      visitSelect(node, ROOT, out);
      return;
    case "InsertStmt":
    case "UpdateStmt":
    case "DeleteStmt":
    case "MergeStmt":
      visitModify(kind, node, ROOT, out);
      return;
    case "ExplainStmt":
      classifyExplain(node, out);
      return;
    case "CopyStmt":
      classifyCopy(node, out);
      return;
    case "PrepareStmt":
      out.extra.prepare = { name: String(node.name ?? "") };
      classifyInner(node.query, out);
      return;
    case "DeclareCursorStmt":
      classifyInner(node.query, out);
      return;
    case "ExecuteStmt":
      classifyExecute(node, out);
      return;
    case "LockStmt":
      if (node.mode === ACCESS_SHARE_LOCK) {
        // The lock every SELECT takes (pg_dump takes it explicitly on what it dumps): a read.
        out.action("db:read");
        walkFields(node, kind, withMode(ROOT, "db:read"), out);
        return;
      }
      break; // stronger locks block other sessions' writes or reads: a write (below)
    case "ListenStmt":
      // Notifications carry what other sessions send (NOTIFY payloads): receiving them is a read.
      out.action("db:read");
      return;
    case "DoStmt":
      out.dynamic("DO blocks run procedural code that cannot be inspected");
      return;
    case "CallStmt":
      if (isObj(node.funccall)) visitFuncCall(node.funccall, ROOT, out, true);
      return;
    case "VariableSetStmt":
      classifySet(node, out);
      return;
    case "TransactionStmt":
      // Two-phase commit: a prepared transaction outlives the session and holds its locks; COMMIT or
      // ROLLBACK PREPARED can finish another session's transaction.
      if (
        node.kind === "TRANS_STMT_PREPARE" ||
        node.kind === "TRANS_STMT_COMMIT_PREPARED" ||
        node.kind === "TRANS_STMT_ROLLBACK_PREPARED"
      ) {
        out.action("db:admin");
      }
      if (ENDING_TRANSACTION_KINDS.has(String(node.kind))) out.extra.endsTransaction = true;
      // BEGIN READ WRITE under a read-only default: see settingLiftsReadOnly.
      if (optionsLiftReadOnly(node.options)) out.action("db:write");
      // Savepoints: a ROLLBACK TO closes the cursors and portals opened since (the agent forgets them).
      if (typeof node.savepoint_name === "string") {
        const op = SAVEPOINT_OPS[String(node.kind)];
        if (op) out.extra.savepoint = { op, name: node.savepoint_name };
      }
      return;
    case "DiscardStmt":
      if (node.target === "DISCARD_ALL") {
        out.extra.lexicalChange = true;
        out.extra.searchPath = null;
        out.extra.deallocate = { name: null };
      }
      return;
    case "DeallocateStmt":
      out.extra.deallocate = { name: node.isall === true || typeof node.name !== "string" ? null : node.name };
      return;
    case "CreateTableAsStmt":
      // CREATE TABLE AS / CREATE MATERIALIZED VIEW: a new table filled by the query.
      out.action("db:ddl");
      walk(node.into, "IntoClause", withMode(ROOT, "db:ddl"), out);
      classifyInner(node.query, out);
      return;
    case "AlterTableStmt": {
      out.action("db:ddl");
      const cmds = Array.isArray(node.cmds) ? node.cmds : [];
      if (cmds.some((cmd) => unwrap(cmd)?.[1].subtype === "AT_ChangeOwner")) {
        out.action("db:admin");
        if (isObj(node.relation)) out.table("db:admin", tableRef(node.relation));
      }
      walkFields(node, kind, withMode(ROOT, "db:ddl"), out);
      return;
    }
    case "DropStmt":
    case "CommentStmt": {
      const objectType = kind === "DropStmt" ? node.removeType : node.objtype;
      const action: DbAction =
        kind === "DropStmt" && ADMIN_OBJECT_TYPES.has(String(objectType)) ? "db:admin" : "db:ddl";
      out.action(action);
      const objects = kind === "DropStmt" ? (Array.isArray(node.objects) ? node.objects : []) : [node.object];
      for (const object of objects) {
        const table = objectTable(objectType, object);
        if (table) out.table(action, table);
      }
      return;
    }
    case "RenameStmt":
    case "AlterObjectSchemaStmt": {
      const objectType = kind === "RenameStmt" ? node.renameType : node.objectType;
      const action: DbAction = ADMIN_OBJECT_TYPES.has(String(objectType)) ? "db:admin" : "db:ddl";
      out.action(action);
      const table = objectTable(objectType, node.object);
      if (table) out.table(action, table);
      walkFields(node, kind, withMode(ROOT, action), out);
      return;
    }
  }
  if (kind === "VariableShowStmt") {
    const name = String(node.name ?? "").toLowerCase();
    if (name === "all" || CREDENTIAL_SETTINGS.has(name)) out.action("db:admin");
    return;
  }
  if (SESSION_KINDS.has(kind)) return;
  const action: DbAction | undefined = WRITE_KINDS.has(kind)
    ? "db:write"
    : DDL_KINDS.has(kind)
      ? "db:ddl"
      : ADMIN_KINDS.has(kind)
        ? "db:admin"
        : undefined;
  if (action === undefined) {
    out.dynamic(`statement kind ${kind} is not classified`);
    return;
  }
  out.action(action);
  walkFields(node, kind, withMode(ROOT, action), out);
}

/** EXECUTE name (params): dynamic until the caller resolves the name; the parameters are visible. */
function classifyExecute(node: Obj, out: Collector): void {
  const name = String(node.name ?? "");
  out.extra.execute = { name };
  out.dynamic(`EXECUTE runs the prepared statement "${name}", which was not resolved`);
  walkFields(node, "ExecuteStmt", ROOT, out);
}

/** Classifies a wrapped statement node (PREPARE's, DECLARE's, EXPLAIN's inner statement). */
function classifyInner(value: unknown, out: Collector): void {
  const inner = unwrap(value);
  if (inner) classifyInto(inner[0], inner[1], out);
  else out.dynamic("the statement has no inner statement the classifier understands");
}

function classifyExplain(node: Obj, out: Collector): void {
  const options = Array.isArray(node.options) ? node.options : [];
  // EXPLAIN (ANALYZE 'off') and (ANALYZE 'on') share a normalized cache key.
  if (options.some((option) => unwrap(option)?.[1].arg !== undefined)) out.literalSensitive = true;
  const inner = new Collector();
  classifyInner(node.query, inner);
  if (inner.literalSensitive) out.literalSensitive = true;
  for (const fn of inner.functions) out.functions.add(fn);
  // (Review 60: EXPLAIN ANALYZE SELECT v.touch ran touch(v), its field names left behind.)
  for (const name of inner.fieldNames) out.fieldNames.add(name);
  for (const op of inner.operators) out.operators.add(op);
  for (const t of inner.typeNames) out.typeNames.add(t);
  Object.assign(out.extra, inner.extra);
  if (explainAnalyzes(options)) {
    // EXPLAIN ANALYZE runs the statement.
    out.uses.push(...inner.uses);
    return;
  }
  // Plain EXPLAIN only plans: tables are read (for the plan). Planning can still call functions
  // (constant folding, selectivity estimates evaluate immutable and stable functions), so
  // function-derived actions and dynamic ones stay.
  out.action("db:read");
  for (const use of inner.uses) {
    if (use.viaFunction || use.action === "db:dynamic") out.uses.push(use);
    else if (use.table) out.table("db:read", use.table);
  }
}

function classifyCopy(node: Obj, out: Collector): void {
  const relation = isObj(node.relation) ? tableRef(node.relation) : undefined;
  if (node.filename !== undefined || node.is_program === true) {
    // Server-side files and programs run with the server's OS account.
    out.action("db:admin");
    if (relation) out.table("db:admin", relation);
    walk(node.query, undefined, ROOT, out);
    walk(node.whereClause, undefined, ROOT, out);
    return;
  }
  if (node.is_from === true) {
    out.action("db:copy-in");
    if (relation) out.table("db:copy-in", relation);
    walk(node.whereClause, undefined, ROOT, out);
    return;
  }
  out.action("db:copy-out");
  if (relation) out.table("db:copy-out", relation);
  if (
    isObj(node.relation) &&
    (isSensitiveCatalog(node.relation) || SECRET_CATALOG_COLUMNS.has(String(node.relation.relname)))
  )
    out.table("db:admin", tableRef(node.relation));
  const before = out.uses.length;
  walk(node.query, undefined, ROOT, out);
  for (const use of out.uses.slice(before)) if (use.table && !use.viaFunction) out.table("db:copy-out", use.table);
}

const tableKey = (table: TableRef) => `${table.catalog ?? ""}\u0000${table.schema ?? ""}\u0000${table.name}`;

function finish(kind: string, out: Collector): ShapeResult {
  const byAction = new Map<DbAction, { tables: Map<string, TableRef>; functions: Set<string> }>();
  const tables = new Map<string, TableRef>();
  for (const use of out.uses) {
    let entry = byAction.get(use.action);
    if (!entry) byAction.set(use.action, (entry = { tables: new Map(), functions: new Set() }));
    if (use.table) {
      const key = tableKey(use.table);
      if (!entry.tables.has(key)) entry.tables.set(key, use.table);
      if (!tables.has(key)) tables.set(key, use.table);
    }
    if (use.fn !== undefined) entry.functions.add(use.fn);
  }
  const actions: ActionUse[] = [...byAction]
    .sort(([a], [b]) => actionRank(b) - actionRank(a))
    .map(([action, entry]) => {
      const use: ActionUse = { action, tables: [...entry.tables.values()] };
      if (entry.functions.size > 0) use.functions = [...entry.functions];
      return use;
    });
  const shape: StatementShape = {
    kind,
    statementClass: classOfActions(actions),
    actions,
    tables: [...tables.values()],
    functions: [...out.functions],
    ...out.extra,
  };
  if (out.fieldNames.size > 0) shape.fieldNames = [...out.fieldNames];
  if (out.operators.size > 0) shape.operators = [...out.operators];
  if (out.typeNames.size > 0) shape.typeNames = [...out.typeNames];
  if (shape.statementClass !== "dynamic") delete shape.reason;
  return { shape, literalSensitive: out.literalSensitive };
}

/** Classifies one statement from libpg-query's `stmts[i].stmt` (`{ "SelectStmt": {...} }`). */
export function classifyStatement(stmt: unknown): ShapeResult {
  const wrapped = unwrap(stmt);
  const out = new Collector();
  if (!wrapped) {
    out.dynamic("the statement could not be read");
    return finish("", out);
  }
  const [kind, node] = wrapped;
  classifyInto(kind, node, out);
  const { result, reads } = statementLineage(kind, node);
  if (result) out.extra.result = result;
  out.extra.reads = reads;
  for (const table of out.secretColumns)
    if (readsColumnOrStar(node, reads, SECRET_CATALOG_COLUMNS.get(table.name) as string)) out.table("db:admin", table);
  if (kind === "DiscardStmt" && node.target === "DISCARD_ALL") out.extra.cursor = { op: "close", name: null };
  if (kind === "DeclareCursorStmt" || kind === "FetchStmt" || kind === "ClosePortalStmt") {
    const op = kind === "DeclareCursorStmt" ? "declare" : kind === "FetchStmt" ? "fetch" : "close";
    out.extra.cursor = { op, name: typeof node.portalname === "string" ? node.portalname : null };
    // CURSOR_OPT_HOLD: the cursor outlives its transaction.
    if (op === "declare") out.extra.cursor.hold = typeof node.options === "number" && (node.options & 0x20) !== 0;
  }
  return finish(kind, out);
}

/** A statement that must be refused as dynamic whatever it is, for `reason`. */
export function dynamicShape(kind: string, reason: string): StatementShape {
  return {
    kind,
    statementClass: "dynamic",
    actions: [{ action: "db:dynamic", tables: [] }],
    tables: [],
    functions: [],
    reason,
  };
}
