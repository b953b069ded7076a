/**
 * Mask styles: what a masked value (or masked substring) becomes, and which style is strongest when
 * several rules reach the same value. Pure byte functions; no knowledge of columns or detectors
 * beyond "is this an email".
 */
import { createHmac, randomBytes } from "node:crypto";

export type MaskStyle = "full" | "partial" | "hash" | "null";

/**
 * Strength of each style, by how much of the value survives: `null` leaves nothing (not even the
 * fact that there was a value), `full` leaves only presence, `hash` leaves presence and equality
 * (joins, counting distinct values; with a secret key, no content), `partial` leaves a fragment of
 * the content (last four characters, an email's domain). When several rules reach one value the
 * strongest wins, so a union of policies can only hide more.
 */
export const STYLE_STRENGTH: Readonly<Record<MaskStyle, number>> = { partial: 1, hash: 2, full: 3, null: 4 };

export function strongest(a: MaskStyle | undefined, b: MaskStyle): MaskStyle {
  return a === undefined || STYLE_STRENGTH[b] > STYLE_STRENGTH[a] ? b : a;
}

/** The fixed replacement of the full style: the same four stars whatever the length. */
const STARS = "****";

/** Shortest value (in characters) whose last four characters the partial style may show. */
const PARTIAL_MIN_LENGTH = 9;

/** The key used when the caller gives none: random, once per process, so hashes join within it. */
let processKey: Buffer | undefined;
export function defaultHashKey(): Buffer {
  processKey ??= randomBytes(32);
  return processKey;
}

/** `hash:` + the first 16 hex characters (64 bits) of HMAC-SHA-256(key, bytes). */
export function hashText(key: Uint8Array, bytes: Uint8Array): string {
  return "hash:" + createHmac("sha256", key).update(bytes).digest("hex").slice(0, 16);
}

function isContinuation(byte: number): boolean {
  return (byte & 0xc0) === 0x80;
}

/** Byte offset where the last `n` UTF-8 characters of `bytes[start..end)` begin (lead bytes are
 * counted, so invalid UTF-8 still gives an answer). */
function lastCharsStart(bytes: Uint8Array, start: number, end: number, n: number): number {
  let chars = 0;
  for (let i = end - 1; i >= start; i--) if (!isContinuation(bytes[i]!) && ++chars === n) return i;
  return start;
}

function charCount(bytes: Uint8Array, start: number, end: number, cap: number): number {
  let chars = 0;
  for (let i = start; i < end && chars < cap; i++) if (!isContinuation(bytes[i]!)) chars++;
  return chars;
}

/**
 * A growable byte buffer masks are written into. The per-value path reuses one (`scratch`), so a
 * replacement costs no allocation of its own.
 */
export class ByteSink {
  bytes: Buffer = Buffer.allocUnsafe(256);
  length = 0;

  /** Room for `n` more bytes. */
  reserve(n: number): void {
    if (this.length + n <= this.bytes.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.bytes.length * 2, this.length + n));
    this.bytes.copy(next, 0, 0, this.length);
    this.bytes = next;
  }

  /** Appends `src[from..to)`. */
  append(src: Uint8Array, from: number, to: number): void {
    this.reserve(to - from);
    this.length = copyBytes(this.bytes, this.length, src, from, to);
  }

  /** Appends `n` stars. */
  stars(n: number): void {
    this.reserve(n);
    for (let i = 0; i < n; i++) this.bytes[this.length++] = 0x2a;
  }

  /** Appends an ASCII string. */
  ascii(text: string): void {
    this.reserve(text.length);
    this.length += this.bytes.write(text, this.length, "latin1");
  }
}

/**
 * Appends the partial style of `bytes[start..end)` to `sink`: emails keep the first character of
 * the local part and the domain (`j***@example.com`, whatever the local part's length); other
 * values longer than 8 characters keep their last 4 (`****1234`); shorter values are fully masked,
 * since four characters of eight or fewer would reveal half of them or more. `emailAt` is the
 * offset of the `@` when the range is an email. Characters are UTF-8 characters, so a kept
 * character is never cut.
 */
function writePartial(sink: ByteSink, bytes: Uint8Array, start: number, end: number, emailAt?: number): void {
  if (emailAt !== undefined) {
    let firstEnd = start + 1;
    while (firstEnd < emailAt && isContinuation(bytes[firstEnd]!)) firstEnd++;
    sink.append(bytes, start, firstEnd);
    sink.stars(3);
    sink.append(bytes, emailAt, end);
    return;
  }
  sink.stars(STARS.length);
  if (charCount(bytes, start, end, PARTIAL_MIN_LENGTH) < PARTIAL_MIN_LENGTH) return;
  sink.append(bytes, lastCharsStart(bytes, start, end, 4), end);
}

/**
 * Copies `src[from..to)` into `dst` at `at` and returns the offset after it. A loop for the short
 * ranges masking deals in (Buffer#copy costs more in argument checks than in copying them).
 */
export function copyBytes(dst: Uint8Array, at: number, src: Uint8Array, from: number, to: number): number {
  if (to - from > 64) {
    dst.set(src.subarray(from, to), at);
    return at + (to - from);
  }
  for (let i = from; i < to; i++) dst[at++] = src[i]!;
  return at;
}

/** Appends the replacement of `bytes[start..end)` in `style` (full, partial or hash) to `sink`. */
export function writeMask(
  sink: ByteSink,
  style: Exclude<MaskStyle, "null">,
  bytes: Uint8Array,
  start: number,
  end: number,
  key: Uint8Array,
  emailAt?: number,
): void {
  switch (style) {
    case "full":
      sink.stars(STARS.length);
      return;
    case "partial":
      writePartial(sink, bytes, start, end, emailAt);
      return;
    case "hash":
      sink.ascii(hashText(key, bytes.subarray(start, end)));
      return;
  }
}

/** The replacement text for `style` (full, partial or hash; null is the caller's business). */
export function maskBytes(
  style: Exclude<MaskStyle, "null">,
  bytes: Uint8Array,
  start: number,
  end: number,
  key: Uint8Array,
  emailAt?: number,
): Buffer {
  const sink = new ByteSink();
  writeMask(sink, style, bytes, start, end, key, emailAt);
  return Buffer.from(sink.bytes.subarray(0, sink.length));
}

export { STARS };
