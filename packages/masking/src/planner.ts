/**
 * The planner: compiles the mask rules of every applicable policy (their union) once per session,
 * then turns each RowDescription into a plan saying which columns need work and how, and masks the
 * values of those columns. Pure: bytes in, bytes out; the proxy relays unplanned columns untouched.
 */
import type { MaskRule } from "@moat/policy";
import { columnPattern, representation, type ColumnInfo, type Representation, type ValueKind } from "./columns.js";
import {
  DETECTOR_NAMES,
  detectorMask,
  findEmailBytes,
  findMatches,
  mayContain,
  minimumLength,
  wholeEmail,
  type Detector,
  type DetectorMatch,
} from "./detectors.js";
import {
  ByteSink,
  copyBytes,
  defaultHashKey,
  hashText,
  maskBytes,
  writeMask,
  STARS,
  STYLE_STRENGTH,
  strongest,
  type MaskStyle,
} from "./styles.js";

/** What the planner decided for one column. */
export interface ColumnPlan {
  /** Whole-value masking by a column rule (the strongest of the rules naming the column). */
  style?: MaskStyle;
  /**
   * Content detectors run on this column's values, each with its strongest style. With a `style`,
   * only detectors stronger than it are listed: a match raises the whole value to that style.
   */
  detectors?: ReadonlyArray<{ detector: Detector; style: MaskStyle }>;
  /** For audit, e.g. `column users.email (partial); detectors email, credit-card`. */
  reason: string;
  /** How the values are represented, which decides what a mask can produce (see ValueKind). */
  valueKind: ValueKind;
}

export interface ResultPlan {
  /** One entry per column of the RowDescription; undefined: relay the column untouched. */
  columns: (ColumnPlan | undefined)[];
  /** Names of the planned columns (`table.column` when the table is known), for audit. */
  maskedColumns: string[];
  /** Whether column `i` is planned (its values need maskValue). A plain function: pass it on as is. */
  isPlanned: (i: number) => boolean;
  /**
   * Masks one value of column `i`: the new bytes, or null to send SQL NULL. Returns the same Buffer
   * when nothing was masked (an unplanned column, or no detector match). Never throws. A plain
   * function: pass it on as is.
   */
  maskValue: (i: number, value: Buffer) => Buffer | null;
}

export interface MaskPlanner {
  /**
   * The plan for one result, or undefined when nothing in it can need masking. `onMasked` is told
   * each column's label (as in maskedColumns) the first time one of its values is masked: what the
   * audit reports as masked, not every column a rule could reach.
   */
  plan(columns: readonly ColumnInfo[], onMasked?: (label: string) => void): ResultPlan | undefined;
  /**
   * Whether a value computed from these columns would be masked whole by a column rule (whatever
   * its label): for deciding whether an error message about such a value may be shown.
   */
  masksSources(from: NonNullable<ColumnInfo["derivedFrom"]>): boolean;
  /** Free text (an error message) with what the detectors find in it masked; the same string when nothing is. */
  maskText(text: string): string;
}

export interface CompileMasksOptions {
  /**
   * Key of the hash style's HMAC, at least 16 bytes. Default: a random key per process, so hashes
   * join within one agent process but cannot be reversed by a dictionary of likely values.
   */
  hashKey?: Uint8Array;
}

const TEXT_OID = 25;

/** Smallest accepted hash key (128 bits). */
export const MIN_HASH_KEY_BYTES = 16;

interface ColumnRule {
  matches: (column: ColumnInfo) => boolean;
  style: MaskStyle;
}

interface DetectorStyle {
  detector: Detector;
  style: MaskStyle;
}

type Masker = (value: Buffer) => Buffer | null;

/**
 * Compiles the mask rules of every applicable policy. Rules are unioned: a column named by several
 * rules gets the strongest style, a detector enabled by several rules its strongest style. A rule's
 * `columns` and `detectors` act independently (the rule is the union of the two), as the policy
 * reference says. A rule with neither masks every column (fail closed; the policy schema allows
 * it, and an empty mask rule is more likely an unfinished rule than a wish to mask nothing).
 * Returns undefined when there are no rules.
 */
export function compileMasks(rules: readonly MaskRule[], options: CompileMasksOptions = {}): MaskPlanner | undefined {
  if (rules.length === 0) return undefined;
  if (options.hashKey !== undefined && options.hashKey.length < MIN_HASH_KEY_BYTES) {
    throw new RangeError(`hashKey must be at least ${MIN_HASH_KEY_BYTES} bytes, got ${options.hashKey.length}`);
  }
  const key = options.hashKey !== undefined ? Buffer.from(options.hashKey) : defaultHashKey();
  const columnRules: ColumnRule[] = [];
  const detectorStyles = new Map<Detector, MaskStyle>();
  for (const rule of rules) {
    const style = rule.style ?? "full";
    const patterns = (rule.columns ?? []).map(columnPattern);
    if (patterns.length > 0) columnRules.push({ matches: (c) => patterns.some((p) => p(c)), style });
    for (const d of rule.detectors ?? []) detectorStyles.set(d, strongest(detectorStyles.get(d), style));
    if (patterns.length === 0 && (rule.detectors ?? []).length === 0) columnRules.push({ matches: () => true, style });
  }
  const detectors: DetectorStyle[] = DETECTOR_NAMES.filter((d) => detectorStyles.has(d)).map((d) => ({
    detector: d,
    style: detectorStyles.get(d)!,
  }));

  const textDetectors = columnMasker(representation(TEXT_OID, 0), undefined, detectors, key);
  return {
    masksSources(from) {
      if (from.names.length === 0 && !from.anyColumn) return false;
      const column: ColumnInfo = { name: "", typeOid: TEXT_OID, format: 0, derivedFrom: from };
      return columnRules.some((rule) => rule.matches(column));
    },
    maskText(text) {
      if (detectors.length === 0) return text;
      const bytes = Buffer.from(text);
      const masked = textDetectors(bytes);
      return masked === bytes || masked === null ? text : masked.toString();
    },
    plan(columns, onMasked) {
      const plans: (ColumnPlan | undefined)[] = [];
      const maskers: (Masker | undefined)[] = [];
      const labels: (string | undefined)[] = [];
      const maskedColumns: string[] = [];
      for (const column of columns) {
        const planned = planColumn(column, columnRules, detectors, key);
        plans.push(planned?.plan);
        maskers.push(planned?.masker);
        const label = planned ? columnLabel(column) : undefined;
        labels.push(label);
        if (label !== undefined) maskedColumns.push(label);
      }
      if (maskedColumns.length === 0) return undefined;
      return {
        columns: plans,
        maskedColumns,
        isPlanned: (i) => maskers[i] !== undefined,
        maskValue: (i, value) => {
          const masker = maskers[i];
          if (masker === undefined) return value;
          const out = masker(value);
          if (out !== value && onMasked !== undefined && labels[i] !== undefined) {
            onMasked(labels[i]);
            labels[i] = undefined; // told once
          }
          return out;
        },
      };
    },
  };
}

/** Partial and hash become full (see planColumn); full and null stay. */
const wholeStyle = (style: MaskStyle): MaskStyle => (style === "partial" || style === "hash" ? "full" : style);

function planColumn(
  column: ColumnInfo,
  columnRules: readonly ColumnRule[],
  detectors: readonly DetectorStyle[],
  key: Uint8Array,
): { plan: ColumnPlan; masker: Masker } | undefined {
  const rep = representation(column.typeOid, column.format);
  let style: MaskStyle | undefined;
  if (!column.catalog) for (const rule of columnRules) if (rule.matches(column)) style = strongest(style, rule.style);
  if (column.derivedFrom !== undefined) {
    // A computed value is the query's choice: partial would show, and a hash would let it compare,
    // whatever part of a masked value the query puts there (`'a@' || replace(email, '@', '.')`
    // kept the whole address as a "domain"): both mask the whole value instead.
    if (style !== undefined) style = wholeStyle(style);
    detectors = detectors.map((d) => ({ detector: d.detector, style: wholeStyle(d.style) }));
  }
  const wholeIsNull = style !== undefined && (style === "null" || rep.kind === "typed" || rep.kind === "opaque");
  // With a whole-value style, only a stronger detector can change what the value becomes.
  const active =
    !rep.scan || wholeIsNull
      ? []
      : detectors.filter((d) => style === undefined || STYLE_STRENGTH[d.style] > STYLE_STRENGTH[style]);
  if (style === undefined && active.length === 0) return undefined;

  const reasons: string[] = [];
  if (style !== undefined) {
    const label = columnLabel(column);
    reasons.push(`column ${label} (${style})`);
  }
  if (active.length > 0) reasons.push(`detectors ${active.map((d) => d.detector).join(", ")}`);
  const plan: ColumnPlan = { reason: reasons.join("; "), valueKind: rep.kind };
  if (style !== undefined) plan.style = style;
  if (active.length > 0) plan.detectors = active;

  return { plan, masker: columnMasker(rep, style, active, key) };
}

function columnMasker(
  rep: Representation,
  style: MaskStyle | undefined,
  detectors: readonly DetectorStyle[],
  key: Uint8Array,
): Masker {
  const toNull: Masker = () => null;
  const nullsWhole = rep.kind === "typed" || rep.kind === "opaque";
  if (style === "null" || (style !== undefined && nullsWhole)) return toNull;

  const mask = detectorMask(detectors.map((d) => d.detector));
  const minLength = detectors.length > 0 ? minimumLength(mask) : Infinity;
  const styleOf = new Map(detectors.map((d) => [d.detector, d.style]));
  const { kind, offset, scanText } = rep;
  const emailAlone = mask === EMAIL_ONLY && kind !== "json";

  /** Detector matches in the value (absolute byte offsets); the shared empty array when none. */
  const scanBytes = (value: Buffer): readonly DetectorMatch[] => {
    if (value.length - offset < minLength) return NONE;
    const candidates = mayContain(value, offset, mask);
    if (candidates === 0) return NONE;
    if (candidates === EMAIL_ONLY && kind !== "json") {
      // Only the email detector may match: it reads the bytes themselves (no string).
      const found: DetectorMatch[] = [];
      findEmailBytes(value, offset, value.length, found);
      return found.length === 0 ? NONE : found;
    }
    const text = value.toString("latin1", offset);
    const found = findMatches(text, candidates);
    if (found.length === 0) return NONE;
    if (kind === "json") return jsonSafe(text, found, offset);
    if (offset === 0) return found;
    return found.map((m) => ({ ...m, start: m.start + offset, end: m.end + offset }));
  };
  // Matches in what scanText gives only say whether the value is nulled (a typed value); a value
  // it cannot read (nested too deep) counts as a match of the first detector.
  const unreadable: readonly DetectorMatch[] =
    detectors.length > 0 ? [{ detector: (detectors[0] as DetectorStyle).detector, start: 0, end: 0 }] : NONE;
  const scan =
    scanText === undefined
      ? scanBytes
      : (value: Buffer) => {
          const text = scanText(value);
          return text === null ? unreadable : scanBytes(text);
        };

  if (style !== undefined) {
    return (value) => {
      if (!versionOk(rep, value)) return null;
      let effective: MaskStyle = style;
      for (const m of scan(value)) effective = strongest(effective, styleOf.get(m.detector)!);
      return wholeValue(effective, rep, value, key);
    };
  }
  return (value) => {
    if (!versionOk(rep, value)) return null;
    let found = scan(value);
    if (found.length === 0) return value;
    if (nullsWhole) return null;
    // Masking a match can expose a neighbour glued to it (`bob@x.io-4111111111111111` has no valid
    // domain until the card is `****`), so rescan the result; past a few rounds, mask it whole.
    let out = substitute(value, found, styleOf, key);
    // Not for one email found by the email detector alone (outside JSON, whose escapes can shorten
    // a range): the masked email leaves no local part before its `@` (`j***@`, `****`, `hash:…`),
    // another `@` keeps its domain and had no valid one (or it would have been found too), and no
    // other detector runs. (Two overlapping emails, `a@b.io@c.io`, are masked as one range that can
    // keep the second: they are rescanned.) Fuzz-tested.
    if (emailAlone && found.length === 1) return out;
    for (let round = 0; round < MAX_RESCANS; round++) {
      found = scan(out);
      if (found.length === 0) return out;
      out = substitute(out, found, styleOf, key);
    }
    return scan(out).length === 0 ? out : wholeValue("full", rep, out, key);
  };
}

const NONE: readonly DetectorMatch[] = [];

const EMAIL_ONLY = detectorMask(["email"]);

/** Rescans of a masked value before giving up and masking it whole. */
const MAX_RESCANS = 3;

/** Binary jsonb starts with its format version, 1. Anything else is not a value we understand. */
function versionOk(rep: Representation, value: Buffer): boolean {
  return rep.offset === 0 || (value.length > 0 && value[0] === 1);
}

/** A whole value masked in `style`, in the column's representation. */
function wholeValue(style: MaskStyle, rep: Representation, value: Buffer, key: Uint8Array): Buffer | null {
  if (style === "null") return null;
  // An array, record or range literal of a type not known here: a replacement would not parse.
  if (rep.literal && (value[0] === 0x7b || value[0] === 0x28 || value[0] === 0x5b)) return null;
  const { offset } = rep;
  if (rep.kind === "json") {
    // Fragments of JSON text mean nothing, so partial is full here; the result is a JSON string.
    const text = style === "hash" ? hashText(key, value.subarray(offset)) : STARS;
    return Buffer.from(`${offset === 1 ? "\x01" : ""}"${text}"`, "latin1");
  }
  if (style === "partial") {
    const email = wholeEmail(value, offset, value.length);
    return maskBytes("partial", value, offset, value.length, key, email?.at);
  }
  return maskBytes(style, value, offset, value.length, key);
}

/**
 * Replaces each match by its style (null, which cannot apply to part of a text, masks as full).
 * Overlapping matches (a phone inside an IBAN, say) merge into one range with the strongest style;
 * the range keeps the first match's detector for the partial style's shape.
 */
function substitute(
  value: Buffer,
  found: readonly DetectorMatch[],
  styleOf: ReadonlyMap<Detector, MaskStyle>,
  key: Uint8Array,
): Buffer {
  // The replacements first, into the shared scratch sink, then the value copied around them.
  const sink = scratch;
  sink.length = 0;
  const ranges: number[] = [];
  let size = value.length;
  for (let i = 0; i < found.length;) {
    const first = found[i]!;
    let end = first.end;
    let style = styleOf.get(first.detector)!;
    for (i++; i < found.length && found[i]!.start < end; i++) {
      end = Math.max(end, found[i]!.end);
      style = strongest(style, styleOf.get(found[i]!.detector)!);
    }
    let emailAt: number | undefined;
    if (style === "partial" && first.detector === "email") {
      for (let at = first.start; at < end; at++)
        if (value[at] === 0x40) {
          emailAt = at;
          break;
        }
    }
    const from = sink.length;
    writeMask(sink, style === "null" ? "full" : style, value, first.start, end, key, emailAt);
    ranges.push(first.start, end, from, sink.length);
    size += sink.length - from - (end - first.start);
  }
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  let at = 0;
  for (let r = 0; r < ranges.length; r += 4) {
    at = copyBytes(out, at, value, pos, ranges[r]!);
    at = copyBytes(out, at, sink.bytes, ranges[r + 2]!, ranges[r + 3]!);
    pos = ranges[r + 1]!;
  }
  copyBytes(out, at, value, pos, value.length);
  // A huge value's replacements are not kept alive until the next one.
  if (sink.bytes.length > SCRATCH_KEEP_BYTES) sink.bytes = Buffer.allocUnsafe(256);
  return out;
}

/** The most the scratch sink keeps between values (it grows for larger ones, then lets them go). */
const SCRATCH_KEEP_BYTES = 64 * 1024;

/** Where substitute writes replacements (one at a time: the masking path is synchronous). */
const scratch = new ByteSink();

/**
 * Keeps replacements inside JSON strings valid: a match starting right after an escaping backslash
 * (`\nalice@x.com`: the `n` belongs to `\n`) starts after the escape, and a match never runs
 * past the end of the JSON string it starts in (an unterminated PEM block). Offsets become absolute.
 */
function jsonSafe(text: string, found: readonly DetectorMatch[], offset: number): DetectorMatch[] {
  const out: DetectorMatch[] = [];
  for (const m of found) {
    let start = m.start;
    let slashes = 0;
    while (start - slashes - 1 >= 0 && text.charCodeAt(start - slashes - 1) === 0x5c) slashes++;
    // An escape's letter (and a \uXXXX escape's digits) stays with its backslash.
    if (slashes % 2 === 1) start += text.charCodeAt(start) === 0x75 ? 5 : 1;
    let end = start;
    while (end < m.end) {
      const c = text.charCodeAt(end);
      if (c === 0x22) break;
      end += c === 0x5c ? 2 : 1;
    }
    end = Math.min(end, m.end);
    if (end > start) out.push({ start: start + offset, end: end + offset, detector: m.detector });
  }
  return out;
}

/** `table.column` (the source column when known) for audit, or the result's label. */
function columnLabel(column: ColumnInfo): string {
  return column.table ? `${column.table.name}.${column.sourceColumn ?? column.name}` : column.name;
}
