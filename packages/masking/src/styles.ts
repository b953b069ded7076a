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
 * The partial style of `bytes[start..end)`: emails keep the first character of the local part and
 * the domain (`j***@example.com`, whatever the local part's length); other values longer than 8
 * characters keep their last 4 (`****1234`); shorter values are fully masked, since four characters
 * of eight or fewer would reveal half of them or more. `emailAt` is the offset of the `@` when the
 * range is an email. Characters are UTF-8 characters, so a kept character is never cut.
 */
export function partialBytes(bytes: Uint8Array, start: number, end: number, emailAt?: number): Buffer {
  if (emailAt !== undefined) {
    let firstEnd = start + 1;
    while (firstEnd < emailAt && isContinuation(bytes[firstEnd]!)) firstEnd++;
    return Buffer.concat([bytes.subarray(start, firstEnd), Buffer.from("***"), bytes.subarray(emailAt, end)]);
  }
  if (charCount(bytes, start, end, PARTIAL_MIN_LENGTH) < PARTIAL_MIN_LENGTH) return Buffer.from(STARS);
  const keep = lastCharsStart(bytes, start, end, 4);
  return Buffer.concat([Buffer.from(STARS), bytes.subarray(keep, end)]);
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
  switch (style) {
    case "full":
      return Buffer.from(STARS);
    case "partial":
      return partialBytes(bytes, start, end, emailAt);
    case "hash":
      return Buffer.from(hashText(key, bytes.subarray(start, end)));
  }
}

export { STARS };
