/**
 * What the planner knows about a result column: whether a column pattern names it, and how its
 * values are represented on the wire (text we may rewrite, JSON, or a typed value we can only
 * null). Pure; the proxy resolves table OIDs to names before asking.
 */

/** One column of a RowDescription, with its table when the proxy could resolve the table OID. */
export interface ColumnInfo {
  /** The result's column label (an alias, when the query gave one). */
  name: string;
  /** Absent for computed columns, or when the table OID could not be resolved. */
  table?: { schema: string; name: string };
  /**
   * The table column the values come from, when the proxy resolved it (`SELECT email AS e FROM
   * users`: name `e`, sourceColumn `email`). Patterns match the label or the source column.
   */
  sourceColumn?: string;
  /**
   * For a computed column (no table): the columns its values may be computed from, by name, and
   * whether they may hold any column's values (a whole-row reference). From the SQL classifier's
   * result lineage; absent when unknown to the proxy.
   */
  derivedFrom?: { names: readonly string[]; anyColumn: boolean };
  typeOid: number;
  /** 0 text, 1 binary. */
  format: 0 | 1;
}

// ---------------------------------------------------------------------------------------------
// Column patterns

type SegmentMatcher = (value: string) => boolean;

function segmentMatcher(segment: string): SegmentMatcher {
  if (segment === "*") return () => true;
  if (!segment.includes("*")) return (value) => value === segment;
  const source = segment
    .split("*")
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  const regex = new RegExp(`^${source}$`, "s");
  return (value) => regex.test(value);
}

/**
 * A compiled column pattern. The number of dots says what it names: `email` or `*_ssn` a column in
 * any table, `users.email` a column of a table of that name in any schema, `public.users.email` a
 * fully qualified column; `*` in a part matches within that part. Matching is case-insensitive
 * (unquoted SQL identifiers fold case, and over-masking beats missing a quoted `"Email"`).
 *
 * The column part matches the result's label or, when known, the table column the values come
 * from: an alias does not hide `users.email`, and a label that looks like a masked column is masked
 * even when it holds something else (over-masking beats a leak).
 *
 * When the column's table is unknown (a computed column, or a table OID the proxy could not
 * resolve), a qualified pattern matches on its column part alone: `users.email` also masks
 * `lower(email) AS email` and an `email` column of an unresolved table. A computed column is also
 * masked when its values may come from a matching column (`lower(email)`, labelled `lower`) or from
 * any column (`row_to_json(u)`): see `derivedFrom`. Masking fails closed.
 */
export function columnPattern(pattern: string): (column: ColumnInfo) => boolean {
  const parts = pattern.toLowerCase().split(".");
  const labelOrSource = segmentMatcher(parts[parts.length - 1]!);
  const derived = (from: NonNullable<ColumnInfo["derivedFrom"]>) =>
    from.anyColumn || from.names.some((name) => labelOrSource(name.toLowerCase()));
  const columnPart = (column: ColumnInfo) =>
    labelOrSource(column.name.toLowerCase()) ||
    (column.sourceColumn !== undefined && labelOrSource(column.sourceColumn.toLowerCase())) ||
    (column.table === undefined && column.derivedFrom !== undefined && derived(column.derivedFrom));
  if (parts.length === 1) return columnPart;
  // Schema names holding dots are written as the leading parts of longer patterns.
  const tablePart = segmentMatcher(parts[parts.length - 2]!);
  const schemaPart = parts.length > 2 ? segmentMatcher(parts.slice(0, -2).join(".")) : undefined;
  return (column) => {
    if (!columnPart(column)) return false;
    const table = column.table;
    if (!table) return true;
    return tablePart(table.name.toLowerCase()) && (!schemaPart || schemaPart(table.schema.toLowerCase()));
  };
}

// ---------------------------------------------------------------------------------------------
// Value representation

/**
 * - `text`: the bytes are the value's text (text format of any text-like or unknown type, and binary
 *   format of text, varchar, bpchar, name, unknown and xml, whose binary form is the text itself).
 *   Masks rewrite the text.
 * - `json`: json or jsonb; whole-value masks become a JSON string (`"****"`) so the value stays
 *   valid JSON; binary jsonb carries a version byte (1) before the text.
 * - `typed`: a known non-text type (numbers, dates, uuid, bytea, ...). A replacement text would not
 *   parse as the type, so a masked value becomes NULL.
 * - `opaque`: binary format of a type not listed here (arrays, composites, extension types): the
 *   bytes' layout is unknown, so a masked value becomes NULL.
 */
export type ValueKind = "text" | "json" | "typed" | "opaque";

export interface Representation {
  kind: ValueKind;
  /** Bytes before the text (1 for binary jsonb's version byte). */
  offset: number;
  /** Whether content detectors look at the values. */
  scan: boolean;
  /**
   * For a `typed` value whose bytes are not what detectors should read: the text to scan instead
   * (a binary number's digits, as its text format would show them; nothing for bytea's hex). A
   * match nulls the value, as for every `typed` one.
   */
  scanText?: (value: Buffer) => Buffer;
}

/** Types whose text and binary forms are both the text itself. */
const TEXT_TYPES = new Set([
  25, // text
  1043, // varchar
  1042, // bpchar
  19, // name
  705, // unknown
  142, // xml
]);
const JSON_OID = 114;
const JSONB_OID = 3802;

/**
 * Non-text types whose text form may hold something a detector finds (a card number in a bigint or
 * numeric). Scanned in text format, and in binary format as the text their binary value stands for
 * (review 35: a driver asking for binary results got the card numbers of a bigint column in
 * clear); a match nulls the value.
 */
const TYPED_SCANNED = new Set([
  20, // int8
  1700, // numeric
  701, // float8
  790, // money
  1005, // int2[]
  1007, // int4[]
  1016, // int8[]
  1021, // float4[]
  1022, // float8[]
  1231, // numeric[]
]);

/**
 * Non-text types whose text form cannot hold a match of any detector (at most 10 digits and no
 * separator a detector needs, fixed layouts like dates and UUIDs): not scanned, which spares the
 * proxy a call per value. Not bytea: its binary form is the bytes themselves, its text form their
 * hex (which clients decode) or, under `bytea_output = escape`, the printable bytes (review 35).
 */
const TYPED_UNSCANNED = new Set([
  16, // bool
  18, // "char"
  21, // int2
  23, // int4
  26, // oid
  27, // tid
  28, // xid
  29, // cid
  650, // cidr
  700, // float4
  774, // macaddr8
  829, // macaddr
  869, // inet
  1082, // date
  1083, // time
  1114, // timestamp
  1184, // timestamptz
  1186, // interval
  1266, // timetz
  1560, // bit
  1562, // varbit
  2950, // uuid
  3220, // pg_lsn
  5069, // xid8
]);

const BYTEA_OID = 17;

/**
 * bytea in text format: hex (`\x...`, the default), which every client decodes back to the bytes,
 * so the bytes are scanned; or escape, the printable bytes themselves.
 */
const byteaText = (value: Buffer): Buffer =>
  value[0] === 0x5c && value[1] === 0x78 ? Buffer.from(value.toString("latin1", 2), "hex") : value;

export function representation(typeOid: number, format: 0 | 1): Representation {
  if (TEXT_TYPES.has(typeOid)) return { kind: "text", offset: 0, scan: true };
  if (typeOid === JSON_OID) return { kind: "json", offset: 0, scan: true };
  if (typeOid === JSONB_OID) return { kind: "json", offset: format === 1 ? 1 : 0, scan: true };
  if (TYPED_UNSCANNED.has(typeOid)) return { kind: "typed", offset: 0, scan: false };
  if (typeOid === BYTEA_OID)
    return format === 0
      ? { kind: "typed", offset: 0, scan: true, scanText: byteaText }
      : { kind: "typed", offset: 0, scan: true };
  if (TYPED_SCANNED.has(typeOid))
    return format === 0
      ? { kind: "typed", offset: 0, scan: true }
      : { kind: "typed", offset: 0, scan: true, scanText: (value) => binaryNumberText(typeOid, value) };
  // Anything else in text format is text (enums, domains over text, citext, arrays, records...).
  return format === 0 ? { kind: "text", offset: 0, scan: true } : { kind: "opaque", offset: 0, scan: true };
}

const INT2 = 21;
const INT4 = 23;
const INT8 = 20;
const FLOAT4 = 700;
const FLOAT8 = 701;
const MONEY = 790;
const NUMERIC = 1700;
const ARRAY_ELEMENTS: ReadonlyMap<number, number> = new Map([
  [1005, INT2],
  [1007, INT4],
  [1016, INT8],
  [1021, FLOAT4],
  [1022, FLOAT8],
  [1231, NUMERIC],
]);

/**
 * The text a binary value of a scanned number type stands for, as its text format would show it
 * (money without its currency symbol and separators: the digits of its cents). A value that is not
 * what the type's binary form should be gives its own bytes (scanned as they are).
 */
export function binaryNumberText(typeOid: number, value: Buffer): Buffer {
  try {
    const element = ARRAY_ELEMENTS.get(typeOid);
    const text = element === undefined ? scalarText(typeOid, value) : arrayText(element, value);
    return text === undefined ? value : Buffer.from(text, "latin1");
  } catch {
    return value; // out of range reads: malformed, scanned as bytes
  }
}

function scalarText(typeOid: number, v: Buffer): string | undefined {
  switch (typeOid) {
    case INT2:
      return v.length === 2 ? String(v.readInt16BE(0)) : undefined;
    case INT4:
      return v.length === 4 ? String(v.readInt32BE(0)) : undefined;
    case INT8:
    case MONEY:
      return v.length === 8 ? v.readBigInt64BE(0).toString() : undefined;
    case FLOAT4:
      return v.length === 4 ? floatText(v.readFloatBE(0)) : undefined;
    case FLOAT8:
      return v.length === 8 ? floatText(v.readDoubleBE(0)) : undefined;
    case NUMERIC:
      return numericText(v);
    default:
      return undefined;
  }
}

/** Integral values as all their digits (4111111111111111, not 4.111111111111111e+15). */
function floatText(x: number): string {
  return Number.isInteger(x) && Math.abs(x) < 1e21 ? BigInt(x).toString() : String(x);
}

/** numeric's binary form: ndigits, weight, sign, dscale (int16 each), then base-10000 digits. */
function numericText(v: Buffer): string | undefined {
  if (v.length < 8) return undefined;
  const ndigits = v.readInt16BE(0);
  const weight = v.readInt16BE(2);
  const sign = v.readUInt16BE(4);
  const dscale = v.readInt16BE(6);
  if (ndigits < 0 || dscale < 0 || v.length !== 8 + 2 * ndigits) return undefined;
  if (sign === 0xc000) return "NaN";
  if (sign === 0xd000) return "Infinity";
  if (sign === 0xf000) return "-Infinity";
  const digit = (i: number) => (i >= 0 && i < ndigits ? v.readInt16BE(8 + 2 * i) : 0);
  let whole = "";
  if (weight < 0) whole = "0";
  else for (let i = 0; i <= weight; i++) whole += i === 0 ? String(digit(i)) : String(digit(i)).padStart(4, "0");
  let fraction = "";
  // The group of 10000^-k is digit weight + k.
  for (let k = 1; fraction.length < dscale; k++) fraction += String(digit(weight + k)).padStart(4, "0");
  return `${sign === 0x4000 ? "-" : ""}${whole}${dscale > 0 ? `.${fraction.slice(0, dscale)}` : ""}`;
}

/** An array's binary form: ndim, flags, element type, (size, lower bound) per dimension, then the elements. */
function arrayText(element: number, v: Buffer): string | undefined {
  const ndim = v.readInt32BE(0);
  if (ndim < 0 || ndim > 6) return undefined;
  let at = 12 + 8 * ndim;
  const parts: string[] = [];
  while (at < v.length) {
    const length = v.readInt32BE(at);
    at += 4;
    if (length === -1) {
      parts.push("NULL");
      continue;
    }
    if (length < 0 || at + length > v.length) return undefined;
    const text = scalarText(element, v.subarray(at, at + length));
    if (text === undefined) return undefined;
    parts.push(text);
    at += length;
  }
  return `{${parts.join(",")}}`;
}
