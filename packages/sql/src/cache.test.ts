import { beforeAll, describe, expect, it } from "vitest";
import { createClassifier, loadSqlParser, type Classification, type Classifier, type LexicalState } from "./index.js";
import { normalizeForCache } from "./normalize.js";
import { comparable, OFF, ON, statementsOf } from "./test-helpers.js";

let uncached: Classifier;
beforeAll(async () => {
  await loadSqlParser();
  uncached = createClassifier({ cacheEntries: 0 });
});

describe("the classification cache", () => {
  it("serves texts that differ only in literals from one entry, with each text's own statement text", () => {
    const classifier = createClassifier();
    const first = classifier.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", ON);
    const second = classifier.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123456;", ON);
    expect(first.ok && first.cached).toBe(false);
    expect(second.ok && second.cached).toBe(true);
    expect(statementsOf(second)[0]!.text).toBe("SELECT abalance FROM pgbench_accounts WHERE aid = 123456");
    expect(comparable(second)).toEqual(
      comparable(uncached.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123456;", ON)),
    );
    expect(classifier.cacheSize).toBe(1);
  });

  it("re-slices multi-statement hits whose literals have other lengths", () => {
    const classifier = createClassifier();
    classifier.classify("SELECT 'a' FROM t WHERE x = 1; UPDATE t SET y = 'b' WHERE id = 2; SELECT 3", ON);
    const hit = classifier.classify(
      "SELECT 'a much longer string; with a semicolon' FROM t WHERE x = 1000000; UPDATE t SET y = 'bb' WHERE id = 2; SELECT 33333",
      ON,
    );
    expect(hit.ok && hit.cached).toBe(true);
    expect(statementsOf(hit).map((s) => s.text)).toEqual([
      "SELECT 'a much longer string; with a semicolon' FROM t WHERE x = 1000000",
      "UPDATE t SET y = 'bb' WHERE id = 2",
      "SELECT 33333",
    ]);
  });

  it("caches results that depend on literal values under the exact text only", () => {
    const classifier = createClassifier();
    const pairs: Array<[string, string]> = [
      ["SET search_path = 'a'", "SET search_path = 'evil'"],
      ["SET ROLE 'none'", "SET ROLE 'admin'"],
      ["SET session_authorization = 'x'", "SET session_authorization = 'y'"],
      ["EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t"],
      ["EXPLAIN (ANALYZE 'false') DELETE FROM t", "EXPLAIN (ANALYZE 'true') DELETE FROM t"],
      ["SELECT 1; SET ROLE 'none'", "SELECT 1; SET ROLE 'x'"],
      // set_config: the setting's name and the value decide, whichever comes first.
      ["SELECT set_config('role', 'x', false)", "SELECT set_config('search_path', 'x', false)"],
      ["SELECT set_config('work_mem', 'x', false)", "SELECT set_config('role', 'x', false)"],
      ["SELECT set_config('role', 'x', false)", "SELECT set_config('role', 'none', false)"],
      [
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'",
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
      ],
      [
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'session_authorization'",
      ],
    ];
    for (const [a, b] of pairs) {
      expect(normalizeForCache(a)?.key).toBe(normalizeForCache(b)?.key);
      for (const text of [a, b, a, b])
        expect(comparable(classifier.classify(text, ON))).toEqual(comparable(uncached.classify(text, ON)));
    }
    expect(statementsOf(classifier.classify("SET ROLE 'admin'", ON))[0]!.statementClass).toBe("admin");
    expect(statementsOf(classifier.classify("SET search_path = 'evil'", ON))[0]!.searchPath).toEqual(["evil"]);
    const repeated = classifier.classify("SET search_path = 'evil'", ON);
    expect(repeated.ok && repeated.cached).toBe(true);
  });

  it("keys by the lexical state", () => {
    const classifier = createClassifier();
    const text = "SELECT '\\' , $$ '; DROP TABLE x; -- $$";
    expect(statementsOf(classifier.classify(text, ON))[0]!.statementClass).toBe("read");
    expect(statementsOf(classifier.classify(text, OFF))[0]!.statementClass).toBe("dynamic");
    expect(statementsOf(classifier.classify(text, ON))[0]!.statementClass).toBe("read");
  });

  it("is bounded", () => {
    const classifier = createClassifier({ cacheEntries: 3 });
    for (let i = 0; i < 10; i++) classifier.classify(`SELECT * FROM t${i}`, ON);
    expect(classifier.cacheSize).toBe(3);
    // Recently used entries survive eviction.
    classifier.classify("SELECT * FROM t9", ON);
    classifier.classify("SELECT * FROM t10", ON);
    const again = classifier.classify("SELECT * FROM t9", ON);
    expect(again.ok && again.cached).toBe(true);
  });

  it("bounds the total length of cached texts", () => {
    const classifier = createClassifier({ maxCacheChars: 100 });
    for (let i = 0; i < 20; i++) classifier.classify(`SELECT * FROM table_number_${i}`, ON);
    expect(classifier.cacheSize).toBeLessThanOrEqual(100 / "1NSELECT * FROM table_number_1".length);
  });

  it("does not cache long texts, errors, or anything when disabled", () => {
    const classifier = createClassifier({ maxCachedTextLength: 20 });
    classifier.classify("SELECT * FROM a_rather_long_table_name", ON);
    classifier.classify("SELEC 1", ON);
    expect(classifier.cacheSize).toBe(0);
    classifier.classify("SELECT 1", ON);
    expect(classifier.cacheSize).toBe(1);
    const none = createClassifier({ cacheEntries: 0 });
    none.classify("SELECT 1", ON);
    const again = none.classify("SELECT 1", ON);
    expect(again.ok && again.cached).toBe(false);
    expect(none.cacheSize).toBe(0);
  });

  it("hands out frozen shared data, so callers cannot poison the cache", () => {
    const classifier = createClassifier();
    const info = statementsOf(classifier.classify("SELECT * FROM t WHERE x = 1", ON))[0]!;
    expect(Object.isFrozen(info.actions)).toBe(true);
    expect(() => info.actions.push({ action: "db:read", tables: [] })).toThrow();
    expect(() => (info.tables[0]!.name = "other")).toThrow();
  });

  it("gives texts of one shape one fingerprint", () => {
    const a = uncached.classify("SELECT * FROM t WHERE x = 1", ON);
    const b = uncached.classify("select *   from t where x = 99", ON);
    const c = uncached.classify("SELECT * FROM u WHERE x = 1", ON);
    expect(a.ok && a.fingerprint).toMatch(/^[0-9a-f]{16}$/);
    expect(a.ok && a.fingerprint).toBe(b.ok && b.fingerprint);
    expect(a.ok && a.fingerprint).not.toBe(c.ok && c.fingerprint);
  });
});

// ---------------------------------------------------------------------------------------------
// Fuzz: texts from an alphabet full of lexical traps. Whenever two texts share a normalized key,
// their uncached classifications must be the same; and every cached answer must equal the
// uncached one (statement texts included).

/** A small deterministic PRNG (mulberry32), so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const INTEGERS = ["0", "1", "42", "007", "2147483647"];
const NUMERICS = ["2147483648", "1.5", ".5", "1e3", "3.", "99999999999999999999"];
const STRINGS = ["'a'", "''", "'x''y'", "'; DELETE FROM t; --'", "'$$'", "' '' '", "'\n'", "'/*'", "'--'", "'\"'"];
const TRAPS = [
  "$1",
  "$2",
  "$$",
  "$q$",
  "$",
  "E",
  "e",
  "U&",
  "u&",
  "B",
  "X",
  "N",
  "\\",
  "--",
  "/*",
  "*/",
  "\n",
  "\t",
  "\r\n",
  '"',
  '"q"',
  '"a""b"',
  "'",
  "&",
  "0x1F",
  "1_000",
  "..",
  ".",
  "é",
  "::int",
  "e1",
  "1e",
  "_",
  "x",
  "t1",
  ";",
  ",",
  "(",
  ")",
  "=",
  "+",
  "-",
  "*",
  "/",
  "<",
  ">",
  "|",
  "[",
  "]",
];
const WORDS = [
  "SELECT",
  "SELECT * FROM t",
  "DELETE FROM t",
  "FROM t",
  "WHERE x =",
  "AND",
  "LIMIT",
  "VALUES (",
  "INSERT INTO t VALUES (",
  "UPDATE t SET a =",
  "SET search_path =",
  "SET ROLE",
  "EXPLAIN (ANALYZE",
  "DELETE FROM t)",
  "SELECT my_func(",
  "AS",
  "CREATE TABLE x AS SELECT",
  "COPY t FROM",
  "STDIN",
  "'/etc/passwd'",
  "DO",
  "WITH c AS (DELETE FROM t RETURNING 1)",
];

function literal(random: () => number): string {
  const pool = [INTEGERS, NUMERICS, STRINGS][Math.floor(random() * 3)]!;
  return pool[Math.floor(random() * pool.length)]!;
}

/** Mostly valid statements with literal slots (`?`), so that many texts share keys and get cached. */
const SHAPES = [
  "SELECT * FROM t WHERE x = ? AND y = ?",
  "SELECT ?, ? FROM t; DELETE FROM t WHERE id = ?",
  "INSERT INTO t VALUES (?, ?) RETURNING ?",
  "UPDATE t SET a = ? WHERE b = ?;",
  "SELECT ?::text LIMIT ?",
  "COPY t FROM ?",
  "COPY t TO ? WITH (FORMAT ?)",
  "SET search_path = ?, ?",
  "SET ROLE ?",
  "SET standard_conforming_strings = ?; SELECT ?",
  "EXPLAIN (ANALYZE ?) DELETE FROM t WHERE x = ?",
  "SELECT * FROM t WHERE x IN (?, ?, ?)",
  "SELECT my_func(?), lower(?)",
  "SELECT ?; SELECT ?; SELECT ?",
  "SELECT * FROM t FETCH FIRST ? ROWS ONLY",
  "PREPARE p AS SELECT * FROM t WHERE id = ? ; EXECUTE p",
  "SELECT ? FROM t WHERE ? = ?",
];

function shapeTemplate(random: () => number): Array<string | null> {
  const shape = SHAPES[Math.floor(random() * SHAPES.length)]!;
  const parts: Array<string | null> = [];
  for (const [i, piece] of shape.split("?").entries()) {
    if (i > 0) {
      // Sometimes a trap right before the literal: E'..', U&'..', $1, a comment, a backslash...
      if (random() < 0.15) parts.push(TRAPS[Math.floor(random() * TRAPS.length)]!);
      parts.push(null);
    }
    parts.push(piece);
  }
  return parts;
}

function template(random: () => number): Array<string | null> {
  if (random() < 0.5) return shapeTemplate(random);
  const parts: Array<string | null> = [];
  const count = 2 + Math.floor(random() * 8);
  for (let i = 0; i < count; i++) {
    const r = random();
    if (r < 0.35)
      parts.push(null); // a literal slot
    else if (r < 0.7) parts.push(WORDS[Math.floor(random() * WORDS.length)]!);
    else parts.push(TRAPS[Math.floor(random() * TRAPS.length)]!);
    if (random() < 0.7) parts.push(" ");
  }
  return parts;
}

function texts(random: () => number, count: number): string[] {
  const out: string[] = [];
  while (out.length < count) {
    const parts = template(random);
    const slots = parts.map((part) => (part === null ? literal(random) : part));
    // Several variants of one template: same words and traps, other literals of the same kind.
    for (let v = 0; v < 4; v++) {
      out.push(
        parts
          .map((part, i) => {
            if (part !== null) return part;
            const base = slots[i]!;
            const pool = INTEGERS.includes(base) ? INTEGERS : NUMERICS.includes(base) ? NUMERICS : STRINGS;
            return v === 0 ? base : pool[Math.floor(random() * pool.length)]!;
          })
          .join(""),
      );
    }
  }
  return out;
}

/** A classification without what legitimately differs between texts of one shape. */
function shapeOf(result: Classification): unknown {
  if (!result.ok) return "error";
  return result.statements.map(({ text: _text, ...shape }) => shape);
}

// MOAT_SQL_FUZZ_SCALE=10 MOAT_SQL_FUZZ_SEED=123 for a longer run with other texts.
const SCALE = Number(process.env.MOAT_SQL_FUZZ_SCALE ?? 1);
const SEED = Number(process.env.MOAT_SQL_FUZZ_SEED ?? 20240611);
const FUZZ_TIMEOUT = 60_000 * SCALE;

describe("normalizer fuzz", () => {
  const lexicalStates: LexicalState[] = [ON, OFF];

  it(
    "never gives one key to texts that classify differently",
    () => {
      const random = prng(SEED);
      const corpus = texts(random, 6000 * SCALE);
      let groupsChecked = 0;
      for (const lexical of lexicalStates) {
        const groups = new Map<string, string[]>();
        for (const text of corpus) {
          const normalized = normalizeForCache(text);
          if (!normalized || normalized.spans.length === 0) continue;
          const group = groups.get(normalized.key) ?? [];
          if (!group.includes(text)) group.push(text);
          groups.set(normalized.key, group);
        }
        for (const group of groups.values()) {
          if (group.length < 2) continue;
          const results = group.map((text) => uncached.classify(text, lexical));
          // Results that depend on literal values are cached by exact text; the others must agree.
          const valid = results.filter((r) => r.ok) as Array<Extract<Classification, { ok: true }>>;
          if (valid.some((r) => r.statements.some((s) => s.kind === "VariableSetStmt" || s.kind === "ExplainStmt")))
            continue;
          groupsChecked++;
          const first = shapeOf(valid[0] ?? results[0]!);
          for (const [i, result] of results.entries()) {
            if (!result.ok) continue; // errors are never cached
            expect(shapeOf(result), `${JSON.stringify(group[0])} vs ${JSON.stringify(group[i])}`).toEqual(first);
          }
        }
      }
      expect(groupsChecked).toBeGreaterThan(100);
    },
    FUZZ_TIMEOUT,
  );

  it(
    "answers from the cache exactly what it would answer without it",
    () => {
      const random = prng(SEED + 1);
      const corpus = texts(random, 3000 * SCALE);
      const small = createClassifier({ cacheEntries: 200 });
      const big = createClassifier();
      let hits = 0;
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < corpus.length; i++) {
          const text = corpus[Math.floor(random() ** 3 * corpus.length)]!; // skewed: many repeats
          const lexical = random() < 0.8 ? ON : OFF;
          const expected = comparable(uncached.classify(text, lexical));
          for (const classifier of [small, big]) {
            const result = classifier.classify(text, lexical);
            if (result.ok && result.cached) hits++;
            expect(comparable(result), JSON.stringify(text)).toEqual(expected);
          }
        }
      }
      expect(hits).toBeGreaterThan(1000);
      expect(small.cacheSize).toBeLessThanOrEqual(200);
    },
    FUZZ_TIMEOUT,
  );
});
