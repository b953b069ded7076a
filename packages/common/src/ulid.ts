/**
 * ULIDs (https://github.com/ulid/spec): 48-bit millisecond time + 80 random bits, Crockford base32,
 * lexicographically time-ordered. Monotonic within a millisecond (the random part increments).
 */
import { randomBytes } from "node:crypto";

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

function encode(value: bigint, length: number): string {
  let out = "";
  let v = value;
  for (let i = 0; i < length; i++) {
    out = (ALPHABET[Number(v & 31n)] as string) + out;
    v >>= 5n;
  }
  return out;
}

export function createUlidFactory(now: () => number = Date.now): () => string {
  let lastTime = -1;
  let lastRandom = 0n;
  return () => {
    const time = now();
    if (time === lastTime) {
      lastRandom = (lastRandom + 1n) & ((1n << 80n) - 1n);
    } else {
      lastTime = time;
      lastRandom = BigInt(`0x${randomBytes(10).toString("hex")}`);
    }
    return encode(BigInt(time), 10) + encode(lastRandom, 16);
  };
}
