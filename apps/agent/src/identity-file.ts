/**
 * The agent's identity on disk (<dataDir>/agent.json, mode 0600): its id, its long-lived credential,
 * the control-plane endpoint and the pinned CA. Written atomically (temp file + rename).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface AgentIdentity {
  agentId: string;
  agentName: string;
  credential: string;
  endpoint: string;
  /** PEM of the pinned control-plane CA ("" for plaintext). */
  caPem: string;
  /** SHA-256 of the enrolment token last used, so the same token is not replayed on restart. */
  enrolmentTokenHash: string;
  /** Keys accepted on bundles: pinned at enrolment, then rotated by verified bundles. */
  bundleKeys: TrustedKey[];
}

/** A public key the agent trusts, as a JWK. */
export interface TrustedKey {
  keyId: string;
  algorithm: string;
  jwk: Record<string, string>;
}

export function identityPath(dataDir: string): string {
  return join(dataDir, "agent.json");
}

export function readIdentity(dataDir: string): AgentIdentity | undefined {
  const path = identityPath(dataDir);
  if (!existsSync(path)) return undefined;
  const parsed = JSON.parse(readFileSync(path, "utf8")) as Partial<AgentIdentity>;
  if (
    typeof parsed.agentId !== "string" ||
    typeof parsed.credential !== "string" ||
    typeof parsed.endpoint !== "string"
  ) {
    throw new Error(`${path} is damaged: remove it and enrol again with a new token`);
  }
  return {
    agentId: parsed.agentId,
    agentName: parsed.agentName ?? "",
    credential: parsed.credential,
    endpoint: parsed.endpoint,
    caPem: parsed.caPem ?? "",
    enrolmentTokenHash: parsed.enrolmentTokenHash ?? "",
    bundleKeys: Array.isArray(parsed.bundleKeys) ? parsed.bundleKeys : [],
  };
}

export function writeIdentity(dataDir: string, identity: AgentIdentity): void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = identityPath(dataDir);
  const temp = `${path}.tmp`;
  writeFileSync(temp, JSON.stringify(identity, null, 2) + "\n", { mode: 0o600 });
  chmodSync(temp, 0o600);
  renameSync(temp, path);
}
