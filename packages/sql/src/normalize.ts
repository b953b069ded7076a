/**
 * The cache-key normalizer: replaces numeric and plain string literals by typed placeholders so
 * that `... WHERE aid = 1` and `... WHERE aid = 2` share one cached classification.
 *
 * It is deliberately conservative. It handles exactly the subset of PostgreSQL's lexer it needs
 * (plain identifiers, "quoted identifiers", '...' strings with '' escapes, decimal numbers, and
 * everything else one character at a time) and gives up (returns undefined, so the caller keys by
 * the exact text) on anything where that subset could disagree with the server: any `$` (dollar
 * quotes, parameters), any backslash, comments (`--`, `/*`), any character outside printable ASCII
 * plus space/tab/CR/LF, string prefixes (E'', B'', X'', N'', U&''), a string followed by another
 * string (PostgreSQL joins '...' <newline> '...'), and numbers touching letters, digits, `.`,
 * `_` or quotes (0x1F, 1_000, 1e, 1..2, 123abc lex differently across versions).
 *
 * Two texts get the same key only if they are the same character for character outside literal
 * tokens, and their literal tokens are at the same places and of the same lexical type
 * (ICONST: integers that fit in 32 bits, zero apart; FCONST: other numbers; SCONST: strings, the
 * empty one apart). The classifier must not look at literal values for results it caches under
 * such a key.
 */

/**
 * Placeholders: control characters, which never survive into a normalized key otherwise. Zero and
 * the empty string get their own: libpg-query's JSON leaves out fields holding default values
 * (0, ""), so `COPY t FROM ''` parses to the same tree as `COPY t FROM STDIN`, a tree shape the
 * value of a literal decides.
 */
const INTEGER = "\u0001";
const NUMERIC = "\u0002";
const STRING = "\u0003";
const EMPTY_STRING = "\u0004";
const ZERO = "\u0005";

const enum Cls {
  /** Anything that makes the scanner give up. */
  Stop = 0,
  Space = 1,
  IdentStart = 2,
  Digit = 3,
  /** Punctuation and operator characters with no special meaning here. */
  Other = 4,
  Quote = 5,
  DoubleQuote = 6,
  Dot = 7,
  Dash = 8,
  Slash = 9,
}

const CLASSES = new Uint8Array(128);
for (let c = 33; c < 127; c++) CLASSES[c] = Cls.Other;
for (const c of [32, 9, 10, 13]) CLASSES[c] = Cls.Space;
for (let c = 65; c <= 90; c++) CLASSES[c] = CLASSES[c + 32] = Cls.IdentStart;
CLASSES[95] = Cls.IdentStart; // _
for (let c = 48; c <= 57; c++) CLASSES[c] = Cls.Digit;
CLASSES[39] = Cls.Quote;
CLASSES[34] = Cls.DoubleQuote;
CLASSES[46] = Cls.Dot;
CLASSES[45] = Cls.Dash;
CLASSES[47] = Cls.Slash;
CLASSES[36] = Cls.Stop; // $
CLASSES[92] = Cls.Stop; // backslash

const classOf = (code: number): number => (code < 128 ? (CLASSES[code] as number) : Cls.Stop);
const isIdentChar = (cls: number) => cls === Cls.IdentStart || cls === Cls.Digit;

export interface NormalizedText {
  /** The text with each literal replaced by a one-character placeholder. */
  key: string;
  /** Literal extents in the text: [start0, end0, start1, end1, ...]. */
  spans: number[];
}

/** The normalized form of `text`, or undefined when it must be keyed by its exact text. */
export function normalizeForCache(text: string): NormalizedText | undefined {
  const n = text.length;
  const spans: number[] = [];
  let key = "";
  let copied = 0;
  let i = 0;
  while (i < n) {
    const cls = classOf(text.charCodeAt(i));
    switch (cls) {
      case Cls.Space:
      case Cls.Other:
        i++;
        break;
      case Cls.IdentStart:
        i++;
        while (i < n && isIdentChar(classOf(text.charCodeAt(i)))) i++;
        // A `$` continuing the identifier stops the scan at the top of the loop.
        break;
      case Cls.Dash:
        if (text.charCodeAt(i + 1) === 45) return undefined; // -- comment
        i++;
        break;
      case Cls.Slash:
        if (text.charCodeAt(i + 1) === 42) return undefined; // /* comment
        i++;
        break;
      case Cls.DoubleQuote: {
        if (i > 0 && text.charCodeAt(i - 1) === 38) return undefined; // U&"..."
        i++;
        for (;;) {
          if (i >= n) return undefined;
          const code = text.charCodeAt(i);
          if (code === 34) {
            if (text.charCodeAt(i + 1) === 34) {
              i += 2;
              continue;
            }
            i++;
            break;
          }
          if (classOf(code) === Cls.Stop) return undefined;
          i++;
        }
        break;
      }
      case Cls.Quote: {
        if (i > 0) {
          const before = text.charCodeAt(i - 1);
          // E'', B'', X'', N'', U&'' and anything glued to a previous token.
          if (before === 38 || before === 34 || isIdentChar(classOf(before))) return undefined;
        }
        const start = i++;
        for (;;) {
          if (i >= n) return undefined;
          const code = text.charCodeAt(i);
          if (code === 39) {
            if (text.charCodeAt(i + 1) === 39) {
              i += 2;
              continue;
            }
            i++;
            break;
          }
          if (classOf(code) === Cls.Stop) return undefined;
          i++;
        }
        // 'a' <newline> 'b' is one literal to PostgreSQL: give up on any string after a string.
        let j = i;
        while (j < n && classOf(text.charCodeAt(j)) === Cls.Space) j++;
        if (j < n && text.charCodeAt(j) === 39) return undefined;
        key += text.slice(copied, start) + (i - start === 2 ? EMPTY_STRING : STRING);
        copied = i;
        spans.push(start, i);
        break;
      }
      case Cls.Dot:
      case Cls.Digit: {
        if (cls === Cls.Dot && classOf(text.charCodeAt(i + 1)) !== Cls.Digit) {
          i++;
          break;
        }
        // A number (`.5` included).
        const end = scanNumber(text, i);
        if (end < 0) return undefined;
        key += text.slice(copied, i) + numberPlaceholder(text, i, end);
        copied = end;
        spans.push(i, end);
        i = end;
        break;
      }
      default:
        return undefined;
    }
  }
  if (spans.length === 0) return { key: text, spans };
  return { key: key + text.slice(copied), spans };
}

/** The end of the number starting at `start`, or -1 when it is not one we can read exactly. */
function scanNumber(text: string, start: number): number {
  if (start > 0) {
    const before = text.charCodeAt(start - 1);
    if (isIdentChar(classOf(before)) || before === 46 || before === 34 || before === 39) return -1;
  }
  const n = text.length;
  let i = start;
  while (i < n && classOf(text.charCodeAt(i)) === Cls.Digit) i++;
  if (i < n && text.charCodeAt(i) === 46) {
    i++;
    while (i < n && classOf(text.charCodeAt(i)) === Cls.Digit) i++;
  }
  const e = text.charCodeAt(i);
  if (e === 69 || e === 101) {
    i++;
    const sign = text.charCodeAt(i);
    if (sign === 43 || sign === 45) i++;
    if (classOf(text.charCodeAt(i)) !== Cls.Digit) return -1;
    while (i < n && classOf(text.charCodeAt(i)) === Cls.Digit) i++;
  }
  if (i < n) {
    const after = text.charCodeAt(i);
    const cls = classOf(after);
    if (isIdentChar(cls) || cls === Cls.Stop || after === 46 || after === 39 || after === 34) return -1;
  }
  return i;
}

/**
 * The placeholder of a number: ICONST (an integer that fits in int32, PostgreSQL's lexer rule),
 * zero among those, or FCONST (anything else).
 */
function numberPlaceholder(text: string, start: number, end: number): string {
  let i = start;
  while (i < end && text.charCodeAt(i) === 48) i++; // leading zeros
  for (let j = i; j < end; j++) if (classOf(text.charCodeAt(j)) !== Cls.Digit) return NUMERIC;
  const digits = end - i;
  if (digits === 0) return ZERO;
  if (digits < 10 || (digits === 10 && text.slice(i, end) <= "2147483647")) return INTEGER;
  return NUMERIC;
}

const CANONICAL: Readonly<Record<string, string>> = {
  [INTEGER]: "1",
  [NUMERIC]: "1.5",
  [STRING]: "'?'",
  [EMPTY_STRING]: "''",
  [ZERO]: "0",
};

/**
 * A parsable text for a normalized key: each placeholder becomes a literal of the same lexical
 * type. Every text with that key has the same canonical text (used for a stable fingerprint).
 */
export function canonicalText(key: string): string {
  // eslint-disable-next-line no-control-regex
  return key.replace(/[\u0001-\u0005]/g, (placeholder) => CANONICAL[placeholder] as string);
}

/** Maps an offset in the text to the key (literals count as one character). */
export function textOffsetToKey(offset: number, spans: readonly number[]): number {
  let delta = 0;
  for (let i = 0; i < spans.length; i += 2) {
    const end = spans[i + 1] as number;
    if (end > offset) break;
    delta += end - (spans[i] as number) - 1;
  }
  return offset - delta;
}

/** Maps an offset in the key back to the text whose literal extents are `spans`. */
export function keyOffsetToText(offset: number, spans: readonly number[]): number {
  let delta = 0;
  for (let i = 0; i < spans.length; i += 2) {
    const start = spans[i] as number;
    if (start - delta >= offset) break;
    delta += (spans[i + 1] as number) - start - 1;
  }
  return offset + delta;
}
