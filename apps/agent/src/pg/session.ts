/**
 * One proxied Postgres session after authentication: every client message is decoded and every
 * statement classified (real parser, cached shapes) and decided against the bundle in force before
 * anything reaches the target; results are relayed without copying, and rewritten only where
 * masking applies. Audit events are written to the spool before the response they describe is
 * forwarded.
 *
 * Denials keep client and target in step: the agent forwards a statement that fails on the target
 * (`POISON`) in place of the denied one, so the target aborts a transaction, skips to Sync and
 * answers exactly as if the statement had failed there; the agent then replaces the target's error
 * with its own (SQLSTATE 42501 and the rule's message).
 */
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import {
  bindFormatMismatch,
  bindNames,
  decodeBind,
  commandCompleteRows,
  replaceDataRowValues,
  decodeErrorFields,
  decodeExecute,
  decodeFunctionCall,
  decodeNotification,
  decodeParameterStatus,
  decodeParse,
  decodeQuery,
  decodeRowDescription,
  decodeTarget,
  errorResponse,
  noticeResponse,
  notificationResponse,
  FrameReader,
  HOLD,
  ProtocolError,
  RelayScanner,
  renderParameters,
  serialize,
  type ErrorFields,
  type ErrorInit,
  type Frame,
  type RelayHandler,
  type RowField,
  type TransactionStatus,
} from "@moat/pg-wire";
import {
  ANY_COLUMN,
  auditParameters,
  setsConfig,
  takesSecrets,
  POOL_BUSY,
  auditRedaction,
  columnSources,
  functionVerdict,
  mergeLineage,
  mergeSources,
  pathShadowsCatalog,
  qualifyTables,
  redactFor,
  redactMessage,
  UNKNOWN_LINEAGE,
  unparsedAuditText,
  type ActionUse,
  type AuditRedaction,
  type Classification,
  type Classifier,
  type ClassifierPool,
  type ColumnSources,
  type DbAction,
  type ResultLineage,
  type StatementInfo,
} from "@moat/sql";
import { compileMasks, type ColumnInfo, type MaskPlanner, type ResultPlan } from "@moat/masking";
import { Verdict as ProtoVerdict } from "@moat/proto";
import type { Logger } from "@moat/common";
import type { ActiveBundle, BundleHolder } from "../bundle.js";
import { QUERY_EVENT_LIMITS, type AuditRecorder, type QueryRecord, type QueryRecorder } from "../audit/recorder.js";
import type { VerifiedIdentity } from "../tokens.js";
import type { CatalogCache, HiddenCalls } from "./catalog.js";
import { Fifo } from "./fifo.js";
import { TargetError } from "./target.js";

/** A statement the target is sure to refuse (at Parse time too), whose error the agent replaces. */
export const POISON = "SELECT 'moat: statement denied by policy'::pg_catalog.int4";

/** A FunctionCall of OID 0, no arguments: fails on the target (42883), in place of a refused one. */
const FAST_PATH_POISON = Buffer.from([0x46, 0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/** A refusal the agent makes itself (no policy rule): its message, for every table. */
const agentDenial = (message: string): Decision => ({ effect: "deny", rule: "", message, tables: [] });

/**
 * PostgreSQL's 25006 in a read-only session, as the agent's denial: 42501 with the server's
 * message (scrubbed already if masking applies) in the text, as the agent's own refusals read.
 */
function readOnlyRefusal(error: Buffer): Buffer {
  const e = decodeErrorFields(error.subarray(5));
  return errorResponse({
    severity: "ERROR",
    code: "42501",
    message: `access denied: this session is read-only (no policy allows you to change the database), and the statement tried to: ${e.message}`,
    detail:
      "The write was not in the statement's text (a function it calls, a view's function, a trigger): PostgreSQL refused it in the read-only transaction Moat started the session with (SQLSTATE 25006).",
  });
}

/** Statement classes that cannot create a relation (see mayHaveTempRelations). */
const READING_CLASSES: ReadonlySet<string> = new Set(["read", "session", "copy-out"]);

/** The large-object functions libpq calls through the fast-path interface, by their (fixed) OIDs. */
const LARGE_OBJECT_FUNCTIONS: ReadonlyMap<number, string> = new Map([
  [952, "lo_open"],
  [953, "lo_close"],
  [954, "loread"],
  [955, "lowrite"],
  [956, "lo_lseek"],
  [957, "lo_creat"],
  [958, "lo_tell"],
  [964, "lo_unlink"],
  [715, "lo_create"],
  [1004, "lo_truncate"],
  [3170, "lo_lseek64"],
  [3171, "lo_tell64"],
  [3172, "lo_truncate64"],
]);
/**
 * A prepared statement name no client can create (names starting with `moat:` are refused, by
 * Parse and by SQL PREPARE), so a denied Bind fails on the target.
 */
const POISON_STATEMENT = "moat: statement denied by policy";
const RESERVED_PREFIX = "moat:";
const reservedNameMessage = (name: string) =>
  `access denied: prepared statement names beginning with "${RESERVED_PREFIX}" are reserved by Moat ("${name}")`;

/** Client encodings in which every byte below 0x80 is ASCII (the parser reads what the server reads). */
const SAFE_ENCODINGS = new Set([
  "UTF8",
  "UNICODE",
  "SQL_ASCII",
  "LATIN1",
  "LATIN2",
  "LATIN3",
  "LATIN4",
  "LATIN5",
  "LATIN6",
  "LATIN7",
  "LATIN8",
  "LATIN9",
  "LATIN10",
  "WIN1250",
  "WIN1251",
  "WIN1252",
  "WIN1253",
  "WIN1254",
  "WIN1255",
  "WIN1256",
  "WIN1257",
  "WIN1258",
  "WIN866",
  "WIN874",
  "KOI8R",
  "KOI8U",
  "ISO_8859_5",
  "ISO_8859_6",
  "ISO_8859_7",
  "ISO_8859_8",
  "EUC_JP",
  "EUC_CN",
  "EUC_KR",
  "EUC_TW",
  "EUC_JIS_2004",
  "MULE_INTERNAL",
]);

/** The spellings of a boolean setting taken as such (PostgreSQL accepts more: those count as a change). */
const BOOLEAN_WORDS: ReadonlyMap<string, boolean> = new Map([
  ["on", true],
  ["true", true],
  ["yes", true],
  ["1", true],
  ["off", false],
  ["false", false],
  ["no", false],
  ["0", false],
]);

/** An encoding name as PostgreSQL compares it (clean_encoding_name): its ASCII letters and digits, lower case. */
const cleanEncodingName = (name: string): string => name.replace(/[^A-Za-z0-9]/g, "").toLowerCase();

/**
 * Names PostgreSQL reads as a safe encoding, cleaned: the canonical names and the aliases of its
 * table (src/common/encnames.c) for them. Any other name is refused by the listener (it may be an
 * alias of an unsafe encoding) and, past the startup, caught by the ParameterStatus the server
 * answers with, which always gives the canonical name.
 */
const SAFE_ENCODING_NAMES: ReadonlyMap<string, string> = new Map([
  ...[...SAFE_ENCODINGS].map((name) => [cleanEncodingName(name), name === "UNICODE" ? "UTF8" : name] as const),
  ["iso88591", "LATIN1"],
  ["iso88592", "LATIN2"],
  ["iso88593", "LATIN3"],
  ["iso88594", "LATIN4"],
  ["iso88599", "LATIN5"],
  ["iso885910", "LATIN6"],
  ["iso885913", "LATIN7"],
  ["iso885914", "LATIN8"],
  ["iso885915", "LATIN9"],
  ["iso885916", "LATIN10"],
]);

/**
 * An encoding name as PostgreSQL spells it in ParameterStatus: `utf-8`, `'utf-8'` (asyncpg sends the
 * quotes), `Unicode` -> `UTF8`, as the server reads them (letters and digits only); a name that is
 * not a safe encoding's comes back upper-cased.
 */
function normalizeEncoding(name: string): string {
  return SAFE_ENCODING_NAMES.get(cleanEncodingName(name)) ?? name.toUpperCase();
}

export function isSafeEncoding(name: string): boolean {
  return SAFE_ENCODINGS.has(normalizeEncoding(name));
}

export interface SessionContext {
  sessionId: string;
  /**
   * The process ID the client was given (BackendKeyData) for a target backend's, when that backend
   * serves a session of this agent's resource: NotificationResponses name the notifying backend, and
   * clients compare it with their own BackendKeyData to skip their own notifications (review 61).
   */
  clientProcessId?: (targetProcessId: number) => number | undefined;
  resource: string;
  identity: VerifiedIdentity;
  sourceAddress: string;
  targetUser: string;
  /**
   * The session was started read-only (`default_transaction_read_only = on`: readOnlySessions, for a
   * user no rule lets change anything), so PostgreSQL refusing a write (25006) is a denial.
   */
  readOnly?: boolean;
  /** The target database (table OIDs are per database). */
  database: string;
  /** Resolves result columns to their tables for masking; without it, columns match by label only. */
  catalog?: CatalogCache;
  bundles: BundleHolder;
  audit: AuditRecorder;
  classifier: Classifier;
  /**
   * Classifies a Query or Parse message at least `offThreadBytes` long on a worker thread: the
   * parser costs about 1 ms per KiB, and such a text (longer than the classifier caches) would
   * otherwise hold every session of the process for as long, each time it is sent.
   */
  offThread?: { pool: ClassifierPool; minBytes: number };
  logger: Logger;
  maxMessageBytes: number;
  /** Longest SQL text the session parses (characters); a longer one is refused with 54000. */
  maxStatementLength: number;
  metrics: SessionMetrics;
  now?: () => number;
  /**
   * Cancels what the session's target backend is running (a CancelRequest on its key): used when
   * the session is ended from outside with a statement in flight, so that the statement is stopped
   * (and rolled back) rather than left to run, and commit, after the session has ended.
   */
  cancelTarget?: () => Promise<void>;
}

/** Statement classes from the least to the most a statement may do (mergeInfos keeps the most). */
const CLASS_RANK = ["session", "read", "copy-out", "function", "copy-in", "write", "ddl", "admin", "dynamic"];

/** What PostgreSQL may call running a statement that its text does not show (see HiddenCalls). */
interface HiddenUse {
  action: DbAction;
  name: string;
  reason: string;
}

/** The action calling the built-in or extension function `name` needs, if any (functionVerdict). */
function builtinCallAction(name: string): DbAction | undefined {
  return functionVerdict([name]).action;
}

/**
 * What PostgreSQL may call running `info` that its text does not show (see HiddenCalls): at most
 * one use per action, the first found. Names only, in any schema: a column named like such a
 * function counts too (fails closed).
 */
function hiddenUses(info: StatementInfo, calls: HiddenCalls): HiddenUse[] | undefined {
  let out: HiddenUse[] | undefined;
  const add = (action: DbAction, name: string, reason: string) => {
    if (!out) out = [{ action, name, reason }];
    else if (!out.some((u) => u.action === action)) out.push({ action, name, reason });
  };
  if (info.fieldNames)
    for (const name of info.fieldNames)
      if (calls.rowFunctions.has(name))
        add("db:function", name, `\`.${name}\` may call the database's own function ${name} (attribute notation)`);
  // Written unqualified (`pg_catalog.lower` is the built-in; another schema's is a user function already).
  for (const name of info.functions)
    if (calls.shadowing.has(name))
      add(
        "db:function",
        name,
        `the database has a function ${name} of its own besides the built-in, which this call may run`,
      );
  if (info.operators)
    for (const name of info.operators)
      if (calls.operators.has(name))
        add(
          "db:function",
          name,
          `the database has an operator ${name} of its own besides the built-in, which may run here`,
        );
  for (const table of info.tables) {
    if (calls.relations.has(table.name))
      add("db:function", table.name, `reading ${table.name} calls a function of the database's own`);
    const fns = calls.relationCalls.get(table.name);
    if (fns)
      for (const fn of fns) {
        const action = builtinCallAction(fn);
        if (action !== undefined) add(action, fn, `reading ${table.name} calls ${fn}()`);
      }
  }
  if (info.typeNames)
    for (const type of info.typeNames) {
      const fns = calls.typeCalls.get(type);
      if (fns)
        for (const fn of fns) {
          const action = fn.own ? "db:function" : builtinCallAction(fn.name);
          if (action !== undefined)
            add(action, fn.name, `a cast to ${type} calls ${fn.name}() (a domain's CHECK or a cast function)`);
        }
    }
  return out;
}

/** The uses withHiddenCalls added, with why (for the denial message). */
const HIDDEN_USES = new WeakMap<ActionUse, string>();

/**
 * One statement standing for two that a name may hold (the agent cannot tell which the target
 * kept): it needs what both need, its rows may come from what either computes.
 */
function mergeInfos(a: StatementInfo, b: StatementInfo): StatementInfo {
  const merged: StatementInfo = {
    ...a,
    // Either may run: classed as the one that may do more (review 51: EXECUTE of a name whose
    // second PREPARE failed ran the first, an INSERT, audited as the second's read).
    statementClass:
      CLASS_RANK.indexOf(b.statementClass) > CLASS_RANK.indexOf(a.statementClass) ? b.statementClass : a.statementClass,
    actions: [...a.actions, ...b.actions],
    tables: [...a.tables, ...b.tables],
    functions: [...a.functions, ...b.functions],
  };
  if (a.fieldNames || b.fieldNames) merged.fieldNames = [...(a.fieldNames ?? []), ...(b.fieldNames ?? [])];
  if (a.operators || b.operators) merged.operators = [...(a.operators ?? []), ...(b.operators ?? [])];
  if (a.typeNames || b.typeNames) merged.typeNames = [...(a.typeNames ?? []), ...(b.typeNames ?? [])];
  const result = mergeLineage(a.result, b.result);
  const reads = mergeSources(a.reads, b.reads);
  if (result) merged.result = result;
  if (reads) merged.reads = reads;
  return merged;
}

/**
 * A statement that may be either `next` or `earlier` (a Parse of a name not yet confirmed): needs
 * what both need, masked by what both compute, described only while both may be (fetchParsedAt).
 */
function mergePrepared(next: PreparedStatement, earlier: PreparedStatement): PreparedStatement {
  const [a] = next.classification.statements;
  const [b] = earlier.classification.statements;
  const merged: PreparedStatement = {
    classification: { ...next.classification, statements: a && b ? [mergeInfos(a, b)] : a ? [a] : b ? [b] : [] },
    text: next.text,
  };
  const refusal = earlier.refusal ?? next.refusal;
  if (refusal) merged.refusal = refusal;
  else if (a && b && (changesSession(a) || changesSession(b)))
    merged.refusal =
      "access denied: a prepared statement was prepared again while the server may still hold the earlier one, and one of them changes the session; close it first";
  const parsedAt = [next.fetchParsedAt, earlier.fetchParsedAt].filter((v): v is number => v !== undefined);
  if (parsedAt.length > 0) merged.fetchParsedAt = Math.min(...parsedAt);
  return merged;
}

/**
 * Definitions of one name merged while unconfirmed (see mergePrepared), per record. Each merge copies
 * the lists of the records before it, so a name defined again while MAX_UNCONFIRMED are unconfirmed
 * is refused (review 38: 10 000 Parses of one name pipelined behind a slow query took 857 MB).
 */
const merges = new WeakMap<object, number>();
const MAX_UNCONFIRMED = 16;

/** `info` with its rows read as any column (a name that may hold a statement the agent never saw). */
function anyColumn(info: StatementInfo): StatementInfo {
  return { ...info, result: UNKNOWN_LINEAGE, reads: ANY_COLUMN };
}

/** `p` with its rows read as any column (see anyColumn). */
function readingAnyColumn(p: PreparedStatement): PreparedStatement {
  return { ...p, classification: { ...p.classification, statements: p.classification.statements.map(anyColumn) } };
}

/** CommandComplete messages of a COMMIT, and of a ROLLBACK (or a COMMIT of a failed transaction). */
const COMMIT_COMPLETE = Buffer.from("C\0\0\0\x0bCOMMIT\0", "latin1");
const ROLLBACK_COMPLETE = Buffer.from("C\0\0\0\x0dROLLBACK\0", "latin1");

/** The cursor (or portal) a FETCH or MOVE reads; null for any other statement. */
function fetchedName(info: StatementInfo): string | null {
  return info.cursor?.op === "fetch" ? info.cursor.name : null;
}

/** Whether a statement defines or forgets names, or changes settings the agent tracks. */
function changesSession(info: StatementInfo): boolean {
  return (
    info.prepare !== undefined ||
    info.cursor !== undefined ||
    info.deallocate !== undefined ||
    info.execute !== undefined ||
    info.lexicalChange === true ||
    info.searchPath !== undefined
  );
}

/** The audit message of a statement the target skipped (an earlier message of its Sync cycle failed). */
const SKIPPED = "not run: an earlier message of the same Sync failed";
/** Server messages that never quote a value, by SQLSTATE: passed under masking rules (scrubError). */
const FIXED_MESSAGES: ReadonlyMap<string, ReadonlySet<string>> = new Map([
  ["25P02", new Set(["current transaction is aborted, commands ignored until end of transaction block"])],
  ["57014", new Set(["canceling statement due to user request", "canceling statement due to statement timeout"])],
]);
/** COMMIT or END (their CommandComplete says ROLLBACK when the block had failed). */
const ENDS_BLOCK = /^\s*(commit|end)\b/i;
const ROLLED_BACK_AT_COMMIT = "the transaction block had failed: PostgreSQL rolled it back (its answer: ROLLBACK)";
/** Statements that write to tables, which a rollback undoes (with DDL and COPY FROM; see writesTables). */
const WRITE_KINDS: ReadonlySet<string> = new Set([
  "InsertStmt",
  "UpdateStmt",
  "DeleteStmt",
  "MergeStmt",
  "CreateTableAsStmt",
  "TruncateStmt",
]);
/** A data-modifying statement named in a SELECT (writable CTE), EXPLAIN ANALYZE or PREPARE's text. */
const DML_WORD = /\b(insert|update|delete|merge|truncate)\b/i;
/**
 * Statements that commit on their own, outside any transaction block (PostgreSQL refuses them in
 * one): what came before them is not undone by a later error.
 */
const OWN_COMMIT_KINDS: ReadonlySet<string> = new Set([
  "CallStmt",
  "DoStmt",
  "VacuumStmt",
  "CreatedbStmt",
  "DropdbStmt",
  "AlterSystemStmt",
  "CreateTableSpaceStmt",
  "DropTableSpaceStmt",
  "ReindexStmt",
  "ClusterStmt",
  "CreateSubscriptionStmt",
  "DropSubscriptionStmt",
  "AlterSubscriptionStmt",
]);

/**
 * Whether a statement writes to tables (what a rollback undoes): an INSERT, UPDATE, DELETE, MERGE,
 * TRUNCATE, CREATE TABLE AS, COPY FROM or DDL; a SELECT or EXPLAIN classed as a write that names a
 * data-modifying statement (a writable CTE, EXPLAIN ANALYZE of a write). Not a sequence's value, an
 * advisory lock or a prepared statement (SELECTs of write functions, PREPARE), which a rollback
 * leaves; `prepared`: the record of a SQL PREPARE an EXECUTE runs (its kind is PrepareStmt).
 */
function writesTables(info: StatementInfo, prepared = false): boolean {
  if (WRITE_KINDS.has(info.kind) || info.statementClass === "ddl" || info.statementClass === "copy-in") return true;
  const wrapper =
    info.kind === "SelectStmt" || info.kind === "ExplainStmt" || (prepared && info.kind === "PrepareStmt");
  return wrapper && info.statementClass === "write" && DML_WORD.test(info.text);
}

/** Whether a statement runs to completion at its first Execute whatever is read of its rows. */
function runsWhole(info: StatementInfo): boolean {
  return info.kind !== "CopyStmt" && info.statementClass !== "ddl" && writesTables(info);
}
/** PREPARE TRANSACTION: the transaction is no longer the session's (it is committed or not later). */
const PREPARE_TRANSACTION = /^\s*prepare\s+transaction\b/i;
const AFTER_END_IN_READ_ONLY =
  "access denied: this session is read-only, and a statement after COMMIT or ROLLBACK in the same query is not run: send it as a query of its own";
/** Statements that may be run CONCURRENTLY, which commits on its own. */
const CONCURRENT_KINDS: ReadonlySet<string> = new Set(["IndexStmt", "DropStmt", "ReindexStmt", "AlterTableStmt"]);
/** Where an implicit transaction ends, as its commit's or rollback's event says. */
const IMPLICIT_END = {
  sync: "at Sync (implicit transaction)",
  query: "at the end of the query (implicit transaction)",
  session: "at the end of the session (its transaction was open)",
};
/** A portal's run recorded when it closed suspended (recordPortalRun). */
const SUSPENDED_READ = "closed while suspended: rows counts the rows returned to the client";

/** Savepoints a session tracks in one transaction (the oldest are dropped past it). */
const MAX_SAVEPOINTS = 1024;

const SYNC = serialize.sync();
const FLUSH = serialize.flush();

/** The error a COPY FROM STDIN ends with when the client sends CopyFail (57014, "COPY from stdin failed"). */
function isCopyFailError(raw: Buffer): boolean {
  return decodeErrorFields(raw.subarray(5)).code === "57014";
}

/** Statements that never send a RowDescription. */
const NO_ROWS: ReadonlySet<string> = new Set([
  "VariableSetStmt",
  "TransactionStmt",
  "CopyStmt",
  "PrepareStmt",
  "DeallocateStmt",
  "DeclareCursorStmt",
  "ClosePortalStmt",
  "ListenStmt",
  "UnlistenStmt",
  "NotifyStmt",
  "LockStmt",
  "DiscardStmt",
]);

/** Whether a statement is COPY ... FROM STDIN (the client sends the data). */
const copiesFromClient = (info: StatementInfo | undefined): boolean =>
  info?.kind === "CopyStmt" && info.actions.some((a) => a.action === "db:copy-in");

/** COPY sub-protocol messages from the client: CopyData, CopyDone, CopyFail. */
const COPY_DATA_TYPES: ReadonlySet<number> = new Set([0x64, 0x63, 0x66]);

/** Why a session sending Sync among COPY data ends (see copySpan). */
const SYNC_IN_COPY =
  "a Sync among COPY data is not supported through Moat (the server answers it or not depending on where the COPY fails): send Sync after CopyDone";

/** How long the target may take to close after a client's Terminate before the session ends anyway. */
const TERMINATE_GRACE_MS = 5_000;

/** How long an ended session's client may take to read what it is still sent before it is closed. */
const END_GRACE_MS = 2_000;

/**
 * Answers a session may wait for at once (messages forwarded and not yet answered): past this, the
 * agent stops reading the client until half of them are answered. A client pipelining without
 * reading (review 57: 700 000 `SELECT 1` queued in the kernel's buffers, 185 MB of the agent's
 * heap for one session) holds a bounded amount of memory. PostgreSQL flushes its answers at least
 * every 8 KiB, so a client that reads gets enough of them to resume well before half.
 */
const MAX_PENDING = 16_384;

/** Cursors and named portals a session tracks at once; a new one past this is refused. */
const MAX_CURSORS = 1000;

/**
 * Named prepared statements (SQL and protocol) a session keeps at once, and the characters of their
 * texts: each holds its text and classification in the agent's one heap, shared by every session
 * (review 36: 3 000 statements of 15 kB took 49 MB). A new one past either is refused.
 */
const MAX_PREPARED = 10_000;
const MAX_PREPARED_CHARS = 32 * 1024 * 1024;

/** A map of records with a text, which keeps the total length of their texts. */
class TextMap<V extends { text: string }> extends Map<string, V> {
  chars = 0;
  override set(key: string, value: V): this {
    const old = super.get(key);
    if (old) this.chars -= old.text.length;
    this.chars += value.text.length;
    return super.set(key, value);
  }
  override delete(key: string): boolean {
    const old = super.get(key);
    if (old) this.chars -= old.text.length;
    return super.delete(key);
  }
  override clear(): void {
    this.chars = 0;
    super.clear();
  }
}

/** PostgreSQL's NAMEDATALEN - 1: statement and portal names are compared on this many bytes. */
const MAX_NAME_BYTES = 63;

export interface SessionMetrics {
  statement(verdict: "allow" | "deny" | "review"): void;
}

/** A decided statement, waiting for its outcome to be audited. */
interface Run {
  info: StatementInfo;
  text: string;
  statementClass: string;
  tables: string[];
  rule: string;
  started: number;
  rows: number;
  /** Columns masked in its results (made at the first: most statements mask none). */
  masked: Set<string> | undefined;
  recorded: boolean;
  /** A DEALLOCATE/CLOSE: the definitions sent before it, which it forgets once it has run. */
  forgetsUpTo?: number;
  /** Its bound parameters, rendered (extended protocol). */
  params?: string;
  /** The prepared statement it was bound from, when that may be either of two (see `answered`). */
  of?: PreparedStatement;
  /**
   * A cursor or SQL prepared statement it defines under a name the agent had no record of: read as
   * any column until it has succeeded (see CursorRecord.unconfirmed).
   */
  defines?:
    { cursor?: CursorRecord; prepared?: { name: string; record: StatementInfo; info: StatementInfo } } | undefined;
  /**
   * A transaction statement (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...): the definitions sent before
   * it ran (its Query, or its portal's Execute), for what it ends (see transactionEnded, onSavepoint).
   */
  sentAt?: number;
  /** How its text, parameters and message are kept in the audit trail. */
  redaction: AuditRedaction;
  /** Counted among its transaction's changes (noteChange). */
  counted?: boolean;
  /** Bound from a name two definitions may hold (preparedUncertain): what it runs is not known. */
  uncertain?: boolean;
  /** Its event's message when it succeeded (recordRun). */
  note?: string;
}

interface PreparedStatement {
  classification: Extract<Classification, { ok: true }>;
  text: string;
  /** The parameter types its Parse declared (for the audit's rendering of binary parameters). */
  parameterTypes?: readonly number[];
  /** Why a Bind of it is refused (see boundStatement). */
  refusal?: string;
  /**
   * It is a FETCH: the session's run count right after its Parse. PostgreSQL describes it (Describe
   * S) by looking its cursor up, and PostgreSQL 15 crashes when the cursor it had then is gone: a
   * Describe of it is sent only while nothing has run since (see Lazy).
   */
  fetchParsedAt?: number;
  /**
   * A record for a Parse of a name the server may still hold (see mergePrepared): the statement
   * that Parse made, which is the one a Bind or Describe sent before the next Sync finds if it runs
   * at all (a Parse that fails or is skipped makes the server skip everything up to that Sync).
   */
  alone?: { statement: PreparedStatement; syncs: number };
  /**
   * Of such a record, once the server has answered its Parse: the statement it turned out to hold
   * (undefined: none), the audit's text of the record's runs (see `settled`).
   */
  answered?: { held: PreparedStatement | undefined };
}

/** What the server holds of `record` as far as the answers so far tell (a merged record may merge another). */
function settled(record: PreparedStatement | undefined): PreparedStatement | undefined {
  let r = record;
  for (let i = 0; r?.answered && i < 64; i++) r = r.answered.held;
  return r;
}

interface CursorRecord {
  result: ResultLineage;
  reads: ColumnSources;
  /** Every query the name may hold is a plain read (class read): a FETCH of it is audited as one. */
  onlyReads: boolean;
  since: number;
  /** Some DECLARE of the name was WITH HOLD: it may outlive its transaction. */
  hold: boolean;
  /**
   * The cycle whose ReadyForQuery ends the message of the last WITH HOLD declaration. Until an
   * idle ReadyForQuery at or after it (`heldAt > idleAt`), the transaction may not have ended:
   * the cursor's query runs when it commits, and an error of it then comes with whatever
   * statement is at hand.
   */
  heldAt: number;
  /** Sync cycles before the last definition (see Portal.cycle). */
  cycle: number;
  /**
   * What reading it needs: what its query needed when declared (both queries' needs for a name
   * declared twice). A FETCH is decided as that, so a rule that arrived since applies to it.
   */
  actions: readonly ActionUse[];
  /** A protocol portal of a FETCH or EXECUTE (kept when the agent forgets the portal itself). */
  lazy?: Lazy | undefined;
  /**
   * A name the agent had no record of, declared (or bound) and not yet confirmed by the target: a
   * function may have opened a cursor of that name out of the agent's sight, and then this
   * definition fails there, leaving that cursor's rows under the name. Until the definition
   * succeeds the name reads as any column (`result`, `reads`); then as this.
   */
  unconfirmed?: { result: ResultLineage; reads: ColumnSources } | undefined;
}

interface Portal {
  /** Its definition number (see `definitions`): a ROLLBACK TO a savepoint set before it drops it. */
  since: number;
  statement: PreparedStatement;
  run: Run | undefined;
  /** Its result's columns, from a Describe of the portal (the client's or one the agent adds). */
  fields?: RowField[];
  /** Sync cycles (Query or Sync sent) before its Bind: its cycle's ReadyForQuery is number cycle + 1. */
  cycle: number;
  /** The bundle its statement was last decided under: an Execute under another decides it again. */
  bundle: ActiveBundle | undefined;
  /** Its statement is a FETCH or EXECUTE: see Lazy. */
  lazy?: Lazy;
  /** An Execute of it has been sent. */
  executed: boolean;
  /** An Execute of it was refused before any was sent: that refusal is its record (until one runs). */
  refused: boolean;
  /** Its Executes sent and not answered yet. */
  pendingExecutes: number;
}

/**
 * A protocol portal whose statement is a FETCH or EXECUTE. PostgreSQL describes it at its Bind and
 * at each Describe by looking up the cursor or prepared statement by name then (and through a
 * portal of this kind, what that one names), but runs it at its first Execute (or SQL FETCH/MOVE of
 * it), on whatever holds the names at that time, and keeps the rows. So the columns the agent masks
 * by match the rows only while nothing has changed what the names hold since the Bind: no name it
 * looks up closed or defined again (`lookups`), and nothing sent that could have done so out of the
 * agent's sight (a function opening and closing cursors, a search_path change re-planning the
 * prepared statement, a Close of a cursor it never saw declared): `since` is the session's run
 * count (`runs`) right after the Bind. A stale one is refused to run or be described (PostgreSQL 15
 * crashes describing a FETCH of a cursor closed since), and so is a FETCH of it (and the Bind of a
 * portal reading it).
 */
interface Lazy {
  lookups: Lookup[];
  since: number;
  /** An Execute of it has been answered: the target keeps its rows; later Executes page through them. */
  ran: boolean;
}

/** A cursor or portal (FETCH) or prepared statement (EXECUTE) name, with its definition number. */
interface Lookup {
  kind: "cursor" | "statement";
  name: string;
  since: number | undefined;
}

/** Past this many names looked up through portals and prepared statements, a Bind is refused. */
const MAX_LOOKUPS = 16;

const STALE_PORTAL =
  "was bound before a cursor or prepared statement it reads may have changed (closed, defined again, or a statement run since); bind it again";

type Pending = PendingKind & CopyCount;

type PendingKind =
  | ({
      kind: "query";
      runs: Run[];
      index: number;
      replaceError?: Buffer;
      /** It may change how the server reads text (see `lexicalInFlight`). */
      lexical?: boolean;
    } & CopyCount)
  | {
      kind: "parse";
      replaceError?: Buffer;
      /** The statement name and what it held before, restored if the target refuses this Parse. */
      name?: string;
      previous?: PreparedStatement | undefined;
      /** The record this Parse set for the name, and what it becomes once the target confirms it. */
      set?: PreparedStatement;
      confirmed?: PreparedStatement;
      /** A Close of the name sent before it in its Sync cycle: once that has run, the name is free. */
      closing?: PendingClose;
    }
  | {
      kind: "bind";
      replaceError?: Buffer;
      portal?: string;
      /** The portal it made, as it was then (a later Bind may reuse the name). */
      bound?: Portal;
      /** The portal of a FETCH or EXECUTE the name was noted as when this Bind was sent (see onBind). */
      replaces?: Lazy | undefined;
      /** The cursor record it made for its portal's name (confirmed at BindComplete). */
      named?: CursorRecord | undefined;
    }
  | {
      kind: "describe";
      /** The portal described, as it was when the Describe was sent (a later Bind may reuse the name). */
      portal?: Portal | undefined;
      injected: boolean;
    }
  | ({ kind: "execute"; portal: Portal | undefined; portalName: string } & CopyCount)
  | PendingClose
  | ({ kind: "sync" } & CopyCount);

/** A Close sent; `closed` once the target has answered it. */
interface PendingClose {
  kind: "close";
  statement?: string;
  portal?: string;
  upTo?: number;
  closed?: boolean;
}

/** On a Query or Execute: it runs COPY ... FROM STDIN (see copySpan). */
interface CopyCount {
  startsCopy?: boolean;
}

interface Decision {
  effect: "allow" | "deny" | "review";
  rule: string;
  message: string;
  tables: string[];
}

/**
 * SQLSTATEs of errors the server raises while it analyses a statement's names and types, which
 * quote names, never values. Not 42601: the agent's own parser refuses syntax errors first, so one
 * from the target comes from parsing a value at run time (`::regtype`, `to_regprocedure`).
 */
const ANALYSIS_CODES: ReadonlySet<string> = new Set([
  "42703", // undefined column
  "42P01", // undefined table
  "42883", // undefined function
  "42702", // ambiguous column
  "42725", // ambiguous function
  "42803", // grouping error
  "42804", // datatype mismatch
  "42P18", // indeterminate datatype
  "42846", // cannot coerce
  "42P10", // invalid column reference
]);

/**
 * Whether an error arose while the server analysed the statement's text and quotes nothing but it:
 * a position in the text, an analysis SQLSTATE, no context or query of its own, and every quoted
 * part ("..." in its message, detail and hint) found in `text` (ignoring case; a dotted name like
 * "users.email" part by part). A quote inside a quoted part makes the parts ambiguous: not passed.
 */
function analysisError(e: ErrorFields, text: string): boolean {
  if (e.position === undefined || !ANALYSIS_CODES.has(e.code)) return false;
  if (e.internalQuery !== undefined || e.where !== undefined) return false;
  const haystack = text.toLowerCase();
  for (const field of [e.message, e.detail, e.hint]) {
    if (field === undefined) continue;
    if (field.includes('""')) return false;
    const parts = field.split('"');
    if (parts.length % 2 === 0) return false;
    for (let i = 1; i < parts.length; i += 2) {
      const quoted = (parts[i] as string).toLowerCase();
      if (!haystack.includes(quoted) && !quoted.split(".").every((name) => name !== "" && haystack.includes(name)))
        return false;
    }
  }
  return true;
}

/** Rows of a portal whose columns are unknown, under masking rules (see unmaskable). */
function unmaskableRows(): ProtocolError {
  return new ProtocolError(
    "masking rules now apply to this session and the columns of a statement sent before them are unknown: reconnect",
  );
}

/** Rows or a row description that answer no statement the agent knows of (see rowsExpected). */
function lostTrack(): ProtocolError {
  return new ProtocolError("the agent lost track of which statement the target is answering; the session is closed");
}

const NO_COLUMNS: readonly string[] = [];
const VERDICTS = { allow: ProtoVerdict.ALLOW, deny: ProtoVerdict.DENY, review: ProtoVerdict.REVIEW } as const;

export class PgSession {
  private readonly reader: FrameReader;
  /** This session's `db.query` events (its actor, resource and id encoded once). */
  private readonly queries: QueryRecorder;
  /** Verdicts by statement shape (see decide), for one bundle, search path and shadowing. */
  private decisions: {
    bundle: ActiveBundle | undefined;
    searchPath: readonly string[];
    shadowed: boolean;
    byActions: WeakMap<readonly ActionUse[], Decision>;
  } = { bundle: undefined, searchPath: [], shadowed: false, byActions: new WeakMap() };
  /** Events of this turn not spooled yet (see soon). */
  private unspooled: QueryRecord[] = [];
  private readonly scanner: RelayScanner;
  private readonly pending = new Fifo<Pending>();
  /** The target sent a FATAL (or PANIC) error: its connection ends with a reason given. */
  private targetSaidFatal = false;
  /** withHiddenCalls' answers, by the actions they extend. */
  private readonly hiddenMemo = new WeakMap<
    readonly ActionUse[],
    { calls: HiddenCalls; actions: readonly ActionUse[] }
  >();
  /** Reading from the client is paused: MAX_PENDING answers are awaited. */
  private pendingFull = false;
  private readonly statements = new TextMap<PreparedStatement>();
  private readonly portals = new Map<string, Portal>();
  /** SQL-level PREPARE names whose statement may hold a secret: their EXECUTEs' arguments may too. */
  private readonly secretPrepared = new Set<string>();
  /** SQL-level PREPARE names -> what they run (EXECUTE is decided as that). */
  private readonly sqlPrepared = new TextMap<StatementInfo>();
  /**
   * Where the rows of each SQL cursor (DECLARE) come from, for masking what FETCH returns. A name
   * declared again while the first may still be open (the second DECLARE fails on the server) keeps
   * both lineages; an unknown name counts as any column.
   */
  private readonly cursors = new Map<string, CursorRecord>();
  /**
   * Query, Parse, Bind, Execute and Close messages sent, and Syncs outside a transaction block:
   * each may run statements and functions (a domain's CHECK on a literal or a parameter, an
   * immutable function at planning) or close a cursor the agent never saw declared (a Close, the
   * end of an implicit transaction), changing what a name holds out of its sight (see Lazy).
   */
  private runs = 0;
  /** The Sync cycle of the last Query, Execute or FunctionCall sent (see Portal.cycle). */
  private lastEndingCycle = 0;
  /**
   * Names of prepared statements (SQL PREPARE and protocol Parse share one namespace on the target)
   * and cursors are forgotten only when a DEALLOCATE, Close or CLOSE that was sent after their last
   * definition has run: each definition gets the next number here, each such statement remembers
   * the number when it was sent (`Run.forgetsUpTo`).
   */
  private definitions = 0;
  private readonly preparedSince = new Map<string, number>();
  private searchPath: string[];
  /**
   * The search path has put a schema before pg_catalog (at start or by a SET this session ran):
   * names of built-ins may resolve to that schema's functions and operators (pathShadowsCatalog).
   */
  private userFunctionsFirst: boolean;
  /**
   * The session has run something other than a read (DDL, a write, a function, dynamic SQL): it may
   * have temporary relations, which PostgreSQL finds before pg_catalog's under the same name.
   */
  private mayHaveTempRelations = false;
  private standardConformingStrings = true;
  private unsafeEncoding: string | undefined;
  /** The client encoding when it is not UTF8: the agent reads text as UTF-8, so only ASCII then. */
  private notUtf8Encoding: string | undefined;
  private serverEncoding = "UTF8";
  /** The client encoding in force, normalized (normalizeEncoding). */
  private clientEncoding = "UTF8";
  /** Text reaches a SQL_ASCII server as bytes: UTF-8 text reads the same there, other bytes do not. */
  private bytesEncoding = false;
  /**
   * Queries forwarded that change how the server reads text (a SET / RESET of client_encoding or
   * standard_conforming_strings, RESET ALL, DISCARD ALL) and not answered yet. Such a change is let
   * through only alone, outside a transaction block and with nothing else in flight (see
   * `lexicalChangeRefusal`), so nothing can revert it later out of the agent's sight; but the agent
   * learns the new setting only from the answer (ParameterStatus), so texts pipelined behind it are
   * read pessimistically until then: a backslash as if standard_conforming_strings were off, a
   * non-ASCII character as if the encoding were unsafe.
   */
  private lexicalInFlight = 0;
  /**
   * The target failed an extended-protocol message and, no Sync having been sent since, ignores
   * every message until the next Sync: so does the agent (a Query the target ignores would otherwise
   * be waited for, and every later answer matched to the wrong message).
   */
  private awaitingSync = false;
  private status: TransactionStatus = "I";
  /** The cancel of the statement running when the session was terminated, until it is sent. */
  cancelling: Promise<void> | undefined;
  /** Set by drain: the message the session ends with at its next quiet point. */
  private draining: string | undefined;
  /** An extended-protocol message (Parse, Bind, Describe, Execute, Close) was sent since the last Sync or Query. */
  private unsynced = false;
  /** CopyDone/CopyFail messages the client has sent; whether the target is reading COPY data now. */
  /**
   * COPY ... FROM STDIN statements the client has sent (a Query may hold several, an Execute one)
   * and not yet ended with CopyDone/CopyFail, as far as its messages go; 0 also once the target has
   * failed them. In that span the server reads COPY data and ignores Sync and Flush; it answers a
   * Sync it reads after the COPY has failed (or never started), which the agent cannot tell from
   * the client's side (reviews 36-38: counted wrongly either way, a ReadyForQuery ended the next
   * query's record, whose rows were masked by the wrong statement's columns). So in the span only
   * COPY data, Flush, Terminate and Sync before any data come (see checkCopyMessage); such a Sync is
   * held back until the COPY's fate is known (settleHeldSyncs).
   */
  private copySpan = 0;
  /** The Query or Execute that opened the span. */
  private copyEntry: Pending | undefined;
  /** The span holds several COPYs (one Query): no Sync may come in it. */
  private copyMany = false;
  /** CopyData was sent in the span. */
  private copySpanData = false;
  /** Syncs held back (see copySpan). */
  private heldSyncs = 0;
  /** CopyData was sent after the held Syncs. */
  private heldSyncsData = false;
  /** A read-only session's next message, held until the cycles sent are answered (see nextFrame). */
  private parked: Frame | undefined;
  /** Reading from the client waits for the answer that ends the cycles sent (see nextFrame). */
  private waitingCycle = false;
  /** The target sent the CopyInResponse of the COPY whose Syncs are held (heldFor). */
  private heldCopyStarted = false;
  /** The client ended the span of the held Syncs with CopyFail. */
  private copyFailed = false;
  /** The Query or Execute whose COPY's fate settles the held Syncs. */
  private heldFor: Pending | undefined;
  /**
   * The client ended the span of the held Syncs before the target answered its COPY: its next
   * messages wait (reading from it is paused) until they are settled, so that a Sync sent on lands
   * where the client put it (review 39: sent on later, behind another COPY, the target ignored it).
   */
  private waitingSettle = false;
  /** Messages sent to the target that each end in one ReadyForQuery (Query, Sync), and those answered. */
  private cyclesSent = 0;
  /** Syncs sent: the target skips to the next one after an extended message fails. */
  private syncs = 0;
  /** Close S messages sent since the last Sync, by name (see the pending parse's `closing`). */
  private readonly closingInCycle = new Map<string, PendingClose>();
  private cyclesDone = 0;
  /** The client message being handled is a simple Query (see the cursors' heldAt). */
  private inQuery = false;
  /** cyclesDone at the last ReadyForQuery outside a transaction block. */
  private idleAt = 0;
  /**
   * The target has failed a statement since the last transaction end the agent saw (an idle
   * ReadyForQuery, a COMMIT or ROLLBACK): an implicit transaction ending at the next idle
   * ReadyForQuery did not commit.
   */
  private transactionFailed = false;
  /** The definitions sent before the last COMMIT or ROLLBACK ran (see transactionEnded). */
  private transactionStart = 0;
  /** The savepoints of the transaction in progress, oldest first, with the definitions sent before each. */
  private savepoints: { name: string; since: number }[] = [];
  private plan: ResultPlan | undefined;
  /** The masking rules (planner) `plan` was made under: rules that change during an Execute remake it. */
  private planMasks: MaskPlanner | undefined;
  /** DataRows relayed since the last statement completed. */
  private rowsSeen = 0;
  /**
   * Statements that wrote to tables since the last transaction end (idle ReadyForQuery, COMMIT,
   * ROLLBACK, a statement that commits on its own: noteChange), and whether the failure of that
   * transaction was recorded already (a failed commit): a transaction that fails or is left open undoes
   * them, which the trail says (recordRollback).
   */
  private changesInTransaction = 0;
  private undoRecorded = false;
  private masks: { version: bigint; planner: MaskPlanner | undefined } | undefined;
  private closed = false;
  /** The client's socket buffer is full: reading from the target is paused until it drains. */
  private clientBlocked = false;
  /** The target's socket buffer is full: reading from the client is paused until it drains. */
  private targetBlocked = false;
  /**
   * A client message whose text is being classified off the event loop: the client's later
   * messages wait behind it (reading from the client is paused), the target's answers do not.
   */
  private held: Frame | undefined;
  /** The classification made off the loop for the held message, used once (see classify). */
  private offloaded: { text: string; scs: boolean; result: Classification } | undefined;
  /** Cancels the held message's classification when the session ends first. */
  private holdAbort: AbortController | undefined;
  /** The client closed cleanly while a message was held: the session ends once it is handled. */
  private endAfterHold: string | undefined;
  /** The client sent Terminate: forwarded after what came before it, then the session ends. */
  private terminated = false;
  /** The client closed its side of a half-open connection (see afterClientEnd). */
  private clientEnded = false;
  /** Ends the session if the target has not closed it after a Terminate (see afterTerminate). */
  private terminateTimer: NodeJS.Timeout | undefined;
  private readonly started = Date.now();
  private readonly now: () => number;
  /** Resolves when the session is over, with the reason. */
  readonly done: Promise<string>;
  private finish: (reason: string) => void = () => undefined;

  constructor(
    private readonly ctx: SessionContext,
    private readonly client: Socket | TLSSocket,
    private readonly target: Socket | TLSSocket,
    options: { searchPath: string[]; parameters: Map<string, string> },
  ) {
    this.now = ctx.now ?? Date.now;
    const { actor, resource, sessionId } = this.common();
    this.queries = ctx.audit.queries({ actor, resource, sessionId });
    this.searchPath = options.searchPath;
    this.userFunctionsFirst = pathShadowsCatalog(options.searchPath);
    this.trackParameter("standard_conforming_strings", options.parameters.get("standard_conforming_strings") ?? "on");
    this.trackParameter("server_encoding", options.parameters.get("server_encoding") ?? "UTF8");
    this.trackParameter("client_encoding", options.parameters.get("client_encoding") ?? "UTF8");
    this.reader = new FrameReader(ctx.maxMessageBytes);
    this.reader.initial = false;
    this.done = new Promise((r) => (this.finish = r));
    const handler: RelayHandler = {
      streamable: (t) =>
        t === 0x44
          ? this.plan === undefined && this.rowsExpected() && !this.unmaskable() && !this.replanNeeded()
          : t === 0x64,
      streamed: (t) => {
        if (t === 0x44) this.rowsSeen++;
      },
      message: (t, raw) => this.onServerMessage(t, raw),
      forward: (b) => {
        // A session ended while the scanner worked (a FATAL already sent) forwards nothing more, nor
        // to a client gone (see endAfterHold).
        if (this.closed || this.client.writableEnded || this.client.destroyed) return;
        if (!this.client.write(b)) {
          this.clientBlocked = true;
          this.target.pause();
        }
      },
    };
    this.scanner = new RelayScanner(handler, ctx.maxMessageBytes);
  }

  start(leftover: Buffer): void {
    const { client, target } = this;
    client.on("drain", () => {
      this.clientBlocked = false;
      if (!this.scanner.isHeld) target.resume();
    });
    target.on("drain", () => {
      this.targetBlocked = false;
      if (!this.clientWaits) client.resume();
    });
    client.on("data", (chunk: Buffer) => this.onClientData(chunk));
    // No cork around the scanner: it forwards what one chunk brings in a single write.
    target.on("data", (chunk: Buffer) => {
      try {
        this.scanner.push(chunk);
      } catch (error) {
        this.fail(error, "the target sent an invalid message");
      }
    });
    client.on("close", (hadError: boolean) => {
      // What a client sent before closing cleanly still runs, as on PostgreSQL: a message held for
      // its classification is handled first.
      // (Also while what followed a COPY's CopyDone waits for its outcome: review 40.)
      // (Also while MAX_PENDING answers are awaited and read messages wait behind them: review 59.
      // Nobody reads the answers now, so the target is read again.)
      if (this.clientWaits && !hadError) {
        this.endAfterHold = "client disconnected";
        this.clientBlocked = false;
        if (!this.scanner.isHeld) this.target.resume();
      } else this.end("client disconnected");
    });
    // A client that closed its side of a half-open connection (plain TCP: the listener allows it)
    // sends nothing more but may read on, as PostgreSQL lets it (review 59: the answers after its
    // FIN were lost): what it sent runs and is answered, then the session ends as after a Terminate.
    client.on("end", () => {
      if (this.closed || !(client as Socket).allowHalfOpen) return;
      this.clientEnded = true;
      if (!this.clientWaits) this.afterClientEnd();
    });
    target.on("close", () => {
      if (this.terminated) this.end(this.clientEnded ? "client disconnected" : "client terminated the session");
      else {
        this.targetLost();
        this.end("target closed the connection");
      }
    });
    // A client that closed cleanly while its last messages wait (endAfterHold) cannot take their
    // answers: writing them fails, which must not drop those messages (review 40).
    client.on("error", () => {
      if (this.endAfterHold === undefined) this.end("client connection error");
    });
    target.on("error", () => {
      this.targetLost();
      this.end("target connection error");
    });
    if (leftover.length > 0) this.scanner.push(leftover);
  }

  /**
   * The client sent Terminate (forwarded): the target answers what came before it and closes the
   * connection, which ends the session, so that the client gets those answers as it would from
   * PostgreSQL (review 36: a Query and Terminate in one write got no answer), however long they take
   * (review 59: a COPY the target took more than 5 s to read was cut, its rows never committed and
   * its client never answered). What the client sends after the Terminate is read and dropped, so
   * that its closing the connection is seen (and ends the session). A target that has answered all
   * and does not close is left after TERMINATE_GRACE_MS.
   */
  private afterTerminate(): void {
    if (this.terminateTimer !== undefined || this.closed || this.pending.length > 0) return;
    this.terminateTimer = setTimeout(() => this.end("client terminated the session"), TERMINATE_GRACE_MS);
    this.terminateTimer.unref();
  }

  /**
   * The client closed its side of the connection and everything it sent has been handled: the target
   * is sent a Terminate after it (unless the client sent one), answers all, then closes, which ends
   * the session. A message the client left incomplete is dropped, as PostgreSQL drops it.
   */
  private afterClientEnd(): void {
    if (this.closed || this.terminated) return;
    this.terminated = true;
    this.target.write(serialize.end());
    this.afterTerminate();
  }

  /**
   * The target's connection closed or failed without a word (a reset, a crash): the client is told,
   * as an error in its protocol (review 57: it saw the connection just close). Not after the target's
   * own FATAL (an administrator's pg_terminate_backend, a shutdown), which said why.
   */
  private targetLost(): void {
    if (this.closed || this.targetSaidFatal || this.client.writableEnded || this.client.destroyed) return;
    // Inside a message the client has begun to read: nothing can be said, only the connection closed.
    if (this.scanner.midMessage) return;
    this.client.write(
      errorResponse({
        severity: "FATAL",
        code: "08006",
        message: "the agent lost its connection to the target database",
      }),
    );
  }

  /**
   * Ends the session (57P01, `message`) at its next quiet point: at once if it is idle outside a
   * transaction with nothing in flight, else after the ReadyForQuery that leaves it so. What the
   * client sent and the agent has not forwarded yet is not run. The agent's drain at shutdown.
   */
  drain(message: string): void {
    if (this.closed) return;
    this.draining = message;
    this.endIfDrained();
  }

  private endIfDrained(): void {
    if (this.draining === undefined || this.closed) return;
    // Not between an extended-protocol message and its Sync either: the target holds an implicit
    // transaction and portals there, whatever the last ReadyForQuery said (review 65: a cursor read
    // in batches, an INSERT answered before its Sync, were cut and undone).
    if (this.status !== "I" || this.unsynced || this.pending.length > 0 || this.held !== undefined || this.copySpan > 0)
      return;
    this.terminate(this.draining, "57P01");
  }

  /**
   * Ends the session from outside (token revoked, user disabled, session too long, the agent
   * stopping). A statement still running on the target is cancelled, as PostgreSQL's own
   * termination of a backend stops it (review 65: an UPDATE went on and committed after its
   * session had been ended).
   */
  terminate(message: string, code = "57P01"): void {
    if (this.closed) return;
    if (this.pending.length > 0 && this.ctx.cancelTarget)
      this.cancelling = this.ctx
        .cancelTarget()
        .catch((error: Error) =>
          this.ctx.logger.warn({ session: this.ctx.sessionId, err: error.message }, "could not cancel on the target"),
        );
    this.client.end(errorResponse({ severity: "FATAL", code, message }));
    this.end(message);
  }

  /**
   * Whether a message sent and not yet answered may end the transaction (commit it): one that ends
   * an implicit transaction (a Sync, a Query, a FunctionCall outside a block), or a statement that
   * commits (COMMIT, a procedure...) — or one the agent has no record of.
   */
  private mayEndTransaction(p: Pending): boolean {
    if (this.status === "I" && (p.kind === "sync" || p.kind === "query")) return true;
    const runs = p.kind === "query" ? p.runs.slice(p.index) : p.kind === "execute" ? [p.portal?.run] : [];
    if (p.kind === "execute" && runs[0] === undefined) return true;
    return runs.some((r) => r !== undefined && (r.info.kind === "TransactionStmt" || this.mayCommit(r)));
  }

  private end(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.terminateTimer);
    this.holdAbort?.abort();
    // Statements sent whose results will not be seen are recorded all the same: the one running with
    // the rows relayed so far.
    let at = 0;
    for (const p of this.pending) {
      const runs = p.kind === "query" ? p.runs.slice(p.index) : p.kind === "execute" ? [p.portal?.run] : [];
      runs.forEach((run, i) => {
        if (!run || run.recorded) return;
        const running = at === 0 && i === 0;
        if (running) run.rows += this.rowsSeen;
        const message = running
          ? "the session ended before the statement completed"
          : "the session ended before the target answered";
        this.recordRun(run, "allow", message);
      });
      at++;
    }
    for (const p of this.portals.values()) this.recordPortalRun(p, "");
    // A transaction left open (nothing sent that could end it) is rolled back by the target: what
    // its statements wrote is undone (review 51).
    if (this.changesInTransaction > 0 && ![...this.pending].some((p) => this.mayEndTransaction(p)))
      this.recordRollback("session", this.changesInTransaction);
    // The session's statements are in the spool before its end.
    this.spoolQueued();
    this.client.destroySoon?.();
    // The client's Terminate was forwarded already.
    // Half-closed only: the target closes once it has run what it was sent and read the Terminate
    // (closing it outright would reset it while it still answers, and PostgreSQL would drop what it
    // had not run yet: review 59).
    if (this.terminated) this.target.end();
    else this.target.end(serialize.end());
    // The target's answers are read and dropped from now on, so that it never blocks writing them
    // (review 57: a client that stopped reading and left had its backend stay, blocked writing,
    // holding the session's locks): it runs what it was sent, as PostgreSQL does for a client that
    // closed cleanly (review 59), then reads the Terminate and closes.
    this.target.removeAllListeners("data");
    this.target.on("data", () => undefined);
    this.target.resume();
    // A client that reads nothing more is not waited for.
    const { client } = this;
    setTimeout(() => client.destroy(), END_GRACE_MS).unref();
    const durationMs = BigInt(Date.now() - this.started);
    this.ctx.audit
      .record({
        type: "session.end",
        ...this.common(),
        message: reason,
        detail: { case: "sessionEnd", value: { reason, durationMs } },
      })
      .catch((error: unknown) => this.ctx.logger.error({ err: error }, "could not record the end of a session"));
    this.finish(reason);
  }

  private fail(error: unknown, context: string): void {
    const e = error instanceof ProtocolError ? error : new ProtocolError(`${context}: ${(error as Error).message}`);
    if (!this.closed) {
      this.ctx.logger.warn({ session: this.ctx.sessionId, err: e.message }, context);
      // The target's details (hosts, files, the agent's role) stay in the log (review 47).
      const told = error instanceof TargetError ? `${context}: ${error.forClient}` : e.message;
      this.client.end(errorResponse({ severity: "FATAL", code: e.code, message: told }));
    }
    this.end(`${context}: ${e.message}`);
  }

  private common() {
    const id = this.ctx.identity;
    return {
      actor: { user: id.user, groups: id.groups, sourceAddress: this.ctx.sourceAddress, tokenId: id.tokenId },
      resource: this.ctx.resource,
      sessionId: this.ctx.sessionId,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Client -> target

  private onClientData(chunk: Buffer): void {
    // Nothing after a Terminate is read (see afterTerminate).
    if (this.closed || this.terminated) return;
    if (!this.ctx.audit.hasRoom()) {
      // Fail closed: nothing runs that could not be audited.
      this.auditFailed(new Error("the audit spool is full"));
      return;
    }
    try {
      this.reader.push(chunk);
    } catch (error) {
      this.fail(error, "invalid message from the client");
      return;
    }
    if (this.held === undefined && !this.waitingSettle) this.relayClient(undefined);
  }

  /**
   * Handles the client's complete messages and forwards what they become, in one write; `resumed`
   * first, a message held while its text was classified off the loop.
   */
  private relayClient(resumed: Frame | undefined): void {
    const out: Buffer[] = [];
    try {
      for (let f = resumed ?? this.nextFrame(); f; f = this.nextFrame()) {
        // What comes before it is sent now; it and what follows wait for its classification (again,
        // when the lexical state it was made under has changed since and the text has a backslash).
        if ((f !== resumed || this.offloadStale()) && this.holdForClassification(f)) break;
        const r = this.onClientMessage(f);
        this.offloaded = undefined;
        if (this.closed) return;
        if (r === undefined) continue;
        if (Buffer.isBuffer(r)) out.push(r);
        else out.push(...r);
        if (this.terminated || this.waitingSettle) break;
      }
    } catch (error) {
      // What came before the malformed message runs, as on PostgreSQL (review 61: a valid INSERT in
      // the same write was dropped); the session then ends.
      if (out.length > 0 && !this.closed) {
        this.target.cork();
        for (const b of out) this.target.write(b);
        this.target.uncork();
      }
      this.fail(error, "invalid message from the client");
      return;
    }
    if (out.length === 0) return;
    let ok: boolean;
    const whole = out.length === 1 ? out[0] : adjacent(out);
    if (whole) ok = this.target.write(whole);
    else {
      // Several messages (Parse, Bind, Execute, Sync ...): one write of all of them.
      this.target.cork();
      ok = true;
      for (const b of out) ok = this.target.write(b) && ok;
      this.target.uncork();
    }
    if (!ok) {
      this.targetBlocked = true;
      this.client.pause();
    }
    if (this.terminated) this.afterTerminate();
    else if (this.waitingSettle) this.client.pause();
  }

  /** The client's next complete message, unless MAX_PENDING answers are awaited (then it stops reading). */
  private nextFrame(): Frame | undefined {
    if (this.pending.length >= MAX_PENDING) {
      this.pendingFull = true;
      this.client.pause();
      return undefined;
    }
    const f = this.parked ?? this.reader.next();
    this.parked = undefined;
    if (
      f &&
      this.ctx.readOnly === true &&
      this.cyclesSent > this.cyclesDone &&
      this.copySpan === 0 &&
      !COPY_DATA_TYPES.has(f.type)
    ) {
      // A read-only session sends nothing past a Sync or Query until its ReadyForQuery: a hidden
      // function may have turned the read-only default off there, which the server says only then
      // (review 64: a pipelined statement ran read-write before the agent ended the session).
      this.parked = f;
      this.waitingCycle = true;
      this.client.pause();
      return undefined;
    }
    return f;
  }

  /** The held message's classification was made under another lexical state, which its text depends on. */
  private offloadStale(): boolean {
    const off = this.offloaded;
    return off !== undefined && off.scs !== this.lexicalScs && off.text.includes("\\");
  }

  /**
   * Whether `f` is a Query or Parse long enough to be classified on a worker thread; if so, holds it
   * (and pauses reading from the client) until that is done, then handles it and what followed it.
   * A worker that fails leaves the statement unclassified: refused like one the parser could not read.
   */
  private holdForClassification(f: Frame): boolean {
    const off = this.ctx.offThread;
    // Not when skipping to the Sync, or in a COPY's span (refused there, in onClientMessage): that is
    // decided now, before the COPY's outcome could close the span while the text is held (a long
    // Query held there was then run, and the target, skipping to a Sync after the failed COPY,
    // never answered it: the session hung).
    if (off === undefined || f.body.length < off.minBytes || this.awaitingSync || this.copySpan > 0) return false;
    if (f.type !== 0x51 && f.type !== 0x50) return false;
    const text = f.type === 0x51 ? decodeQuery(f.body) : decodeParse(f.body).query;
    if (text.length > this.ctx.maxStatementLength) return false; // refused at once (classify)
    const scs = this.lexicalScs;
    this.held = f;
    this.offloaded = undefined;
    this.client.pause();
    const abort = new AbortController();
    this.holdAbort = abort;
    off.pool
      .classify(text, { standardConformingStrings: scs }, abort.signal)
      .catch((error: Error & { code?: string }): Classification => {
        if (error.code === POOL_BUSY)
          return {
            ok: false,
            error: {
              message: "access denied: Moat is checking too many long statements at once; try again shortly",
              position: 0,
              sqlstate: "53400",
            },
          };
        if (!this.closed)
          this.ctx.logger.warn({ session: this.ctx.sessionId, err: error.message }, "classifier worker");
        return {
          ok: false,
          error: {
            message: "access denied: Moat could not check this statement (its classifier failed); try again",
            position: 0,
            sqlstate: "XX000",
          },
        };
      })
      .then((result) => {
        if (this.closed) return;
        this.holdAbort = undefined;
        this.offloaded = { text, scs, result };
        this.held = undefined;
        this.relayClient(f);
        this.readOnAfterWait();
      })
      .catch((error: unknown) => this.fail(error, "invalid message from the client"));
    return true;
  }

  private onClientMessage(f: Frame): Buffer | Buffer[] | undefined {
    // Sync, Flush, CopyDone and Terminate have no body. The target would refuse one with a body and
    // then skip to the next Sync, answering nothing the agent queued for it (review 13: a Flush with
    // one extra byte shifted every later answer onto the wrong statement, unmasked).
    if (f.body.length > 0 && (f.type === 0x53 || f.type === 0x48 || f.type === 0x63 || f.type === 0x58))
      throw new ProtocolError(`invalid message format: '${String.fromCharCode(f.type)}' message with a body`);
    // Skipping to Sync, as the target does (it ignores all but Sync; Terminate ends the session anyway).
    if (this.awaitingSync && f.type !== 0x53 && f.type !== 0x58) return undefined;
    if (this.copySpan > 0) this.checkCopyMessage(f.type);
    // Query, Sync, and FunctionCall (replaced by a Query) each get one ReadyForQuery.
    if (f.type === 0x51 || f.type === 0x46 || (f.type === 0x53 && this.copySpan === 0)) {
      this.cyclesSent++;
      this.unsynced = false;
    } else if (f.type === 0x50 || f.type === 0x42 || f.type === 0x45 || f.type === 0x44 || f.type === 0x43)
      this.unsynced = true;
    this.inQuery = f.type === 0x51;
    switch (f.type) {
      case 0x51: {
        // Query. Refused or not, it ends an implicit transaction the messages before it opened.
        // The target drops the unnamed statement and portal at any Query (it runs with them):
        // forgotten here too (review 61: an Execute of the unnamed portal after a Query in a
        // transaction block was let through, and a PostgreSQL 15 bug crashed the server with it).
        this.statements.delete("");
        this.dropPortal("");
        const sent = this.onQuery(decodeQuery(f.body), f.raw);
        this.countEnding(undefined, this.cyclesSent);
        return sent;
      }
      case 0x50: // Parse
        return this.onParse(f);
      case 0x42: // Bind
        return this.onBind(f);
      case 0x45: {
        // Execute
        const { portal: name } = decodeExecute(f.body);
        const badName = this.nameRefusal(name);
        if (badName) return this.poisonBind("", badName);
        const portal = this.portals.get(name);
        const refusal = portal && this.portalRefusal(portal, name);
        if (refusal) return this.poisonBind("", refusal);
        if (!portal) {
          // Not bound through the protocol: a SQL cursor (DECLARE), whose rows the agent reads only
          // as FETCH results (this Execute would bring no RowDescription to mask them by), or
          // nothing. Refused in its place; the target answers a portal it does not know the same way.
          const message = `access denied: portal "${name}" was not bound through Moat; read a cursor with FETCH`;
          this.unparsed(`-- protocol Execute of portal "${name}"`, message);
          return this.poisonBind("", message);
        }
        this.countEnding(portal.lazy, this.cyclesSent + 1);
        portal.executed = true;
        // A transaction statement ends or rolls back what was sent before it runs, not before its Bind.
        if (portal.run?.info.kind === "TransactionStmt") portal.run.sentAt = this.definitions;
        const entry: Pending = { kind: "execute", portal, portalName: name };
        if (portal.fields === undefined && this.planner()) {
          // Masking needs the result's columns: ask the target, keep its answer to ourselves.
          this.push({ kind: "describe", portal, injected: true });
          this.push(entry);
          this.openCopySpan(entry, copiesFromClient(portal.run?.info) ? 1 : 0);
          return [serialize.describe({ type: "P", name }), f.raw];
        }
        this.push(entry);
        this.openCopySpan(entry, copiesFromClient(portal.run?.info) ? 1 : 0);
        return f.raw;
      }
      case 0x44: {
        // Describe
        const d = decodeTarget(f.body);
        const badName = this.nameRefusal(d.name);
        if (badName) return this.poisonBind("", badName);
        // A statement's columns are not kept: its portals are described for masking (onServerMessage).
        const portal = d.target === "P" ? this.portals.get(d.name) : undefined;
        const lazy = d.target !== "P" ? undefined : portal ? portal.lazy : this.cursors.get(d.name)?.lazy;
        const parsedAt = d.target === "S" ? this.protocolStatement(d.name)?.fetchParsedAt : undefined;
        if ((lazy && this.stale(lazy)) || (parsedAt !== undefined && parsedAt !== this.runs)) {
          const message = lazy
            ? `access denied: portal "${d.name}" ${STALE_PORTAL}`
            : `access denied: a prepared FETCH is described through Moat only right after its Parse; describe its portal instead`;
          this.unparsed(`-- protocol Describe of ${lazy ? "portal" : "statement"} "${d.name}"`, message);
          return this.poisonBind("", message);
        }
        this.push({ kind: "describe", portal, injected: false });
        return f.raw;
      }
      case 0x43: {
        // Close
        const c = decodeTarget(f.body);
        const badName = this.nameRefusal(c.name);
        if (badName) return this.poisonBind("", badName);
        // It may close a cursor the agent never saw declared (a function's), which a portal reads.
        this.countRun(undefined);
        // A statement is forgotten once the target has closed it (it skips a Close after an error);
        // a portal at once (an Execute of an unknown portal is refused, never masked wrongly).
        if (c.target === "P") this.dropPortal(c.name);
        if (c.target === "S") {
          const close: PendingClose = { kind: "close", statement: c.name, upTo: this.definitions };
          this.closingInCycle.set(c.name, close);
          this.push(close);
        } else this.push({ kind: "close", portal: c.name, upTo: this.definitions });
        return f.raw;
      }
      case 0x53: // Sync
        this.awaitingSync = false;
        // In a COPY's span, before any data: held back (see copySpan; libpq sends one right behind
        // the Execute of a COPY).
        if (this.copySpan > 0) {
          this.heldSyncs++;
          this.heldFor = this.copyEntry;
          return undefined;
        }
        this.noteSync();
        return f.raw;
      case 0x63: // CopyDone
      case 0x66: // CopyFail
        if (this.heldSyncs > 0 && f.type === 0x66) this.copyFailed = true;
        if (this.copySpan > 0 && --this.copySpan === 0) this.copyMany = false;
        this.copySpanData = false;
        if (this.heldSyncs > 0 && this.copySpan === 0) {
          this.waitingSettle = true;
          // A Flush, so that the target sends the COPY's outcome now: in the extended protocol it
          // keeps a CommandComplete until a Sync or Flush (an error it sends at once).
          return [f.raw, FLUSH];
        }
        return f.raw;
      case 0x64: // CopyData
        if (this.copySpan > 0) this.copySpanData = true;
        if (this.heldSyncs > 0) this.heldSyncsData = true;
        return f.raw;
      case 0x48: // Flush
        return f.raw;
      case 0x58: // Terminate: after what came before it (a Query in the same write runs), then the end
        this.terminated = true;
        return f.raw;
      case 0x46: {
        // FunctionCall: a function by OID.
        const sent = this.onFunctionCall(f.body, f.raw);
        this.countEnding(undefined, this.cyclesSent);
        return sent;
      }
      default:
        throw new ProtocolError(`unexpected message type '${String.fromCharCode(f.type)}' from the client`);
    }
  }

  /**
   * A fast-path FunctionCall: only of the large-object functions libpq calls so (lo_import,
   * lo_export and pg_dump's large objects), decided as the SQL call of the same function (they need
   * `db:admin`, as `SELECT lo_open(...)` does) and audited as one; loread is refused under masking
   * rules (the bytes it returns could not be masked). Any other function is refused: call it in a
   * query. The target answers FunctionCallResponse (or an error), then ReadyForQuery.
   */
  private onFunctionCall(body: Buffer, raw: Buffer): Buffer {
    const { oid, argumentCount } = decodeFunctionCall(body);
    const name = LARGE_OBJECT_FUNCTIONS.get(oid);
    const parameters = Array.from({ length: argumentCount }, (_, i) => `$${i + 1}`).join(", ");
    const text =
      name === undefined
        ? `-- fast-path call of the function with OID ${oid}`
        : `SELECT pg_catalog.${name}(${parameters}) -- fast-path function call`;
    const c = name === undefined ? undefined : this.classify(text);
    const info = c?.ok ? c.statements[0] : undefined;
    let decision: Decision;
    if (!info)
      decision = agentDenial(
        "access denied: the fast-path function call interface is not allowed through Moat but for large-object functions; call the function in a query",
      );
    else if (name === "loread" && this.planner())
      decision = agentDenial(
        "access denied: large objects cannot be read while masking rules apply to you (their bytes would not be masked)",
      );
    else decision = this.decide(info);
    if (decision.effect !== "allow" || !info) {
      if (info) this.refused(info, decision, c?.ok ? c.fingerprint : "");
      else {
        this.ctx.metrics.statement("deny");
        this.recordRefusal(text, "function", decision, "");
      }
      this.push({ kind: "query", runs: [], index: 0, replaceError: this.denialError(decision.message) });
      // A call of a function that does not exist fails as the refused call would have, and, unlike
      // a Query, leaves the client's unnamed prepared statement alone (review 45).
      return FAST_PATH_POISON;
    }
    this.ctx.metrics.statement("allow");
    this.push({ kind: "query", runs: [this.newRun(info, text, decision)], index: 0 });
    return raw;
  }

  private denialError(message: string, code = "42501", extra: Partial<ErrorInit> = {}): Buffer {
    return errorResponse({ code, message, ...extra });
  }

  /**
   * With a client encoding whose multibyte characters can contain ASCII bytes (SJIS, BIG5, GBK, UHC,
   * GB18030), the server may read a text differently from the agent (a lead byte swallows the quote
   * or backslash after it), so the agent reads nothing as SQL then: a text that is not pure ASCII is
   * refused whole (pure ASCII reads the same in every encoding), and `decide` lets through only
   * statements changing the lexical settings (back to a safe encoding).
   */
  private encodingRefusal(text: string): string | undefined {
    if (this.notUtf8Encoding === undefined && !this.lexicalUncertain) return undefined;
    for (let i = 0; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code < 0x80) continue;
      // Bytes that were not UTF-8 arrive here as U+FFFD.
      if (this.bytesEncoding && !this.lexicalUncertain && code !== 0xfffd) continue;
      if (this.unsafeEncoding !== undefined)
        return `access denied: client_encoding ${this.unsafeEncoding} is not supported through Moat (its multibyte characters can hide quotes); use UTF8`;
      if (this.notUtf8Encoding !== undefined)
        // The agent reads text as UTF-8: `geheim\xe9` in LATIN1 would name another table for it
        // than for the server (a deny rule on the table would not see it).
        return `access denied: with client_encoding ${this.notUtf8Encoding}, Moat accepts ASCII text only; use UTF8 to send other characters`;
      return "access denied: a change of client_encoding or standard_conforming_strings sent earlier has not been answered yet; send text with non-ASCII characters after its result";
    }
    return undefined;
  }

  /** How texts are read now: while a lexical change is in flight, as if standard_conforming_strings were off. */
  private get lexicalScs(): boolean {
    return this.standardConformingStrings && !this.lexicalUncertain;
  }

  private classify(text: string): Classification {
    // Parsing needs memory in proportion (a 10 MiB IN list ~0.9 GiB): beyond this, not at all.
    if (text.length > this.ctx.maxStatementLength)
      return {
        ok: false,
        error: {
          message: `access denied: this statement (${text.length} characters) is longer than Moat checks (maxStatementLength ${this.ctx.maxStatementLength}); split it, or load data with COPY`,
          position: 0,
          sqlstate: "54000",
        },
      };
    const scs = this.lexicalScs;
    // Made off the loop for the message being handled, under the lexical state still in force.
    const off = this.offloaded;
    // Without a backslash, a text reads the same whatever standard_conforming_strings says.
    if (off !== undefined && off.text === text && (off.scs === scs || !text.includes("\\"))) return off.result;
    return this.ctx.classifier.classify(text, { standardConformingStrings: scs });
  }

  private onQuery(text: string, raw: Buffer): Buffer {
    const refusal = this.encodingRefusal(text);
    if (refusal) {
      this.unparsed(text, refusal);
      this.push({ kind: "query", runs: [], index: 0, replaceError: this.denialError(refusal) });
      return serialize.query(POISON);
    }
    const c = this.classify(text);
    if (!c.ok) {
      this.unparsed(text, c.error.message);
      // Where the syntax error is, as PostgreSQL says it (psql draws the line and a caret).
      const error = this.denialError(c.error.message, c.error.sqlstate, { position: c.error.position });
      this.push({ kind: "query", runs: [], index: 0, replaceError: error });
      return serialize.query(POISON);
    }
    const runs: Run[] = [];
    let denied: { decision: Decision; info: StatementInfo } | undefined;
    const lexicalRefusal = this.lexicalChangeRefusal(c.statements, false);
    let first = true;
    /** PREPAREs of each name so far in this message (each merges with the ones before: see merges). */
    let prepares: Map<string, number> | undefined;
    let ended = false;
    for (const info of c.statements) {
      let decision: Decision =
        lexicalRefusal && info.lexicalChange
          ? agentDenial(lexicalRefusal)
          : ended
            ? agentDenial(AFTER_END_IN_READ_ONLY)
            : (this.staleFetch(info, first) ?? this.decide(info));
      first = false;
      // In a read-only session, a statement after COMMIT or ROLLBACK in the same text would start a
      // transaction before the server can say whether a hidden function turned the read-only
      // default off (it says so at the text's end: review 64): refused.
      if (this.ctx.readOnly === true && info.endsTransaction === true) ended = true;
      if (info.prepare && decision.effect === "allow") {
        prepares ??= new Map();
        const before = prepares.get(info.prepare.name) ?? 0;
        prepares.set(info.prepare.name, before + 1);
        const again = this.redefinitionRefusal(info.prepare.name, before);
        if (again) decision = agentDenial(again);
      }
      if (decision.effect !== "allow") {
        denied = { decision, info };
        break;
      }
      runs.push(this.newRun(info, info.text, decision));
      // A search_path set by this statement applies to the next ones of the same message.
      this.widenSearchPath(info);
    }
    for (let i = 0; i < runs.length; i++) this.ctx.metrics.statement("allow");
    const prefix = c.statements.slice(0, runs.length);
    const lexical = prefix.some((info) => this.changesLexically(info));
    prefix.forEach((info, i) => this.afterAllowed(info, runs[i]));
    if (lexical) this.lexicalInFlight++;
    const entry: Pending = { kind: "query", runs, index: 0, lexical };
    if (denied) {
      this.refused(denied.info, denied.decision, c.fingerprint);
      entry.replaceError = this.denialError(denied.decision.message);
    }
    this.push(entry);
    this.openCopySpan(entry, runs.filter((r) => copiesFromClient(r.info)).length);
    if (!denied) return raw;
    // As on PostgreSQL when a statement of the message fails: the statements before the denied one
    // run (their results reach the client; a BEGIN or COMMIT among them takes effect, so the session
    // ends in the transaction state PostgreSQL would leave: review 42), the denied one fails, and the
    // rest does not run. The server gets the statements the agent decided, each ending on a line of
    // its own (a statement may end in a -- comment), then POISON.
    return serialize.query(runs.length === 0 ? POISON : [...runs.map((r) => r.text), POISON].join("\n;\n"));
  }

  /**
   * Conservative search path: unqualified names are checked in every schema the path has held in
   * this session (SET, SET LOCAL, RESET: none of them ever narrows it).
   */
  private widenSearchPath(info: StatementInfo): void {
    if (info.searchPath === undefined) return;
    const next = info.searchPath ?? ["$user", "public"];
    if (pathShadowsCatalog(next)) this.userFunctionsFirst = true;
    const widened = [...new Set([...this.searchPath, ...next])];
    // Kept as it is when nothing is added (verdicts are cached per search path: see decide).
    if (widened.length !== this.searchPath.length) this.searchPath = widened;
  }

  /** Session state an allowed statement changes, known before the target runs it. */
  private get lexicalUncertain(): boolean {
    return this.lexicalInFlight > 0;
  }

  /**
   * Why a change of the lexical settings in this message is refused, if it is: it must come as a
   * simple Query of that one statement, outside a transaction block, with nothing else in flight.
   * Otherwise something the agent cannot see in time could apply or revert it — a portal executed
   * in a later Sync cycle, COMMIT/ROLLBACK of the block (a SET LOCAL, or a SET rolled back), an
   * error aborting the block — and the next texts would be read under the wrong setting.
   */
  private lexicalChangeRefusal(statements: readonly StatementInfo[], extended: boolean): string | undefined {
    const first = statements.findIndex((info) => this.changesLexically(info));
    if (first < 0) return undefined;
    // Last in its message: nothing after it is read under the new setting before the answer says
    // which is in force (asyncpg resets a pooled connection with `...; UNLISTEN *; RESET ALL;`);
    // with no transaction statement before it (a BEGIN would put it in a block).
    if (
      !extended &&
      first === statements.length - 1 &&
      !statements.some((info) => info.kind === "TransactionStmt") &&
      this.status === "I" &&
      this.pending.length === 0
    )
      return undefined;
    return (
      "access denied: a change of client_encoding or standard_conforming_strings (or RESET ALL, DISCARD ALL) " +
      "must be sent as a simple query on its own (or as its last statement), outside a transaction block, " +
      "with no other query in flight"
    );
  }

  /**
   * Whether a statement may change how the server reads text. Not a SET to the value in force, with
   * no change in flight (pg_restore --single-transaction sends a dump's `SET client_encoding =
   * 'UTF8'` and `SET standard_conforming_strings = on` inside its transaction): it changes nothing,
   * wherever it is sent, and nothing can revert it to something else.
   */
  private changesLexically(info: StatementInfo): boolean {
    if (!info.lexicalChange) return false;
    const setting = info.lexicalSetting;
    if (!setting || this.lexicalInFlight > 0) return true;
    if (setting.name === "client_encoding") return normalizeEncoding(setting.value) !== this.clientEncoding;
    if (setting.name === "standard_conforming_strings") {
      const on = BOOLEAN_WORDS.get(setting.value.toLowerCase());
      return on === undefined || on !== this.standardConformingStrings;
    }
    return true;
  }

  private afterAllowed(info: StatementInfo, run: Run | undefined): void {
    this.widenSearchPath(info);
    // SQL CLOSE or DECLARE may close a protocol portal or reuse its name for a cursor whose rows
    // differ: the agent forgets them all (an Execute of one is then refused, never masked wrongly).
    if (info.kind === "ClosePortalStmt" || info.kind === "DeclareCursorStmt" || info.deallocate?.name === null)
      for (const name of [...this.portals.keys()]) this.dropPortal(name);
    if (info.prepare) {
      // If this PREPARE fails on the target (the name is taken, by a SQL PREPARE or a protocol Parse,
      // or the transaction has failed), EXECUTE runs the earlier statement: until it is deallocated,
      // the agent assumes either may run, so EXECUTE needs what both need and is masked by what both
      // compute.
      // A name the agent had no record of may be one a function prepared out of its sight: EXECUTE
      // reads as any column until this PREPARE has succeeded (afterSucceeded).
      const name = info.prepare.name;
      const earlier = this.preparedInfo(name);
      const record = earlier ? mergeInfos(info, earlier) : anyColumn(info);
      if (earlier) merges.set(record, this.unconfirmedDefinitions(name) + 1);
      this.sqlPrepared.set(name, record);
      this.preparedSince.set(name, ++this.definitions);
      if (run && !earlier) run.defines = { prepared: { name, record, info } };
    }
    if (run && (info.deallocate || info.cursor?.op === "close")) run.forgetsUpTo = this.definitions;
    if (run && info.kind === "TransactionStmt") run.sentAt = this.definitions;
    if (info.cursor?.op === "declare" && info.cursor.name !== null) {
      const record = this.noteCursor(
        info.cursor.name,
        info,
        info.cursor.hold === true,
        this.withHiddenCalls(info, info.actions),
      );
      if (run && record.unconfirmed) run.defines = { cursor: record };
    }
  }

  /**
   * Counts a statement that wrote to tables in the current transaction (what a rollback undoes:
   * not a sequence's value, an advisory lock or a prepared statement, which stay; review 51). A
   * procedure or DO block may have committed what came before it: the count starts again.
   */
  private noteChange(run: Run): void {
    if (run.counted) return;
    run.counted = true;
    const ran = this.ranInfo(run.info);
    // One that commits on its own (a procedure or DO block may too, and PREPARE TRANSACTION ends
    // the transaction), or one of which the agent cannot tell what ran: what came before it is not
    // said to be undone (nothing is said rather than something false).
    if (this.mayCommit(run, ran) || (ran.kind === "TransactionStmt" && PREPARE_TRANSACTION.test(ran.text)))
      this.changesInTransaction = 0;
    else if (writesTables(ran, run.info.execute !== undefined)) this.changesInTransaction++;
  }

  /** What a statement runs: EXECUTE's prepared statement (as far as the agent knows it), else itself. */
  private ranInfo(info: StatementInfo): StatementInfo {
    return info.execute ? (this.preparedInfo(info.execute.name) ?? info) : info;
  }

  /**
   * Whether a statement commits on its own (whatever transaction it runs in), or is one of which the
   * agent cannot tell what runs.
   */
  private mayCommit(run: Run, ran = this.ranInfo(run.info)): boolean {
    const info = run.info;
    if (run.uncertain || (info.execute && this.preparedUncertain(info.execute.name))) return true;
    if (OWN_COMMIT_KINDS.has(ran.kind)) return true;
    // CREATE INDEX / DROP INDEX / REINDEX / DETACH PARTITION ... CONCURRENTLY.
    return CONCURRENT_KINDS.has(ran.kind) && /\bconcurrently\b/i.test(ran.text);
  }

  /** Whether more than one definition may be what prepared statement `name` holds. */
  private preparedUncertain(name: string): boolean {
    return (
      this.unconfirmedDefinitions(name) > 0 || (name !== "" && this.sqlPrepared.has(name) && this.statements.has(name))
    );
  }

  /** Every definition prepared statement `name` may hold: its protocol Parse's statements and its SQL PREPARE. */
  private definitionsOf(name: string): StatementInfo[] {
    const protocol = this.statements.get(name)?.classification.statements ?? [];
    const sql = this.sqlPrepared.get(name);
    return sql ? [...protocol, sql] : [...protocol];
  }

  /** Whether some definition prepared statement `name` may hold could take a secret from its parameters. */
  private mayTakeSecret(name: string): boolean {
    return this.definitionsOf(name).some(takesSecrets);
  }

  /**
   * What a statement forgets, applied once the target has run it: a DEALLOCATE or CLOSE that fails,
   * or never runs (behind a failed statement, in a failed transaction), leaves the name in place on
   * the target, and a later PREPARE or DECLARE of it would then fail there while the agent believed
   * it.
   */
  private afterSucceeded(run: Run): void {
    const { info, forgetsUpTo: upTo, defines } = run;
    this.noteChange(run);
    if (info.savepoint && run.sentAt !== undefined) this.onSavepoint(info.savepoint, run.sentAt);
    if (defines) {
      this.confirmCursor(defines.cursor);
      const p = defines.prepared;
      if (p && this.sqlPrepared.get(p.name) === p.record) this.sqlPrepared.set(p.name, p.info);
      run.defines = undefined;
    }
    if (upTo === undefined) return;
    if (info.deallocate) {
      const names = info.deallocate.name === null ? [...this.preparedSince.keys()] : [info.deallocate.name];
      for (const name of names) this.forgetPrepared(name, upTo);
    }
    if (info.cursor?.op === "close") {
      const names = info.cursor.name === null ? [...this.cursors.keys()] : [info.cursor.name];
      for (const name of names) this.forgetCursor(name, upTo);
    }
  }

  /**
   * A SAVEPOINT, RELEASE or ROLLBACK TO has run (`at`: the definitions sent before it). A ROLLBACK TO
   * closes the cursors and portals opened since the savepoint: their names are free on the target,
   * where a function may open others (review 31); the agent forgets them (a FETCH of such a name
   * reads as any column, an Execute of such a portal is refused). Prepared statements are not
   * transactional: they stay.
   */
  private onSavepoint(savepoint: NonNullable<StatementInfo["savepoint"]>, at: number): void {
    const stack = this.savepoints;
    let i = stack.length - 1;
    while (i >= 0 && (stack[i] as { name: string }).name !== savepoint.name) i--;
    if (savepoint.op === "savepoint") {
      stack.push({ name: savepoint.name, since: at });
      // Bounded: past that, a ROLLBACK TO an older one counts as to one not seen (forgets more).
      if (stack.length > MAX_SAVEPOINTS) stack.shift();
    } else if (savepoint.op === "release") stack.length = Math.max(i, 0);
    else {
      // (One the agent did not see set: everything defined before it may be gone.)
      const since = i >= 0 ? (stack[i] as { since: number }).since : 0;
      stack.length = i + 1;
      this.forgetOpened(since, at, () => true);
    }
  }

  /**
   * Forgets the portals, and the cursors `closed` says are closed, defined after number `after` and
   * up to `upTo`: a transaction end or a ROLLBACK TO closed them on the target.
   */
  private forgetOpened(after: number, upTo: number, closed: (cursor: CursorRecord) => boolean): void {
    if (upTo <= after) return; // nothing defined in between (a run of COMMITs costs nothing)
    for (const [name, cursor] of this.cursors)
      if (cursor.since > after && cursor.since <= upTo && closed(cursor)) this.cursors.delete(name);
    for (const [name, portal] of this.portals) if (portal.since > after && portal.since <= upTo) this.dropPortal(name);
  }

  /**
   * A COMMIT or ROLLBACK (AND CHAIN too) has ended a transaction block; `at`: the definitions sent
   * before it ran. Its cursors and portals are gone on the target, WITH HOLD cursors too unless it
   * committed, and so are its savepoints: their names are free there, where a function may open
   * others (review 32).
   */
  private transactionEnded(committed: boolean, at: number): void {
    this.savepoints = [];
    this.transactionFailed = false;
    this.changesInTransaction = 0;
    // What was defined up to the last end was forgotten then, or stays (WITH HOLD, committed). (A
    // WITH HOLD cursor of an implicit transaction, one before the last idle ReadyForQuery, was
    // committed there: review 33.)
    const start = this.transactionStart;
    this.forgetOpened(start, at, (c) => !c.hold || (!committed && c.heldAt > this.idleAt));
    this.transactionStart = Math.max(start, at);
  }

  /** Forgets prepared statement `name` (SQL or protocol) unless it was defined after number `upTo`. */
  private forgetPrepared(name: string, upTo: number): void {
    if ((this.preparedSince.get(name) ?? 0) > upTo) return;
    this.sqlPrepared.delete(name);
    this.statements.delete(name);
    this.preparedSince.delete(name);
  }

  /** Forgets cursor or portal `name` unless it was defined after number `upTo`. */
  private forgetCursor(name: string, upTo: number): void {
    if ((this.cursors.get(name)?.since ?? 0) <= upTo) this.cursors.delete(name);
  }

  /**
   * A cursor (SQL DECLARE) or protocol portal named `name` may now return the rows of `info` (they
   * share one namespace on the target). Kept with whatever the name held before: a DECLARE of a name
   * already taken fails on the target, which keeps the first.
   */
  private noteCursor(
    name: string,
    info: StatementInfo,
    hold: boolean,
    actions: readonly ActionUse[],
    lazy?: Lazy,
  ): CursorRecord {
    const previous = this.cursors.get(name);
    const unconfirmed = previous
      ? undefined
      : { result: info.result ?? UNKNOWN_LINEAGE, reads: info.reads ?? ANY_COLUMN };
    // Past the cap new names are refused before they are sent (cursorRefusal).
    const record: CursorRecord = {
      result: unconfirmed ? UNKNOWN_LINEAGE : (mergeLineage(previous?.result, info.result) ?? UNKNOWN_LINEAGE),
      reads: unconfirmed ? ANY_COLUMN : (mergeSources(previous?.reads, info.reads) ?? ANY_COLUMN),
      since: ++this.definitions,
      hold: hold || previous?.hold === true,
      // A Query is counted when it is sent; a Bind's cycle is its Sync, counted later.
      heldAt: hold ? this.cyclesSent + (this.inQuery ? 0 : 1) : (previous?.heldAt ?? 0),
      cycle: this.cyclesSent,
      actions: previous ? [...previous.actions, ...actions] : actions,
      lazy: lazy ?? previous?.lazy,
      unconfirmed,
      onlyReads: info.statementClass === "read" && previous?.onlyReads !== false,
    };
    this.cursors.set(name, record);
    return record;
  }

  /** The target has run the definition that made `record` (see CursorRecord.unconfirmed). */
  private confirmCursor(record: CursorRecord | undefined): void {
    const defined = record?.unconfirmed;
    if (!record || !defined) return;
    record.result = defined.result;
    record.reads = defined.reads;
    record.unconfirmed = undefined;
  }

  private onParse(f: Frame): Buffer {
    const parse = decodeParse(f.body);
    const previous = this.statements.get(parse.name);
    // The server drops the unnamed statement at any Parse of it; a named one stays until closed (a
    // Parse of its name fails, refused or not: forgetting it here would leave the agent with less
    // than the server, review 26).
    if (parse.name === "") this.statements.delete("");
    const poison = (message: string, code = "42501", position?: number) => {
      this.push({ kind: "parse", replaceError: this.denialError(message, code, { position }) });
      this.skipToSync();
      return serialize.parse({ name: parse.name, text: POISON });
    };
    const badName = this.nameRefusal(parse.name);
    if (badName) {
      this.unparsed(parse.query, badName);
      return poison(badName, "42602");
    }
    if (parse.name.startsWith(RESERVED_PREFIX)) {
      this.unparsed(parse.query, reservedNameMessage(parse.name));
      return poison(reservedNameMessage(parse.name), "42939");
    }
    const tooMany = this.preparedRefusal(parse.name, parse.query) ?? this.redefinitionRefusal(parse.name);
    if (tooMany) {
      this.unparsed(parse.query, tooMany);
      return poison(tooMany, "54000");
    }
    const refusal = this.encodingRefusal(parse.query);
    if (refusal) {
      this.unparsed(parse.query, refusal);
      return poison(refusal);
    }
    const c = this.classify(parse.query);
    if (!c.ok) {
      this.unparsed(parse.query, c.error.message);
      return poison(c.error.message, c.error.sqlstate, c.error.position);
    }
    const lexicalRefusal = this.lexicalChangeRefusal(c.statements, true);
    for (const info of c.statements) {
      const decision: Decision =
        lexicalRefusal && info.lexicalChange
          ? agentDenial(lexicalRefusal)
          : (this.staleFetch(info, true) ?? this.decide(info));
      if (decision.effect !== "allow") {
        this.refused(info, decision, c.fingerprint);
        return poison(decision.message);
      }
    }
    // Known at once, so that a Bind pipelined right behind this Parse finds it; undone if the target
    // refuses the Parse (a named statement that already exists keeps its old text there).
    // Parsing may run functions (a literal cast to a domain evaluates its CHECK).
    this.countRun(undefined);
    const prepared: PreparedStatement = { classification: c, text: parse.query };
    if (parse.parameterTypes.length > 0) prepared.parameterTypes = parse.parameterTypes;
    if (c.statements.length === 1 && c.statements[0]?.cursor?.op === "fetch") prepared.fetchParsedAt = this.runs;
    // A named statement the target may still hold (a Close of it may be in flight): this Parse then
    // fails there and the old one stays. Until the target answers, a Bind, Describe or EXECUTE of
    // the name pipelined behind it (after a Sync) is decided and masked as either (review 27).
    // A name the agent has no record of may hold one a function prepared out of its sight (review
    // 31): until the target answers, the rows of a Bind of it after a Sync read as any column.
    const set =
      parse.name === "" ? prepared : previous ? mergePrepared(prepared, previous) : readingAnyColumn(prepared);
    if (previous && set !== prepared) merges.set(set, this.unconfirmedDefinitions(parse.name) + 1);
    if (set !== prepared) set.alone = { statement: prepared, syncs: this.syncs };
    this.statements.set(parse.name, set);
    if (parse.name !== "") this.preparedSince.set(parse.name, ++this.definitions);
    // (Only for the first Parse after it: a second one of the name fails there, keeping the first.)
    const closing = parse.name === "" ? undefined : this.closingInCycle.get(parse.name);
    if (closing) this.closingInCycle.delete(parse.name);
    this.push({ kind: "parse", name: parse.name, previous, set, confirmed: prepared, ...(closing && { closing }) });
    return f.raw;
  }

  private onBind(f: Frame): Buffer {
    const { portal: portalName, statement: statementName } = bindNames(f.body);
    this.dropPortal(portalName);
    // PostgreSQL answers this with an error, not by closing the session (review 61).
    const formats = bindFormatMismatch(f.body);
    if (formats) return this.poisonBind(portalName, formats, "08P01");
    const badName = this.nameRefusal(portalName) ?? this.nameRefusal(statementName);
    if (badName) return this.poisonBind("", badName);
    const statement = this.boundStatement(statementName);
    const poison = (message: string) => this.poisonBind(portalName, message);
    const tooMany = portalName === "" ? undefined : this.cursorRefusal(portalName);
    if (tooMany) return poison(tooMany);
    if (!statement) {
      // PostgreSQL's SQLSTATE for a name it does not hold (26000): drivers that re-prepare on it
      // (a statement cache after a Parse that failed) do so here too.
      const message = `prepared statement "${statementName}" does not exist (it was not prepared through Moat)`;
      this.unparsed(`-- protocol Bind of prepared statement "${statementName}"`, message);
      return this.poisonBind(portalName, message, "26000");
    }
    if (statement.refusal) {
      this.unparsed(`-- protocol Bind of prepared statement "${statementName}"`, statement.refusal);
      return poison(statement.refusal);
    }
    // Decided again at each Bind: a policy change or revocation applies to prepared statements too.
    const infos = statement.classification.statements;
    const lazy = this.lazyOf(infos);
    if (lazy && lazy.lookups.length > MAX_LOOKUPS) {
      const message = `access denied: this portal reads through more than ${MAX_LOOKUPS} cursors, portals and prepared statements; run them first`;
      this.unparsed(`-- protocol Bind of prepared statement "${statementName}"`, message);
      return poison(message);
    }
    let run: Run | undefined;
    for (const info of infos) {
      const decision = this.staleFetch(info, true) ?? this.decide(info);
      if (decision.effect !== "allow") {
        this.refused(info, decision, statement.classification.fingerprint);
        return poison(decision.message);
      }
      run ??= this.newRun(info, statement.text, decision);
    }
    if (run && statement.alone) run.of = statement;
    this.ctx.metrics.statement("allow");
    const bind = decodeBind(f.body);
    const params =
      bind.parameters.length > 0
        ? renderParameters(bind, statement.parameterTypes, 256, this.notUtf8Encoding !== undefined)
        : "";
    if (run && params) run.params = params;
    if (run && this.preparedUncertain(statementName)) {
      // Two definitions may hold the name (a second one failed on the target): what ran is not
      // known, so the audit counts no change of it and keeps its parameters only if neither
      // definition could take a secret from them (review 53).
      run.uncertain = true;
      if (this.mayTakeSecret(statementName)) run.redaction = "literals";
    }
    for (const info of infos) this.afterAllowed(info, run);
    const replaces = this.cursors.get(portalName)?.lazy;
    const named =
      portalName !== "" && run
        ? this.noteCursor(portalName, run.info, false, this.neededActions(run.info) ?? [], lazy)
        : undefined;
    // Binding may run functions (its parameters' domain checks, planning evaluating immutable
    // ones), before PostgreSQL describes the portal.
    this.countRun(undefined);
    if (lazy) lazy.since = this.runs;
    // No column list from the statement's Describe: it may predate a search_path change (another
    // table, same types). Masking asks for the portal's own (Describe P) before its rows.
    const portal: Portal = {
      statement,
      run,
      cycle: this.cyclesSent,
      bundle: this.ctx.bundles.current(),
      lazy,
      executed: false,
      refused: false,
      pendingExecutes: 0,
      since: ++this.definitions,
    };
    this.portals.set(portalName, portal);
    this.push({ kind: "bind", portal: portalName, bound: portal, replaces, named });
    return f.raw;
  }

  /**
   * Why an Execute of `portal` is refused now, if it is: a portal of a FETCH or EXECUTE that is
   * stale (see Lazy) before it has run, or whose columns must be asked for; its statement is
   * decided again when the bundle has changed since its Bind, or its rules depend on the time (a
   * portal read page by page, or kept open in a transaction, would otherwise go on returning rows a
   * new rule denies).
   */
  private portalRefusal(portal: Portal, name: string): string | undefined {
    const { statements, fingerprint } = portal.statement.classification;
    const refuse = (info: StatementInfo, decision: Decision) => {
      this.refused(info, decision, fingerprint);
      // A statement that never ran: the refusal is its record (not an allowed run of 0 rows).
      if (!portal.executed) portal.refused = true;
      return decision.message;
    };
    const lazy = portal.lazy;
    if (lazy && (!lazy.ran || (portal.fields === undefined && this.planner())) && this.stale(lazy)) {
      const message = `access denied: portal "${name}" ${STALE_PORTAL}`;
      return refuse(statements[0] as StatementInfo, agentDenial(message));
    }
    const bundle = this.ctx.bundles.current();
    // Unless the verdict may have changed with the time: rules with time conditions, an expiry.
    if (
      portal.bundle === bundle &&
      bundle !== undefined &&
      !bundle.policies.timeDependent &&
      this.now() < bundle.notAfter.getTime()
    )
      return undefined;
    for (const info of statements) {
      const decision = this.decide(info);
      if (decision.effect !== "allow") return refuse(info, decision);
    }
    portal.bundle = bundle;
    return undefined;
  }

  /**
   * Counts a message that may run statements (see Lazy); the Execute of a portal of a FETCH or
   * EXECUTE (`own`) leaves that one as current as it was (its later Executes read the rows it keeps).
   */
  private countRun(own: Lazy | undefined): void {
    const current = own !== undefined && !this.stale(own);
    this.runs++;
    if (current) own.since = this.runs;
  }

  /** Counts a Query, Execute or FunctionCall, which may also end a transaction, of Sync cycle `cycle`. */
  private countEnding(own: Lazy | undefined, cycle: number): void {
    this.countRun(own);
    this.lastEndingCycle = cycle;
  }

  /** Whether what a portal of a FETCH or EXECUTE reads may have changed since its Bind (see Lazy). */
  private stale(lazy: Lazy): boolean {
    if (lazy.since !== this.runs) return true;
    for (const l of lazy.lookups)
      if ((l.kind === "cursor" ? this.cursors.get(l.name)?.since : this.preparedSince.get(l.name)) !== l.since)
        return true;
    return false;
  }

  /**
   * A FETCH or MOVE of a stale portal of a FETCH or EXECUTE (see Lazy) is refused: PostgreSQL would
   * describe it by what its names hold now, and may crash doing so when one is gone. So is one after
   * another statement of the same message (`first` false), which may change what they hold.
   */
  private staleFetch(info: StatementInfo, first: boolean): Decision | undefined {
    const name = fetchedName(info);
    const lazy = name === null ? undefined : this.cursors.get(name)?.lazy;
    if (!lazy || (first && !this.stale(lazy))) return undefined;
    return agentDenial(`access denied: portal "${name}" ${STALE_PORTAL}`);
  }

  /**
   * The portal of `infos` reads a cursor or prepared statement it names at its first Execute (a
   * FETCH or EXECUTE): what it looks up, as the agent knows each now (see Lazy). Undefined otherwise.
   */
  private lazyOf(infos: readonly StatementInfo[]): Lazy | undefined {
    const info = infos.length === 1 ? infos[0] : undefined;
    if (!info || (fetchedName(info) === null && !info.execute)) return undefined;
    const lazy: Lazy = { lookups: [], since: this.runs, ran: false };
    this.addLookups(lazy.lookups, infos, 0);
    return lazy;
  }

  /**
   * Adds what `infos` look up by name when they run: the cursor a FETCH reads and what that one, a
   * portal of a FETCH or EXECUTE, looks up; the statement an EXECUTE runs and what its statements
   * look up. Stops past MAX_LOOKUPS.
   */
  private addLookups(out: Lookup[], infos: readonly StatementInfo[], depth: number): void {
    for (const info of infos) {
      const fetched = fetchedName(info);
      if (fetched !== null) {
        const record = this.cursors.get(fetched);
        out.push({ kind: "cursor", name: fetched, since: record?.since });
        if (record?.lazy) out.push(...record.lazy.lookups);
      }
      const executed = info.execute?.name;
      if (executed !== undefined) {
        out.push({ kind: "statement", name: executed, since: this.preparedSince.get(executed) });
        // The depth bounds the work (a Parse of `EXECUTE s` named s names itself).
        if (depth < MAX_LOOKUPS) this.addLookups(out, this.definitionsOf(executed), depth + 1);
      }
      if (out.length > MAX_LOOKUPS) return;
    }
  }

  /** A Bind sure to fail on the target in place of a refused message, whose error becomes `message`. */
  private poisonBind(portal: string, message: string, code = "42501"): Buffer {
    this.push({ kind: "bind", replaceError: this.denialError(message, code) });
    this.skipToSync();
    return serialize.bind({ portal, statement: POISON_STATEMENT, values: [] });
  }

  /**
   * The message just sent in place of a refused one fails on the target, which then ignores every
   * message up to the next Sync: so does the agent from now on (a Bind or Execute of a statement
   * it refused would otherwise be refused and audited again, and a Bind would drop a portal the
   * target keeps).
   */
  private skipToSync(): void {
    this.awaitingSync = true;
  }

  /** What a Bind or Describe of protocol statement `name` sent now finds there if it runs (see `alone`). */
  private protocolStatement(name: string): PreparedStatement | undefined {
    const record = this.statements.get(name);
    return record?.alone?.syncs === this.syncs ? record.alone.statement : record;
  }

  /**
   * What a Bind of statement `name` runs: the protocol statement, or the SQL-prepared one (they share
   * one namespace), or — when the agent has both and cannot tell which the target kept — both
   * merged, refused when either declares, fetches, prepares, executes or changes settings (which
   * one runs decides what the agent must track).
   */
  private boundStatement(name: string): PreparedStatement | undefined {
    const protocol = this.protocolStatement(name);
    const sql = name === "" ? undefined : this.sqlPrepared.get(name);
    if (!sql) return protocol;
    const info = this.preparedInfo(name) as StatementInfo;
    const statement: PreparedStatement = {
      classification: {
        ok: true,
        statements: [info],
        fingerprint: protocol?.classification.fingerprint ?? "",
        cached: false,
      },
      text: protocol?.text ?? sql.text,
    };
    // The SQL record without its PREPARE (binding does not run it again), and the protocol one.
    const { prepare: _prepare, ...sqlInfo } = sql;
    if (protocol?.refusal) statement.refusal = protocol.refusal;
    const both = protocol !== undefined && protocol.classification.statements.length > 0;
    if (both && [sqlInfo, ...protocol.classification.statements].some(changesSession))
      statement.refusal = `access denied: prepared statement "${name}" is claimed by both a SQL PREPARE and a protocol Parse, one of which changes the session; DEALLOCATE it and prepare it again`;
    return statement;
  }

  /**
   * What EXECUTE or a Bind of prepared statement `name` may run: its SQL PREPARE and protocol Parse
   * records merged (either may be the one the target holds after a failed definition), without the
   * PREPARE itself (binding it prepares nothing: afterAllowed must not record it again).
   */
  /** How many unconfirmed definitions the records of prepared statement `name` merge (see merges). */
  private unconfirmedDefinitions(name: string): number {
    const sql = this.sqlPrepared.get(name);
    const protocol = this.statements.get(name);
    return Math.max(sql ? (merges.get(sql) ?? 0) : 0, protocol ? (merges.get(protocol) ?? 0) : 0);
  }

  /**
   * A definition of `name` past MAX_UNCONFIRMED unconfirmed ones is refused (see merges); `before`:
   * the definitions of it earlier in the same message.
   */
  private redefinitionRefusal(name: string, before = 0): string | undefined {
    if (name === "" || this.unconfirmedDefinitions(name) + before < MAX_UNCONFIRMED) return undefined;
    return `access denied: prepared statement "${name}" was defined again ${MAX_UNCONFIRMED} times while the server may still hold an earlier one; wait for the answers, or close it (DEALLOCATE or Close) first`;
  }

  private preparedInfo(name: string): StatementInfo | undefined {
    const sql = this.sqlPrepared.get(name);
    const protocol = name === "" ? [] : (this.statements.get(name)?.classification.statements ?? []);
    if (!sql && protocol.length === 0) return undefined;
    const [first, ...rest] = [...(sql ? [sql] : []), ...protocol] as [StatementInfo, ...StatementInfo[]];
    const { prepare: _prepare, ...info } = rest.reduce(mergeInfos, first);
    return info;
  }

  /**
   * Names the target reads differently: it compares statement and portal names on their first 63
   * bytes (NAMEDATALEN), in its own encoding. The agent keys them by the whole name, read as UTF-8.
   */
  private nameRefusal(name: string): string | undefined {
    if (name.length === 0) return undefined;
    let ascii = true;
    for (let i = 0; i < name.length && ascii; i++) if (name.charCodeAt(i) >= 0x80) ascii = false;
    if (
      ascii
        ? name.length <= MAX_NAME_BYTES
        : this.notUtf8Encoding === undefined && !name.includes("\ufffd") && Buffer.byteLength(name) <= MAX_NAME_BYTES
    )
      return undefined;
    return `access denied: statement and portal names must be at most ${MAX_NAME_BYTES} bytes of ASCII or UTF-8 text through Moat (the server would read "${name.slice(0, 20)}..." differently)`;
  }

  /** A new prepared statement past what a session may keep (MAX_PREPARED) is refused. */
  private preparedRefusal(name: string, text: string): string | undefined {
    if (name === "") return undefined; // one at most, replaced by the next
    const unnamed = this.statements.get("");
    const count = this.statements.size + this.sqlPrepared.size - (unnamed ? 1 : 0);
    const fresh = !this.statements.has(name) && !this.sqlPrepared.has(name);
    const chars = this.statements.chars + this.sqlPrepared.chars - (unnamed?.text.length ?? 0);
    if ((fresh && count >= MAX_PREPARED) || chars + text.length > MAX_PREPARED_CHARS)
      return `access denied: too many prepared statements in this session (at most ${MAX_PREPARED}, ${MAX_PREPARED_CHARS / (1024 * 1024)} Mi characters of text); DEALLOCATE or Close some first`;
    return undefined;
  }

  /** A new cursor or portal name past the number the agent tracks is refused (FETCH masking needs it). */
  private cursorRefusal(name: string): string | undefined {
    if (this.cursors.has(name) || this.cursors.size < MAX_CURSORS) return undefined;
    return `access denied: too many cursors and portals in this session (${MAX_CURSORS}); CLOSE some first`;
  }

  private dropPortal(name: string): void {
    const p = this.portals.get(name);
    if (!p) return;
    this.portals.delete(name);
    this.settlePortalRun(p, "");
  }

  /**
   * Records the run of a portal that is gone (closed, bound again, its transaction over) once no
   * Execute of it is pending: an Execute sent before a Close or a new Bind of the name is recorded
   * when answered (its rows, its error), not when the name was reused (review 22).
   */
  private settlePortalRun(portal: Portal, message: string): void {
    if (portal.pendingExecutes === 0) this.recordPortalRun(portal, message);
  }

  /**
   * Records a portal's run as allowed, unless its Execute was refused before any was sent. One
   * closed while suspended says so: its rows are those the client read, and a write (`INSERT ...
   * RETURNING`, a writable CTE: runsWhole) ran to completion at its first Execute whatever was read
   * of it (review 49).
   */
  private recordPortalRun(portal: Portal, message: string): void {
    if (portal.refused && !portal.executed) return;
    const run = portal.run;
    if (message === "" && run && !run.recorded && run.rows > 0)
      message = runsWhole(run.info)
        ? "closed while suspended: rows counts the rows returned to the client; the statement itself ran to completion at its first Execute"
        : SUSPENDED_READ;
    this.recordRun(run, "allow", message);
  }

  private newRun(info: StatementInfo, text: string, decision: Decision): Run {
    if (!READING_CLASSES.has(info.statementClass)) this.mayHaveTempRelations = true;
    return {
      info,
      text,
      statementClass: this.auditedClass(info),
      tables: decision.tables,
      rule: decision.rule,
      started: performance.now(),
      rows: 0,
      masked: undefined,
      recorded: false,
      redaction: this.redaction(info),
    };
  }

  /**
   * The class the audit trail shows for a statement: EXECUTE's is the prepared statement's, a
   * FETCH of a cursor the agent knows reads (review 49: an investigator looking for writes missed
   * `EXECUTE ins(42)`, recorded as dynamic).
   */
  private auditedClass(info: StatementInfo): StatementInfo["statementClass"] {
    if (info.execute) return this.ranInfo(info).statementClass;
    if (info.cursor?.op === "fetch" && info.cursor.name !== null && this.cursors.get(info.cursor.name)?.onlyReads)
      return "read";
    return info.statementClass;
  }

  /**
   * How a statement is kept in the audit trail (auditRedaction): EXECUTE as the statement it runs
   * (`EXECUTE p('password=...')` of a prepared dblink call).
   */
  private redaction(info: StatementInfo): AuditRedaction {
    const r = auditRedaction(info, info.text);
    // Remembered at the PREPARE's run: an EXECUTE in the same message runs before it is registered.
    // (Bounded: past 1 024 names, every EXECUTE's arguments are redacted.)
    // So is one that sets configuration values from EXECUTE's arguments (whichever of two PREPAREs of
    // the name the target kept: review 52).
    if ((r !== "none" || setsConfig(info, info.text)) && info.prepare && this.secretPrepared.size <= 1024)
      this.secretPrepared.add(info.prepare.name);
    if (r !== "none" || !info.execute) return r;
    if (this.secretPrepared.size > 1024 || this.secretPrepared.has(info.execute.name)) return "literals";
    const prepared = this.preparedInfo(info.execute.name);
    // One setting configuration values takes them from EXECUTE's arguments too (review 51).
    return prepared && takesSecrets(prepared) ? "literals" : "none";
  }

  /** The bundle's verdict for one statement: every action it needs, the strictest wins. */
  private decide(info: StatementInfo): Decision {
    const now = this.now();
    const id = this.ctx.identity;
    const bundle = this.ctx.bundles.current();
    if (bundle?.revokedTokenIds.has(id.tokenId)) {
      queueMicrotask(() => this.terminate("your access token was revoked"));
      return agentDenial("access denied: your access token was revoked");
    }
    if (this.unsafeEncoding !== undefined && !info.lexicalChange) {
      return agentDenial(
        `access denied: client_encoding ${this.unsafeEncoding} is not supported through Moat (its multibyte characters can hide quotes); use UTF8`,
      );
    }
    if (info.prepare?.name.startsWith(RESERVED_PREFIX)) return agentDenial(reservedNameMessage(info.prepare.name));
    let actions: readonly ActionUse[] = info.actions;
    if (info.cursor?.op === "declare" && info.cursor.name !== null) {
      const tooMany = this.cursorRefusal(info.cursor.name);
      if (tooMany) return agentDenial(tooMany);
    }
    if (info.prepare) {
      const tooMany = this.preparedRefusal(info.prepare.name, info.text) ?? this.redefinitionRefusal(info.prepare.name);
      if (tooMany) return agentDenial(tooMany);
    }
    const executed = info.execute && this.statements.get(info.execute.name);
    // (A record merged from two Parses keeps one's fields: its refusal says whether either changes it.)
    if (info.execute && executed && (executed.refusal || executed.classification.statements.some(changesSession))) {
      return agentDenial(
        `access denied: prepared statement "${info.execute.name}" (a protocol Parse) changes the session's names or settings; run it with Bind`,
      );
    }
    const needed = this.neededActions(info);
    if (!needed)
      return agentDenial(
        `access denied: prepared statement "${info.execute?.name ?? ""}" was not prepared through Moat`,
      );
    actions = needed;
    // A statement shape's verdict depends on its actions (one frozen array per cached shape, one per
    // cursor; an EXECUTE's are made anew), the bundle, the search path and whether it shadows
    // pg_catalog: it is kept per session and reused while those stay the same, unless the policies
    // have time conditions (or the bundle expires).
    const cacheable =
      !info.execute && bundle !== undefined && !bundle.policies.timeDependent && now < bundle.notAfter.getTime();
    if (cacheable) {
      const c = this.decisions;
      if (c.bundle !== bundle || c.searchPath !== this.searchPath || c.shadowed !== this.userFunctionsFirst)
        this.decisions = {
          bundle,
          searchPath: this.searchPath,
          shadowed: this.userFunctionsFirst,
          byActions: new WeakMap(),
        };
      const hit = this.decisions.byActions.get(actions);
      if (hit) return hit;
    }
    const decision = this.decideActions(info, actions, now);
    if (cacheable) this.decisions.byActions.set(actions, Object.freeze(decision));
    return decision;
  }

  /**
   * What a statement needs: its own actions; for EXECUTE what the prepared statement does too
   * (undefined when the name was not prepared through Moat); for FETCH or MOVE what its cursor's
   * query needed (a FETCH itself needs nothing): decided again at each FETCH, so a rule that arrived
   * since the DECLARE applies. A name the agent never saw declared (a refcursor a function opened,
   * which took db:function to call) needs nothing more.
   */
  private neededActions(info: StatementInfo): readonly ActionUse[] | undefined {
    if (info.execute) {
      const prepared = this.preparedInfo(info.execute.name);
      // What the prepared statement does, plus what EXECUTE's own arguments call.
      // (Review 60: EXECUTE p(initcap(5)) ran a user's initcap in EXECUTE's own arguments.)
      return (
        prepared &&
        this.withHiddenCalls(
          info,
          this.withHiddenCalls(prepared, [
            ...prepared.actions,
            ...info.actions.filter((a) => a.action !== "db:dynamic"),
          ]),
        )
      );
    }
    if (info.cursor?.op === "fetch" && info.cursor.name !== null)
      return this.cursors.get(info.cursor.name)?.actions ?? info.actions;
    return this.withHiddenCalls(info, info.actions);
  }

  /**
   * `actions`, plus what calling the functions PostgreSQL may run that the text does not name needs
   * (the target catalog's HiddenCalls: attribute notation, a call that may resolve to a user's
   * overload of a built-in, a view or table whose reading calls a user function or a
   * built-in, a cast to a domain or user type): db:function for the database's own, the
   * classifier's verdict for a built-in (`pg_notify`: db:write). The same array when not; for the
   * same catalog answer, the same new array (decisions are cached by it).
   */
  private withHiddenCalls(info: StatementInfo, actions: readonly ActionUse[]): readonly ActionUse[] {
    const calls = this.ctx.catalog?.hiddenCalls(this.ctx.database);
    // (Under a search path that puts a schema first, every statement needs db:function: decideActions.)
    if (!calls || this.userFunctionsFirst) return actions;
    const hidden = hiddenUses(info, calls);
    if (hidden === undefined) return actions;
    const memo = this.hiddenMemo.get(actions);
    if (memo?.calls === calls) return memo.actions;
    const out: ActionUse[] = [...actions];
    for (const h of hidden) {
      const use: ActionUse = { action: h.action, tables: [], functions: [h.name] };
      HIDDEN_USES.set(use, h.reason);
      out.push(use);
    }
    this.hiddenMemo.set(actions, { calls, actions: out });
    return out;
  }

  /** decide's verdict for the statement's actions, once the checks on the session's state are passed. */
  private decideActions(info: StatementInfo, actions: readonly ActionUse[], now: number): Decision {
    const id = this.ctx.identity;
    if (actions.length === 0) {
      if (info.statementClass === "session") return { effect: "allow", rule: "", message: "", tables: [] };
      return agentDenial(info.reason ?? "access denied: the statement could not be classified");
    }
    // Under a search path that puts a schema before pg_catalog, its functions and operators may
    // stand in for the built-ins the text names: every statement may run user functions.
    const shadowed = this.userFunctionsFirst && !actions.some((a) => a.action === "db:function");
    if (shadowed) actions = [...actions, { action: "db:function", tables: [] }];
    if (actions.some((a) => a.action === "db:copy-out") && this.planner() !== undefined) {
      // COPY's output is CopyData, not rows: the agent cannot mask it, so it is not sent at all.
      return agentDenial(
        "access denied: COPY ... TO STDOUT is not available while masking rules apply to you on this resource; use SELECT, whose results are masked",
      );
    }
    let best: Decision | undefined;
    const allTables: string[] = [];
    for (const use of actions) {
      const tables = qualifyTables(use.tables, { searchPath: this.searchPath, user: this.ctx.targetUser });
      for (const t of tables) allTables.push(t);
      const v = this.ctx.bundles.decide({
        user: id.user,
        groups: id.groups,
        serviceAccount: id.serviceAccount,
        resource: this.ctx.resource,
        action: use.action,
        tables: tables.length > 0 ? tables : undefined,
        sourceIp: this.ctx.sourceAddress,
        now,
      });
      // An allowed statement's message is never shown: not built.
      let message = v.effect === "allow" ? "" : v.message;
      if (v.effect !== "allow" && use.action === "db:dynamic" && info.reason) message = `${message}: ${info.reason}`;
      const hidden = HIDDEN_USES.get(use);
      if (v.effect !== "allow" && hidden !== undefined) message = `${message}: ${hidden}`;
      if (v.effect !== "allow" && shadowed && use.action === "db:function")
        message = `${message}: this session's search_path puts a schema before pg_catalog, so its functions and operators may replace the built-ins`;
      if (v.effect === "review")
        message = `${message}; approval is required, and approvals are not available on this agent yet`;
      const rank = v.effect === "deny" ? 3 : v.effect === "review" ? 2 : 1;
      const bestRank = best ? (best.effect === "deny" ? 3 : best.effect === "review" ? 2 : 1) : 0;
      if (rank > bestRank) best = { effect: v.effect, rule: v.rule, message, tables: [] };
      if (rank === 3) break;
    }
    const decision = best as Decision;
    decision.tables = allTables;
    return decision;
  }

  /** Counts and audits a statement the policy refused (deny or review). */
  private refused(info: StatementInfo, decision: Decision, fingerprint: string): void {
    this.ctx.metrics.statement(decision.effect);
    this.recordRefusal(redactFor(info.text, this.redaction(info)), this.auditedClass(info), decision, fingerprint);
  }

  /** Counts and audits a statement the parser could not read (denied as dynamic). */
  private unparsed(text: string, message: string): void {
    this.ctx.metrics.statement("deny");
    // Unread: its text and what the parser's message quotes are kept without what may be a secret.
    const kept = unparsedAuditText(text);
    const safe = redactMessage(message);
    this.recordRefusal(kept, "dynamic", agentDenial(safe), "");
  }

  private recordRefusal(text: string, statementClass: string, decision: Decision, fingerprint: string): void {
    const { effect, rule, message, tables } = decision;
    this.soon({
      verdict: VERDICTS[effect === "review" ? "review" : "deny"],
      rule,
      message,
      query: { text, fingerprint, statementClass, tables, durationUs: 0, rows: 0, maskedColumns: NO_COLUMNS },
    });
  }

  private recordRun(run: Run | undefined, effect: "allow" | "deny", message: string): void {
    if (!run || run.recorded) return;
    run.recorded = true;
    if (message === "" && run.note !== undefined) message = run.note;
    const { params } = run;
    // Bound from a Parse of a name the server may still have held: the text of the one it ran.
    const resolved = run.of?.answered ? settled(run.of) : undefined;
    const resolvedInfo = resolved?.classification.statements[0];
    // Redacted as that statement is, or as the run was when that says nothing: its parameters and
    // its error may be what the client meant for the other (a password for a set_config, review 30).
    const own = resolvedInfo ? this.redaction(resolvedInfo) : "none";
    const redaction = own === "none" ? run.redaction : own;
    const text = redactFor(resolved ? resolved.text : run.text, redaction);
    // The parameters are kept whole within the event's limit: a long text is cut before them, not
    // they with it (review 49).
    // (Themselves at most half of it: the statement stays readable.)
    const half = QUERY_EVENT_LIMITS.text / 2;
    const shown = params === undefined ? undefined : auditParameters(run.info, redaction, params);
    const parameters =
      shown === undefined ? undefined : ` -- parameters: ${shown.length > half ? `${shown.slice(0, half)}…` : shown}`;
    const room = QUERY_EVENT_LIMITS.text - (parameters?.length ?? 0);
    this.soon({
      verdict: VERDICTS[effect],
      rule: run.rule,
      // What a failure quotes may be the secret (`missing "=" after "hunter2"`).
      message: redaction === "none" ? message : redactMessage(message),
      query: {
        text:
          parameters === undefined
            ? text
            : `${text.length > room ? `${text.slice(0, Math.max(0, room - 1))}…` : text}${parameters}`,
        fingerprint: "",
        statementClass: run.statementClass,
        tables: run.tables,
        durationUs: Math.max(0, Math.round((performance.now() - run.started) * 1000)),
        rows: run.rows,
        maskedColumns: run.masked === undefined ? NO_COLUMNS : [...run.masked],
      },
    });
  }

  /** Audits an implicit commit's failure: the commit at a Sync, or at the end of a simple query. */
  private recordCommitFailure(at: "sync" | "query", message: string): void {
    this.recordTransactionEnd(`-- commit ${IMPLICIT_END[at]}`, message);
  }

  /**
   * Audits the rollback of an implicit transaction by an error (a statement's, or the substitute of
   * one the agent refused), or of a transaction the session left open: what the statements recorded
   * as run in it wrote was undone (review 49: `INSERT ...; SELECT 1/0` left an INSERT recorded with
   * a row and nothing saying so).
   */
  private recordRollback(at: keyof typeof IMPLICIT_END, changes: number): void {
    // (Sequences' values, advisory locks and prepared statements stay: not counted.)
    const what = changes === 1 ? "statement" : `${changes} statements`;
    const cause =
      at === "session" ? "the session ended inside a transaction" : "an error ended the implicit transaction";
    this.recordTransactionEnd(
      `-- rollback ${IMPLICIT_END[at]}`,
      `${cause}: what the ${what} before it wrote ${changes === 1 ? "was" : "were"} undone`,
    );
  }

  /** An event about the end of an implicit transaction (no statement of the client's own). */
  private recordTransactionEnd(text: string, message: string): void {
    this.soon({
      verdict: VERDICTS.allow,
      rule: "",
      message,
      query: {
        text,
        fingerprint: "",
        statementClass: "session",
        tables: [],
        durationUs: 0,
        rows: 0,
        maskedColumns: NO_COLUMNS,
      },
    });
  }

  /**
   * Queues a statement's event; the queue is spooled in a microtask, once the relay's writes of the
   * same turn have gone out (the client does not wait for the encoding and hashing of its events).
   */
  private soon(record: QueryRecord): void {
    this.unspooled.push(record);
    if (this.unspooled.length === 1) queueMicrotask(this.spoolQueued);
  }

  private readonly spoolQueued = (): void => {
    const records = this.unspooled;
    if (records.length === 0) return;
    this.unspooled = [];
    // Each event on its own: one that cannot be spooled does not take the others with it.
    let failed: unknown;
    for (const r of records) {
      try {
        this.queries.recordSoon(r);
      } catch (error) {
        failed ??= error;
      }
    }
    if (failed !== undefined) this.auditFailed(failed);
  };

  private auditFailed(error: unknown): void {
    this.ctx.logger.error(
      { err: error, session: this.ctx.sessionId },
      "could not record a query event; ending the session",
    );
    this.terminate(
      "the agent cannot record audit events (its audit spool is full or failing); the session is closed",
      "53100",
    );
  }

  // -------------------------------------------------------------------------------------------
  // Target -> client

  private planner(): MaskPlanner | undefined {
    const bundle = this.ctx.bundles.current();
    const version = bundle?.version ?? 0n;
    if (this.masks?.version === version) return this.masks.planner;
    const id = this.ctx.identity;
    const v = this.ctx.bundles.decide({
      user: id.user,
      groups: id.groups,
      serviceAccount: id.serviceAccount,
      resource: this.ctx.resource,
      action: "connect",
      sourceIp: this.ctx.sourceAddress,
      now: this.now(),
    });
    const planner = compileMasks(v.obligations.mask);
    this.masks = { version, planner };
    return planner;
  }

  /**
   * Where the rows of a run's statement come from, for masking computed columns: EXECUTE and FETCH
   * return what the prepared statement or cursor computes; unknown counts as any column.
   */
  private lineageOf(run: Run | undefined): ResultLineage | undefined {
    const source = run && this.rowSource(run.info);
    return source ? source.result : UNKNOWN_LINEAGE;
  }

  /**
   * What computes a statement's rows: for EXECUTE the prepared statement, for FETCH the cursor,
   * else the statement itself; undefined when the agent does not know it.
   */
  private rowSource(info: StatementInfo): { result?: ResultLineage | undefined; reads?: ColumnSources } | undefined {
    if (info.execute) return this.preparedInfo(info.execute.name);
    if (info.cursor?.op === "fetch") return info.cursor.name === null ? undefined : this.cursors.get(info.cursor.name);
    return info;
  }

  /**
   * Every column a run's statement reads, for deciding whether its error may be shown (see
   * scrubError). A commit runs the queries of WITH HOLD cursors (to keep their rows), and an
   * implicit one comes with any statement (a multi-statement query's last: review 18): what those
   * cursors read counts for every statement until their transaction has ended.
   */
  private readsOf(run: Run | undefined): ColumnSources {
    const info = run?.info;
    if (!info) return ANY_COLUMN;
    let reads: ColumnSources | undefined =
      info.kind === "TransactionStmt" ? info.reads : (this.rowSource(info)?.reads ?? ANY_COLUMN);
    for (const cursor of this.cursors.values())
      if (cursor.hold && cursor.heldAt > this.idleAt) reads = mergeSources(reads, cursor.reads);
    return reads ?? ANY_COLUMN;
  }

  /**
   * The target's error for a statement, as the client may see it under masking rules: an error
   * message can quote a value (`invalid input syntax for type integer: "user5@example.com"` from
   * `email::int`), so when the statement reads a column a rule masks, the message is replaced by one
   * keeping only the SQLSTATE; otherwise the detectors mask what they find in its texts. Undefined:
   * relay it as is.
   */
  private scrubError(raw: Buffer, run: Run | undefined): Buffer | undefined {
    const planner = this.planner();
    if (!planner) return undefined;
    const notice = raw[0] === 0x4e;
    const encode = notice ? noticeResponse : errorResponse;
    const e = decodeErrorFields(raw.subarray(5));
    const severity = e.severity as ErrorInit["severity"];
    // Only an error the server raised analysing the statement's text passes (analysisError): an
    // unknown column or table, quoting the text. A position alone does not prove it: a value parsed
    // at run time fails with one too (`email::regtype`: a syntax error at or near "@", CONTEXT:
    // invalid type name "user5@example.com", review 14).
    if (planner.masksSources(this.readsOf(run)) && !analysisError(e, run?.text ?? "")) {
      // Messages of a fixed text quote nothing: passed as they are, without their context (review 48:
      // drivers read 25P02's and a cancel's).
      if (FIXED_MESSAGES.get(e.code)?.has(e.message)) return encode({ severity, code: e.code, message: e.message });
      const what = notice ? `the target sent a ${e.severity || "notice"}` : "the statement failed on the target";
      return encode({
        severity,
        code: e.code,
        message: `${what} (SQLSTATE ${e.code}); the server's message is withheld because the statement reads columns masked for you`,
      });
    }
    const texts = [e.message, e.detail, e.hint, e.where];
    const masked = texts.map((t) => (t === undefined ? t : planner.maskText(t)));
    if (masked.every((t, i) => t === texts[i])) return undefined;
    return encode({
      severity,
      code: e.code,
      message: masked[0] ?? "",
      ...(masked[1] !== undefined ? { detail: masked[1] } : {}),
      ...(masked[2] !== undefined ? { hint: masked[2] } : {}),
    });
  }

  /**
   * Whether a run's rows can only come from the system catalogs: a read (no user function, nothing
   * dynamic) of pg_catalog and information_schema relations alone, under a search path that finds
   * built-ins first. Column rules do not apply to such rows (ColumnInfo.catalog): drivers and tools
   * read metadata with complex queries whose labels (`name`, `kind`) rules may name.
   */
  private readsSystemCatalogsOnly(run: Run | undefined): boolean {
    const info = run?.info;
    if (!info || info.execute || info.cursor || info.statementClass !== "read" || this.userFunctionsFirst) return false;
    // PostgreSQL looks a relation name up in the session's pg_temp schema before pg_catalog: a
    // temporary view named pg_am would read users' columns (review 44). Only a session that has run
    // nothing but reads can have none.
    if (this.mayHaveTempRelations) return false;
    if (info.tables.length === 0) return false;
    return qualifyTables(info.tables, { searchPath: this.searchPath, user: this.ctx.targetUser }).length === 0;
  }

  private startResult(fields: RowField[] | undefined, run: Run | undefined): void {
    this.planMasks = this.planner();
    const planner = fields ? this.planMasks : undefined;
    if (!planner || !fields) {
      this.plan = undefined;
      return;
    }
    const { catalog, database } = this.ctx;
    const lineage = this.lineageOf(run);
    const systemOnly = this.readsSystemCatalogsOnly(run);
    this.plan = planner.plan(
      fields.map((f, i) => {
        const source = f.tableOid !== 0 ? catalog?.lookup(database, f.tableOid, f.columnNumber) : undefined;
        const column: ColumnInfo = { name: f.name, typeOid: f.typeOid, format: f.format === 1 ? 1 : 0 };
        if (systemOnly) column.catalog = true;
        if (source) {
          column.table = { schema: source.schema, name: source.table };
          column.sourceColumn = source.column;
        } else if (lineage) {
          // A computed column (or one whose table is unknown): masked if it may hold a masked column.
          column.derivedFrom = columnSources(lineage, i, fields.length);
        }
        return column;
      }),
      // The audit names the columns whose values were masked (review 41: every column a detector
      // rule reached was named, `count`, `pg_sleep`).
      run ? (label) => (run.masked ??= new Set()).add(label) : undefined,
    );
  }

  private push(p: Pending): void {
    this.pending.push(p);
    if (p.kind === "execute" && p.portal) p.portal.pendingExecutes++;
    if (this.pending.length === 1 && p.kind === "execute" && p.portal) this.startResult(p.portal.fields, p.portal.run);
  }

  /** Drops the oldest pending response; an Execute reaching the head sets up its result's masking. */
  private shift(): void {
    const p = this.pending.shift();
    if (this.pendingFull && this.pending.length <= MAX_PENDING / 2) {
      this.pendingFull = false;
      // What the client sent meanwhile is handled after this answer (not inside its handling).
      this.relayAfterAnswer();
    }
    if (p?.kind === "query" && p.lexical) this.lexicalInFlight--;
    if (p?.kind === "execute" && p.portal) p.portal.pendingExecutes--;
    if (this.terminated && this.pending.length === 0) this.afterTerminate();
    this.plan = undefined;
    const head = this.pending.first;
    if (head?.kind === "execute" && head.portal) this.startResult(head.portal.fields, head.portal.run);
  }

  private maskRow(raw: Buffer): Buffer[] | undefined {
    const plan = this.plan as ResultPlan;
    const masked = replaceDataRowValues(raw, plan.isPlanned, plan.maskValue);
    return masked === undefined ? undefined : [masked];
  }

  /**
   * Whether a result's columns must be looked up in the catalog before it can be masked (masking
   * applies and some of its tables are not known yet). If so, starts the lookup and pauses the
   * target; the relay resumes with the same RowDescription once it is done.
   */
  private awaitCatalog(fields: RowField[]): boolean {
    const catalog = this.ctx.catalog;
    if (!catalog || this.planner() === undefined) return false;
    const missing = catalog.missing(
      this.ctx.database,
      fields.map((f) => f.tableOid),
    );
    if (missing.length === 0) return false;
    this.target.pause();
    catalog.resolve(this.ctx.database, missing).then(
      () => this.resumeRelay(),
      (error: unknown) => this.fail(error, "cannot look up the result's columns for masking"),
    );
    return true;
  }

  private resumeRelay(): void {
    if (this.closed) return;
    try {
      this.scanner.resume();
    } catch (error) {
      this.fail(error, "the target sent an invalid message");
      return;
    }
    if (!this.scanner.isHeld && !this.clientBlocked) this.target.resume();
  }

  private onServerMessage(type: number, raw: Buffer): Buffer[] | undefined | typeof HOLD {
    switch (type) {
      case 0x44: {
        // DataRow. Masking rules that arrived while an Execute runs apply to its next rows (review
        // 17): its plan is made again from the portal's columns (looked up first if need be).
        const head = this.pending.first;
        if (this.replanNeeded() && head?.kind === "execute" && head.portal) {
          const fields = head.portal.fields;
          if (fields && this.awaitCatalog(fields)) return HOLD;
          this.startResult(fields, head.portal.run);
        }
        this.rowsSeen++;
        if (!this.plan && !this.rowsExpected()) throw lostTrack();
        if (!this.plan && this.unmaskable()) throw unmaskableRows();
        return this.plan ? this.maskRow(raw) : undefined;
      }
      case 0x54: {
        // RowDescription
        const head = this.pending.first;
        const planner = this.planner();
        if (head?.kind !== "query" && head?.kind !== "describe" && planner) throw lostTrack();
        // Columns matter only for masking: a query's are read only under masking rules; a portal's
        // always (once per Describe), since rules may arrive before its pipelined Execute runs
        // (review 16: the Execute, read before them, would have no columns to mask by).
        const fields = planner || head?.kind === "describe" ? decodeRowDescription(raw.subarray(5)) : undefined;
        if (fields && this.awaitCatalog(fields)) return HOLD;
        if (head?.kind === "describe") {
          // Only to the portal described: one bound since under that name (pipelined behind the
          // Describe) is described again before its rows are masked.
          if (head.portal) head.portal.fields = fields;
          this.shift();
          return head.injected ? [] : undefined;
        }
        if (head?.kind === "query") {
          const run = head.runs[head.index];
          // Rows for a statement that returns none: the agent has lost track of what answers what
          // (a safety net under the bookkeeping: review 39's desyncs showed as rows of a SET).
          if (run && NO_ROWS.has(run.info.kind)) throw lostTrack();
          this.startResult(fields, run);
        }
        return undefined;
      }
      case 0x6e: {
        // NoData
        const head = this.pending.first;
        if (head?.kind === "describe") {
          this.shift();
          return head.injected ? [] : undefined;
        }
        return undefined;
      }
      case 0x41: {
        // NotificationResponse: a payload is text another session (a trigger) chose; the detectors
        // mask what they find in it, as in error messages (review 14). Column rules cannot apply.
        const planner = this.planner();
        const pid = raw.readInt32BE(5);
        const shown = this.ctx.clientProcessId?.(pid) ?? pid;
        if (!planner && shown === pid) return undefined;
        const n = decodeNotification(raw.subarray(5));
        const payload = planner ? planner.maskText(n.payload) : n.payload;
        return payload === n.payload && shown === pid ? undefined : [notificationResponse(shown, n.channel, payload)];
      }
      case 0x74: // ParameterDescription: part of Describe S; RowDescription or NoData follows.
        return undefined;
      case 0x33: {
        // CloseComplete
        const head = this.pending.first;
        if (head?.kind === "close") {
          head.closed = true;
          if (head.statement !== undefined) this.forgetPrepared(head.statement, head.upTo ?? 0);
          // Closing a portal closes whatever cursor holds the name (a SQL one too).
          if (head.portal !== undefined) this.forgetCursor(head.portal, head.upTo ?? 0);
        }
        this.shift();
        return undefined;
      }
      case 0x31: {
        // ParseComplete: the name holds this Parse's statement alone.
        const head = this.pending.first;
        if (
          head?.kind === "parse" &&
          head.name !== undefined &&
          head.confirmed &&
          head.set &&
          head.set !== head.confirmed
        ) {
          head.set.answered = { held: head.confirmed };
          if (this.statements.get(head.name) === head.set) this.statements.set(head.name, head.confirmed);
        }
        this.shift();
        return undefined;
      }
      case 0x32: {
        // BindComplete: the portal of a FETCH or EXECUTE the name held before is gone on the target.
        const head = this.pending.first;
        if (head?.kind === "bind") this.confirmCursor(head.named);
        if (head?.kind === "bind" && head.portal !== undefined && head.replaces && !head.bound?.lazy) {
          const record = this.cursors.get(head.portal);
          if (record?.lazy === head.replaces) record.lazy = undefined;
        }
        this.shift();
        return undefined;
      }
      case 0x43: // CommandComplete
      case 0x49: {
        // EmptyQueryResponse
        // The end of a transaction block (COMMIT answers "ROLLBACK" when its transaction had failed;
        // so does ROLLBACK TO, which ends none; AND CHAIN starts the next at once).
        let ended: { committed: boolean; at: number } | undefined;
        if (type === 0x43 && (raw.length === 12 || raw.length === 14)) {
          const run = this.headRun();
          const committed = raw.equals(COMMIT_COMPLETE);
          if ((committed || raw.equals(ROLLBACK_COMPLETE)) && run?.sentAt !== undefined && !run.info.savepoint)
            ended = { committed, at: run.sentAt };
          // A COMMIT of a failed transaction block: PostgreSQL rolled it back (review 51).
          if (!committed && run && ENDS_BLOCK.test(run.text)) run.note = ROLLED_BACK_AT_COMMIT;
        }
        const tagged = type === 0x43 ? commandCompleteRows(raw) : 0;
        this.completeStatement(tagged ?? this.rowsSeen);
        if (ended) this.transactionEnded(ended.committed, ended.at);
        this.rowsSeen = 0;
        return undefined;
      }
      case 0x56: // FunctionCallResponse: a fast-path call's result (onFunctionCall)
        this.completeStatement(0);
        return undefined;
      case 0x73: {
        // PortalSuspended: the portal stays open for more Executes.
        const head = this.pending.first;
        if (head?.kind === "execute") {
          const portal = head.portal;
          // A write with RETURNING ran whole at its first Execute: a change of this transaction.
          if (portal?.run && portal.run.rows === 0 && runsWhole(portal.run.info)) this.noteChange(portal.run);
          if (portal?.run) portal.run.rows += this.rowsSeen;
          if (portal?.lazy) portal.lazy.ran = true;
          this.shift();
          if (portal && this.portals.get(head.portalName) !== portal) this.settlePortalRun(portal, "");
        }
        this.rowsSeen = 0;
        return undefined;
      }
      case 0x45: // ErrorResponse
        return this.onServerError(raw);
      case 0x4e: {
        // NoticeResponse: like an error message, it can quote a value (`to_tsquery` of a column).
        const scrubbed = this.scrubError(raw, this.headRun());
        return scrubbed ? [scrubbed] : undefined;
      }
      case 0x5a: {
        // ReadyForQuery
        this.status = String.fromCharCode(raw[5] as number) as TransactionStatus;
        let ending: "sync" | "query" = "sync";
        while (this.pending.length > 0) {
          const p = this.pending.first as Pending;
          this.shift();
          // A Query whose COPY never ran (an earlier statement of it failed).
          if (p === this.heldFor) this.settleHeldSyncs(!this.heldCopyStarted || !this.heldSyncsData);
          if (p.startsCopy && p.kind === "query") this.closeCopySpan(p);
          if (p.kind === "sync" || p.kind === "query") {
            ending = p.kind;
            break;
          }
        }
        this.plan = undefined;
        this.rowsSeen = 0;
        this.cyclesDone++;
        if (this.waitingCycle && this.cyclesDone >= this.cyclesSent) {
          // What a read-only session's client sent next goes on, after this answer (see nextFrame).
          this.waitingCycle = false;
          this.relayAfterAnswer();
        }
        // Portals do not outlive their transaction (a SQL cursor may take the name next); one bound
        // in a later Sync cycle (pipelined behind this one) is not this transaction's.
        if (this.status === "I") {
          const failed = this.transactionFailed;
          const since = this.idleAt;
          // An implicit transaction that failed undid what ran in it before the error (the agent's
          // refusal of a later statement included: its substitute fails on the target); said after
          // the events of its portals, recorded as they close here.
          const undone = failed && !this.undoRecorded ? this.changesInTransaction : 0;
          this.changesInTransaction = 0;
          this.undoRecorded = false;
          this.transactionFailed = false;
          this.savepoints = [];
          this.idleAt = this.cyclesDone;
          for (const [name, portal] of [...this.portals]) if (portal.cycle < this.cyclesDone) this.dropPortal(name);
          if (undone > 0) this.recordRollback(ending, undone);
          // Cursors without WITH HOLD and protocol portals end with their transaction: names free;
          // WITH HOLD ones declared in it too when it did not commit.
          for (const [name, cursor] of this.cursors)
            if (
              cursor.hold
                ? failed && cursor.heldAt > since && cursor.heldAt <= this.cyclesDone
                : cursor.cycle < this.cyclesDone
            )
              this.cursors.delete(name);
        }
        // (After this ReadyForQuery has reached the client: its statement's answer is complete.)
        if (this.draining !== undefined) queueMicrotask(() => this.endIfDrained());
        return undefined;
      }
      case 0x53: {
        // ParameterStatus
        const p = decodeParameterStatus(raw.subarray(5));
        if (p.name === "default_transaction_read_only" && this.ctx.readOnly === true && p.value !== "on") {
          // The read-only backstop was turned off by something the agent does not see (a view or a
          // function calling set_config: review 62); a SET of it is denied. Its next transaction
          // could write: the session ends before the client hears of the change.
          this.ctx.logger.warn(
            { session: this.ctx.sessionId },
            "a statement turned a read-only session's default_transaction_read_only off: the session is ended",
          );
          this.terminate(
            "access denied: this session is read-only, and a statement turned default_transaction_read_only off (through a function or view that calls set_config): the session is ended",
            "42501",
          );
          return undefined;
        }
        this.trackParameter(p.name, p.value);
        return undefined;
      }
      case 0x47: // CopyInResponse
        if (this.heldFor !== undefined && this.pending.first === this.heldFor) this.heldCopyStarted = true;
        return undefined;
      case 0x48: // CopyOutResponse
      case 0x57: // CopyBothResponse
        return undefined;
      default:
        return undefined;
    }
  }

  /** A Sync sent to the target: its ReadyForQuery awaited. */
  private noteSync(): void {
    // Unless surely inside a transaction block, it may end a transaction (the implicit one, or a
    // block a COMMIT in flight ends), closing the cursors a function opened (see Lazy). Sure: the
    // last ReadyForQuery said so, no other cycle is in flight, and nothing that can end a
    // transaction (Query, Execute, FunctionCall) was sent in this one.
    if (this.status === "I" || this.cyclesSent - this.cyclesDone !== 1 || this.lastEndingCycle === this.cyclesSent)
      this.countRun(undefined);
    this.syncs++;
    if (this.closingInCycle.size > 0) this.closingInCycle.clear();
    this.push({ kind: "sync" });
  }

  /** `entry` (a Query or Execute) runs COPY ... FROM STDIN `copies` times: a span opens (see copySpan). */
  private openCopySpan(entry: Pending, copies: number): void {
    if (copies === 0) return;
    entry.startsCopy = true;
    this.copyEntry = entry;
    this.copySpan = copies;
    this.copyMany = copies > 1;
    this.copySpanData = false;
  }

  /** A client message in a COPY's span: COPY data, Flush, Terminate, and Sync before any data. */
  private checkCopyMessage(type: number): void {
    if (type === 0x64 || type === 0x63 || type === 0x66 || type === 0x48 || type === 0x58) return;
    if (type === 0x53) {
      if (!this.copySpanData && !this.copyMany) return;
      throw new ProtocolError(SYNC_IN_COPY);
    }
    throw new ProtocolError(
      `unexpected message type '${String.fromCharCode(type)}' during COPY FROM STDIN: end the COPY with CopyDone or CopyFail first`,
    );
  }

  /**
   * The COPY of the held Syncs is over: if the target left it before reading them (it failed, or
   * never started, with no data sent after them) it answers them: sent now; otherwise it read them
   * as part of the COPY and ignored them: dropped. (A COPY that fails after its CopyInResponse but
   * before reading data, on a view or in a statement trigger, while the client had already sent
   * data, is taken for one failing on the data: the client then waits for a ReadyForQuery that
   * never comes. Nothing is misattributed.)
   */
  private settleHeldSyncs(answered: boolean): void {
    const n = this.heldSyncs;
    this.heldSyncs = 0;
    this.heldSyncsData = false;
    this.heldCopyStarted = false;
    this.copyFailed = false;
    this.heldFor = undefined;
    if (answered && n > 0 && !this.closed) {
      for (let i = 0; i < n; i++) {
        this.cyclesSent++;
        this.noteSync();
      }
      this.target.write(n === 1 ? SYNC : Buffer.concat(Array.from({ length: n }, () => SYNC)));
    }
    if (this.waitingSettle) {
      this.waitingSettle = false;
      // What the client sent after its CopyDone goes on, after this answer is handled.
      this.relayAfterAnswer();
    }
  }

  /**
   * Relays what the client sent while it waited (the pending cap, a read-only session's unanswered
   * cycle, a COPY's outcome), once the target's answer being handled now is (a microtask): unless
   * the session ended, a message is held for classification or another COPY's outcome is awaited
   * (as onClientData does not relay then).
   */
  private relayAfterAnswer(): void {
    queueMicrotask(() => {
      if (this.closed || this.held !== undefined || this.waitingSettle) return;
      this.relayClient(undefined);
      this.readOnAfterWait();
    });
  }

  /**
   * Reading from the client waits: a message is held for its classification, a COPY's outcome, the
   * pending cap's room or a read-only session's unanswered cycle is awaited.
   */
  private get clientWaits(): boolean {
    return this.held !== undefined || this.waitingSettle || this.pendingFull || this.waitingCycle;
  }

  /**
   * After what waited has been relayed (a message held for its classification, or what followed a
   * COPY's CopyDone): unless something holds the client again, the session ends if it closed
   * meanwhile (endAfterHold), else reading from it resumes.
   */
  private readOnAfterWait(): void {
    if (this.closed || this.clientWaits) return;
    if (this.endAfterHold !== undefined) this.end(this.endAfterHold);
    else if (this.clientEnded) this.afterClientEnd();
    else if (!this.targetBlocked && !this.pendingFull) this.client.resume();
  }

  /** Whether `entry` is queued in the cycle answered now (no Sync or other Query queued before it). */
  private inCycleOf(entry: Pending): boolean {
    for (let i = 0; i < this.pending.length; i++) {
      const p = this.pending.at(i) as Pending;
      if (p === entry) return true;
      if (p.kind === "sync" || p.kind === "query") return false; // a Query is a cycle of its own
    }
    return false;
  }

  /** The target is done with the COPY that opened the span (failed, or never started). */
  private closeCopySpan(entry: Pending): void {
    if (this.copyEntry !== entry) return;
    this.copyEntry = undefined;
    this.copySpan = 0;
    this.copyMany = false;
    this.copySpanData = false;
  }

  /**
   * Whether rows may come now: the answer expected next is a Query's or an Execute's. Rows at any
   * other time mean the agent lost track of what the target answers; under masking rules they could
   * be relayed unmasked, so they end the session instead (see lostTrack).
   */
  private rowsExpected(): boolean {
    const kind = this.pending.first?.kind;
    return kind === "query" || kind === "execute" || this.planner() === undefined;
  }

  /**
   * Whether the rows coming now answer an Execute of a portal whose columns the agent does not know
   * while masking rules apply: rules that arrived after the Execute was sent (an Execute sent under
   * them is preceded by a Describe of its portal). Such rows cannot be masked: the session ends.
   */
  private unmaskable(): boolean {
    const head = this.pending.first;
    return head?.kind === "execute" && head.portal?.fields === undefined && this.planner() !== undefined;
  }

  /** Whether the masking rules changed since the plan of the Execute answered now was made. */
  private replanNeeded(): boolean {
    return this.pending.first?.kind === "execute" && this.planner() !== this.planMasks;
  }

  /** The statement whose answer comes next from the target. */
  private headRun(): Run | undefined {
    const head = this.pending.first;
    if (head?.kind === "query") return head.runs[head.index];
    return head?.kind === "execute" ? head.portal?.run : undefined;
  }

  private completeStatement(rows: number): void {
    const head = this.pending.first;
    this.plan = undefined;
    // A COPY that succeeded read the Syncs held in its span as part of it, ignoring them.
    if (head !== undefined && head === this.heldFor && copiesFromClient(this.headRun()?.info))
      this.settleHeldSyncs(false);
    if (head?.kind === "query") {
      const run = head.runs[head.index++];
      if (run) {
        run.rows = rows;
        this.recordRun(run, "allow", "");
        this.afterSucceeded(run);
      }
      return;
    }
    if (head?.kind === "execute") {
      this.shift();
      if (head.portal?.lazy) head.portal.lazy.ran = true;
      const run = head.portal?.run;
      if (run) {
        run.rows += rows;
        this.recordRun(run, "allow", "");
        this.afterSucceeded(run);
      }
    }
  }

  private onServerError(raw: Buffer): Buffer[] | undefined {
    const fields = decodeErrorFields(raw.subarray(5));
    if (fields.severity === "FATAL" || fields.severity === "PANIC") this.targetSaidFatal = true;
    const head = this.pending.first;
    // An error ends the target's COPY (it answers Syncs again), or means the COPY will not run (an
    // earlier statement of its Query, or message of its Sync cycle, failed: the target skips to the
    // next Sync, which may be one held back), and fails the transaction.
    // Answered if the COPY failed before reading them: not if data came after them, nor when the
    // client's CopyFail failed it (57014: read after them; review 40).
    // A COPY that never started (no CopyInResponse: its Bind or Execute failed) read nothing: the
    // held Syncs are answered whatever data came after them (review 61: a ReadyForQuery was lost).
    if (this.heldFor && this.inCycleOf(this.heldFor))
      this.settleHeldSyncs(
        !this.heldCopyStarted || (!this.heldSyncsData && !(this.copyFailed && isCopyFailError(raw))),
      );
    if (this.copyEntry && this.inCycleOf(this.copyEntry)) this.closeCopySpan(this.copyEntry);
    this.transactionFailed = true;
    this.plan = undefined;
    // Rows relayed before the statement failed reached the client: they count (review 49: a query
    // ending in `UNION ALL SELECT 1/0` recorded none of the rows it returned).
    const relayed = this.rowsSeen;
    this.rowsSeen = 0;
    if (!head) return undefined; // asynchronous (FATAL from the target): relay as is
    const run = this.headRun();
    if (run) run.rows += relayed;
    // A statement's own failure, possibly quoting a masked value (not a refusal the agent made up).
    // With no statement at hand, an error at a Sync or after a query's statements is a commit's (a
    // WITH HOLD cursor's query): scrubbed as reading anything.
    const atCommit = head.kind === "sync" || head.kind === "query";
    // A query's own replacement is for the error of its POISON, after its statements (a statement
    // before it that fails on the target is that statement's error).
    const own = "replaceError" in head && !(head.kind === "query" && run) ? head.replaceError : undefined;
    let replace = own ?? (run || atCommit ? this.scrubError(raw, run) : undefined);
    // The read-only session refused a write the statement's text did not show (a function it calls
    // implicitly, a view's function, a trigger): Moat's denial, told as one (42501) and recorded as one.
    const refused = !own && this.ctx.readOnly === true && fields.code === "25006";
    if (refused) replace = readOnlyRefusal(replace ?? raw);
    const effect = refused ? "deny" : "allow";
    if (refused && run) run.rule = "";
    const failed = () => `failed on the target: ${decodeErrorFields((replace ?? raw).subarray(5)).message}`;
    // A commit that fails (a deferred constraint, a serialization failure, a WITH HOLD cursor's
    // query) undoes the transaction whose statements were recorded as run: the trail says so (a
    // failed COMMIT statement, in its own event).
    const commitFailed = !run && atCommit && !("replaceError" in head && head.replaceError);
    if (commitFailed || (run?.info.kind === "TransactionStmt" && ENDS_BLOCK.test(run.text))) this.undoRecorded = true;
    if (commitFailed) {
      // After the statements it undid: portals of this transaction still open (suspended) are
      // recorded first, not those bound in a later Sync cycle (pipelined behind this one).
      for (const p of this.portals.values()) if (p.cycle <= this.cyclesDone) this.recordPortalRun(p, "");
      this.recordCommitFailure(head.kind, failed());
    }
    if (head.kind === "query") {
      if (run) {
        head.runs.length = head.index; // the rest of the message does not run
        this.recordRun(run, effect, failed());
      }
    } else {
      // An Execute of a portal the target has dropped (its transaction ended) after earlier ones
      // returned its rows: the statement ran; this Execute read nothing.
      // (Its portal was bound in an earlier Sync cycle than this one: not the statement's own 34000.)
      const gone =
        head.kind === "execute" &&
        run !== undefined &&
        run.rows > 0 &&
        head.portal !== undefined &&
        head.portal.cycle < this.cyclesDone &&
        portalGone(raw, head.portalName);
      if (run) this.recordRun(run, effect, gone ? "" : failed());
      // After an error the target ignores everything up to Sync: Parses it skipped created nothing.
      while (this.pending.length > 0 && this.pending.first?.kind !== "sync") {
        const p = this.pending.first as Pending;
        // (Only if the name still holds what it set: of two Parses of a name, the later one's record
        // is the first's, merged.)
        // (A Close of the name that ran before it left the server nothing under the name.)
        if (p.kind === "parse" && p.name !== undefined) {
          const held = p.closing?.closed ? undefined : settled(p.previous);
          if (p.set && p.set !== p.confirmed) p.set.answered = { held };
          if (this.statements.get(p.name) === p.set) {
            if (held) this.statements.set(p.name, held);
            else this.statements.delete(p.name);
          }
        }
        // Nor did Binds (the failed one included): the name may be a cursor's (WITH HOLD) there.
        // Their statements never ran.
        if (p.kind === "bind" && p.portal !== undefined) {
          if (p.bound?.run) this.recordRun(p.bound.run, "allow", p === head ? failed() : SKIPPED);
          if (this.portals.get(p.portal) === p.bound) this.dropPortal(p.portal);
        }
        if (p.kind === "query") this.cyclesSent--; // skipped: no ReadyForQuery for it
        this.shift();
        // An Execute skipped of a portal already gone: recorded now (the rows it had, if any).
        if (p.kind === "execute" && p.portal && this.portals.get(p.portalName) !== p.portal)
          this.settlePortalRun(p.portal, p.portal.run?.rows ? "" : SKIPPED);
      }
      // No Sync sent yet: the target ignores what comes until the client sends one.
      if (this.pending.length === 0) this.awaitingSync = true;
    }
    return replace ? [replace] : undefined;
  }

  private trackParameter(name: string, value: string): void {
    if (name === "standard_conforming_strings") this.standardConformingStrings = value !== "off";
    if (name === "server_encoding") this.serverEncoding = normalizeEncoding(value);
    if (name === "client_encoding") {
      this.clientEncoding = normalizeEncoding(value);
      this.unsafeEncoding = isSafeEncoding(value) ? undefined : value;
      // SQL_ASCII converts nothing: the server reads the bytes in its own encoding, and a SQL_ASCII
      // server keeps them as bytes (the same names as the agent's UTF-8 reading, when they are UTF-8).
      const reads = normalizeEncoding(value) === "SQL_ASCII" ? this.serverEncoding : normalizeEncoding(value);
      this.notUtf8Encoding = reads === "UTF8" ? undefined : value;
      this.bytesEncoding = reads === "SQL_ASCII";
    }
  }
}

/** An ErrorResponse is the server's for an Execute of a portal it does not have. */
function portalGone(raw: Buffer, portal: string): boolean {
  const e = decodeErrorFields(raw.subarray(5));
  return e.code === "34000" && e.message === `portal "${portal}" does not exist`;
}

/**
 * The buffers as one view when each starts where the previous ends in the same memory (messages
 * forwarded as the client sent them, e.g. pgbench's Parse, Bind, Describe, Execute and Sync): one
 * plain write in place of a corked writev of each. Undefined otherwise.
 */
function adjacent(parts: Buffer[]): Buffer | undefined {
  const first = parts[0] as Buffer;
  let end = first.byteOffset + first.length;
  for (let i = 1; i < parts.length; i++) {
    const b = parts[i] as Buffer;
    if (b.buffer !== first.buffer || b.byteOffset !== end) return undefined;
    end += b.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}
