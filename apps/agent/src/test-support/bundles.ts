/**
 * Test support (not built into dist/): signing keys and signed bundles as a control plane would
 * make them.
 */
import { generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import {
  BundleSchema,
  create,
  ResourceType,
  SignedBundleSchema,
  timestampFromDate,
  toBinary,
  type SignedBundle,
} from "@moat/proto";
import type { TrustedKey } from "../identity-file.js";

export interface TestKey {
  kid: string;
  privateKey: KeyObject;
  trusted: TrustedKey;
}

export function keyPair(kid: string): TestKey {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  return {
    kid,
    privateKey,
    trusted: {
      keyId: kid,
      algorithm: "EdDSA",
      jwk: { ...(publicKey.export({ format: "jwk" }) as Record<string, string>), kid },
    },
  };
}

export const NOW = new Date("2026-11-25T12:00:00Z");

/** A policy for group eng on resource `db`: one allow rule of `actions`, masking rules if given. */
function engPolicy(name: string, rule: string, actions: string[], masking?: object[]): object {
  return {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name },
    spec: {
      subjects: { groups: ["eng"] },
      resources: { names: ["db"] },
      rules: [{ name: rule, effect: "allow", actions }],
      ...(masking ? { masking } : {}),
    },
  };
}

export const POLICY = engPolicy("p", "read", ["connect", "db:read"]);

/** A policy letting group eng connect to `db` and do anything there. */
export const ALLOW_ALL_POLICY = engPolicy("all", "all", ["connect", "db:*"]);

/** A policy letting group eng connect to `db` and read (and do `extra`), with masking rules if given. */
export function readPolicy(extra: string[] = [], masking?: object[]): object {
  return engPolicy("read", "read", ["connect", "db:read", ...extra], masking);
}

export interface BundleOptions {
  agentId?: string;
  version?: bigint;
  issuedAt?: Date;
  ttlMs?: number;
  policies?: string[];
  bundleKeys?: TrustedKey[];
  tokenKeys?: TrustedKey[];
  disabled?: string[];
  revoked?: string[];
}

export function signedBundle(key: { kid: string; privateKey: KeyObject }, o: BundleOptions = {}): SignedBundle {
  const issuedAt = o.issuedAt ?? NOW;
  const toProto = (keys: TrustedKey[] = []) =>
    keys.map((k) => ({ keyId: k.keyId, algorithm: k.algorithm, jwkJson: JSON.stringify(k.jwk) }));
  const payload = toBinary(
    BundleSchema,
    create(BundleSchema, {
      agentId: o.agentId ?? "agent1",
      version: o.version ?? 1n,
      issuedAt: timestampFromDate(issuedAt),
      notAfter: timestampFromDate(new Date(issuedAt.getTime() + (o.ttlMs ?? 3600_000))),
      resources: [{ name: "db", type: ResourceType.POSTGRES, labels: [{ key: "env", value: "prod" }] }],
      policyDocuments: o.policies ?? [JSON.stringify(POLICY)],
      bundleKeys: toProto(o.bundleKeys),
      tokenKeys: toProto(o.tokenKeys),
      tokenIssuer: "moat",
      tokenAudience: "moat-agents",
      disabledUsers: o.disabled ?? [],
      revokedTokenIds: o.revoked ?? [],
    }),
  );
  return create(SignedBundleSchema, {
    payload,
    signature: sign(null, payload, key.privateKey),
    keyId: key.kid,
    algorithm: "Ed25519",
  });
}
