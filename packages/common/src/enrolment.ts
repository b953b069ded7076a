/**
 * Enrolment tokens: what an admin hands to a new agent. Self-describing, so one string is enough to
 * enrol: which agent, the one-time secret, the SHA-256 fingerprint of the control plane's CA (the
 * agent pins it before sending anything) and the control plane's gRPC endpoint.
 * Only the hash of `secret` is stored by the control plane.
 */
import { randomBytes } from "node:crypto";

const PREFIX = "moat_et1_";

export interface EnrolmentToken {
  agentId: string;
  secret: string;
  /** Lowercase hex SHA-256 of the CA certificate (DER), or "" when the endpoint is plaintext. */
  caFingerprint: string;
  /** host:port of the control plane's gRPC listener. */
  endpoint: string;
}

/** A new random one-time secret for an enrolment token. */
export function newEnrolmentSecret(): string {
  return randomBytes(32).toString("base64url");
}

/** Encodes a token for display. */
export function encodeEnrolmentToken(token: EnrolmentToken): string {
  const body = JSON.stringify({ a: token.agentId, s: token.secret, f: token.caFingerprint, e: token.endpoint });
  return PREFIX + Buffer.from(body, "utf8").toString("base64url");
}

/** Decodes a token; throws an Error naming what is wrong (never echoing the secret). */
export function decodeEnrolmentToken(value: string): EnrolmentToken {
  const trimmed = value.trim();
  if (!trimmed.startsWith(PREFIX)) throw new Error(`enrolment token must start with "${PREFIX}"`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(trimmed.slice(PREFIX.length), "base64url").toString("utf8"));
  } catch {
    throw new Error("enrolment token is not valid (corrupted or truncated)");
  }
  const o = parsed as Record<string, unknown>;
  if (
    typeof o !== "object" ||
    o === null ||
    typeof o.a !== "string" ||
    typeof o.s !== "string" ||
    typeof o.f !== "string" ||
    typeof o.e !== "string" ||
    o.a === "" ||
    o.s.length < 32 ||
    !/^([0-9a-f]{64})?$/.test(o.f)
  ) {
    throw new Error("enrolment token is not valid (missing or malformed fields)");
  }
  return { agentId: o.a, secret: o.s, caFingerprint: o.f, endpoint: o.e };
}
