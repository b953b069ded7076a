/**
 * ULIDs (https://github.com/ulid/spec): 48-bit millisecond time + 80 random bits, Crockford base32,
 * lexicographically time-ordered. Monotonic within a millisecond (the random part increments).
 *
 * Cheap enough for one per audited statement: the time prefix is encoded once per millisecond,
 * randomness comes from a pooled buffer, and an increment re-encodes only the digits it changes.
 */
import { randomFillSync } from "node:crypto";

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const RANDOM_DIGITS = 16;

function encodeTime(ms: number): string {
  let out = "";
  let v = ms;
  for (let i = 0; i < 10; i++) {
    const d = v % 32;
    out = (ALPHABET[d] as string) + out;
    v = (v - d) / 32;
  }
  return out;
}

export function createUlidFactory(now: () => number = Date.now): () => string {
  const pool = new Uint8Array(4096);
  let poolPos = pool.length;
  const digits = new Uint8Array(RANDOM_DIGITS);
  let lastTime = -1;
  let prefix = "";
  /** Time prefix + all random digits but the last, re-encoded when a carry reaches them. */
  let head = "";
  const encodeHead = () => {
    let h = prefix;
    for (let i = 0; i < RANDOM_DIGITS - 1; i++) h += ALPHABET[digits[i] as number] as string;
    head = h;
  };
  return () => {
    const time = now();
    if (time === lastTime) {
      let i = RANDOM_DIGITS - 1;
      while (i >= 0 && digits[i] === 31) digits[i--] = 0; // carry (wraps after 2^80 in one ms)
      if (i >= 0) digits[i] = (digits[i] as number) + 1;
      if (i !== RANDOM_DIGITS - 1) encodeHead();
    } else {
      if (poolPos + RANDOM_DIGITS > pool.length) {
        randomFillSync(pool);
        poolPos = 0;
      }
      for (let i = 0; i < RANDOM_DIGITS; i++) digits[i] = (pool[poolPos++] as number) & 31;
      lastTime = time;
      prefix = encodeTime(time);
      encodeHead();
    }
    return head + (ALPHABET[digits[RANDOM_DIGITS - 1] as number] as string);
  };
}
