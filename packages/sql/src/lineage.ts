/**
 * Result lineage: which columns the values of a statement's result columns may be computed from.
 * Pure: parse tree in, names out.
 *
 * Masking needs it for computed result columns. PostgreSQL's RowDescription names the table column
 * of a plain column reference (through subqueries and CTEs too), but a computed column
 * (`lower(email)`, `email || ''`, `row_to_json(u)`, `(SELECT email FROM users LIMIT 1)`) comes with
 * no table and the label the query chose: without lineage, any expression would unmask a column.
 *
 * The walk follows data flow and over-approximates it (fail closed):
 * - every column reference in a result column's expression counts, including inside scalar and
 *   ARRAY subqueries (an EXISTS subquery yields only a boolean of its WHERE: not followed);
 * - a named output column of a FROM subquery, CTE or VALUES list (or of a data-modifying CTE's
 *   RETURNING; names from an alias list by position) reaches what refers to its name, qualified
 *   or not, anywhere in the statement (`derived`, resolved after the walk);
 * - what their unnamed computed columns, table functions' arguments and set-operation branches
 *   compute reaches every computed column of the result (`shared`), as does a `*` over them;
 * - a whole-row reference (`u`, `u.*` inside an expression, `(u).email`, `u.to_json`) or a table
 *   whose columns an alias list renames (`users u(a, b)`) means any column.
 * What a WHERE, JOIN condition, GROUP BY, ORDER BY, FILTER, an aggregate's ORDER BY (but an
 * ordered-set aggregate's WITHIN GROUP), a window clause or LIMIT reads is not followed, nor are
 * count() and IS NULL: they decide which rows come back, not what they hold (a query can still
 * infer a masked value from which rows match; masking is not a defence against that, here or in
 * other products).
 */
import { PG_ROW_FUNCTIONS } from "./gen/pg-catalog.js";
import { isCatalogRelation } from "./qualify.js";
import { aliasOf, isObj, unwrap, walkNodes, type Obj } from "./tree.js";
import type { ColumnSources, ResultLineage } from "./types.js";

interface Acc {
  names: Set<string>;
  anyColumn: boolean;
  /** A result column of `count(...)` or a constant (see ColumnSources.valueFree). */
  valueFree?: boolean;
}

const newAcc = (): Acc => ({ names: new Set(), anyColumn: false });

/** Where the output list of a SELECT (or RETURNING) goes. */
type Sink =
  /** The statement's own result: one accumulator per column. */
  /** The statement's own rows; `setOperation` below a UNION/INTERSECT/EXCEPT (no column has a table there). */
  | { kind: "result"; setOperation?: boolean }
  /**
   * A FROM subquery or CTE: its named columns by name (`derived`), the rest to `shared`. `names`
   * are an alias list's (the output list names the columns past it), or with `positional` every
   * column's name (a set operation's branches: column i is named by the leftmost branch, whatever
   * a later branch calls it; undefined: a name the server makes up, so to `shared`).
   */
  | { kind: "from"; names?: readonly (string | undefined)[] | undefined; positional?: boolean }
  /** Everything into one accumulator (a scalar subquery, a set-operation branch below the top). */
  | { kind: "into"; acc: Acc };

class Walk {
  readonly shared = newAcc();
  /**
   * What the named output columns of FROM subqueries, CTEs and RETURNING lists compute, by column
   * name (`(SELECT email AS e ...) s` gives e: email): an outer reference to that name, qualified or
   * not, adds it. One map for the whole statement: a name defined by several relations gets all
   * their sources (over-approximation, never a miss through scoping).
   */
  private readonly derived = new Map<string, Acc>();

  /**
   * The CTEs in scope where the walk is, innermost WITH last: each one's output columns, for an
   * alias list renaming them where it is referenced (`FROM c AS c1(a, b)`).
   */
  private readonly ctes: Map<string, OutputColumns>[] = [];

  /**
   * A CTE of the statement has a name the server may read otherwise: names are then not matched
   * (review 58). The server cuts identifiers at 63 bytes of its own encoding (one byte a letter in
   * LATIN1) and may lower-case non-ASCII letters; the parser cuts at 63 bytes of UTF-8: two names it
   * reads as one (`a...aöx` and `a...aéx`, both cut to `a...a`) can be two there.
   */
  private unsureCte = false;

  /** Names of every FROM item and CTE of the statement (a one-part column reference to one is a whole row). */
  constructor(readonly relations: ReadonlySet<string>) {}

  /** A SELECT; for the `result` sink, its columns' sources when they map one to one. */
  select(node: Obj, sink: Sink): Acc[] | undefined {
    const scoped = this.withClause(node.withClause);
    try {
      return this.selectBody(node, sink);
    } finally {
      if (scoped) this.ctes.pop();
    }
  }

  private selectBody(node: Obj, sink: Sink): Acc[] | undefined {
    if (node.op !== undefined && node.op !== "SETOP_NONE") {
      const left = isObj(node.larg) ? node.larg : {};
      const right = isObj(node.rarg) ? node.rarg : {};
      if (sink.kind === "result") {
        // Set-operation columns have no table in the RowDescription: every branch's column i,
        // plain references included, reaches result column i.
        const branch: Sink = { kind: "result", setOperation: true };
        const l = this.select(left, branch);
        const r = this.select(right, branch);
        if (l && r && l.length === r.length) return l.map((acc, i) => merge(acc, r[i] as Acc));
        for (const acc of [...(l ?? []), ...(r ?? [])]) mergeInto(this.shared, acc);
        return undefined;
      }
      if (sink.kind === "from" && sink.names) {
        // Named by an alias list (`WITH RECURSIVE r(n) AS (... UNION ALL ...)`): column i of each
        // branch under name i, the alias list's or, past it, the leftmost branch's (`WITH c(x) AS
        // (SELECT 1, 2 AS b UNION SELECT 3, email FROM users)`: c.b holds emails).
        let branch = sink;
        if (sink.positional !== true) {
          const columns = outputColumns(sink.names, { SelectStmt: node });
          // Past a `*` of the leftmost branch the columns' names are the table's, unknown here.
          if (columns.open) this.shared.anyColumn = true;
          branch = { kind: "from", names: columns.names, positional: true };
        }
        this.select(left, branch);
        this.select(right, branch);
        return undefined;
      }
      const into: Sink = sink.kind === "into" ? sink : { kind: "into", acc: this.shared };
      this.select(left, into);
      this.select(right, into);
      return undefined;
    }
    for (const item of list(node.fromClause)) this.fromItem(item);
    const values = list(node.valuesLists);
    if (values.length > 0) {
      if (sink.kind === "from" && sink.names) {
        // `(VALUES (...)) AS t(id, name)`: item i of every row under name i.
        for (const row of values) {
          const items = list(unwrap(row)?.[1].items ?? row);
          items.forEach((item, i) => {
            const acc = newAcc();
            this.expr(item, acc);
            const name = sink.names?.[i];
            if (name === undefined) mergeInto(this.shared, acc);
            else this.derive(name, acc);
          });
        }
        return undefined;
      }
      // VALUES: its columns are computed; what they reference reaches them all.
      this.expr(values, sink.kind === "into" ? sink.acc : this.shared);
      return undefined;
    }
    const targets = list(node.targetList);
    // In a set operation's branch even plain columns reach result columns that name no table:
    // `SELECT 0, 'x' UNION ALL TABLE users` (`*` over a table, of columns unknown here: any column).
    if (sink.kind === "result" && sink.setOperation === true && targets.some(isStar) && readsTable(node.fromClause))
      this.shared.anyColumn = true;
    return this.outputList(targets, sink);
  }

  /** INSERT/UPDATE/DELETE/MERGE: only RETURNING returns rows. */
  modify(kind: string, node: Obj, sink: Sink): Acc[] | undefined {
    const scoped = this.withClause(node.withClause);
    try {
      return this.modifyBody(kind, node, sink);
    } finally {
      if (scoped) this.ctes.pop();
    }
  }

  private modifyBody(kind: string, node: Obj, sink: Sink): Acc[] | undefined {
    const returning = returningList(node);
    if (returning.length === 0) return undefined;
    for (const item of list(kind === "DeleteStmt" ? node.usingClause : node.fromClause)) this.fromItem(item);
    if (node.sourceRelation !== undefined) this.fromItem(node.sourceRelation);
    // What is written may come back through RETURNING under the target column's name.
    const written = sink.kind === "into" ? sink.acc : this.shared;
    if (kind === "InsertStmt") this.resultOf(node.selectStmt, { kind: "into", acc: written });
    if (kind === "UpdateStmt") for (const target of list(node.targetList)) this.expr(target, written);
    if (kind === "MergeStmt") this.expr(node.mergeWhenClauses, written);
    return this.outputList(returning, sink);
  }

  /** A wrapped SELECT or data-modifying statement. */
  resultOf(value: unknown, sink: Sink): Acc[] | undefined {
    const wrapped = unwrap(value);
    if (!wrapped) return undefined;
    const [kind, node] = wrapped;
    if (kind === "SelectStmt") return this.select(node, sink);
    if (kind === "InsertStmt" || kind === "UpdateStmt" || kind === "DeleteStmt" || kind === "MergeStmt")
      return this.modify(kind, node, sink);
    this.expr(value, sink.kind === "into" ? sink.acc : this.shared);
    return undefined;
  }

  /**
   * Walks a WITH clause's CTEs and puts them in scope (true: a scope was pushed, for the caller to
   * pop when its statement is walked). Under WITH RECURSIVE each CTE's query sees all of them;
   * otherwise only those before it (a later one's name there is a table's).
   */
  private withClause(value: unknown): boolean {
    if (!isObj(value)) return false;
    const scope = new Map<string, OutputColumns>();
    this.ctes.push(scope);
    const ctes: Obj[] = [];
    for (const item of list(value.ctes)) {
      const cte = unwrap(item)?.[1];
      if (cte) ctes.push(cte);
    }
    const inScope = (cte: Obj) => {
      if (typeof cte.ctename !== "string") return;
      if (!sureName(cte.ctename)) this.unsureCte = true;
      const columns = outputColumns(aliasNames(cte.aliascolnames), cte.ctequery);
      // SEARCH and CYCLE add columns after the query's: not placed here.
      const added = isObj(cte.search_clause) || isObj(cte.cycle_clause);
      scope.set(cte.ctename, added ? { names: columns.names, open: true } : columns);
    };
    if (value.recursive === true) for (const cte of ctes) inScope(cte);
    for (const cte of ctes) {
      this.resultOf(cte.ctequery, { kind: "from", names: aliasNames(cte.aliascolnames) });
      // SEARCH ... SET ord and CYCLE ... USING path add columns holding the values of the columns
      // they list (the mark column holds only the mark values).
      // Typed fields of CommonTableExpr: not wrapped in a node name.
      const search = isObj(cte.search_clause) ? cte.search_clause : undefined;
      const cycle = isObj(cte.cycle_clause) ? cte.cycle_clause : undefined;
      const added: [unknown, unknown][] = [
        [search?.search_seq_column, search?.search_col_list],
        [cycle?.cycle_path_column, cycle?.cycle_col_list],
      ];
      for (const [name, columns] of added)
        if (typeof name === "string")
          this.derive(name, { names: new Set(aliasNames(columns) ?? []), anyColumn: false });
      if (value.recursive !== true) inScope(cte);
    }
    return true;
  }

  /** The CTE an unqualified FROM item names, where the walk is (undefined: a table). */
  private cteNamed(node: Obj): OutputColumns | undefined {
    if (typeof node.relname !== "string" || node.schemaname !== undefined || node.catalogname !== undefined)
      return undefined;
    if (this.unsureCte || !sureName(node.relname)) return undefined;
    for (let i = this.ctes.length - 1; i >= 0; i--) {
      const columns = this.ctes[i]?.get(node.relname);
      if (columns) return columns;
    }
    return undefined;
  }

  private outputList(targets: unknown[], sink: Sink): Acc[] | undefined {
    if (sink.kind === "into") {
      for (const target of targets) this.expr(resTargetValue(target), sink.acc);
      return undefined;
    }
    if (sink.kind === "from") {
      let position = 0;
      for (const target of targets) {
        const res = unwrap(target)?.[1];
        const ref = plainColumnRef(res?.val);
        if (ref === "*" || expandsFields(res?.val)) {
          // Plain columns keeping their names, or fields: of a number unknown here, so an alias
          // list's later names cannot be placed.
          if (sink.names && sink.names.length > position) this.shared.anyColumn = true;
          if (ref !== "*") this.expr(res?.val, this.shared);
          position = Infinity;
          continue;
        }
        const renamed = sink.names?.[position++];
        const name = sink.positional === true ? renamed : (renamed ?? (typeof res?.name === "string" ? res.name : ref));
        if (name === undefined) {
          // A computed column without an alias: the name the server gives it is not worked out
          // here, so what it computes reaches every computed column.
          this.expr(res?.val, this.shared);
          continue;
        }
        const acc = newAcc();
        this.expr(res?.val, acc);
        this.derive(name, acc);
      }
      return undefined;
    }
    const columns: Acc[] = [];
    let oneToOne = true;
    for (const target of targets) {
      const value = resTargetValue(target);
      if (plainColumnRef(value) === "*") {
        // Expands to columns of a number unknown here: plain ones (named by the RowDescription),
        // or computed ones of a subquery or CTE (see select for a set operation's branch).
        oneToOne = false;
        this.expandsStar = true;
        continue;
      }
      // `(u).*`, `(ROW(1, 2)).*`: computed columns, of a number unknown here.
      if (expandsFields(value)) oneToOne = false;
      const acc = newAcc();
      this.expr(value, acc);
      if (carriesNoValue(value)) acc.valueFree = true;
      columns.push(acc);
    }
    if (oneToOne) return columns;
    for (const acc of columns) mergeInto(this.shared, acc);
    return undefined;
  }

  private fromItem(item: unknown): void {
    const wrapped = unwrap(item);
    if (!wrapped) return;
    const [kind, node] = wrapped;
    switch (kind) {
      case "RangeVar":
        if (renames(node)) this.renamed(node);
        return;
      case "RangeSubselect":
        this.resultOf(node.subquery, {
          kind: "from",
          names: isObj(node.alias) ? aliasNames(node.alias.colnames) : undefined,
        });
        return;
      case "JoinExpr":
        // The join condition (quals, USING) only decides which rows pair up.
        if (renames(node)) this.shared.anyColumn = true;
        this.fromItem(node.larg);
        this.fromItem(node.rarg);
        return;
      case "RangeTableSample":
        this.fromItem(node.relation);
        return;
      default:
        // Table functions (their arguments), XMLTABLE, JSON_TABLE: whatever they read.
        this.expr(node, this.shared);
    }
  }

  /**
   * A table or CTE whose columns an alias list renames (`FROM c AS c1(a, b)`). A table's column
   * order is not known here: any column. A CTE's is: alias i holds what its column i holds.
   */
  private renamed(node: Obj): void {
    const columns = this.cteNamed(node);
    const aliases = isObj(node.alias) ? (aliasNames(node.alias.colnames) ?? []) : [];
    if (!columns || (columns.open && aliases.length > columns.names.length)) {
      this.shared.anyColumn = true;
      return;
    }
    aliases.forEach((alias, i) => {
      const name = columns.names[i];
      // A column named by the server (a computed one without an alias) went to `shared`.
      if (name !== undefined) this.derive(alias, { names: new Set([name]), anyColumn: false });
    });
  }

  /** Every column an expression (or any tree below it) references, into `acc`. */
  expr(value: unknown, acc: Acc): void {
    if (Array.isArray(value)) {
      for (const item of value) this.expr(item, acc);
      return;
    }
    if (!isObj(value)) return;
    const wrapped = unwrap(value);
    if (!wrapped) {
      for (const field of Object.values(value)) this.expr(field, acc);
      return;
    }
    const [kind, node] = wrapped;
    switch (kind) {
      case "ColumnRef":
        this.columnRef(node, acc);
        return;
      case "SubLink":
        this.expr(node.testexpr, acc);
        // EXISTS yields whether its WHERE matched, nothing of its output list.
        if (node.subLinkType !== "EXISTS_SUBLINK") this.resultOf(node.subselect, { kind: "into", acc });
        return;
      case "SelectStmt":
      case "InsertStmt":
      case "UpdateStmt":
      case "DeleteStmt":
      case "MergeStmt":
        this.resultOf(value, { kind: "into", acc });
        return;
      case "String":
        return;
      case "NullTest":
        return; // whether a value is null, not the value
      case "FuncCall": {
        // An aggregate's FILTER and ORDER BY and a window's PARTITION BY/ORDER BY decide which rows
        // and in what order, like WHERE; count() of a column is a number of rows.
        if (!isCount(node)) this.expr(node.args, acc);
        // An ordered-set aggregate's value comes from WITHIN GROUP (ORDER BY x): mode(), percentile_disc().
        if (node.agg_within_group === true) this.expr(node.agg_order, acc);
        return;
      }
      default:
        for (const field of Object.values(node)) this.expr(field, acc);
    }
  }

  /**
   * After the walk: adds to `acc` what the derived columns it names compute, transitively (a CTE
   * may name a column of a CTE defined after it, under WITH RECURSIVE). When the result expands a
   * `*`, the derived columns it may include reach every computed column.
   */
  close(acc: Acc): void {
    const pending = [...acc.names];
    const seen = new Set(pending);
    for (let name = pending.pop(); name !== undefined; name = pending.pop()) {
      const derived = this.derived.get(name);
      if (!derived) continue;
      if (derived.anyColumn) acc.anyColumn = true;
      for (const next of derived.names) {
        acc.names.add(next);
        if (!seen.has(next)) {
          seen.add(next);
          pending.push(next);
        }
      }
    }
  }

  /** The result expands `*` or `x.*` (its columns may be derived ones of a subquery or CTE). */
  expandsStar = false;

  finish(columns: Acc[] | undefined): void {
    if (this.expandsStar) for (const acc of this.derived.values()) mergeInto(this.shared, acc);
    this.close(this.shared);
    for (const acc of columns ?? []) this.close(acc);
  }

  private derive(name: string, acc: Acc): void {
    const known = this.derived.get(name);
    if (known) mergeInto(known, acc);
    else this.derived.set(name, acc);
  }

  columnRef(node: Obj, acc: Acc): void {
    const fields = list(node.fields);
    const last = unwrap(fields[fields.length - 1]);
    if (!last || last[0] !== "String") {
      acc.anyColumn = true; // `u.*` inside an expression: the whole row
      return;
    }
    const name = String(last[1].sval ?? "");
    acc.names.add(name); // resolved through `derived` once the whole statement is walked (close)
    // `u` alone names a column or, failing that, the whole row of FROM item `u`; `u.to_json` names
    // a column or, failing that, to_json(u) (attribute notation for a function of the row).
    if (fields.length === 1 ? this.relations.has(name) : ROW_FUNCTIONS.has(name) && this.qualifiesRelation(fields))
      acc.anyColumn = true;
  }

  private qualifiesRelation(fields: unknown[]): boolean {
    const qualifier = unwrap(fields[fields.length - 2]);
    return qualifier?.[0] === "String" && this.relations.has(String(qualifier[1].sval ?? ""));
  }
}

const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);

/**
 * A name the parser reads as the server does in every encoding: ASCII characters only, and too short
 * to have been cut (the parser's cut leaves at least 60 bytes of the 63).
 */
// eslint-disable-next-line no-control-regex
const sureName = (name: string): boolean => name.length < 60 && /^[\x00-\x7f]*$/.test(name);

/**
 * Functions that attribute notation can call on a whole row: pg_catalog's (generated) and common
 * extensions' (`hstore(record)`). A user's own function of a row type is opaque, like a view.
 */
const ROW_FUNCTIONS: ReadonlySet<string> = new Set([...PG_ROW_FUNCTIONS, "hstore"]);

/** RETURNING's output list (PostgreSQL 18's parse tree wraps it in a ReturningClause). */
const returningList = (node: Obj): unknown[] =>
  isObj(node.returningClause) ? list(node.returningClause.exprs) : list(node.returningList);

function resTargetValue(target: unknown): unknown {
  return unwrap(target)?.[1].val;
}

/** The column name of a plain column reference (`email`, `u.email`), "*" for `*`/`u.*`, else undefined. */
function plainColumnRef(value: unknown): string | undefined {
  const ref = unwrap(value);
  if (!ref || ref[0] !== "ColumnRef") return undefined;
  const last = unwrap(list(ref[1].fields).at(-1));
  if (!last) return undefined;
  if (last[0] === "A_Star") return "*";
  return last[0] === "String" ? String(last[1].sval ?? "") : undefined;
}

/**
 * A result column no row's values can reach: `count(...)` (a number of rows, window or not) or a
 * constant (`1`, `'x'::text`, `NULL`). `SELECT count(*) FROM (SELECT * FROM a UNION SELECT * FROM
 * b) s` would otherwise get what every computed column gets (a set operation's `*`: any column).
 */
function carriesNoValue(value: unknown): boolean {
  const node = unwrap(value);
  if (!node) return false;
  const [kind, inner] = node;
  if (kind === "A_Const") return true;
  if (kind === "TypeCast") return unwrap(inner.arg)?.[0] === "A_Const";
  return kind === "FuncCall" && isCount(inner);
}

/** `count(...)`, as the built-in aggregate (unqualified or pg_catalog.count). */
function isCount(node: Obj): boolean {
  const parts = list(node.funcname).map((part) => unwrap(part)?.[1].sval);
  const name = parts.at(-1);
  return name === "count" && (parts.length === 1 || (parts.length === 2 && parts[0] === "pg_catalog"));
}

/** Whether an output-list entry is a field expansion (`(u).*`), which yields any number of columns. */
function expandsFields(value: unknown): boolean {
  const node = unwrap(value);
  return node?.[0] === "A_Indirection" && unwrap(list(node[1].indirection).at(-1))?.[0] === "A_Star";
}

/** An alias list's names (`AS t(a, b)`), or undefined when there is none. */
function aliasNames(value: unknown): string[] | undefined {
  const names = list(value).map((item) => String(unwrap(item)?.[1].sval ?? ""));
  return names.length > 0 ? names : undefined;
}

/** A query's output columns, as `outputColumns` works them out. */
interface OutputColumns {
  /** Column i's name; undefined where the server makes one up (a computed column without an alias). */
  names: (string | undefined)[];
  /** A `*` or field expansion: the columns from there on (past `names`) are not known here. */
  open: boolean;
}

/**
 * A query's output columns as PostgreSQL names them: an alias list's names first, then those of its
 * output list (a set operation's leftmost branch; VALUES columns and computed columns without an
 * alias get names from the server, undefined here).
 */
function outputColumns(aliases: readonly (string | undefined)[] | undefined, query: unknown): OutputColumns {
  const own = ownColumns(query);
  const names = [...own.names];
  (aliases ?? []).forEach((alias, i) => (names[i] = alias));
  return { names, open: own.open };
}

function ownColumns(query: unknown): OutputColumns {
  const wrapped = unwrap(query);
  if (!wrapped) return { names: [], open: true };
  const kind = wrapped[0];
  let node = wrapped[1];
  let targets: unknown[];
  if (kind === "SelectStmt") {
    while (node.op !== undefined && node.op !== "SETOP_NONE") node = isObj(node.larg) ? node.larg : {};
    const [row] = list(node.valuesLists);
    if (row !== undefined) return { names: list(unwrap(row)?.[1].items ?? row).map(() => undefined), open: false };
    targets = list(node.targetList);
  } else if (kind === "InsertStmt" || kind === "UpdateStmt" || kind === "DeleteStmt" || kind === "MergeStmt") {
    targets = returningList(node);
  } else return { names: [], open: true };
  const names: (string | undefined)[] = [];
  for (const target of targets) {
    const res = unwrap(target)?.[1];
    const ref = plainColumnRef(res?.val);
    if (ref === "*" || expandsFields(res?.val)) return { names, open: true };
    names.push(typeof res?.name === "string" ? res.name : ref);
  }
  return { names, open: false };
}

/** Whether a FROM item's alias renames its columns (`users u(a, b)`). */
function renames(node: Obj): boolean {
  return isObj(node.alias) && list(node.alias.colnames).length > 0;
}

function merge(a: Acc, b: Acc): Acc {
  const out: Acc = { names: new Set(a.names), anyColumn: a.anyColumn };
  mergeInto(out, b);
  return out;
}

function mergeInto(into: Acc, from: Acc): void {
  for (const name of from.names) into.names.add(name);
  if (from.anyColumn) into.anyColumn = true;
}

const isStar = (target: unknown): boolean => plainColumnRef(resTargetValue(target)) === "*";

/** Whether a FROM clause names a table (or CTE) anywhere, catalog relations aside. */
function readsTable(fromClause: unknown): boolean {
  let found = false;
  walkNodes(fromClause, (kind, node) => {
    if (found) return false;
    if (kind !== "RangeVar" || typeof node.relname !== "string") return true;
    const schema = typeof node.schemaname === "string" ? node.schemaname : undefined;
    if (!isCatalogRelation(schema === undefined ? { name: node.relname } : { schema, name: node.relname }))
      found = true;
    return true;
  });
  return found;
}

/** Names of every FROM item (alias, else table name) and CTE anywhere in the tree. */
function relationNames(tree: unknown): Set<string> {
  const out = new Set<string>();
  walkNodes(tree, (kind, node) => {
    const alias = aliasOf(node);
    // A table function's alias names its output, computed from its arguments (which reach every
    // computed column): `SELECT g FROM generate_series(1, 3) g` reads no row of a table.
    if (alias !== undefined && kind !== "RangeFunction" && kind !== "RangeTableFunc") out.add(alias);
    else if (kind === "RangeVar" && typeof node.relname === "string") out.add(node.relname);
    if (kind === "CommonTableExpr" && typeof node.ctename === "string") out.add(node.ctename);
    // `JOIN ... USING (email) AS j`: `j` is a whole row of the join's USING columns.
    const using = node.join_using_alias;
    if (kind === "JoinExpr" && isObj(using) && typeof using.aliasname === "string") out.add(using.aliasname);
  });
  return out;
}

const sources = (acc: Acc): ColumnSources =>
  acc.valueFree
    ? { names: [...acc.names], anyColumn: acc.anyColumn, valueFree: true }
    : { names: [...acc.names], anyColumn: acc.anyColumn };

/**
 * A statement's lineage: where the rows it returns come from (`result`, undefined for statements
 * that return none of a table's data: DDL, SET, EXPLAIN, ...; EXECUTE and FETCH are resolved by the
 * caller, which knows the prepared statement or cursor) and every column it reads (`reads`).
 */
export function statementLineage(kind: string, node: Obj): { result?: ResultLineage; reads: ColumnSources } {
  const relations = relationNames(node);
  const result = resultLineage(kind, node, relations);
  const reads = columnsRead(node, relations);
  return result ? { result, reads } : { reads };
}

function resultLineage(kind: string, node: Obj, relations: ReadonlySet<string>): ResultLineage | undefined {
  switch (kind) {
    case "PrepareStmt":
    case "DeclareCursorStmt": {
      const inner = unwrap(node.query);
      return inner ? resultLineage(inner[0], inner[1], relations) : undefined;
    }
    case "SelectStmt":
    case "InsertStmt":
    case "UpdateStmt":
    case "DeleteStmt":
    case "MergeStmt": {
      if (kind !== "SelectStmt" && returningList(node).length === 0) return undefined;
      const walk = new Walk(relations);
      const columns = walk.resultOf({ [kind]: node }, { kind: "result" });
      walk.finish(columns);
      const lineage: ResultLineage = { shared: sources(walk.shared) };
      if (columns) lineage.columns = columns.map(sources);
      return lineage;
    }
    default:
      return undefined;
  }
}

/**
 * Every column a statement references anywhere, predicates included, and whether it references a
 * whole row: the values an error message of the statement could quote (`invalid input syntax for
 * type integer: "..."` from `WHERE email::int = 1`). A plain `*` output column evaluates nothing.
 */
function columnsRead(node: Obj, relations: ReadonlySet<string>): ColumnSources {
  const walk = new Walk(relations);
  const acc = newAcc();
  walkNodes(node, (kind, inner) => {
    // An alias list renames columns: `b::int FROM users u(a, b)` reads email under another name.
    if (renames(inner) || (kind === "CommonTableExpr" && list(inner.aliascolnames).length > 0)) acc.anyColumn = true;
    if (kind === "ColumnRef") {
      walk.columnRef(inner, acc);
      return false;
    }
    return kind !== "ResTarget" || plainColumnRef(inner.val) !== "*";
  });
  return sources(acc);
}

const NO_SOURCES: ColumnSources = Object.freeze({ names: [], anyColumn: false });

/** Sources that may be any column (fail closed, for a statement the caller cannot see). */
export const ANY_COLUMN: ColumnSources = Object.freeze({ names: [], anyColumn: true });

/** What lineage says when the statement behind a result is not known (fail closed: any column). */
export const UNKNOWN_LINEAGE: ResultLineage = Object.freeze({ shared: ANY_COLUMN });

function union(into: Acc, from: ColumnSources | undefined): void {
  if (!from) return;
  for (const name of from.names) into.names.add(name);
  if (from.anyColumn) into.anyColumn = true;
}

/**
 * The sources of computed column `index` of a result of `count` columns: what reaches every column,
 * plus the column's own when the lineage maps one to one to this result, else every column's.
 */
export function columnSources(lineage: ResultLineage, index: number, count: number): ColumnSources {
  const own = lineage.columns;
  if (own !== undefined && own.length === count && own[index]?.valueFree) return NO_SOURCES;
  if (own === undefined || (own.length === count && own[index]?.names.length === 0 && !own[index]?.anyColumn))
    return lineage.shared;
  const acc = newAcc();
  union(acc, lineage.shared);
  if (own.length === count) union(acc, own[index]);
  else for (const column of own) union(acc, column);
  return sources(acc);
}

/**
 * Two lineages of results that may come from the same name (a cursor or prepared statement declared
 * twice, when the agent cannot tell which one the server kept): whatever either may hold.
 */
export function mergeLineage(a: ResultLineage | undefined, b: ResultLineage | undefined): ResultLineage | undefined {
  if (!a || !b) return a ?? b;
  const acc = newAcc();
  for (const lineage of [a, b]) {
    union(acc, lineage.shared);
    for (const column of lineage.columns ?? []) union(acc, column);
  }
  return { shared: sources(acc) };
}

/** Columns either of two statements may read (see mergeLineage). */
export function mergeSources(a: ColumnSources | undefined, b: ColumnSources | undefined): ColumnSources | undefined {
  if (!a || !b) return a ?? b;
  const acc = newAcc();
  union(acc, a);
  union(acc, b);
  return sources(acc);
}
