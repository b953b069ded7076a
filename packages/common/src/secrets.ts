/**
 * Bearer secrets (API keys, enrolment tokens, agent credentials): generation, hashing for storage,
 * and constant-time verification. Secrets are 256-bit random values, so a single SHA-256 is a sound
 * storage hash (no password stretching needed); only the hash is ever persisted.
 *
 * Format: `<kind>_<id>_<secret>` where `id` is a public lookup handle and `secret` the random part,
 * so a secret can be found by id and recognised by its prefix in logs and secret scanners.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/** Prefixes of the bearer secrets Moat issues. */
export const SecretKind = {
  apiKey: "moat_ak",
  agentCredential: "moat_ac",
} as const;
export type SecretKind = (typeof SecretKind)[keyof typeof SecretKind];

const ID_PATTERN = /^[a-z0-9]{8,40}$/;
const SECRET_PATTERN = /^[A-Za-z0-9_-]{43}$/;

/** A freshly generated secret: `value` is shown once, `hash` is what gets stored. */
export interface GeneratedSecret {
  id: string;
  value: string;
  hash: string;
}

/** Random lowercase alphanumeric id suitable for lookups and URLs. */
export function randomId(length = 16): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = randomBytes(length);
  let out = "";
  for (const byte of bytes) out += alphabet[byte % alphabet.length];
  return out;
}

/** SHA-256 (hex) of a secret, for storage. */
export function hashSecret(value: string): string {
  return createHash("sha256").update(value, "utf8").digest("hex");
}

/** Constant-time comparison of a presented secret against a stored hash. */
export function verifySecret(presented: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(presented), "hex");
  const b = Buffer.from(storedHash, "hex");
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Generates a `<kind>_<id>_<secret>` bearer secret; `id` defaults to a random handle. */
export function generateSecret(kind: SecretKind, id: string = randomId()): GeneratedSecret {
  if (!ID_PATTERN.test(id)) throw new Error("secret id must be 8-40 lowercase alphanumerics");
  const value = `${kind}_${id}_${randomBytes(32).toString("base64url")}`;
  return { id, value, hash: hashSecret(value) };
}

/** Splits a presented bearer secret into kind and id; undefined when it is not well formed. */
export function parseSecret(value: string): { kind: SecretKind; id: string } | undefined {
  for (const kind of Object.values(SecretKind)) {
    if (!value.startsWith(`${kind}_`)) continue;
    const rest = value.slice(kind.length + 1);
    const sep = rest.indexOf("_");
    if (sep < 0) return undefined;
    const id = rest.slice(0, sep);
    const secret = rest.slice(sep + 1);
    if (!ID_PATTERN.test(id) || !SECRET_PATTERN.test(secret)) return undefined;
    return { kind, id };
  }
  return undefined;
}
