/**
 * Content detectors: find sensitive substrings (emails, card numbers, phones, IBANs, national IDs,
 * API keys, JWTs) in one value. Pure. Owns the heuristics and checksums; knows nothing of columns,
 * styles or the wire.
 *
 * Values are scanned as a latin1 view of their bytes (one char per byte): offsets are byte
 * offsets, decoding never fails or rewrites anything, and every detector pattern is ASCII, so this
 * works for UTF-8 and any other ASCII-compatible client encoding. Bytes >= 0x80 (parts of UTF-8
 * sequences) are never part of a match except inside emails, where they stand for non-ASCII letters
 * of internationalised addresses; since every byte of a UTF-8 sequence is >= 0x80, a match never
 * splits a character.
 *
 * Each detector has a cheap byte-level pre-check (`mayContain`): one pass over the bytes counting
 * digits and noting which character classes occur. Values that cannot hold a match for any enabled
 * detector are rejected there, without building a string or running a regular expression. Every
 * regular expression below is linear or bounded per start position (no nested ambiguous
 * quantifiers), so hostile values cannot make the proxy backtrack for long.
 */
import type { MaskRule } from "@moat/policy";

export type Detector = NonNullable<MaskRule["detectors"]>[number];

/** Every detector, in the order they run (the order does not change the result). */
export const DETECTOR_NAMES: readonly Detector[] = [
  "email",
  "credit-card",
  "phone",
  "iban",
  "national-id",
  "api-key",
  "jwt",
];

/** A match in a value: byte offsets, `end` exclusive. */
export interface DetectorMatch {
  start: number;
  end: number;
  detector: Detector;
}

// ---------------------------------------------------------------------------------------------
// Byte pre-check

const DIGIT = 1;
const AT = 2;
const UPPER = 4;
const LOWER = 8;
const DASH = 16;
const UNDERSCORE = 32;
const DOT = 64;
/** `A`: AWS (`AKIA`, `ASIA`) and Google (`AIza`) keys are the only ones without `_` or `-`. */
const CAPITAL_A = 256;

/** Character class bits of each byte; the digit bit is 1 so it doubles as the digit count. */
const CLASS = new Uint16Array(256);
for (let c = 0x30; c <= 0x39; c++) CLASS[c] = DIGIT;
for (let c = 0x41; c <= 0x5a; c++) CLASS[c] = UPPER;
for (let c = 0x61; c <= 0x7a; c++) CLASS[c] = LOWER;
CLASS[0x40] = AT;
CLASS[0x2d] = DASH;
CLASS[0x5f] = UNDERSCORE;
CLASS[0x2e] = DOT;
CLASS[0x41] = UPPER | CAPITAL_A;

interface Requirement {
  /** Fewest bytes a value needs to hold one match. */
  minLength: number;
  /** Fewest ASCII digits a match holds. */
  minDigits: number;
  /** Every one of these class bits must occur. */
  all: number;
  /** At least one of these class bits must occur (0: no condition). */
  any: number;
}

/**
 * The pre-check per detector. Each condition is implied by the detector's own patterns, so it never
 * rejects a value that holds a match: e.g. the shortest email is `a@b.co`; cards have 13 digits;
 * phones 8 (international) or 10 (national); a NINO has 6 digits; the shortest API key is
 * `moat_ac_` + 4; the shortest JWT `eyJx.eyJx.`. (A fuzz test checks this against the finders.)
 */
const REQUIREMENTS: Record<Detector, Requirement> = {
  email: { minLength: 6, minDigits: 0, all: AT | DOT, any: 0 },
  "credit-card": { minLength: 13, minDigits: 13, all: 0, any: 0 },
  phone: { minLength: 9, minDigits: 8, all: 0, any: 0 },
  iban: { minLength: 15, minDigits: 2, all: 0, any: UPPER | LOWER },
  "national-id": { minLength: 9, minDigits: 6, all: 0, any: 0 },
  "api-key": { minLength: 12, minDigits: 0, all: 0, any: UNDERSCORE | DASH | CAPITAL_A },
  jwt: { minLength: 10, minDigits: 0, all: DOT | UPPER | LOWER, any: 0 },
};

/** A set of detectors as a bit mask over DETECTOR_NAMES (no allocation on the per-value path). */
export function detectorMask(detectors: readonly Detector[]): number {
  let mask = 0;
  for (const d of detectors) mask |= 1 << DETECTOR_NAMES.indexOf(d);
  return mask;
}

/** Shortest value any detector of `mask` can match in; shorter values are skipped without a scan. */
export function minimumLength(mask: number): number {
  let min = Infinity;
  DETECTOR_NAMES.forEach((d, i) => {
    if (mask & (1 << i)) min = Math.min(min, REQUIREMENTS[d].minLength);
  });
  return min;
}

/**
 * The detectors of `mask` that may match somewhere in `bytes[start..]`, from one pass over the
 * bytes. 0 means the value certainly holds no match.
 */
export function mayContain(bytes: Uint8Array, start: number, mask: number): number {
  let flags = 0;
  let digits = 0;
  for (let i = start; i < bytes.length; i++) {
    const c = CLASS[bytes[i]!]!;
    flags |= c;
    digits += c & DIGIT;
  }
  const length = bytes.length - start;
  let out = 0;
  for (let i = 0; i < DETECTOR_NAMES.length; i++) {
    if ((mask & (1 << i)) === 0) continue;
    const r = REQUIREMENTS[DETECTOR_NAMES[i]!];
    if (
      length >= r.minLength &&
      digits >= r.minDigits &&
      (flags & r.all) === r.all &&
      (r.any === 0 || (flags & r.any) !== 0)
    ) {
      out |= 1 << i;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Finders: `text` is the latin1 view of the value; matches are pushed onto `out`.

type Finder = (text: string, out: DetectorMatch[]) => void;

function isAlnum(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

function isWord(c: number): boolean {
  return isAlnum(c) || c === 0x5f;
}

/** Runs a global regular expression from the start and hands each match to `accept`. */
function eachMatch(regex: RegExp, text: string, accept: (m: RegExpExecArray) => void): void {
  regex.lastIndex = 0;
  for (let m = regex.exec(text); m !== null; m = regex.exec(text)) {
    accept(m);
    if (m[0].length === 0) regex.lastIndex++;
  }
}

// email ----------------------------------------------------------------------------------------

/** Local part: letters, digits, `. _ % + -` and non-ASCII bytes. Other RFC 5322 specials are left
 * out: in prose and code they are far likelier to be delimiters (`name='x@y.com'`) than addresses. */
function isLocalChar(c: number): boolean {
  return isAlnum(c) || c === 0x2e || c === 0x5f || c === 0x25 || c === 0x2b || c === 0x2d || c >= 0x80;
}

function isDomainChar(c: number): boolean {
  return isAlnum(c) || c === 0x2d || c === 0x2e || c >= 0x80;
}

/** At least two labels, none empty or starting/ending with `-`, and a top-level label of two or
 * more letters (or non-ASCII bytes, for IDN), so `a@b`, `x@1.2.3.4` and `v1.2@3.4` are not emails. */
function validDomain(bytes: Uint8Array, start: number, end: number): boolean {
  // One pass, in place: this runs for every `@` of every scanned value.
  let labels = 0;
  let labelStart = start;
  for (let i = start; i <= end; i++) {
    if (i < end && bytes[i] !== 0x2e) continue;
    // bytes[labelStart..i) is a label.
    if (i === labelStart || bytes[labelStart] === 0x2d || bytes[i - 1] === 0x2d) return false;
    labels++;
    if (i === end) {
      if (labels < 2 || i - labelStart < 2) return false;
      for (let j = labelStart; j < i; j++) {
        const c = bytes[j]!;
        if (!((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c >= 0x80)) return false;
      }
      return true;
    }
    labelStart = i + 1;
  }
  return false;
}

/**
 * The emails in `bytes[from..to)`, pushed onto `out` with absolute offsets. Works on the bytes
 * themselves (no string), so the masking path can run it directly on a value. Scans outwards from
 * each `@` (no regular expression: a local-part pattern would backtrack quadratically over long runs
 * of word characters).
 */
export function findEmailBytes(bytes: Uint8Array, from: number, to: number, out: DetectorMatch[]): void {
  for (let at = from; at < to; at++) {
    // A loop, not indexOf: values are short, and Buffer#indexOf costs more to call than to run.
    if (bytes[at] !== 0x40) continue;
    let start = at;
    while (start > from && isLocalChar(bytes[start - 1]!)) start--;
    while (start < at && bytes[start] === 0x2e) start++;
    if (start === at) continue;
    let end = at + 1;
    while (end < to && isDomainChar(bytes[end]!)) end++;
    // A sentence's full stop or a trailing dash is not part of the domain.
    while (end > at + 1 && (bytes[end - 1] === 0x2e || bytes[end - 1] === 0x2d)) end--;
    if (validDomain(bytes, at + 1, end)) out.push({ start, end, detector: "email" });
  }
}

const findEmails: Finder = (text, out) => {
  // One byte per character, offsets kept. A character above U+00FF (text that is not a latin1 view)
  // stands as 0x80: non-ASCII, a letter to the email rules, as it was when they read strings.
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    bytes[i] = c > 0xff ? 0x80 : c;
  }
  findEmailBytes(bytes, 0, bytes.length, out);
};

/** The extent of the email that is exactly `bytes[from..to)`, or undefined. Used by the partial style. */
export function wholeEmail(bytes: Uint8Array, from: number, to: number): { at: number } | undefined {
  const found: DetectorMatch[] = [];
  findEmailBytes(bytes, from, to, found);
  if (found.length !== 1 || found[0]!.start !== from || found[0]!.end !== to) return undefined;
  return { at: bytes.indexOf(0x40, from) };
}

// credit-card ----------------------------------------------------------------------------------

/** Luhn (mod 10) over a string of ASCII digits. */
export function luhn(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 0x30;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

/**
 * A plausible card number: 13-19 digits, an issuer prefix that exists (2 = Mastercard 2221-2720,
 * 30/34-39 = Diners/Amex/JCB (31-33 are issued to none), 4 = Visa with 13, 16 or 19 digits, 5 =
 * Mastercard/Maestro, 6 = Discover/UnionPay/Maestro) and a passing Luhn check. The prefix rule keeps
 * epoch-millisecond timestamps (13 digits starting with 1) and most database IDs out (a byte count
 * like pg_size_bytes('3000 TB'), 3298534883328000, passes Luhn); Luhn alone would let one in ten
 * through.
 */
export function plausibleCard(digits: string): boolean {
  const n = digits.length;
  if (n < 13 || n > 19) return false;
  switch (digits.charCodeAt(0) - 0x30) {
    case 2: {
      const p = Number(digits.slice(0, 4));
      if (n !== 16 || p < 2221 || p > 2720) return false;
      break;
    }
    case 3: {
      const second = digits.charCodeAt(1) - 0x30;
      if (n < 14 || (second >= 1 && second <= 3)) return false;
      break;
    }
    case 4:
      if (n !== 13 && n !== 16 && n !== 19) return false;
      break;
    case 5:
    case 6:
      if (n < 16) return false;
      break;
    default:
      return false;
  }
  return luhn(digits);
}

/** Maximal runs of digit groups separated by one space or dash. Linear: a separator is required
 * between groups, so there is one way to split a run. */
const DIGIT_RUN = /\d+(?:[ -]\d+)*/g;

/**
 * Card numbers are written unseparated (13-19 digits) or in groups: fours with a shorter last group
 * (4-4-4-4, 4-4-4-4-3, ...), or Amex/Diners 4-6-5 and 4-6-4, one separator throughout. Within a run
 * of groups the longest plausible number from each group wins, so `4111 1111 1111 1111 123` (card
 * and CVV) still finds the card while a list of amounts rarely lines up as one. Runs glued to a
 * letter or `_` (identifiers, hex strings), after a `.` (the fraction of a decimal) or after a `+`
 * (phone numbers) are skipped whole. A 13-19 digit integer part followed by a fraction is kept: that
 * is a card number in a numeric column far more often than an amount.
 */
const findCards: Finder = (text, out) => {
  eachMatch(DIGIT_RUN, text, (m) => {
    const runStart = m.index;
    const runEnd = runStart + m[0].length;
    const before = runStart > 0 ? text.charCodeAt(runStart - 1) : 0;
    const after = runEnd < text.length ? text.charCodeAt(runEnd) : 0;
    if (isWord(before) || before === 0x2e || before === 0x2b) return;
    if (isWord(after)) return;
    const groups: { start: number; end: number }[] = [];
    for (let i = runStart, g = runStart; i <= runEnd; i++) {
      if (i === runEnd || text.charCodeAt(i) === 0x20 || text.charCodeAt(i) === 0x2d) {
        groups.push({ start: g, end: i });
        g = i + 1;
      }
    }
    const len = (k: number): number => groups[k]!.end - groups[k]!.start;
    const sep = (k: number): number => text.charCodeAt(groups[k]!.end); // separator after group k
    const digitsOf = (from: number, to: number): string =>
      text.slice(groups[from]!.start, groups[to]!.end).replace(/[ -]/g, "");
    for (let s = 0; s < groups.length;) {
      let last = -1;
      const first = len(s);
      if (first >= 13 && first <= 19) {
        if (plausibleCard(digitsOf(s, s))) last = s;
      } else if (first === 4) {
        // Fours, then optionally one shorter group, longest first.
        const candidates: number[] = [];
        let e = s;
        let total = 4;
        while (e + 1 < groups.length && sep(e) === sep(s) && len(e + 1) === 4 && total + 4 <= 19) {
          e++;
          total += 4;
          if (total >= 13) candidates.push(e);
        }
        if (e + 1 < groups.length && sep(e) === sep(s) && len(e + 1) < 4 && total + len(e + 1) >= 13) {
          candidates.push(e + 1);
        }
        if (s + 2 < groups.length && len(s + 1) === 6 && (len(s + 2) === 5 || len(s + 2) === 4)) {
          if (sep(s) === sep(s + 1)) candidates.push(s + 2);
        }
        candidates.sort((a, b) => groups[b]!.end - groups[a]!.end);
        last = candidates.find((c) => plausibleCard(digitsOf(s, c))) ?? -1;
      }
      if (last >= 0) {
        out.push({ start: groups[s]!.start, end: groups[last]!.end, detector: "credit-card" });
        s = last + 1;
      } else {
        s++;
      }
    }
  });
};

function isDigitAt(text: string, i: number): boolean {
  const c = text.charCodeAt(i);
  return c >= 0x30 && c <= 0x39;
}

// phone ----------------------------------------------------------------------------------------

/**
 * International: `+`, a country code, then digit groups with single separators, optionally one
 * parenthesised group (`+1 (555) 123-4567`, `+33 (0)1 23 45 67 89`); 8 to 15 digits (E.164), not
 * counting a `(0)` trunk prefix. Not after a digit or `+` (`1+23456789`, `++`). Two groups split by
 * one `.` are a signed decimal (`+7799461.4119`, to_char's `S` format, an amount), not a phone.
 */
const PHONE_INTERNATIONAL = /(?<![\d+])\+[1-9]\d*(?:[ .-]?\(\d{1,4}\)[ .-]?\d+)?(?:[ .-]\d+)*(?![\w(])/g;
/**
 * North American: `555-123-4567`, `(555) 123-4567`, `555.123.4567`, `1-800-555-1234`. The area
 * code starts with 2-9, as in the NANP; separators are required.
 */
const PHONE_NANP =
  /(?<![\w+.\-/]|\d[ .-])(?:1[ .-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}(?![\w]|[ .\-/]\d)/g;
/**
 * National forms with a trunk `0`, as in most of Europe: `01 23 45 67 89`, `020 7946 0958`,
 * `0151-12345678`, `06.12.34.56.78`; one separator used throughout, 10 to 12 digits.
 */
const PHONE_NATIONAL = /(?<![\w+.\-/]|\d[ .\-/])0[1-9]\d{0,4}([ .\-/])\d{2,8}(?:\1\d{2,8}){0,4}(?![\w]|[ .\-/]\d)/g;

const SIGNED_DECIMAL = /^\+\d+\.\d+$/;

function countDigits(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) if (isDigitAt(s, i)) n++;
  return n;
}

/**
 * Phone numbers, deliberately narrow: an international `+` form, or a national form with
 * separators. Not matched: bare digit strings (`0612345678`, `4155551234`: indistinguishable from
 * IDs and amounts), numbers under 8 digits, dates (`2024-01-15`, `15/01/2024`, `01.02.2024`: too few
 * digits or the wrong grouping), times, IP addresses, digits glued to letters or inside longer digit
 * groups (UUIDs, order numbers like `ORD-2024-000123`).
 */
const findPhones: Finder = (text, out) => {
  eachMatch(PHONE_INTERNATIONAL, text, (m) => {
    if (SIGNED_DECIMAL.test(m[0])) return;
    const digits = countDigits(m[0]) - (m[0].includes("(0)") ? 1 : 0);
    if (digits >= 8 && digits <= 15) out.push({ start: m.index, end: m.index + m[0].length, detector: "phone" });
  });
  eachMatch(PHONE_NANP, text, (m) => {
    out.push({ start: m.index, end: m.index + m[0].length, detector: "phone" });
  });
  eachMatch(PHONE_NATIONAL, text, (m) => {
    const digits = countDigits(m[0]);
    if (digits >= 10 && digits <= 12) out.push({ start: m.index, end: m.index + m[0].length, detector: "phone" });
  });
};

// iban -----------------------------------------------------------------------------------------

/** IBAN length per country (SWIFT IBAN registry). Unknown country codes are not IBANs. */
// prettier-ignore
const IBAN_LENGTHS: Readonly<Record<string, number>> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BI: 27, BL: 27, BR: 29,
  BY: 28, CH: 21, CR: 22, CY: 28, CZ: 24, DE: 22, DJ: 27, DK: 18, DO: 28, EE: 20, EG: 29, ES: 24,
  FI: 18, FK: 18, FO: 18, FR: 27, GB: 22, GE: 22, GF: 27, GI: 23, GL: 18, GP: 27, GR: 27, GT: 28,
  HN: 28, HR: 21, HU: 28, IE: 22, IL: 23, IQ: 23, IS: 26, IT: 27, JO: 30, KW: 30, KZ: 20, LB: 28,
  LC: 32, LI: 21, LT: 20, LU: 20, LV: 21, LY: 25, MC: 27, MD: 24, ME: 22, MF: 27, MK: 19, MN: 20,
  MQ: 27, MR: 27, MT: 31, MU: 30, NC: 27, NI: 28, NL: 18, NO: 15, OM: 23, PF: 27, PK: 24, PL: 28,
  PM: 27, PS: 29, PT: 25, QA: 29, RE: 27, RO: 24, RS: 22, RU: 33, SA: 24, SC: 31, SD: 18, SE: 24,
  SI: 19, SK: 24, SM: 27, SO: 23, ST: 25, SV: 28, TF: 27, TL: 23, TN: 24, UA: 29, VA: 22, VG: 24,
  WF: 27, XK: 20, YE: 30, YT: 27,
};

/** ISO 13616 check: move the first four characters to the end, letters to 10-35, mod 97 = 1. */
export function ibanChecksumValid(iban: string): boolean {
  const s = iban.slice(4) + iban.slice(0, 4);
  let r = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x30 && c <= 0x39) r = (r * 10 + (c - 0x30)) % 97;
    else if (c >= 0x41 && c <= 0x5a) r = (r * 100 + (c - 0x41 + 10)) % 97;
    else return false;
  }
  return r === 1;
}

const IBAN_START = /(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}/g;

/**
 * IBANs: a known country code, two check digits and the BBAN, compact or with single spaces (any
 * grouping), in either case; exactly the country's length, not glued to a following letter or
 * digit, and the mod-97 check passes.
 */
const findIbans: Finder = (text, out) => {
  eachMatch(IBAN_START, text, (m) => {
    const expected = IBAN_LENGTHS[m[0].slice(0, 2).toUpperCase()];
    if (expected === undefined) return;
    let compact = m[0].toUpperCase();
    let i = m.index + 4;
    while (compact.length < expected && i < text.length) {
      let c = text.charCodeAt(i);
      if (c === 0x20 && i + 1 < text.length && isAlnum(text.charCodeAt(i + 1))) c = text.charCodeAt(++i);
      if (!isAlnum(c)) break;
      compact += String.fromCharCode(c).toUpperCase();
      i++;
    }
    if (compact.length !== expected || (i < text.length && isAlnum(text.charCodeAt(i)))) return;
    if (ibanChecksumValid(compact)) {
      out.push({ start: m.index, end: i, detector: "iban" });
      IBAN_START.lastIndex = i;
    }
  });
};

// national-id ----------------------------------------------------------------------------------

/** US SSN `ddd-dd-dddd` (or with spaces): area not 000, 666 or 9xx, group not 00, serial not 0000. */
const SSN = /(?<![\w-])(?!000|666|9)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-]|\1\d)/g;
/**
 * UK National Insurance number `AB123456C` / `AB 12 34 56 C`: upper case only (lower-case letter
 * pairs are ordinary words), first letter not D F I Q U V, second not D F I O Q U V, prefixes BG GB
 * KN NK NT TN ZZ never issued, suffix A-D.
 */
const NINO =
  /(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])/g;
/**
 * French INSEE / NIR: sex (1-2), year, month (01-12, or 20-99 for unknown months), department (2
 * digits, or 2A/2B for Corsica), commune, order, and a key = 97 - (number mod 97) that must match.
 */
const INSEE = /(?<![\w])[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?![\w])/g;

/** The INSEE key check (spaces allowed; Corsica 2A/2B count as 19/18). */
export function inseeKeyValid(nir: string): boolean {
  const compact = nir.replace(/ /g, "");
  const body = compact.slice(0, 13).replace("2A", "19").replace("2B", "18");
  const key = Number(compact.slice(13));
  return key === 97 - (Number(body) % 97);
}

const findNationalIds: Finder = (text, out) => {
  eachMatch(SSN, text, (m) => out.push({ start: m.index, end: m.index + m[0].length, detector: "national-id" }));
  eachMatch(NINO, text, (m) => out.push({ start: m.index, end: m.index + m[0].length, detector: "national-id" }));
  eachMatch(INSEE, text, (m) => {
    if (inseeKeyValid(m[0])) out.push({ start: m.index, end: m.index + m[0].length, detector: "national-id" });
  });
};

// api-key --------------------------------------------------------------------------------------

/**
 * Well-known secret prefixes: AWS access key IDs, GitHub tokens, Slack tokens, Stripe secret and
 * restricted keys, Google API keys, OpenAI/Anthropic-style `sk-` keys (32+ characters with a digit,
 * so hyphenated words are not keys), Moat's own API keys, access tokens and enrolment tokens.
 */
const API_KEY =
  /(?<![A-Za-z0-9_-])(?:(?:AKIA|ASIA)[A-Z0-9]{16}|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}|xox[abposr]-[A-Za-z0-9-]{10,}|[sr]k_live_[A-Za-z0-9]{16,}|sk_test_[A-Za-z0-9]{16,}|AIza[A-Za-z0-9_-]{35}|sk-[A-Za-z0-9_-]{32,}|moat_(?:ak|ac|et1)_[A-Za-z0-9_-]{4,})(?![A-Za-z0-9_-])/g;
/** PEM private key blocks (PKCS#1/#8, EC, OpenSSH, encrypted, PGP). A block without its END line
 * (truncated column) is masked to the end of the value. */
const PEM_PRIVATE_KEY =
  /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*$)/g;

const findApiKeys: Finder = (text, out) => {
  eachMatch(API_KEY, text, (m) => {
    if (m[0].startsWith("sk-") && !/\d/.test(m[0].slice(3))) return;
    out.push({ start: m.index, end: m.index + m[0].length, detector: "api-key" });
  });
  if (text.includes("-----BEGIN ")) {
    eachMatch(PEM_PRIVATE_KEY, text, (m) =>
      out.push({ start: m.index, end: m.index + m[0].length, detector: "api-key" }),
    );
  }
};

// jwt ------------------------------------------------------------------------------------------

/** Compact JWS: three base64url segments, header and payload JSON objects (`eyJ` = `{"`); the
 * signature may be empty (`alg: none`), which is still a token worth hiding. */
const JWT = /(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])/g;

const findJwts: Finder = (text, out) => {
  if (!text.includes("eyJ")) return;
  eachMatch(JWT, text, (m) => out.push({ start: m.index, end: m.index + m[0].length, detector: "jwt" }));
};

// ---------------------------------------------------------------------------------------------

const FINDERS: Record<Detector, Finder> = {
  email: findEmails,
  "credit-card": findCards,
  phone: findPhones,
  iban: findIbans,
  "national-id": findNationalIds,
  "api-key": findApiKeys,
  jwt: findJwts,
};

/**
 * Every match of `detectors` (names, or a mask from `detectorMask`) in `text`, a latin1 view of the
 * value's bytes or plain ASCII, sorted by start. Matches of different detectors may overlap; the
 * caller merges them.
 */
export function findMatches(text: string, detectors: readonly Detector[] | number): DetectorMatch[] {
  const mask = typeof detectors === "number" ? detectors : detectorMask(detectors);
  const out: DetectorMatch[] = [];
  for (let i = 0; i < DETECTOR_NAMES.length; i++) if (mask & (1 << i)) FINDERS[DETECTOR_NAMES[i]!](text, out);
  return out.length < 2 ? out : out.sort((a, b) => a.start - b.start || b.end - a.end);
}
