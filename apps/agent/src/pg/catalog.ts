/**
 * Where result columns come from, for masking: a RowDescription names each column's table by OID
 * and position (for plain column references, aliased or not); the agent asks the target's catalog
 * what those are, over a connection of its own per database, and caches the answer.
 *
 * Resolution is asked for only while masking rules apply to a session, and only for table OIDs not
 * seen recently, so results of unmasked sessions never wait for it.
 */
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { decodeDataRow, decodeErrorFields, serialize } from "@moat/pg-wire";
import type { TargetConnection } from "./target.js";

export interface SourceColumn {
  schema: string;
  table: string;
  column: string;
}

interface TableEntry {
  schema: string;
  table: string;
  columns: Map<number, string>;
  resolvedAt: number;
}

/**
 * What the target's catalog says about functions PostgreSQL may call without the statement naming
 * them, which the classifier cannot know from the text: a function of one argument is called by
 * attribute notation (`t.f` is `f(t)` when `t` has no column `f`), a user's function or operator
 * named like a built-in by an ordinary-looking call (`lower(5)` runs `public.lower(int)`, `1 || 2` a
 * `public.||(int, int)`), reading a view, or a table with a SELECT or ALL row-level security
 * policy, calls the functions they use, directly, through operators and aggregates, through the
 * views and tables they read and through the types they use (a user function whatever its
 * volatility: a STABLE one may call a writing one; a built-in or an extension's unless IMMUTABLE:
 * `pg_notify`, `pg_terminate_backend`, `table_to_xml`, `dblink_exec`), and a value cast to a domain,
 * or to any type holding one (arrays, composites, table and view rows, ranges), runs its CHECK
 * constraints; a cast to a user type its cast function. Names only, in any schema (fail closed). Extensions' functions
 * count as built-ins where a statement names them (the classifier decides those), except by
 * attribute notation (`('...'::text).dblink_exec` runs dblink_exec).
 */
export interface HiddenCalls {
  /** Functions outside pg_catalog callable with one argument (extensions' only when no built-in has the name). */
  rowFunctions: ReadonlySet<string>;
  /** User functions named like one of pg_catalog's. */
  shadowing: ReadonlySet<string>;
  /** User operators named like one of pg_catalog's. */
  operators: ReadonlySet<string>;
  /** Relations whose reading calls a user function: views, tables with policies. */
  relations: ReadonlySet<string>;
  /** Relations whose reading calls built-in or extension functions that are not IMMUTABLE: their names. */
  relationCalls: ReadonlyMap<string, readonly string[]>;
  /**
   * Types a cast to which calls functions: their names, `own` for the database's own functions
   * (any volatility), else built-in or extension ones that are not IMMUTABLE.
   */
  typeCalls: ReadonlyMap<string, readonly { name: string; own: boolean }[]>;
}

const EXTENSION_MEMBER = (catalog: string, oid: string) =>
  `EXISTS (SELECT FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.${catalog}'::pg_catalog.regclass ` +
  `AND e.objid = ${oid} AND e.deptype = 'e')`;
const NOT_BUILTIN_SCHEMA = "n.nspname NOT IN ('pg_catalog', 'information_schema')";
const PROC = "'pg_catalog.pg_proc'::pg_catalog.regclass";
const CLASS = "'pg_catalog.pg_class'::pg_catalog.regclass";
/** The function OIDs an expression tree (pg_node_tree as text) calls: functions, operators, aggregates, window functions. */
const CALLED = `E':(?:funcid|opfuncid|aggfnoid|winfnoid) (\\\\d+)'`;

const REWRITE = "'pg_catalog.pg_rewrite'::pg_catalog.regclass";
const POLICY = "'pg_catalog.pg_policy'::pg_catalog.regclass";
const CONSTRAINT = "'pg_catalog.pg_constraint'::pg_catalog.regclass";
const TYPE = "'pg_catalog.pg_type'::pg_catalog.regclass";

/** The query behind HiddenCalls: rows of (kind, name, function). PostgreSQL 11 and later (prokind). */
const HIDDEN_CALLS_SQL =
  // Planned as costly, the query would be JIT-compiled: seconds of the target's CPU for nothing
  // (measured: 2.9 s instead of 0.3 s on 2 500 views).
  "SET jit = off; " +
  "WITH RECURSIVE " +
  "fn AS (SELECT p.oid, p.proname, p.prokind <> 'p' AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 AS one_arg, " +
  `${EXTENSION_MEMBER("pg_proc", "p.oid")} AS ext FROM pg_catalog.pg_proc p ` +
  `JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE ${NOT_BUILTIN_SCHEMA}), ` +
  "builtin AS (SELECT proname FROM pg_catalog.pg_proc WHERE pronamespace = 'pg_catalog'::pg_catalog.regnamespace), " +
  "own AS (SELECT oid FROM fn WHERE NOT ext), " +
  // What reading a relation runs: a view's ON SELECT rule (not a materialized view's: reading one
  // runs nothing), a policy for SELECT or ALL (review 64: INSERT policies and ON INSERT rules
  // counted), with what their expressions reference.
  "deps AS (SELECT r.ev_class AS rel, d.refclassid, d.refobjid FROM pg_catalog.pg_depend d " +
  "JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid JOIN pg_catalog.pg_class v ON v.oid = r.ev_class " +
  `WHERE d.classid = ${REWRITE} AND r.ev_type = '1' AND v.relkind = 'v' ` +
  "UNION ALL SELECT pol.polrelid, d.refclassid, d.refobjid FROM pg_catalog.pg_depend d " +
  `JOIN pg_catalog.pg_policy pol ON pol.oid = d.objid WHERE d.classid = ${POLICY} AND pol.polcmd IN ('*', 'r')), ` +
  "calls(oid) AS (SELECT rel FROM deps WHERE " +
  `(refclassid = ${PROC} AND refobjid IN (SELECT oid FROM own)) OR ` +
  "(refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND refobjid IN " +
  "(SELECT o.oid FROM pg_catalog.pg_operator o WHERE o.oprcode IN (SELECT oid FROM own))) " +
  `UNION SELECT deps.rel FROM deps JOIN calls ON deps.refclassid = ${CLASS} ` +
  "AND deps.refobjid = calls.oid), " +
  // Every relation a user relation's reading reads, itself included (views of views, policies).
  "reach(root, rel) AS (SELECT DISTINCT d.rel, d.rel FROM deps d JOIN pg_catalog.pg_class c ON c.oid = d.rel " +
  `JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE ${NOT_BUILTIN_SCHEMA} ` +
  `UNION SELECT reach.root, d.refobjid FROM reach JOIN deps d ON d.rel = reach.rel AND d.refclassid = ${CLASS}), ` +
  // PostgreSQL records no dependency on pg_catalog's functions (they are pinned): which ones a
  // view's query or a policy's USING expression calls is read from their stored expression trees,
  // by the function OIDs of their calls, operators, aggregates and window calls.
  "named(rel, fn) AS (SELECT DISTINCT r.ev_class, " +
  `(pg_catalog.regexp_matches(r.ev_action::text, ${CALLED}, 'g'))[1]::pg_catalog.oid FROM pg_catalog.pg_rewrite r ` +
  "WHERE r.ev_type = '1' AND r.ev_class IN (SELECT rel FROM reach) " +
  "UNION SELECT pol.polrelid, " +
  `(pg_catalog.regexp_matches(pol.polqual::text, ${CALLED}, 'g'))[1]::pg_catalog.oid FROM pg_catalog.pg_policy pol ` +
  "WHERE pol.polqual IS NOT NULL AND pol.polcmd IN ('*', 'r') AND pol.polrelid IN (SELECT rel FROM reach)), " +
  // Which types run a domain's CHECK on input (review 64): the domain, and every type a value of
  // which holds one or passes through one — a domain over it, an array of it, a composite (a
  // table's row) with a field of it, a range over it, a multirange of such a range, a domain whose
  // CHECK casts to it. Walked up from the domains with constraints.
  "edges(inner_type, outer_type) AS (SELECT typbasetype, oid FROM pg_catalog.pg_type WHERE typtype = 'd' " +
  "UNION ALL SELECT typelem, oid FROM pg_catalog.pg_type WHERE typelem <> 0 " +
  "UNION ALL SELECT a.atttypid, t.oid FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.typrelid = a.attrelid " +
  "WHERE t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped " +
  "UNION ALL SELECT rngsubtype, rngtypid FROM pg_catalog.pg_range " +
  "UNION ALL SELECT rngtypid, rngmultitypid FROM pg_catalog.pg_range " +
  "UNION ALL SELECT d.refobjid, con.contypid FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_constraint con ON con.oid = d.objid " +
  `WHERE d.classid = ${CONSTRAINT} AND d.refclassid = ${TYPE} AND con.contypid <> 0), ` +
  "up(domain, oid) AS (SELECT DISTINCT contypid, contypid FROM pg_catalog.pg_constraint WHERE contypid <> 0 " +
  "UNION SELECT up.domain, e.outer_type FROM up JOIN edges e ON e.inner_type = up.oid), " +
  // The functions those CHECKs call (the database's own ones recorded, all read from the
  // expression trees), by every type that runs them; and user cast functions to a user type.
  "checks(domain, fn) AS (SELECT con.contypid, d.refobjid FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_depend d ON " +
  `d.classid = ${CONSTRAINT} AND d.objid = con.oid AND d.refclassid = ${PROC} WHERE con.contypid <> 0 ` +
  "UNION SELECT con.contypid, " +
  `(pg_catalog.regexp_matches(con.conbin::text, ${CALLED}, 'g'))[1]::pg_catalog.oid FROM pg_catalog.pg_constraint con ` +
  "WHERE con.contypid <> 0 AND con.conbin IS NOT NULL), " +
  "typfn(root, fn) AS (SELECT up.oid, checks.fn FROM up JOIN checks ON checks.domain = up.domain " +
  "UNION SELECT c.casttarget, c.castfunc FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc " +
  "JOIN pg_catalog.pg_type t ON t.oid = c.casttarget JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace " +
  // (Not the casts PostgreSQL makes itself, from a range to its multirange: internal functions.)
  `WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace AND ${NOT_BUILTIN_SCHEMA} ` +
  "AND p.prolang <> (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'internal')), " +
  // What reading a relation calls: its expressions' functions, and those of the types they use
  // (a view casting to a domain, `NULL::some_table` in a view or policy).
  "relfn(root, fn) AS (SELECT reach.root, named.fn FROM reach JOIN named ON named.rel = reach.rel " +
  "UNION SELECT reach.root, typfn.fn FROM reach JOIN deps d ON d.rel = reach.rel " +
  `AND d.refclassid = ${TYPE} JOIN typfn ON typfn.root = d.refobjid) ` +
  "SELECT 'f', proname, NULL FROM fn WHERE one_arg AND (NOT ext OR proname NOT IN (SELECT proname FROM builtin)) " +
  "UNION SELECT 's', proname, NULL FROM fn WHERE NOT ext AND proname IN (SELECT proname FROM builtin) " +
  "UNION SELECT 'o', o.oprname, NULL FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace " +
  `WHERE ${NOT_BUILTIN_SCHEMA} AND NOT ${EXTENSION_MEMBER("pg_operator", "o.oid")} AND o.oprname IN ` +
  "(SELECT oprname FROM pg_catalog.pg_operator WHERE oprnamespace = 'pg_catalog'::pg_catalog.regnamespace) " +
  "UNION SELECT 'r', c.relname, NULL FROM pg_catalog.pg_class c WHERE c.oid IN (SELECT oid FROM calls) " +
  "OR c.oid IN (SELECT root FROM relfn WHERE fn IN (SELECT oid FROM own)) " +
  // Built-ins and extensions' functions that are not IMMUTABLE: the agent decides which matter (a
  // STABLE one may read what a reader may not: table_to_xml, pg_stat_get_activity; review 64).
  "UNION SELECT 'c', c.relname, p.proname FROM relfn JOIN pg_catalog.pg_class c ON c.oid = relfn.root " +
  "JOIN pg_catalog.pg_proc p ON p.oid = relfn.fn WHERE p.provolatile <> 'i' AND p.oid NOT IN (SELECT oid FROM own) " +
  "UNION SELECT CASE WHEN p.oid IN (SELECT oid FROM own) THEN 'T' ELSE 't' END, t.typname, p.proname FROM typfn " +
  "JOIN pg_catalog.pg_type t ON t.oid = typfn.root JOIN pg_catalog.pg_proc p ON p.oid = typfn.fn " +
  "WHERE p.provolatile <> 'i' OR p.oid IN (SELECT oid FROM own)";

export interface CatalogOptions {
  /** Opens a connection to `database` as the agent's target user. */
  open: (database: string) => Promise<TargetConnection>;
  /** A table seen longer ago than this is looked up again (renames). Default 60 s. */
  ttlMs?: number;
  /** A catalog connection unused for this long is closed. Default 30 s. */
  idleMs?: number;
  /** Tables kept per database before the cache starts over. Default 20 000. */
  maxTables?: number;
  /** A lookup taking longer fails (the session asking is closed: masking fails closed). Default 10 s. */
  timeoutMs?: number;
  now?: () => number;
}

export class CatalogCache {
  private readonly databases = new Map<string, Map<number, TableEntry>>();
  private readonly connections = new Map<string, CatalogConnection>();
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly hidden = new Map<string, { calls?: HiddenCalls; at: number; refreshing?: Promise<HiddenCalls> }>();
  private readonly ttlMs: number;
  private readonly idleMs: number;
  private readonly maxTables: number;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private closed = false;

  constructor(private readonly options: CatalogOptions) {
    this.ttlMs = options.ttlMs ?? 60_000;
    this.idleMs = options.idleMs ?? 30_000;
    this.maxTables = options.maxTables ?? 20_000;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  /**
   * The database's HiddenCalls as last read (undefined before the first read), read again in the
   * background once older than the TTL: a function or view created since counts from then on.
   */
  hiddenCalls(database: string): HiddenCalls | undefined {
    const entry = this.hidden.get(database);
    if (entry && this.now() - entry.at > this.ttlMs) void this.loadHiddenCalls(database).catch(() => undefined);
    return entry?.calls;
  }

  /** Reads the database's HiddenCalls unless fresh ones are at hand (concurrent reads share one query). */
  loadHiddenCalls(database: string): Promise<HiddenCalls> {
    if (this.closed) return Promise.reject(new Error("the agent is stopping"));
    let entry = this.hidden.get(database);
    if (entry?.calls && this.now() - entry.at <= this.ttlMs) return Promise.resolve(entry.calls);
    if (entry?.refreshing) return entry.refreshing;
    if (!entry) this.hidden.set(database, (entry = { at: -Infinity }));
    const current = entry;
    const refreshing = this.connection(database)
      .query(HIDDEN_CALLS_SQL, this.timeoutMs)
      .then(
        (rows) => {
          const sets = { f: new Set<string>(), s: new Set<string>(), o: new Set<string>(), r: new Set<string>() };
          const relationCalls = new Map<string, string[]>();
          const typeCalls = new Map<string, { name: string; own: boolean }[]>();
          for (const [kind, name, fn] of rows) {
            if (!name) continue;
            if (kind === "c" && fn) listIn(relationCalls, name).push(fn);
            else if ((kind === "t" || kind === "T") && fn)
              listIn(typeCalls, name).push({ name: fn, own: kind === "T" });
            else sets[kind as keyof typeof sets]?.add(name);
          }
          current.calls = {
            rowFunctions: sets.f,
            shadowing: sets.s,
            operators: sets.o,
            relations: sets.r,
            relationCalls,
            typeCalls,
          };
          current.at = this.now();
          return current.calls;
        },
        (error: unknown) => {
          // The last answer stays in force; asked again in 5 s, not at every statement.
          current.at = Math.max(current.at, this.now() - this.ttlMs + 5_000);
          throw error;
        },
      )
      .finally(() => {
        if (current.refreshing === refreshing) delete current.refreshing;
      });
    current.refreshing = refreshing;
    return refreshing;
  }

  /** The table column behind (tableOid, attnum), if resolved (stale entries included). */
  lookup(database: string, tableOid: number, columnNumber: number): SourceColumn | undefined {
    const entry = this.databases.get(database)?.get(tableOid);
    const column = entry?.columns.get(columnNumber);
    return entry && column !== undefined ? { schema: entry.schema, table: entry.table, column } : undefined;
  }

  /** Table OIDs among `oids` not resolved, or resolved longer ago than the TTL. */
  missing(database: string, oids: Iterable<number>): number[] {
    const tables = this.databases.get(database);
    const now = this.now();
    const out = new Set<number>();
    for (const oid of oids) {
      if (oid === 0) continue;
      const entry = tables?.get(oid);
      if (!entry || now - entry.resolvedAt > this.ttlMs) out.add(oid);
    }
    return [...out];
  }

  /** Looks the tables up (one query; concurrent asks for the same set share it). */
  resolve(database: string, oids: number[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error("the agent is stopping"));
    const key = `${database}\0${[...oids].sort((a, b) => a - b).join(",")}`;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.fetch(database, oids).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  private async fetch(database: string, oids: number[]): Promise<void> {
    // OIDs are numbers from the target's own RowDescription: a literal list is safe.
    const list = oids.map((o) => String(Math.trunc(o) >>> 0)).join(",");
    const sql =
      "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname FROM pg_catalog.pg_class c " +
      "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace " +
      "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped " +
      `WHERE c.oid IN (${list})`;
    const rows = await this.connection(database).query(sql, this.timeoutMs);
    let tables = this.databases.get(database);
    if (!tables || tables.size + oids.length > this.maxTables) {
      tables = new Map();
      this.databases.set(database, tables);
    }
    const now = this.now();
    const fresh = new Map<number, TableEntry>();
    for (const [oid, schema, table, attnum, attname] of rows) {
      const id = Number(oid);
      let entry = fresh.get(id);
      if (!entry) {
        entry = { schema: schema ?? "", table: table ?? "", columns: new Map(), resolvedAt: now };
        fresh.set(id, entry);
      }
      if (attnum !== null && attnum !== undefined && attname !== null && attname !== undefined)
        entry.columns.set(Number(attnum), attname);
    }
    // A table the catalog does not know (dropped meanwhile): remembered as unknown, so its columns
    // are matched by their labels only, and not asked for again until the TTL.
    for (const oid of oids)
      tables.set(oid, fresh.get(oid) ?? { schema: "", table: "", columns: new Map(), resolvedAt: now });
  }

  private connection(database: string): CatalogConnection {
    let c = this.connections.get(database);
    if (!c || c.broken) {
      c = new CatalogConnection(
        () => this.options.open(database),
        this.idleMs,
        () => {
          if (this.connections.get(database) === c) this.connections.delete(database);
        },
      );
      this.connections.set(database, c);
    }
    return c;
  }

  close(): void {
    this.closed = true;
    for (const c of this.connections.values()) c.close();
    this.connections.clear();
  }
}

/** One catalog connection: simple-protocol queries, one at a time, closed when idle. */
class CatalogConnection {
  broken = false;
  private socket: Socket | TLSSocket | undefined;
  private opening: Promise<Socket | TLSSocket> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly open: () => Promise<TargetConnection>,
    private readonly idleMs: number,
    private readonly onClose: () => void,
  ) {}

  query(sql: string, timeoutMs: number): Promise<(string | null)[][]> {
    const run = this.queue.then(() => this.run(sql, timeoutMs));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async run(sql: string, timeoutMs: number): Promise<(string | null)[][]> {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.opening ??= this.open().then((t) => {
      t.socket.on("error", () => this.fail());
      t.socket.on("close", () => this.fail());
      return t.socket;
    });
    let socket: Socket | TLSSocket;
    try {
      socket = await this.opening;
    } catch (error) {
      this.fail();
      throw error;
    }
    this.socket = socket;
    try {
      return await new Promise<(string | null)[][]>((resolve, reject) => {
        const rows: (string | null)[][] = [];
        let error: string | undefined;
        let buf: Buffer = Buffer.alloc(0);
        const timer = setTimeout(() => done(new Error(`the catalog lookup took over ${timeoutMs} ms`)), timeoutMs);
        const onData = (chunk: Buffer) => {
          buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
          while (buf.length >= 5) {
            const length = buf.readInt32BE(1);
            if (buf.length < length + 1) return;
            const type = buf[0];
            const body = buf.subarray(5, length + 1);
            buf = buf.subarray(length + 1);
            if (type === 0x44) rows.push(decodeDataRow(body).map((v) => (v === null ? null : v.toString("utf8"))));
            else if (type === 0x45) error = decodeErrorFields(body).message;
            else if (type === 0x5a) return done(error === undefined ? undefined : new Error(error));
          }
        };
        const onClose = () => done(new Error("the catalog connection closed"));
        const done = (e?: Error) => {
          clearTimeout(timer);
          socket.off("data", onData);
          socket.off("close", onClose);
          if (e) {
            this.fail();
            reject(e);
          } else resolve(rows);
        };
        socket.on("data", onData);
        socket.on("close", onClose);
        socket.write(serialize.query(sql));
      });
    } finally {
      if (!this.broken) {
        this.idleTimer = setTimeout(() => this.close(), this.idleMs);
        this.idleTimer.unref();
      }
    }
  }

  private fail(): void {
    if (this.broken) return;
    this.broken = true;
    this.socket?.destroy();
    this.onClose();
  }

  close(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.socket && !this.broken) this.socket.end(serialize.end());
    this.fail();
  }
}

function listIn<T>(map: Map<string, T[]>, key: string): T[] {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  return list;
}
