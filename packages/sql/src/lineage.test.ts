/**
 * Result lineage (lineage.ts): where a statement's computed result columns may get their values.
 * Summaries: the names a column may come from, sorted, with `*` for "any column"; `shared` is what
 * reaches every computed column, `columns` each column's own (absent when they do not map one to one).
 */
import { beforeAll, describe, expect, it } from "vitest";
import { columnSources, createClassifier, loadSqlParser, type Classifier, type ColumnSources } from "./index.js";
import { ON, statementsOf } from "./test-helpers.js";

let classifier: Classifier;
beforeAll(async () => {
  await loadSqlParser();
  classifier = createClassifier({ cacheEntries: 0 });
});

const show = (s: ColumnSources): string => [...(s.anyColumn ? ["*"] : []), ...[...s.names].sort()].join(",");

function lineage(sql: string): { shared: string; columns?: string[] } | undefined {
  const [info] = statementsOf(classifier.classify(sql, ON));
  const result = info?.result;
  if (!result) return undefined;
  return { shared: show(result.shared), ...(result.columns ? { columns: result.columns.map(show) } : {}) };
}

/** [sql, shared, columns (undefined: not one to one)] */
const CASES: Array<[string, string, string[] | undefined]> = [
  // Plain columns reference themselves (the RowDescription names their table; lineage is unused).
  ["SELECT id, email FROM users", "", ["id", "email"]],
  ["SELECT * FROM users", "", undefined],
  ["SELECT u.*, 1 FROM users u", "", undefined],
  ["TABLE users", "", undefined],
  // Expressions over a column.
  ["SELECT id, lower(email) FROM users", "", ["id", "email"]],
  ["SELECT email || '' AS x, email::text, email COLLATE \"C\" FROM users", "", ["email", "email", "email"]],
  ["SELECT CASE WHEN email LIKE 'a%' THEN 1 END FROM users", "", ["email"]],
  ["SELECT count(*), string_agg(email, ',' ORDER BY id) FROM users", "", ["", "email"]],
  // Which rows and in what order (FILTER, ORDER BY in an aggregate, OVER), whether a value is null,
  // and count() are not a value.
  [
    "SELECT count(email), count(DISTINCT email), count(*) FILTER (WHERE email LIKE 'a%'), rank() OVER (ORDER BY email), email IS NULL FROM users",
    "",
    ["", "", "", "", ""],
  ],
  [
    "SELECT max(email) OVER (PARTITION BY id), pg_catalog.count(email), myschema.count(email) FROM users",
    "",
    ["email", "", "email"],
  ],
  // An ordered-set aggregate returns a value of its WITHIN GROUP ordering.
  [
    "SELECT mode() WITHIN GROUP (ORDER BY email), percentile_disc(0.5) WITHIN GROUP (ORDER BY id) FROM t",
    "",
    ["email", "id"],
  ],
  ["SELECT json_build_object('e', u.email, 'n', u.name) FROM users u", "", ["email,name"]],
  ["SELECT format('%s', (users.email)) FROM users", "", ["email"]],
  ["SELECT (u.addr).street FROM users u", "", ["addr"]],
  // Predicates decide rows, not values.
  ["SELECT id, created_at::date FROM users WHERE email = 'x' ORDER BY email", "", ["id", "created_at"]],
  ["SELECT id FROM users u JOIN orders o ON o.email = u.email GROUP BY id HAVING max(o.email) > ''", "", ["id"]],
  // Whole rows.
  ["SELECT u FROM users u", "", ["*,u"]],
  ["SELECT users FROM users", "", ["*,users"]],
  ["SELECT row_to_json(u.*) FROM users u", "", ["*"]],
  ["SELECT to_jsonb(u), id FROM users u", "", ["*,u", "id"]],
  ["SELECT (u).email FROM users u", "", ["*,u"]],
  ["SELECT email(u) FROM users u", "", ["*,u"]],
  ["SELECT (u).* FROM users u", "*,u", undefined], // expands to a number of columns unknown here
  ["SELECT t FROM (SELECT * FROM users) t", "", ["*,t"]],
  // Attribute notation for a function of the row: `u.to_json` is to_json(u) (a column of that name
  // would be read first; either way fail closed). Other qualified names are columns.
  [
    "SELECT u.to_json, u.name, public.users.quote_literal FROM users u, public.users",
    "",
    ["*,to_json", "name", "*,quote_literal"],
  ],
  ["SELECT lower(u.to_jsonb ->> 'email') FROM users u", "", ["*,to_jsonb"]],
  ["SELECT x.to_json FROM users u", "", ["to_json"]], // x is no relation here
  ["SELECT (ROW()).*, lower(email), (ROW(1, 2)).* FROM users", "email", undefined],
  // Subqueries in the output list.
  ["SELECT (SELECT email FROM users LIMIT 1)", "", ["email"]],
  ["SELECT ARRAY(SELECT lower(email) FROM users)", "", ["email"]],
  ["SELECT id, EXISTS (SELECT * FROM orders o WHERE o.uid = u.id AND o.email = 'x') FROM users u", "", ["id", ""]],
  ["SELECT email IN (SELECT email FROM banned) FROM users", "", ["email"]],
  // FROM subqueries and CTEs: an outer reference to one of their columns adds what it computes.
  ["SELECT x FROM (SELECT lower(email) AS x FROM users) s", "", ["email,x"]],
  ["SELECT lower(e) FROM (SELECT email AS e FROM users) s", "", ["e,email"]],
  ["SELECT lower(y) FROM (SELECT x AS y FROM (SELECT email AS x FROM users) a) b", "", ["email,x,y"]],
  ["SELECT lower(j.x) FROM ((SELECT email AS x FROM users) a JOIN t USING (id)) AS j", "", ["email,x"]],
  ["SELECT (SELECT s.x) FROM (SELECT email AS x FROM users) s", "", ["email,x"]],
  // Named columns of a subquery reach only the outer columns naming them; unnamed computed ones
  // (whose server-given name is not worked out) reach every computed column.
  ["SELECT count(*) FROM (SELECT lower(email) AS l FROM users) s", "", [""]],
  // `*` may expand to a subquery's or CTE's computed columns: what they compute reaches all.
  ["SELECT * FROM (SELECT lower(email) AS l FROM users) s", "email", undefined],
  ["WITH c AS (SELECT upper(kind) AS k FROM e) TABLE c", "kind", undefined],
  ["SELECT * FROM users u, LATERAL (SELECT lower(u.email) AS l) x", "email", undefined],
  // Resolved after the walk: a CTE may name a column of one defined after it.
  [
    "WITH RECURSIVE a AS (SELECT l || '' AS m FROM b), b AS (SELECT lower(email) AS l FROM users) SELECT m FROM a",
    "",
    ["email,l,m"],
  ],
  ["SELECT count(*) FROM (SELECT lower(email) FROM users) s", "email", [""]],
  ["SELECT id + 1, note || '!' FROM users, LATERAL (SELECT lower(email) AS l) x", "", ["id", "note"]],
  ["SELECT lower(email), id FROM (SELECT id, email FROM users) s", "", ["email", "id"]],
  ["SELECT lower(email) FROM (SELECT * FROM users) s", "", ["email"]],
  ["WITH c AS (SELECT lower(email) e FROM users) SELECT e, 1 FROM c", "", ["e,email", ""]],
  // Alias lists name the columns of subqueries, CTEs and VALUES by position.
  ["WITH c(x) AS (SELECT email FROM users) SELECT lower(x) FROM c", "", ["email,x"]],
  ["SELECT name FROM (VALUES (1, 'a')) AS t(id, name)", "", ["name"]],
  ["SELECT e FROM (VALUES ((SELECT email FROM users LIMIT 1))) v(e)", "", ["e,email"]],
  ["WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r", "", ["n"]],
  ["SELECT s.total FROM (SELECT id, sum(amount) FROM o GROUP BY id) AS s(uid, total)", "", ["amount,total"]],
  ["SELECT lower(e) FROM (SELECT * FROM users) s(i, e)", "*", ["e"]], // after a `*`: any column
  ["SELECT lower(b) FROM users u(a, b)", "*", ["b"]],
  ["SELECT x FROM (users JOIN orders USING (id)) AS j(x, y)", "*", ["x"]],
  // An alias list shorter than a set operation's columns: PostgreSQL names the others after the
  // leftmost branch, whatever a later branch calls them (`b` holds emails; a leak before).
  ["WITH c(x) AS (SELECT 1, 2 AS b UNION SELECT 3, email FROM users) SELECT lower(b) FROM c", "", ["b,email"]],
  ["SELECT lower(b) FROM (SELECT 1, 2 AS b UNION ALL SELECT 3, email FROM users) s(x)", "", ["b,email"]],
  ["SELECT lower(b) FROM (SELECT 1, 2 AS b UNION SELECT 3, email FROM users) s(x, b)", "", ["b,email"]],
  ["SELECT lower(b) FROM (SELECT 1, lower(note) UNION SELECT 3, email FROM users) s(x)", "email,note", ["b"]],
  ["SELECT lower(b) FROM (SELECT * FROM t UNION SELECT 1, email FROM users) s(x)", "*,email", ["b"]],
  // Review 56 found the same: a VALUES leftmost branch, a later branch's `*`, a recursive CTE.
  ["SELECT column2 FROM (VALUES (1, 'x') UNION ALL SELECT id, name AS zz FROM users) s(a)", "name", ["column2"]],
  ["SELECT c2 FROM (SELECT 0 AS k, 'a' AS c1, 'b' AS c2 UNION ALL SELECT id, * FROM users) s(k)", "*", ["c2"]],
  [
    "WITH RECURSIVE r(n) AS (SELECT 1, ''::text AS v UNION ALL SELECT n + 1, (SELECT name FROM users WHERE id = n) AS w FROM r WHERE n < 3) SELECT v FROM r",
    "",
    ["name,v"],
  ],
  // An alias list on a CTE's reference renames its columns, which are known: by position. Only a
  // CTE in scope there (PostgreSQL's rules: an inner WITH's names are not seen outside it, a later
  // CTE's only under WITH RECURSIVE); a table's columns are not known: any column.
  ["WITH v(x) AS (VALUES (1), (2)) SELECT x1 FROM v AS v1(x1)", "", ["x,x1"]],
  ["WITH v AS (SELECT email, name FROM users) SELECT lower(b) FROM v AS v1(a, b)", "", ["b,name"]],
  ["WITH v(x) AS (SELECT email FROM users) SELECT lower(y) FROM v v1(y)", "", ["email,x,y"]],
  ["WITH v AS (SELECT id, lower(email) FROM users) SELECT y || '' FROM v v1(x, y)", "email", ["y"]],
  ["WITH v AS (SELECT email, name FROM users) SELECT lower(b) FROM public.v AS v1(a, b)", "*", ["b"]],
  ["WITH v AS (SELECT 1 AS a) SELECT lower(x) FROM (WITH v AS (SELECT email FROM u) SELECT 1) s, v v1(x)", "", ["a,x"]],
  ["SELECT lower(x) FROM (WITH v AS (SELECT 1 AS a) SELECT 1) s, v v1(x)", "*", ["x"]],
  ["WITH a AS (SELECT x FROM v v1(x)), v AS (SELECT 1 AS q) SELECT lower(x) FROM a", "*", ["x"]],
  [
    "WITH RECURSIVE a AS (SELECT x FROM v v1(x)), v AS (SELECT email AS q FROM u) SELECT x || '' FROM a",
    "",
    ["email,q,x"],
  ],
  ["WITH v AS (SELECT *, 1 AS k FROM users) SELECT lower(x) FROM v v1(x)", "*", ["x"]],
  // Review 58: names the server may cut or fold otherwise (a LATIN1 server cuts at 63 letters, the
  // parser at 63 bytes of UTF-8): not matched, any column.
  [
    `WITH ${"a".repeat(62)}öx AS (SELECT id::text AS i, email FROM users) SELECT x FROM (WITH ${"a".repeat(62)}éx AS (SELECT email, id::text AS i FROM users) SELECT lower(q) AS x FROM ${"a".repeat(62)}öx v1(p, q)) s`,
    "*",
    ["q,x"],
  ],
  ["WITH véx AS (SELECT id, email FROM users) SELECT lower(b) FROM véx v1(a, b)", "*", ["b"]],
  ["WITH v AS (SELECT id, 1 AS k FROM users) SELECT lower(x) FROM v v1(x, y, z)", "", ["id,x"]],
  [
    "WITH RECURSIVE c(x) AS (SELECT email FROM users UNION ALL SELECT x FROM c) CYCLE x SET cyc USING path SELECT p FROM c c1(a, b, p)",
    "*",
    ["p"],
  ],
  ["WITH d AS (DELETE FROM users RETURNING email AS e) SELECT lower(e) FROM d", "", ["e,email"]],
  ["WITH d AS (DELETE FROM users RETURNING email) SELECT lower(email) FROM d", "", ["email"]],
  // Table functions, VALUES, LATERAL.
  ["SELECT x FROM users, unnest(ARRAY[users.email]) AS x", "email", ["x"]], // x: the function's output
  ["SELECT g FROM generate_series(1, 3) g", "", ["g"]],
  ["SELECT v.column1 FROM users, LATERAL (VALUES (email)) v", "email", ["column1"]],
  ["SELECT j FROM users u, LATERAL to_jsonb(u) j", "*,u", ["j"]],
  ["VALUES ((SELECT email FROM users LIMIT 1))", "email", undefined],
  ["SELECT * FROM XMLTABLE('/r' PASSING (SELECT x FROM d) COLUMNS a text)", "x", undefined],
  // Set operations: every branch's column i reaches result column i, plain references included.
  ["SELECT email AS e FROM users UNION SELECT 'x'", "", ["email"]],
  ["SELECT 'x' UNION ALL SELECT email FROM users", "", ["email"]],
  ["SELECT x FROM (SELECT 'a' AS x UNION SELECT email FROM users) s", "email", ["x"]],
  // Columns of a UNION name no table: `*` there may be any column (review 14: it was a leak).
  ["SELECT * FROM users UNION SELECT * FROM old_users", "*", undefined],
  // RETURNING, and what was written.
  ["UPDATE users SET n = 1 RETURNING lower(email) AS e, id", "", ["email", "id"]],
  ["UPDATE users SET note = email RETURNING note", "email", ["note"]],
  ["INSERT INTO t (a) SELECT email FROM users RETURNING a", "email", ["a"]],
  ["DELETE FROM users RETURNING *", "", undefined],
  // Review 14: a USING join's alias is a whole row; SEARCH/CYCLE columns hold the rows; `*` in a
  // set operation's branch reaches columns that name no table.
  ["SELECT j FROM users JOIN other USING (email) AS j", "", ["*,j"]],
  ["SELECT row_to_json(j) FROM users JOIN other USING (email) AS j", "", ["*,j"]],
  [
    "WITH RECURSIVE c(x) AS (SELECT email FROM users UNION ALL SELECT x FROM c) CYCLE x SET cyc USING path SELECT path, cyc FROM c",
    "",
    ["email,path,x", "cyc"],
  ],
  [
    "WITH RECURSIVE c(x) AS (SELECT email FROM users UNION ALL SELECT x FROM c) SEARCH DEPTH FIRST BY x SET ord SELECT ord FROM c",
    "",
    ["email,ord,x"],
  ],
  ["SELECT 0, 'x', 'y' UNION ALL TABLE users", "*", undefined],
  ["SELECT 0, 'x' UNION ALL SELECT u.* FROM users u", "*", undefined],
  ["WITH c AS (TABLE users) SELECT 0, 'x', 'y' UNION ALL TABLE c", "*", undefined],
  ["SELECT 0, 'x' UNION ALL SELECT * FROM (SELECT * FROM users) s", "*", undefined],
  // ... but not over no table, or over catalogs only (review 15).
  ["SELECT * FROM (VALUES (1, 'a')) v(x, y) UNION ALL SELECT 2, 'b'", "", undefined],
  ["SELECT * FROM generate_series(1, 2) UNION SELECT 3", "", undefined],
  ["SELECT * FROM pg_namespace UNION ALL SELECT * FROM pg_namespace", "", undefined],
  // Cursors and prepared statements: their query.
  ["DECLARE c CURSOR FOR SELECT lower(email) FROM users", "", ["email"]],
  ["PREPARE p AS SELECT lower(email) FROM users WHERE id = $1", "", ["email"]],
];

describe("result lineage", () => {
  it.each(CASES)("%s", (sql, shared, columns) => {
    expect(lineage(sql)).toEqual({ shared, ...(columns ? { columns } : {}) });
  });

  it("gives nothing to a result column of count(...) or a constant, not even what reaches every column", () => {
    const of = (sql: string) => {
      const result = statementsOf(classifier.classify(sql, ON))[0]?.result;
      if (!result) throw new Error(sql);
      const count = result.columns?.length ?? 2;
      return Array.from({ length: count }, (_, i) => show(columnSources(result, i, count)));
    };
    const union = "FROM (SELECT * FROM users UNION SELECT * FROM old_users) s";
    // Before: every column of these got the set operation's `*` (any column), count(*) too.
    expect(of(`SELECT count(*) ${union}`)).toEqual([""]);
    expect(of(`SELECT count(*), 1, 'x'::text, NULL, pg_catalog.count(x), max(x) ${union}`)).toEqual([
      "",
      "",
      "",
      "",
      "",
      "*,x",
    ]);
    expect(of(`SELECT count(*) OVER (PARTITION BY x), lower(x) ${union}`)).toEqual(["", "*,x"]);
    // Not the built-in count, an expression over one, or a cast of a value: what every column gets.
    expect(of(`SELECT public.count(x), count(*) + x, (count(*))::text, x::text ${union}`)).toEqual([
      "*,x",
      "*,x",
      "*",
      "*,x",
    ]);
    // A set operation's column is its branches' together: a count beside an email is an email.
    expect(of("SELECT count(*), 1 FROM users UNION ALL SELECT email, 2 FROM users")).toEqual(["email", ""]);
    // With `*` in the output list the columns cannot be placed: every computed column gets it all.
    expect(of(`SELECT *, count(*) OVER () ${union}`)).toEqual(["*", "*"]);
  });

  it("is absent for statements that return no table data", () => {
    for (const sql of [
      "UPDATE users SET n = 1",
      "INSERT INTO t SELECT email FROM users",
      "EXPLAIN SELECT lower(email) FROM users",
      "CREATE TABLE x AS SELECT email FROM users",
      "SET search_path = x",
      "EXECUTE p",
      "FETCH 10 FROM c",
    ])
      expect(lineage(sql), sql).toBeUndefined();
  });

  it("lists every column a statement reads, predicates included (what an error could quote)", () => {
    const reads = (sql: string) => {
      const info = statementsOf(classifier.classify(sql, ON))[0];
      return info?.reads ? show(info.reads) : undefined;
    };
    expect(reads("SELECT * FROM users")).toBe("");
    expect(reads("SELECT count(*) FROM users")).toBe("");
    expect(reads("SELECT id FROM users WHERE email::int = 1 ORDER BY note")).toBe("email,id,note");
    expect(reads("SELECT 1 FROM users u JOIN o ON o.x = u.y GROUP BY z HAVING max(w) > 0")).toBe("w,x,y,z");
    expect(reads("SELECT 1 FROM users u WHERE u::text LIKE '%'")).toBe("*,u");
    expect(reads("SELECT b::int FROM users u(a, b)")).toBe("*,b");
    expect(reads("WITH c(a, x) AS (SELECT * FROM users) SELECT x::int FROM c")).toBe("*,x");
    expect(reads("SELECT 1 FROM users u WHERE (u.to_jsonb ->> 'e')::int = 1")).toBe("*,to_jsonb");
    expect(reads("UPDATE users SET n = 1 WHERE email::int = 2")).toBe("email");
    expect(reads("DECLARE c CURSOR FOR SELECT 1 FROM users WHERE email::int = 2")).toBe("email");
    expect(reads("SELECT 1 WHERE EXISTS (SELECT * FROM t WHERE t.secret::int = 0)")).toBe("secret");
  });

  it("names the cursor of DECLARE, FETCH, MOVE and CLOSE", () => {
    const cursor = (sql: string) => statementsOf(classifier.classify(sql, ON))[0]?.cursor;
    expect(cursor("DECLARE c CURSOR WITH HOLD FOR SELECT 1")).toEqual({ op: "declare", name: "c", hold: true });
    expect(cursor("DECLARE c NO SCROLL CURSOR FOR SELECT 1")).toEqual({ op: "declare", name: "c", hold: false });
    expect(cursor('FETCH FORWARD 5 FROM "C"')).toEqual({ op: "fetch", name: "C" });
    expect(cursor("MOVE c")).toEqual({ op: "fetch", name: "c" });
    expect(cursor("CLOSE c")).toEqual({ op: "close", name: "c" });
    expect(cursor("CLOSE ALL")).toEqual({ op: "close", name: null });
    expect(cursor("SELECT 1")).toBeUndefined();
  });
});
