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
  /**
   * The values come from the system catalogs alone (the statement reads pg_catalog and
   * information_schema relations only, with built-in functions): column rules do not apply, so that
   * a rule on a common name (`name`, `kind`) does not null the metadata drivers and tools look up
   * (asyncpg's type introspection, review 41). Detectors still do.
   */
  catalog?: boolean;
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
   * For a `typed` or `opaque` value whose bytes are not what detectors should read: the text to
   * scan instead (a binary number's digits, as its text format would show them; the leaves of a
   * binary record, array or range). A match nulls the value, as for every `typed` one; null means
   * the value cannot be read (nested too deep) and is nulled under any detector.
   */
  scanText?: (value: Buffer) => Buffer | null;
  /**
   * Text format of a type not known here (arrays, records, ranges, enums, domains...): a whole
   * value that looks like an array, record or range literal (`{`, `(`, `[`) is nulled rather than
   * replaced, since `****` would not parse as one (review 42).
   */
  literal?: boolean;
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
  2278, // void
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
  // In binary, a record, array or range is read to its leaves (review 41: asyncpg reads
  // `SELECT ROW(card_number)` in binary, whose bigint detectors did not see); other bytes as they are.
  return format === 0
    ? { kind: "text", offset: 0, scan: true, literal: true }
    : { kind: "opaque", offset: 0, scan: true, scanText: (value) => binaryStructureText(typeOid, value) };
}

const RECORD = 2249;
/** Built-in range types and their subtypes; multiranges and their ranges. */
const RANGE_SUBTYPES: ReadonlyMap<number, number> = new Map([
  [3904, 23], // int4range
  [3906, 1700], // numrange
  [3908, 1114], // tsrange
  [3910, 1184], // tstzrange
  [3912, 1082], // daterange
  [3926, 20], // int8range
]);
const MULTIRANGE_RANGES: ReadonlyMap<number, number> = new Map([
  [4451, 3904],
  [4532, 3906],
  [4533, 3908],
  [4534, 3910],
  [4535, 3912],
  [4536, 3926],
]);
/** Nesting levels read in a binary value; a deeper value cannot be read (nulled under detectors). */
const MAX_NESTING = 32;
/** Fields of a row at most (PostgreSQL's MaxTupleAttributeNumber). */
const MAX_FIELDS = 1664;

class TooDeep extends Error {}

/**
 * What reading one binary value may cost, each bounded: structures visited, bytes they span (each
 * level of an honest value spans at most the value: MAX_NESTING times its length), characters of
 * leaves.
 */
interface Budget {
  nodes: number;
  bytes: number;
  chars: number;
}

/**
 * What detectors read in a binary value of a type not known as a scalar: the leaves of a record
 * (its fields carry their types), an array (its element type is in its header), a built-in range or
 * multirange, nested to any depth, each leaf as its text format would show it (numbers as their
 * digits, text as its bytes, types no detector can match left out), joined by commas as in the text
 * format; the value's own bytes when they are none of these; null when nested deeper than
 * MAX_NESTING.
 */
export function binaryStructureText(typeOid: number, value: Buffer): Buffer | null {
  const parts: string[] = [];
  // Bytes read both ways (see structure) are visited twice at each level: a crafted value could
  // make that exponential (review 44: a 780-byte value held the agent's loop for seconds). Honest
  // values stay far below these bounds; past them the value cannot be read.
  const budget: Budget = {
    nodes: 64 + value.length,
    bytes: 4096 + MAX_NESTING * value.length,
    chars: 1024 + 4 * value.length,
  };
  try {
    if (!structure(typeOid, value, parts, 0, budget)) return value;
  } catch (error) {
    if (error instanceof TooDeep) return null;
    return value; // out of range reads: malformed, scanned as bytes
  }
  return Buffer.from(parts.join(","), "latin1");
}

function push(parts: string[], text: string, budget: Budget): void {
  budget.chars -= text.length + 1;
  if (budget.chars < 0) throw new TooDeep();
  parts.push(text);
}

function leaf(typeOid: number, v: Buffer, parts: string[], depth: number, budget: Budget): void {
  if (TYPED_UNSCANNED.has(typeOid)) return;
  const number = scalarText(typeOid, v);
  if (number !== undefined) push(parts, number, budget);
  else if (typeOid === JSONB_OID) push(parts, v.toString("latin1", 1), budget);
  else if (!structure(typeOid, v, parts, depth + 1, budget)) push(parts, v.toString("latin1"), budget);
}

/** Pushes the leaves of `v` when it is a record, array, range or multirange; false when not. */
function structure(typeOid: number, v: Buffer, parts: string[], depth: number, budget: Budget): boolean {
  budget.bytes -= v.length;
  if (depth > MAX_NESTING || --budget.nodes < 0 || budget.bytes < 0) throw new TooDeep();
  if (TEXT_TYPES.has(typeOid) || typeOid === JSON_OID || typeOid === BYTEA_OID) return false;
  const subtype = RANGE_SUBTYPES.get(typeOid);
  if (subtype !== undefined) return range(subtype, v, parts, depth, budget);
  const rangeType = MULTIRANGE_RANGES.get(typeOid);
  if (rangeType !== undefined) {
    const count = v.readInt32BE(0);
    let at = 4;
    for (let i = 0; i < count; i++) {
      const length = v.readInt32BE(at);
      if (length < 0 || at + 4 + length > v.length) return false;
      const bytes = v.subarray(at + 4, at + 4 + length);
      if (!range(RANGE_SUBTYPES.get(rangeType) as number, bytes, parts, depth + 1, budget)) return false;
      at += 4 + length;
    }
    return at === v.length;
  }
  // The type does not say which (a table's row type, an array of a user type): bytes that read
  // exactly as both are read both ways, so that no reading hides a leaf from the detectors.
  const fields = ARRAY_ELEMENTS.has(typeOid) ? undefined : recordFields(v);
  if (fields) for (const [oid, field] of fields) if (field) leaf(oid, field, parts, depth, budget);
  const array = typeOid === RECORD ? undefined : arrayElements(v);
  if (array) for (const element of array.items) if (element) leaf(array.element, element, parts, depth, budget);
  return fields !== undefined || array !== undefined;
}

/** A range's binary form: flags, then the lower and upper bounds present (length-prefixed). */
function range(subtype: number, v: Buffer, parts: string[], depth: number, budget: Budget): boolean {
  if (v.length < 1) return false;
  const flags = v[0] as number;
  let at = 1;
  // Empty (0x01), or infinite lower (0x08) / upper (0x10) bounds: no bytes for them.
  const bounds = flags & 0x01 ? 0 : (flags & 0x08 ? 0 : 1) + (flags & 0x10 ? 0 : 1);
  for (let i = 0; i < bounds; i++) {
    const length = v.readInt32BE(at);
    if (length < 0 || at + 4 + length > v.length) return false;
    leaf(subtype, v.subarray(at + 4, at + 4 + length), parts, depth, budget);
    at += 4 + length;
  }
  return at === v.length;
}

/** A record's fields (type, bytes or null) when `v` is exactly a binary record. */
function recordFields(v: Buffer): [number, Buffer | null][] | undefined {
  if (v.length < 4) return undefined;
  const count = v.readInt32BE(0);
  if (count < 0 || count > MAX_FIELDS) return undefined;
  const fields: [number, Buffer | null][] = [];
  let at = 4;
  for (let i = 0; i < count; i++) {
    if (at + 8 > v.length) return undefined;
    const oid = v.readUInt32BE(at);
    const length = v.readInt32BE(at + 4);
    at += 8;
    if (length === -1) {
      fields.push([oid, null]);
      continue;
    }
    if (length < 0 || at + length > v.length) return undefined;
    fields.push([oid, v.subarray(at, at + length)]);
    at += length;
  }
  return at === v.length ? fields : undefined;
}

/** An array's element type and elements when `v` is exactly a binary array. */
function arrayElements(v: Buffer): { element: number; items: (Buffer | null)[] } | undefined {
  if (v.length < 12) return undefined;
  const ndim = v.readInt32BE(0);
  const flags = v.readInt32BE(4);
  if (ndim < 0 || ndim > 6 || (flags !== 0 && flags !== 1)) return undefined;
  const element = v.readUInt32BE(8);
  let at = 12;
  let count = ndim === 0 ? 0 : 1;
  for (let d = 0; d < ndim; d++) {
    if (at + 8 > v.length) return undefined;
    const size = v.readInt32BE(at);
    if (size < 0) return undefined;
    count *= size;
    at += 8;
  }
  // Each element takes 4 bytes at least.
  if (count > (v.length - at) / 4) return undefined;
  const items: (Buffer | null)[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > v.length) return undefined;
    const length = v.readInt32BE(at);
    at += 4;
    if (length === -1) {
      items.push(null);
      continue;
    }
    if (length < 0 || at + length > v.length) return undefined;
    items.push(v.subarray(at, at + length));
    at += length;
  }
  return at === v.length ? { element, items } : undefined;
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

/** An array of `element` numbers as its text format shows it (`{1,NULL,4111111111111111}`). */
function arrayText(element: number, v: Buffer): string | undefined {
  const array = arrayElements(v);
  if (!array) return undefined;
  const parts: string[] = [];
  for (const item of array.items) {
    const text = item === null ? "NULL" : scalarText(element, item);
    if (text === undefined) return undefined;
    parts.push(text);
  }
  return `{${parts.join(",")}}`;
}
