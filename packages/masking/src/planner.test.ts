import { createHmac } from "node:crypto";
import type { MaskRule } from "@moat/policy";
import { describe, expect, it } from "vitest";
import { binaryNumberText, type ColumnInfo } from "./columns.js";
import { compileMasks, type MaskPlanner, type ResultPlan } from "./planner.js";

const KEY = Buffer.alloc(32, 7);
const USERS = { schema: "public", name: "users" };
const ORDERS = { schema: "public", name: "orders" };

const TEXT = 25;
const INT4 = 23;
const INT8 = 20;
const UUID = 2950;
const TIMESTAMPTZ = 1184;
const JSON_OID = 114;
const JSONB = 3802;

function col(name: string, extra: Partial<ColumnInfo> = {}): ColumnInfo {
  return { name, typeOid: TEXT, format: 0, ...extra };
}

function planner(rules: MaskRule[]): MaskPlanner {
  const compiled = compileMasks(rules, { hashKey: KEY });
  if (!compiled) throw new Error("no planner");
  return compiled;
}

function plan(rules: MaskRule[], columns: ColumnInfo[]): ResultPlan {
  const result = planner(rules).plan(columns);
  if (!result) throw new Error("no plan");
  return result;
}

/** Masks one text value of a one-column result. */
function maskOne(rules: MaskRule[], value: string | Buffer, column: ColumnInfo = col("c")): string | null {
  const out = plan(rules, [column]).maskValue(0, Buffer.isBuffer(value) ? value : Buffer.from(value));
  return out === null ? null : out.toString();
}

/** numeric's binary form: base-10000 digits with their weight and display scale. */
function numeric(weight: number, dscale: number, digits: number[], sign = 0): Buffer {
  const b = Buffer.alloc(8 + 2 * digits.length);
  b.writeInt16BE(digits.length, 0);
  b.writeInt16BE(weight, 2);
  b.writeUInt16BE(sign, 4);
  b.writeInt16BE(dscale, 6);
  digits.forEach((d, i) => b.writeInt16BE(d, 8 + 2 * i));
  return b;
}

/** A bigint's binary form. */
function int8(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(n);
  return b;
}

function hmac16(value: string | Buffer): string {
  return createHmac("sha256", KEY).update(value).digest("hex").slice(0, 16);
}

describe("compileMasks", () => {
  it("returns undefined without rules", () => {
    expect(compileMasks([])).toBeUndefined();
  });

  it("rejects a hash key shorter than 16 bytes", () => {
    expect(() => compileMasks([{ columns: ["a"], style: "hash" }], { hashKey: Buffer.alloc(15) })).toThrow(RangeError);
    expect(compileMasks([{ columns: ["a"], style: "hash" }], { hashKey: Buffer.alloc(16) })).toBeDefined();
  });

  it("defaults the style to full", () => {
    expect(maskOne([{ columns: ["c"] }], "secret value")).toBe("****");
  });

  it("copies the hash key", () => {
    const key = Buffer.alloc(32, 7);
    const masks = compileMasks([{ columns: ["c"], style: "hash" }], { hashKey: key })!;
    key.fill(0);
    const out = masks.plan([col("c")])!.maskValue(0, Buffer.from("x"));
    expect(out!.toString()).toBe(`hash:${hmac16("x")}`);
  });

  it("uses one random key per process by default", () => {
    const a = compileMasks([{ columns: ["c"], style: "hash" }])!.plan([col("c")])!;
    const b = compileMasks([{ columns: ["c"], style: "hash" }])!.plan([col("c")])!;
    const value = Buffer.from("alice");
    expect(a.maskValue(0, value)!.toString()).toBe(b.maskValue(0, value)!.toString());
    expect(a.maskValue(0, value)!.toString()).not.toBe(`hash:${hmac16("alice")}`);
  });
});

describe("plans", () => {
  it("is undefined when no column needs work", () => {
    const masks = planner([{ columns: ["email"], style: "full" }]);
    expect(masks.plan([col("id", { typeOid: INT4 }), col("name")])).toBeUndefined();
    expect(masks.plan([])).toBeUndefined();
  });

  it("is undefined for detectors when no column can hold a match", () => {
    const masks = planner([{ detectors: ["email", "credit-card"], style: "full" }]);
    expect(
      masks.plan([
        col("id", { typeOid: INT4 }),
        col("uid", { typeOid: UUID }),
        col("at", { typeOid: TIMESTAMPTZ }),
        col("small", { typeOid: INT4, format: 1 }),
      ]),
    ).toBeUndefined();
  });

  it("marks exactly the columns that need work, with reasons for audit", () => {
    const result = plan(
      [
        { columns: ["users.email"], style: "partial" },
        { detectors: ["credit-card"], style: "full" },
      ],
      [
        col("id", { table: USERS, typeOid: INT4 }),
        col("email", { table: USERS }),
        col("note", { table: USERS }),
        col("total", { table: ORDERS, typeOid: INT4, format: 1 }),
      ],
    );
    expect(result.columns[0]).toBeUndefined();
    expect(result.columns[1]).toEqual({
      style: "partial",
      detectors: [{ detector: "credit-card", style: "full" }],
      reason: "column users.email (partial); detectors credit-card",
      valueKind: "text",
    });
    expect(result.columns[2]).toEqual({
      detectors: [{ detector: "credit-card", style: "full" }],
      reason: "detectors credit-card",
      valueKind: "text",
    });
    expect(result.columns[3]).toBeUndefined();
    expect(result.maskedColumns).toEqual(["users.email", "users.note"]);
  });

  it("returns the same buffer for unplanned columns and out-of-range indexes", () => {
    const result = plan([{ columns: ["email"], style: "full" }], [col("id"), col("email")]);
    const value = Buffer.from("42");
    expect(result.maskValue(0, value)).toBe(value);
    expect(result.maskValue(7, value)).toBe(value);
  });
});

describe("column patterns", () => {
  const masked = (pattern: string, column: ColumnInfo): boolean =>
    planner([{ columns: [pattern], style: "full" }]).plan([column]) !== undefined;

  it("matches a bare column name in any table, or none", () => {
    expect(masked("email", col("email", { table: USERS }))).toBe(true);
    expect(masked("email", col("email", { table: ORDERS }))).toBe(true);
    expect(masked("email", col("email"))).toBe(true);
    expect(masked("email", col("email2", { table: USERS }))).toBe(false);
  });

  it("globs with *", () => {
    expect(masked("*_ssn", col("user_ssn"))).toBe(true);
    expect(masked("*_ssn", col("ssn"))).toBe(false);
    expect(masked("*.card_number", col("card_number", { table: ORDERS }))).toBe(true);
    expect(masked("*", col("anything"))).toBe(true);
    expect(masked("users.*", col("anything", { table: USERS }))).toBe(true);
    expect(masked("users.*", col("anything", { table: ORDERS }))).toBe(false);
    expect(masked("pub*.users.e*l", col("email", { table: USERS }))).toBe(true);
  });

  it("qualifies by table and schema", () => {
    expect(masked("users.email", col("email", { table: USERS }))).toBe(true);
    expect(masked("users.email", col("email", { table: { schema: "audit", name: "users" } }))).toBe(true);
    expect(masked("users.email", col("email", { table: ORDERS }))).toBe(false);
    expect(masked("public.users.email", col("email", { table: USERS }))).toBe(true);
    expect(masked("public.users.email", col("email", { table: { schema: "audit", name: "users" } }))).toBe(false);
  });

  it("matches qualified patterns on the column part when the table is unknown (fail closed)", () => {
    expect(masked("users.email", col("email"))).toBe(true);
    expect(masked("public.users.email", col("email"))).toBe(true);
    expect(masked("public.users.email", col("name"))).toBe(false);
  });

  it("matches the source column behind an alias, and still the label", () => {
    const aliased = col("e", { table: USERS, sourceColumn: "email" });
    expect(masked("email", aliased)).toBe(true);
    expect(masked("users.email", aliased)).toBe(true);
    expect(masked("public.users.email", aliased)).toBe(true);
    expect(masked("orders.email", aliased)).toBe(false);
    expect(masked("e*l", col("x", { table: USERS, sourceColumn: "Email" }))).toBe(true);
    // A label that looks masked is masked even when it holds another column (over-masking).
    expect(masked("email", col("email", { table: USERS, sourceColumn: "note" }))).toBe(true);
    expect(masked("users.note", col("email", { table: USERS, sourceColumn: "note" }))).toBe(true);
    expect(masked("users.id", col("email", { table: USERS, sourceColumn: "note" }))).toBe(false);
    expect(plan([{ columns: ["users.email"] }], [aliased]).maskedColumns).toEqual(["users.email"]);
  });

  it("masks a computed column whose values may come from a masked column, or from any column", () => {
    const lower = col("lower", { derivedFrom: { names: ["id", "Email"], anyColumn: false } });
    expect(masked("email", lower)).toBe(true);
    expect(masked("e*l", lower)).toBe(true);
    expect(masked("users.email", lower)).toBe(true); // the table is unknown: column part alone
    expect(masked("public.users.email", lower)).toBe(true);
    expect(masked("ssn", lower)).toBe(false);
    expect(masked("users.ssn", lower)).toBe(false);
    const row = col("row_to_json", { derivedFrom: { names: [], anyColumn: true } });
    expect(masked("ssn", row)).toBe(true);
    expect(masked("public.users.ssn", row)).toBe(true);
    expect(masked("ssn", col("count", { derivedFrom: { names: [], anyColumn: false } }))).toBe(false);
    // A plain column is named by its table; what a computed column would derive from is not asked.
    expect(masked("email", col("id", { table: USERS, derivedFrom: { names: ["email"], anyColumn: true } }))).toBe(
      false,
    );
    // Detectors are unaffected: they look at values.
    expect(
      planner([{ detectors: ["email"], style: "full" }]).plan([
        col("n", { typeOid: INT4, derivedFrom: { names: ["email"], anyColumn: true } }),
      ]),
    ).toBeUndefined();
    // A computed value's parts are the query's choice: partial and hash mask it whole (review 14:
    // `'a@' || replace(email, '@', '.')` kept the whole address as the "domain" partial shows).
    expect(plan([{ columns: ["email"], style: "partial" }], [lower]).columns[0]?.style).toBe("full");
    expect(plan([{ columns: ["email"], style: "hash" }], [lower]).columns[0]?.style).toBe("full");
    expect(plan([{ columns: ["email"], style: "null" }], [lower]).columns[0]?.style).toBe("null");
    const moved = Buffer.from("a@user5.example.com");
    const computed = planner([{ detectors: ["email"], style: "partial" }]).plan([
      col("x", { derivedFrom: { names: ["note"], anyColumn: false } }),
    ]);
    expect(computed?.maskValue(0, moved)?.toString()).toBe("****");
    const plain = planner([{ detectors: ["email"], style: "partial" }]).plan([col("note")]);
    expect(plain?.maskValue(0, moved)?.toString()).not.toBe("****");
  });

  it("says whether a value computed from some columns is masked whole, for error messages", () => {
    const p = planner([
      { columns: ["users.email"], style: "partial" },
      { detectors: ["credit-card"], style: "full" },
    ]);
    expect(p.masksSources({ names: ["id", "email"], anyColumn: false })).toBe(true);
    expect(p.masksSources({ names: ["id"], anyColumn: false })).toBe(false);
    expect(p.masksSources({ names: [], anyColumn: true })).toBe(true);
    expect(p.masksSources({ names: [], anyColumn: false })).toBe(false);
    expect(planner([{ columns: ["*"], style: "full" }]).masksSources({ names: [], anyColumn: false })).toBe(false);
    expect(planner([{ detectors: ["email"], style: "full" }]).masksSources({ names: ["email"], anyColumn: true })).toBe(
      false,
    );
    // Detectors mask free text: an error message quoting a card number.
    const message = 'invalid input syntax for type integer: "card 4111 1111 1111 1111"';
    expect(p.maskText(message)).toBe('invalid input syntax for type integer: "card ****"');
    expect(p.maskText('relation "users" does not exist')).toBe('relation "users" does not exist');
    expect(planner([{ columns: ["email"], style: "full" }]).maskText(message)).toBe(message);
  });

  it("ignores case", () => {
    expect(masked("Users.EMAIL", col("email", { table: USERS }))).toBe(true);
    expect(masked("email", col("Email", { table: { schema: "Public", name: "Users" } }))).toBe(true);
    expect(masked("PUBLIC.users.email", col("EMAIL", { table: { schema: "public", name: "USERS" } }))).toBe(true);
  });
});

describe("whole-value styles", () => {
  const rule = (style: MaskRule["style"]): MaskRule[] => [{ columns: ["c"], style }];

  it("full is four stars whatever the length", () => {
    expect(maskOne(rule("full"), "")).toBe("****");
    expect(maskOne(rule("full"), "x")).toBe("****");
    expect(maskOne(rule("full"), "x".repeat(1000))).toBe("****");
  });

  it("null sends SQL NULL", () => {
    expect(maskOne(rule("null"), "anything")).toBeNull();
  });

  it("hash is a keyed, stable, truncated HMAC of the bytes", () => {
    expect(maskOne(rule("hash"), "alice@example.com")).toBe(`hash:${hmac16("alice@example.com")}`);
    expect(maskOne(rule("hash"), "alice@example.com")).toMatch(/^hash:[0-9a-f]{16}$/);
    const other = compileMasks(rule("hash"), { hashKey: Buffer.alloc(32, 8) })!.plan([col("c")])!;
    expect(other.maskValue(0, Buffer.from("alice@example.com"))!.toString()).not.toBe(
      maskOne(rule("hash"), "alice@example.com"),
    );
  });

  it("partial keeps the last four characters of values longer than eight", () => {
    expect(maskOne(rule("partial"), "4111111111111111")).toBe("****1111");
    expect(maskOne(rule("partial"), "123456789")).toBe("****6789");
    expect(maskOne(rule("partial"), "12345678")).toBe("****");
    expect(maskOne(rule("partial"), "1234")).toBe("****");
    expect(maskOne(rule("partial"), "")).toBe("****");
  });

  it("partial counts characters, not bytes", () => {
    expect(maskOne(rule("partial"), "αβγδεζηθικ")).toBe("****ηθικ");
    expect(maskOne(rule("partial"), "😀".repeat(9))).toBe("****" + "😀".repeat(4));
    expect(maskOne(rule("partial"), "😀".repeat(8))).toBe("****");
    expect(maskOne(rule("partial"), "ñandú-ñandú")).toBe("****andú");
  });

  it("partial keeps an email's first character and domain", () => {
    expect(maskOne(rule("partial"), "john.doe@example.com")).toBe("j***@example.com");
    expect(maskOne(rule("partial"), "a@x.io")).toBe("a***@x.io");
    expect(maskOne(rule("partial"), "élodie@exemple.fr")).toBe("é***@exemple.fr");
    // Not an email as a whole: the generic rule.
    expect(maskOne(rule("partial"), "mail: john@example.com")).toBe("****.com");
  });
});

describe("union of rules", () => {
  const strongest = (styles: NonNullable<MaskRule["style"]>[]): string | null =>
    maskOne(
      styles.map((style) => ({ columns: ["c"], style })),
      "4111111111111111",
    );

  it("the strongest style wins: null > full > hash > partial", () => {
    expect(strongest(["partial", "null"])).toBeNull();
    expect(strongest(["null", "full", "hash", "partial"])).toBeNull();
    expect(strongest(["hash", "full"])).toBe("****");
    expect(strongest(["partial", "hash"])).toBe(`hash:${hmac16("4111111111111111")}`);
    expect(strongest(["partial", "partial"])).toBe("****1111");
  });

  it("a detector enabled twice keeps its strongest style", () => {
    const rules: MaskRule[] = [
      { detectors: ["email"], style: "partial" },
      { detectors: ["email", "phone"], style: "hash" },
    ];
    expect(maskOne(rules, "to alice@example.com")).toBe(`to hash:${hmac16("alice@example.com")}`);
  });

  it("a rule's columns and detectors act independently", () => {
    const result = plan([{ columns: ["note"], detectors: ["email"], style: "full" }], [col("note"), col("other")]);
    expect(result.maskValue(0, Buffer.from("nothing sensitive"))!.toString()).toBe("****");
    expect(result.maskValue(1, Buffer.from("mail bob@x.io"))!.toString()).toBe("mail ****");
  });

  it("a rule with neither columns nor detectors masks every column", () => {
    const result = plan([{ style: "full" }], [col("a"), col("b", { typeOid: INT4 })]);
    expect(result.maskValue(0, Buffer.from("x"))!.toString()).toBe("****");
    expect(result.maskValue(1, Buffer.from("1"))).toBeNull();
  });

  it("a stronger detector raises a column's whole-value style when it matches", () => {
    const rules: MaskRule[] = [
      { columns: ["c"], style: "partial" },
      { detectors: ["credit-card"], style: "full" },
      { detectors: ["api-key"], style: "null" },
    ];
    expect(maskOne(rules, "card 4111 1111 1111 1111")).toBe("****");
    expect(maskOne(rules, "key AKIAIOSFODNN7EXAMPLE")).toBeNull();
    expect(maskOne(rules, "just a long note")).toBe("****note");
  });

  it("weaker detectors do not run on a column masked whole", () => {
    const result = plan(
      [
        { columns: ["c"], style: "full" },
        { detectors: ["email"], style: "partial" },
      ],
      [col("c")],
    );
    expect(result.columns[0]!.detectors).toBeUndefined();
    expect(result.maskValue(0, Buffer.from("alice@example.com"))!.toString()).toBe("****");
  });
});

describe("detector substitution", () => {
  const ALL: MaskRule["detectors"] = ["email", "credit-card", "phone", "iban", "national-id", "api-key", "jwt"];
  const text = "contact alice@example.com or 4111 1111 1111 1111, ssn 123-45-6789.";

  it("replaces only the matches, each by its style", () => {
    expect(maskOne([{ detectors: ALL, style: "full" }], text)).toBe("contact **** or ****, ssn ****.");
    expect(maskOne([{ detectors: ALL, style: "partial" }], text)).toBe(
      "contact a***@example.com or ****1111, ssn ****6789.",
    );
    expect(maskOne([{ detectors: ALL, style: "hash" }], text)).toBe(
      `contact hash:${hmac16("alice@example.com")} or hash:${hmac16("4111 1111 1111 1111")}, ssn hash:${hmac16("123-45-6789")}.`,
    );
    // null cannot null part of a text: the substring is masked as full.
    expect(maskOne([{ detectors: ALL, style: "null" }], text)).toBe("contact **** or ****, ssn ****.");
  });

  it("mixes styles of different rules", () => {
    const rules: MaskRule[] = [
      { detectors: ["email"], style: "partial" },
      { detectors: ["credit-card"], style: "hash" },
      { detectors: ["national-id"], style: "full" },
    ];
    expect(maskOne(rules, text)).toBe(`contact a***@example.com or hash:${hmac16("4111 1111 1111 1111")}, ssn ****.`);
  });

  it("partial keeps short matches fully masked", () => {
    expect(maskOne([{ detectors: ["national-id"], style: "partial" }], "id AB123456C")).toBe("id ****456C");
    expect(
      maskOne([{ detectors: ["national-id"], style: "partial" }], "id 123456789".replace("123456789", "CE123456D")),
    ).toBe("id ****456D");
  });

  it("merges overlapping matches with the strongest style", () => {
    const rules: MaskRule[] = [
      { detectors: ["email"], style: "partial" },
      { detectors: ["phone"], style: "full" },
    ];
    expect(maskOne(rules, "sms +12125551234@sms.example.com now")).toBe("sms **** now");
  });

  it("rescans until masking exposes nothing more", () => {
    const rules: MaskRule[] = [{ detectors: ["email", "credit-card"], style: "full" }];
    expect(maskOne(rules, "bob@x.io-4111111111111111")).toBe("****-****");
  });

  it("returns the very same buffer when nothing matches", () => {
    const result = plan([{ detectors: ALL, style: "full" }], [col("c")]);
    for (const s of ["", "hello", "4111111111111112", "2024-01-15 10:30:00", "550e8400-e29b-41d4-a716-446655440000"]) {
      const value = Buffer.from(s);
      expect(result.maskValue(0, value)).toBe(value);
    }
  });

  it("keeps the bytes around matches as they were, even invalid UTF-8 and unicode", () => {
    const value = Buffer.concat([
      Buffer.from([0xff, 0xfe]),
      Buffer.from(" 名前 alice@example.com ✓ "),
      Buffer.from([0xc3]),
    ]);
    const out = plan([{ detectors: ["email"], style: "full" }], [col("c")]).maskValue(0, value)!;
    expect(out).toEqual(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(" 名前 **** ✓ "), Buffer.from([0xc3])]));
  });

  it("masks every match of a long value", () => {
    const value = Array.from({ length: 200 }, (_, i) => `user${i}@example.com`).join(", ");
    const out = maskOne([{ detectors: ["email"], style: "full" }], value)!;
    expect(out).toBe(Array.from({ length: 200 }, () => "****").join(", "));
  });
});

describe("representations", () => {
  const detect: MaskRule[] = [{ detectors: ["credit-card", "email"], style: "full" }];

  it("masks binary text-like types as text", () => {
    for (const typeOid of [25, 1043, 1042, 19, 705, 142]) {
      expect(maskOne(detect, "card 4111111111111111", col("c", { typeOid, format: 1 }))).toBe("card ****");
      expect(
        maskOne([{ columns: ["c"], style: "partial" }], "4111111111111111", col("c", { typeOid, format: 1 })),
      ).toBe("****1111");
    }
  });

  it("nulls masked values of other binary types", () => {
    const big = col("c", { typeOid: INT8, format: 1 });
    const value = Buffer.alloc(8);
    value.writeBigInt64BE(4111111111111111n);
    const result = plan([{ columns: ["c"], style: "partial" }], [big]);
    expect(result.columns[0]!.valueKind).toBe("typed");
    expect(result.maskValue(0, value)).toBeNull();
    expect(planner(detect).plan([col("c", { typeOid: INT4, format: 1 })])).toBeUndefined();
  });

  it("runs detectors on binary numbers as the text they stand for, and on bytea's bytes (review 35)", () => {
    const float8 = (x: number) => {
      const b = Buffer.alloc(8);
      b.writeDoubleBE(x);
      return b;
    };
    const masked = (typeOid: number, value: Buffer, format: 0 | 1 = 1) =>
      plan(detect, [col("c", { typeOid, format })]).maskValue(0, value);
    // A card number in a bigint, a double, money (cents) and numeric; ordinary numbers pass as they are.
    expect(masked(INT8, int8(4111111111111111n))).toBeNull();
    expect(masked(INT8, int8(-4111111111111111n))).toBeNull();
    const small = int8(1234n);
    expect(masked(INT8, small)).toBe(small);
    expect(masked(701, float8(4111111111111111))).toBeNull();
    const pi = float8(3.14159);
    expect(masked(701, pi)).toBe(pi);
    expect(masked(790, int8(4111111111111111n))).toBeNull();
    expect(masked(1700, numeric(3, 2, [4111, 1111, 1111, 1111]))).toBeNull();
    const price = numeric(1, 2, [12, 3456]);
    expect(masked(1700, price)).toBe(price);
    // Arrays of them: int8[] {1, NULL, 4111111111111111}.
    const array = Buffer.concat([
      Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, 1]),
      Buffer.from([0, 0, 0, 8]),
      int8(1n),
      Buffer.from([0xff, 0xff, 0xff, 0xff]),
      Buffer.from([0, 0, 0, 8]),
      int8(4111111111111111n),
    ]);
    expect(masked(1016, array)).toBeNull();
    // bytea: the bytes in binary format, their hex in text format (which clients decode), or the
    // printable bytes themselves under bytea_output = escape.
    expect(masked(17, Buffer.from("contact user1@example.com"))).toBeNull();
    expect(masked(17, Buffer.from("contact user1@example.com"), 0)).toBeNull();
    expect(masked(17, Buffer.from(`\\x${Buffer.from("card 4111 1111 1111 1111").toString("hex")}`), 0)).toBeNull();
    // Hex digits are not the bytes: \x4111... is 0x41 0x11 ..., no card number.
    const hexDigits = Buffer.from("\\x4111111111111111");
    expect(masked(17, hexDigits, 0)).toBe(hexDigits);
    const clean = Buffer.from(`\\x${Buffer.from("just bytes").toString("hex")}`);
    expect(masked(17, clean, 0)).toBe(clean);
  });

  it("reads binary numbers as their text format shows them", () => {
    const text = (typeOid: number, value: Buffer) => binaryNumberText(typeOid, value).toString("latin1");
    expect(text(1700, numeric(3, 2, [4111, 1111, 1111, 1111]))).toBe("4111111111111111.00");
    expect(text(1700, numeric(1, 4, [1, 2345, 6789]))).toBe("12345.6789");
    expect(text(1700, numeric(-1, 4, [42]))).toBe("0.0042");
    expect(text(1700, numeric(-2, 8, [1]))).toBe("0.00000001");
    expect(text(1700, numeric(-1, 1, [5000], 0x4000))).toBe("-0.5");
    expect(text(1700, numeric(2, 0, [1]))).toBe("100000000");
    expect(text(1700, numeric(0, 0, []))).toBe("0");
    expect(text(1700, numeric(0, 0, [], 0xc000))).toBe("NaN");
    const b = Buffer.alloc(4);
    b.writeFloatBE(0.5);
    expect(text(700, b)).toBe("0.5");
    // Not a value of the type: its own bytes.
    expect(text(20, Buffer.from("abc"))).toBe("abc");
    const short = Buffer.from([0, 5, 0, 0, 0, 0, 0, 0]); // five digits announced, none there
    expect(binaryNumberText(1700, short)).toBe(short);
    const truncated = Buffer.from([0, 0, 0, 9]); // an array cut after its dimension count
    expect(binaryNumberText(1016, truncated)).toBe(truncated);
  });

  it("nulls typed text-format values on a column rule or a detector match", () => {
    expect(maskOne([{ columns: ["c"], style: "hash" }], "42", col("c", { typeOid: INT4 }))).toBeNull();
    expect(maskOne(detect, "4111111111111111", col("c", { typeOid: INT8 }))).toBeNull();
    expect(maskOne(detect, "4111111111111111.00", col("c", { typeOid: 1700 }))).toBeNull();
    const value = Buffer.from("1234");
    expect(plan(detect, [col("c", { typeOid: INT8 })]).maskValue(0, value)).toBe(value);
  });

  it("treats unknown types as text in text format and opaque in binary", () => {
    const citext = 16_500;
    expect(maskOne(detect, "mail bob@x.io", col("c", { typeOid: citext }))).toBe("mail ****");
    expect(maskOne([{ columns: ["c"], style: "full" }], "x", col("c", { typeOid: citext }))).toBe("****");
    const binary = col("c", { typeOid: citext, format: 1 });
    expect(plan(detect, [binary]).columns[0]!.valueKind).toBe("opaque");
    expect(maskOne(detect, "mail bob@x.io", binary)).toBeNull();
    expect(maskOne([{ columns: ["c"], style: "full" }], "x", binary)).toBeNull();
    const clean = Buffer.from([0, 0, 0, 1, 0, 0, 0, 0x19]);
    expect(plan(detect, [binary]).maskValue(0, clean)).toBe(clean);
  });

  it("reads binary records, arrays and ranges to their leaves (review 41: asyncpg's ROW(card) in clear)", () => {
    const int32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeInt32BE(n);
      return b;
    };
    /** A binary record of (type, bytes or null) fields. */
    const record = (...fields: [number, Buffer | null][]) =>
      Buffer.concat([
        int32(fields.length),
        ...fields.flatMap(([oid, v]) => [int32(oid), int32(v ? v.length : -1), ...(v ? [v] : [])]),
      ]);
    /** A one-dimensional binary array of `element`. */
    const array = (element: number, ...items: Buffer[]) =>
      Buffer.concat([
        int32(1),
        int32(0),
        int32(element),
        int32(items.length),
        int32(1),
        ...items.flatMap((v) => [int32(v.length), v]),
      ]);
    /** A binary range with both bounds. */
    const range = (lower: Buffer, upper: Buffer) =>
      Buffer.concat([Buffer.from([0x02]), int32(lower.length), lower, int32(upper.length), upper]);
    const card = int8(4111111111111111n);
    const masked = (typeOid: number, value: Buffer) =>
      plan(detect, [col("c", { typeOid, format: 1 })]).maskValue(0, value);
    const RECORD = 2249;
    const USER_TYPE = 16_700; // a table's row type, an array of a user type: unknown here
    // SELECT ROW(n8), ROW(ROW(n8)), ARRAY[ROW(n8)], a table's row, int8range(n8, n8 + 1), int8multirange.
    expect(masked(RECORD, record([INT8, card]))).toBeNull();
    expect(masked(RECORD, record([RECORD, record([TEXT, Buffer.from("x")], [INT8, card])]))).toBeNull();
    expect(masked(2287, array(RECORD, record([INT8, card])))).toBeNull();
    expect(masked(USER_TYPE, record([INT4, int32(7)], [1700, numeric(3, 0, [4111, 1111, 1111, 1111])]))).toBeNull();
    expect(masked(USER_TYPE, array(USER_TYPE + 1, record([INT8, card])))).toBeNull();
    expect(masked(3926, range(card, int8(4111111111111112n)))).toBeNull();
    expect(masked(4536, Buffer.concat([int32(1), int32(range(card, card).length), range(card, card)]))).toBeNull();
    // Text leaves are read as text; a record with nothing to find passes as it is.
    expect(masked(RECORD, record([TEXT, Buffer.from("mail bob@x.io")], [INT4, null]))).toBeNull();
    const clean = record([INT8, int8(42n)], [TEXT, Buffer.from("ok")], [UUID, Buffer.alloc(16, 0x41)]);
    expect(masked(RECORD, clean)).toBe(clean);
    const cleanRange = range(int8(1n), int8(10n));
    expect(masked(3926, cleanRange)).toBe(cleanRange);
    // Nested deeper than the reader goes: nulled under detectors, whatever it holds.
    let deep = record([INT8, int8(1n)]);
    for (let i = 0; i < 40; i++) deep = record([RECORD, deep]);
    expect(masked(RECORD, deep)).toBeNull();
    // Bytes that are no record or array: read as they are.
    const odd = Buffer.from([0, 0, 0, 9, 1, 2]);
    expect(masked(USER_TYPE, odd)).toBe(odd);
  });

  it("reads a crafted binary value in bounded time (review 44: read both ways at each level, it grew like Fibonacci)", () => {
    // Each level reads exactly as a record (its field: the level below) and as an array (its item:
    // two levels below). 30 levels (within the nesting limit), 380 bytes: millions of visits
    // unbounded, which end in no match (the value came back as it was).
    let value = Buffer.alloc(20, 0x41);
    for (let i = 0; i < 30; i++) {
      const head = Buffer.alloc(12);
      head.writeInt32BE(1, 0);
      head.writeInt32BE(1, 4);
      head.writeInt32BE(value.length, 8);
      value = Buffer.concat([head, value]);
    }
    const result = plan(detect, [col("c", { typeOid: 16_900, format: 1 })]).maskValue(0, value);
    expect(result).toBeNull(); // cannot be read within its budget: nulled under detectors
    // Wide and shallow honest values stay readable: a record of 1 000 text fields.
    const fields = Array.from({ length: 1000 }, (_, i) => Buffer.from(`field ${i}`));
    const wide = Buffer.concat([
      Buffer.from([0, 0, 0x03, 0xe8]),
      ...fields.flatMap((f) => [Buffer.from([0, 0, 0, 25]), Buffer.from([0, 0, 0, f.length]), f]),
    ]);
    expect(plan(detect, [col("c", { typeOid: 2249, format: 1 })]).maskValue(0, wide)).toBe(wide);
  });

  it("nulls a whole masked array, record or range literal of a type not known (review 42: `****` would not parse)", () => {
    const rule: MaskRule[] = [{ columns: ["c"], style: "full" }];
    expect(maskOne(rule, "{a@x.io,ok}", col("c", { typeOid: 1009 }))).toBeNull();
    expect(maskOne(rule, "(1,a@x.io)", col("c", { typeOid: 2249 }))).toBeNull();
    expect(maskOne([{ columns: ["c"], style: "partial" }], "[1,5)", col("c", { typeOid: 3904 }))).toBeNull();
    // Detector matches inside are replaced, which keeps the literal valid.
    expect(maskOne(detect, "{a@x.io,ok}", col("c", { typeOid: 1009 }))).toBe("{****,ok}");
    // Other values of such types keep the replacement (an enum, a domain over text).
    expect(maskOne(rule, "happy", col("c", { typeOid: 16_800 }))).toBe("****");
    // void carries nothing: nulled rather than given stars.
    expect(maskOne(rule, "", col("c", { typeOid: 2278 }))).toBeNull();
  });

  it("keeps json valid: whole values become JSON strings", () => {
    const json = col("c", { typeOid: JSON_OID });
    expect(maskOne([{ columns: ["c"], style: "full" }], '{"a":1}', json)).toBe('"****"');
    expect(maskOne([{ columns: ["c"], style: "partial" }], '"alice@example.com"', json)).toBe('"****"');
    expect(maskOne([{ columns: ["c"], style: "hash" }], '{"a":1}', json)).toBe(`"hash:${hmac16('{"a":1}')}"`);
    expect(maskOne([{ columns: ["c"], style: "null" }], '{"a":1}', json)).toBeNull();
  });

  it("keeps json valid: detector replacements respect escapes and string ends", () => {
    const json = col("c", { typeOid: JSON_OID });
    const doc = JSON.stringify({ note: "line\nalice@example.com", raw: "\u0040x", ok: true });
    const out = maskOne([{ detectors: ["email"], style: "full" }], doc, json)!;
    expect(JSON.parse(out)).toEqual({ note: "line\n****", raw: "@x", ok: true });
    const pem = JSON.stringify({ key: "-----BEGIN PRIVATE KEY-----\nMIIB", after: 1 });
    const masked = maskOne([{ detectors: ["api-key"], style: "full" }], pem, json)!;
    expect(JSON.parse(masked)).toEqual({ key: "****", after: 1 });
    const unicodeEscape = '{"a":"\\u00e9alice@example.com"}';
    expect(JSON.parse(maskOne([{ detectors: ["email"], style: "full" }], unicodeEscape, json)!)).toEqual({
      a: "é****",
    });
  });

  it("handles binary jsonb's version byte", () => {
    const jsonb = col("c", { typeOid: JSONB, format: 1 });
    const value = Buffer.concat([Buffer.from([1]), Buffer.from('{"email": "bob@x.io"}')]);
    const out = plan([{ detectors: ["email"], style: "full" }], [jsonb]).maskValue(0, value)!;
    expect(out).toEqual(Buffer.concat([Buffer.from([1]), Buffer.from('{"email": "****"}')]));
    const whole = plan([{ columns: ["c"], style: "full" }], [jsonb]).maskValue(0, value)!;
    expect(whole).toEqual(Buffer.concat([Buffer.from([1]), Buffer.from('"****"')]));
    // An unknown version is not understood: fail closed.
    const v2 = Buffer.concat([Buffer.from([2]), Buffer.from("{}")]);
    expect(plan([{ detectors: ["email"], style: "full" }], [jsonb]).maskValue(0, v2)).toBeNull();
    // Text-format jsonb has no version byte.
    expect(maskOne([{ detectors: ["email"], style: "full" }], '{"e":"bob@x.io"}', col("c", { typeOid: JSONB }))).toBe(
      '{"e":"****"}',
    );
  });
});

describe("memory", () => {
  it("does not keep a huge value's replacements alive after masking it", () => {
    const plan = compileMasks([{ detectors: ["email"], style: "hash" }])!.plan([
      { name: "c", typeOid: 25, format: 0 },
    ])!;
    const huge = Buffer.from("a@b.co ".repeat(200_000));
    const out = plan.maskValue(0, huge)!;
    expect(out.includes(Buffer.from("a@b.co"))).toBe(false);
    // The next (small) value is masked as before; the scratch space it uses stays small.
    expect(plan.maskValue(0, Buffer.from("x bob@example.com"))!.toString()).toMatch(/^x hash:[0-9a-f]{16}$/);
  });
});
