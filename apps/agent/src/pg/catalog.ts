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
 * them, which the classifier cannot know from the text: a user's function of one argument is called
 * by attribute notation (`t.f` is `f(t)` when `t` has no column `f`), one named like a built-in by
 * an ordinary-looking call (`lower(5)` runs `public.lower(int)`), and reading a view, or a table
 * with a row-level security policy, calls the volatile user functions they use (through other views
 * too). Names only, in any schema (fail closed). Extensions' functions count as built-ins (citext's
 * `lower(citext)` would otherwise make every `lower` call a user function's).
 */
export interface HiddenCalls {
  /** User functions (not pg_catalog's) callable with one argument. */
  rowFunctions: ReadonlySet<string>;
  /** User functions named like one of pg_catalog's. */
  shadowing: ReadonlySet<string>;
  /** Relations whose reading calls a volatile user function: views, tables with policies. */
  relations: ReadonlySet<string>;
}

/** A function of neither pg_catalog, information_schema nor an extension (installed by an administrator, trusted as built-ins are). */
const USER_FUNCTION =
  "n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e " +
  "WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid AND e.deptype = 'e')";
const CALLS = (via: string, relation: string, object: string) =>
  `SELECT ${relation} FROM pg_catalog.${via} x ` +
  `JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.${via}'::pg_catalog.regclass AND d.objid = x.oid ` +
  `AND d.refclassid = 'pg_catalog.${object}'::pg_catalog.regclass `;
const VOLATILE_USER_FUNCTION =
  "JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace " +
  `WHERE p.provolatile = 'v' AND ${USER_FUNCTION}`;

/** The query behind HiddenCalls: rows of (kind, name). PostgreSQL 11 and later (prokind). */
const HIDDEN_CALLS_SQL =
  "SELECT 'f', p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace " +
  `WHERE ${USER_FUNCTION} AND p.prokind <> 'p' AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 ` +
  "UNION SELECT 's', p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace " +
  `WHERE ${USER_FUNCTION} AND EXISTS (SELECT FROM pg_catalog.pg_proc b ` +
  "WHERE b.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND b.proname = p.proname) " +
  "UNION SELECT 'r', c.relname FROM pg_catalog.pg_class c WHERE c.oid IN (WITH RECURSIVE calls(oid) AS (" +
  `${CALLS("pg_rewrite", "x.ev_class", "pg_proc")}${VOLATILE_USER_FUNCTION} UNION ` +
  `${CALLS("pg_policy", "x.polrelid", "pg_proc")}${VOLATILE_USER_FUNCTION} UNION ` +
  `${CALLS("pg_rewrite", "x.ev_class", "pg_class")}JOIN calls ON calls.oid = d.refobjid` +
  ") SELECT oid FROM calls)";

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
          const sets = { f: new Set<string>(), s: new Set<string>(), r: new Set<string>() };
          for (const [kind, name] of rows) if (name) sets[kind as keyof typeof sets]?.add(name);
          current.calls = { rowFunctions: sets.f, shadowing: sets.s, relations: sets.r };
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
