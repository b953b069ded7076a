/**
 * The data types of @moat/sql: what a statement needs (actions on tables), and what the classifier
 * returns. Types and the action ranking only; no logic that looks at SQL.
 */

/** A permission a statement needs. Policies grant these per table (or per function). */
export type DbAction =
  "db:read" | "db:write" | "db:ddl" | "db:admin" | "db:dynamic" | "db:copy-in" | "db:copy-out" | "db:function";

/**
 * Every action, weakest first. The order is a judgement used only to pick a statement's summary
 * class: a bulk copy is stronger than the row-level action it resembles; a user-defined function
 * can do anything its body does; schema changes outlive the session; admin actions reach beyond the
 * database's data; dynamic SQL could be any of them.
 */
export const DB_ACTIONS: readonly DbAction[] = [
  "db:read",
  "db:copy-out",
  "db:write",
  "db:copy-in",
  "db:function",
  "db:ddl",
  "db:admin",
  "db:dynamic",
];

/** The rank of an action in {@link DB_ACTIONS} (higher is stronger). */
export function actionRank(action: DbAction): number {
  return DB_ACTIONS.indexOf(action);
}

/** The strongest of some actions, or undefined for none. */
export function strongestAction(actions: Iterable<DbAction>): DbAction | undefined {
  let best: DbAction | undefined;
  for (const action of actions) if (best === undefined || actionRank(action) > actionRank(best)) best = action;
  return best;
}

/** A table (or view, sequence, index) as written, names case-folded by the parser. */
export interface TableRef {
  /** Absent when the name was not qualified. */
  schema?: string;
  name: string;
  /** The database part of a three-part name (`db.schema.table`), rare. */
  catalog?: string;
}

/** One permission a statement needs and what it needs it on. */
export interface ActionUse {
  action: DbAction;
  tables: TableRef[];
  /** The functions (or `OPERATOR(x)`s) that need this action, when functions are the reason. */
  functions?: string[];
}

/**
 * What the values of a result column may have been computed from: the columns its expression
 * references, by name (table unknown). For masking: a computed column (`lower(email)`) has no table
 * column of its own in the RowDescription, so the proxy asks where its values came from.
 */
export interface ColumnSources {
  /** Names of the columns referenced, as the parser gives them (folded to lower case unless quoted). */
  names: string[];
  /**
   * Values of any column may be in it: a whole-row reference (`row_to_json(u)`, `SELECT u FROM
   * users u`), columns renamed by an alias list (`FROM users u(a, b)`), or a source the lineage
   * cannot follow.
   */
  anyColumn: boolean;
  /**
   * The column carries no value of any row (a result column that is `count(...)` or a constant):
   * not even what reaches every computed column (`shared`) reaches it.
   */
  valueFree?: boolean;
}

/**
 * Where the values of a statement's result columns may come from (data flow only: what a WHERE,
 * ORDER BY or JOIN condition reads is not counted; those influence which rows come back, not what
 * they hold). Only computed result columns use it: a plain column reference is named by the
 * server's RowDescription.
 */
export interface ResultLineage {
  /** What may reach every computed column of the result (FROM subqueries, CTEs, table functions). */
  shared: ColumnSources;
  /**
   * Per result column, what its own expression references, when the statement's output list maps
   * one to one to the result's columns (no `*`); absent otherwise, and then `shared` holds it all.
   */
  columns?: ColumnSources[];
}

export type StatementClass =
  "read" | "write" | "ddl" | "admin" | "dynamic" | "copy-in" | "copy-out" | "function" | "session";

/**
 * One statement of a query text. Objects returned by the classifier are shared with its cache and
 * frozen: treat them as read-only.
 */
export interface StatementInfo {
  /** Parse node name, e.g. "SelectStmt"; "" when the text could not be split into statements. */
  kind: string;
  /** This statement's own text, trimmed. */
  text: string;
  /** The strongest action, or "session" for statements that need no permission. */
  statementClass: StatementClass;
  /** Every permission the statement needs, strongest first; [] for "session" statements. */
  actions: ActionUse[];
  /** Every table touched, deduplicated, in order of appearance. */
  tables: TableRef[];
  /** Every function called, as written ("pg_catalog.lower" or "lower"), deduplicated. */
  functions: string[];
  /**
   * Names selected from a row or value (`t.name`, `(x).name`), deduplicated; absent when none.
   * PostgreSQL reads one as a call of the function `name` when there is no such column or field
   * (attribute notation): a user's function of that name would run, which the caller can check
   * against the target's catalog.
   */
  fieldNames?: string[];
  /**
   * Built-in operator names the statement uses unqualified (`||`, `=`), deduplicated; absent when
   * none. A database's own operator of the same name on other types may be the one that runs.
   */
  operators?: string[];
  /**
   * Types named (unqualified: the last part), deduplicated; absent when none. A cast to a domain
   * runs the domain's CHECK constraints, a cast to a user type its cast function: functions the
   * caller can look up in the target's catalog.
   */
  typeNames?: string[];
  /** Why a dynamic statement cannot be classified (safe to show to the user). */
  reason?: string;
  /** SET search_path: the new path; RESET/DEFAULT: null (back to the server's default). */
  searchPath?: string[] | null;
  /** The search_path change is SET LOCAL: it ends with the transaction. */
  searchPathLocal?: boolean;
  /** Changes how the server reads the following text (standard_conforming_strings, client_encoding). */
  lexicalChange?: boolean;
  /** `SET client_encoding` / `SET standard_conforming_strings` to one constant: which, and to what. */
  lexicalSetting?: { name: string; value: string };
  /** PREPARE name AS ...: the statement is classified as its inner statement. */
  prepare?: { name: string };
  /** EXECUTE name: dynamic unless the caller resolves the name to the prepared statement's class. */
  execute?: { name: string };
  /** DEALLOCATE name, or null for DEALLOCATE ALL / DISCARD ALL. */
  deallocate?: { name: string | null };
  /** Where the values of the rows the statement returns come from (SELECT, RETURNING, DECLARE, PREPARE). */
  result?: ResultLineage;
  /**
   * Every column the statement references anywhere, predicates included (what an error message
   * could quote); for EXECUTE and FETCH, see the prepared statement's or cursor's.
   */
  reads?: ColumnSources;
  /** DECLARE, FETCH/MOVE or CLOSE of a cursor (name null: CLOSE ALL); `hold`: DECLARE ... WITH HOLD. */
  cursor?: { op: "declare" | "fetch" | "close"; name: string | null; hold?: boolean };
  /** SAVEPOINT, RELEASE [SAVEPOINT] or ROLLBACK TO [SAVEPOINT] of savepoint `name`. */
  savepoint?: { op: "savepoint" | "release" | "rollback"; name: string };
  /** COMMIT (END), ROLLBACK (ABORT), PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED (not ROLLBACK TO). */
  endsTransaction?: boolean;
}

export interface SqlSyntaxError {
  message: string;
  /** 1-based character position like PostgreSQL's, 0 when unknown. */
  position: number;
  /**
   * 42601 syntax error; 54001 statement too complex (nested deeper than the checks can follow);
   * 54000 longer than the proxy parses (its maxStatementLength); 53400 too much text already waiting
   * for a classifier worker; XX000 the classifier itself failed (a classifier worker that died: see
   * classifier-pool.ts).
   */
  sqlstate: "42601" | "53400" | "54000" | "54001" | "XX000";
}

export type Classification =
  | { ok: true; statements: StatementInfo[]; fingerprint: string; cached: boolean }
  | { ok: false; error: SqlSyntaxError };

/** The session settings that change how PostgreSQL lexes text. */
export interface LexicalState {
  standardConformingStrings: boolean;
}

export interface ClassifierOptions {
  /** Maximum cached classifications (default 10 000; 0 disables the cache). */
  cacheEntries?: number;
  /** Texts longer than this (in UTF-16 units) are classified without caching (default 16 KiB). */
  maxCachedTextLength?: number;
  /** Bound on the total length of cached keys, in UTF-16 units (default 8 Mi, about 16 MiB). */
  maxCacheChars?: number;
}

export interface Classifier {
  classify(text: string, lexical: LexicalState): Classification;
  readonly cacheSize: number;
}

/** The summary class of a set of actions. */
export function classOfActions(actions: readonly ActionUse[]): StatementClass {
  const best = strongestAction(actions.map((use) => use.action));
  return best === undefined ? "session" : (best.slice(3) as StatementClass);
}
