import { describe, expect, it } from "vitest";
import { keyOffsetToText, normalizeForCache, textOffsetToKey } from "./normalize.js";

const key = (text: string) => normalizeForCache(text)?.key;

describe("normalizeForCache", () => {
  it("replaces numbers and plain strings by typed placeholders", () => {
    const a = normalizeForCache("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;");
    const b = normalizeForCache("SELECT abalance FROM pgbench_accounts WHERE aid = 7;");
    expect(a?.key).toBe("SELECT abalance FROM pgbench_accounts WHERE aid = \u0001;");
    expect(a?.key).toBe(b?.key);
    expect(a?.spans).toEqual([50, 55]);
    expect(key("SELECT 'a', 'it''s', ''")).toBe("SELECT \u0003, \u0003, \u0004");
    expect(key("SELECT 1.5, .5, 1e3, 1E-3, 2.")).toBe("SELECT \u0002, \u0002, \u0002, \u0002, \u0002");
    expect(key("SELECT x FROM t WHERE y = -1")).toBe("SELECT x FROM t WHERE y = -\u0001");
    expect(key("SELECT a[1:2], 1::int FROM t")).toBe("SELECT a[\u0001:\u0001], \u0001::int FROM t");
  });

  it("keeps the literal type PostgreSQL's lexer gives (ICONST only up to 2^31-1)", () => {
    expect(key("SELECT 2147483647")).toBe("SELECT \u0001");
    expect(key("SELECT 0002147483647")).toBe("SELECT \u0001");
    expect(key("SELECT 2147483648")).toBe("SELECT \u0002");
    expect(key("SELECT 99999999999")).toBe("SELECT \u0002");
    expect(key("SELECT 0, 000, 0.0")).toBe("SELECT \u0005, \u0005, \u0002");
  });

  it("keeps zero and the empty string apart (libpg-query omits default values from its trees)", () => {
    expect(key("COPY t FROM ''")).not.toBe(key("COPY t FROM 'x'"));
    expect(key("EXPLAIN (ANALYZE 0) SELECT 1")).not.toBe(key("EXPLAIN (ANALYZE 1) SELECT 1"));
  });

  it("keeps identifiers, quoted identifiers and keywords as they are", () => {
    expect(key('SELECT t1.c2, "it\'s ""x"" 1" FROM s1.t1')).toBe('SELECT t1.c2, "it\'s ""x"" 1" FROM s1.t1');
    expect(key("SELECT x1 FROM t2")).toBe("SELECT x1 FROM t2");
  });

  it.each([
    ["$1 parameters", "SELECT * FROM t WHERE id = $1"],
    ["dollar quotes", "SELECT $$a$$"],
    ["tagged dollar quotes", "SELECT $q$a$q$"],
    ["$ in identifiers", "SELECT a$b FROM t WHERE x = 1"],
    ["E strings", "SELECT E'a'"],
    ["e strings", "SELECT e'a'"],
    ["U& strings", "SELECT U&'a'"],
    ["U& identifiers", 'SELECT U&"a"'],
    ["bit strings", "SELECT B'101'"],
    ["hex strings", "SELECT X'1F'"],
    ["national strings", "SELECT N'a'"],
    ["a string glued to an identifier", "SELECT foo'a'"],
    ["a string glued to a number", "SELECT 1'a'"],
    ["backslashes", "SELECT 'a\\'"],
    ["backslashes outside strings", "SELECT 1 \\ 2"],
    ["-- comments", "SELECT 1 -- c"],
    ["/* comments */", "SELECT /* c */ 1"],
    ["operators ending in a comment", "SELECT 1 +-- c\n"],
    ["non-ASCII", "SELECT 'é'"],
    ["non-ASCII identifiers", "SELECT été FROM t"],
    ["form feeds", "SELECT\f1"],
    ["vertical tabs", "SELECT\u000b1"],
    ["NUL", "SELECT 1\u0000"],
    ["adjacent strings across a newline", "SELECT 'a'\n'b'"],
    ["adjacent strings on one line", "SELECT 'a' 'b'"],
    ["adjacent strings with tabs and CRs", "SELECT 'a'\t\r\n\t'b'"],
    ["unterminated strings", "SELECT 'a"],
    ["unterminated identifiers", 'SELECT "a'],
    ["exponent without digits", "SELECT 1e"],
    ["exponent sign without digits", "SELECT 1e+"],
    ["hexadecimal integers", "SELECT 0x1F"],
    ["octal integers", "SELECT 0o17"],
    ["binary integers", "SELECT 0b101"],
    ["underscores in numbers", "SELECT 1_000"],
    ["numbers glued to identifiers", "SELECT 123abc"],
    ["numbers followed by ..", "SELECT 1..2"],
    ["numbers followed by .", "SELECT 1.2.3"],
    ["numbers after a dot", "SELECT t.1"],
    ["numbers before a quoted identifier", 'SELECT 1"a"'],
  ])("falls back to the exact text on %s", (_name, text) => {
    expect(normalizeForCache(text)).toBeUndefined();
  });

  it("returns the text itself when there is nothing to replace", () => {
    expect(normalizeForCache("SELECT x FROM t")).toEqual({ key: "SELECT x FROM t", spans: [] });
  });

  it("maps offsets between text and key", () => {
    const text = "SELECT 'abc' FROM t WHERE x = 12345; SELECT 1";
    const { key: k, spans } = normalizeForCache(text)!;
    const second = text.indexOf("SELECT 1");
    const inKey = textOffsetToKey(second, spans);
    expect(k.slice(inKey, inKey + 8)).toBe("SELECT \u0001");
    expect(keyOffsetToText(inKey, spans)).toBe(second);
    expect(keyOffsetToText(textOffsetToKey(text.length, spans), spans)).toBe(text.length);
    expect(textOffsetToKey(0, spans)).toBe(0);
  });
});
