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
 * numeric). Scanned in text format; a match nulls the value.
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
 * separator a detector needs, fixed layouts like dates and UUIDs, or bytea's hex, which never holds
 * the raw text): not scanned, which spares the proxy a call per value.
 */
const TYPED_UNSCANNED = new Set([
  16, // bool
  17, // bytea
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

export function representation(typeOid: number, format: 0 | 1): Representation {
  if (TEXT_TYPES.has(typeOid)) return { kind: "text", offset: 0, scan: true };
  if (typeOid === JSON_OID) return { kind: "json", offset: 0, scan: true };
  if (typeOid === JSONB_OID) return { kind: "json", offset: format === 1 ? 1 : 0, scan: true };
  if (TYPED_UNSCANNED.has(typeOid)) return { kind: "typed", offset: 0, scan: false };
  if (TYPED_SCANNED.has(typeOid)) return { kind: "typed", offset: 0, scan: format === 0 };
  // Anything else in text format is text (enums, domains over text, citext, arrays, records...).
  return format === 0 ? { kind: "text", offset: 0, scan: true } : { kind: "opaque", offset: 0, scan: true };
}
