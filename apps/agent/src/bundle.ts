/**
 * The agent's policy bundle: verified (signature by a trusted key, addressed to this agent, no
 * rollback, not expired, every policy valid), swapped in atomically, persisted for restarts, and
 * used for every decision. With no valid bundle the agent decides nothing: it denies, and says why.
 */
import { createPublicKey, verify as cryptoVerify } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import {
  compilePolicies,
  evaluate,
  mayAllow,
  PolicyError,
  RESOURCE_TYPES,
  schemaProblems,
  type CompiledPolicies,
  type PolicyDocument,
  type PolicyRequest,
  type ResourceType,
  type Verdict,
} from "@moat/policy";
import {
  BundleSchema,
  fromBinary,
  ResourceType as ProtoResourceType,
  SignedBundleSchema,
  timestampDate,
  toBinary,
  type SignedBundle,
} from "@moat/proto";
import type { TrustedKey } from "./identity-file.js";

export interface ActiveBundle {
  version: bigint;
  issuedAt: Date;
  notAfter: Date;
  policies: CompiledPolicies;
  policyCount: number;
  /** Resources by name, as the policy engine takes them. */
  resources: ReadonlyMap<string, PolicyRequest["resource"]>;
  tokenKeys: TrustedKey[];
  tokenIssuer: string;
  tokenAudience: string;
  revokedTokenIds: ReadonlySet<string>;
  disabledUsers: ReadonlySet<string>;
  bundleKeys: TrustedKey[];
}

export type ApplyResult = { applied: true; version: bigint } | { applied: false; version: bigint; error: string };

/** A decision request from an enforcer: the resource by name, the rest as the policy engine takes it. */
export type DecisionRequest = Omit<PolicyRequest, "resource"> & { resource: string };

export interface BundleHolder {
  current(): ActiveBundle | undefined;
  /** Verifies and, if acceptable, activates and persists a bundle. Never throws. */
  apply(signed: SignedBundle, now: Date): ApplyResult;
  /** Decides with the active bundle; denies (fail closed) without a valid one. */
  decide(request: DecisionRequest): Verdict;
  /**
   * Whether any rule of the active bundle could allow (or hold for review) the action for this
   * subject on this resource, whatever the tables and conditions (`mayAllow` of @moat/policy);
   * false without a valid bundle.
   */
  mayAllow(request: Omit<DecisionRequest, "now" | "tables">): boolean;
  trustedKeys(): TrustedKey[];
}

const TYPE_NAMES: Record<number, ResourceType | undefined> = {
  [ProtoResourceType.POSTGRES]: "postgres",
  [ProtoResourceType.SSH]: "ssh",
  [ProtoResourceType.KUBERNETES]: "kubernetes",
  [ProtoResourceType.HTTP]: "http",
};

function denial(message: string): Verdict {
  return { effect: "deny", rule: "", message, obligations: { mask: [], record: true }, matched: [] };
}

class BundleRejected extends Error {}

export function createBundleHolder(options: {
  agentId: string;
  dataDir: string;
  /** Keys pinned at enrolment (or from the last persisted bundle). */
  trustedKeys: TrustedKey[];
  /** Called after a bundle is accepted, with its new set of trusted keys (to persist them). */
  onTrustedKeys?: (keys: TrustedKey[]) => void;
  now?: () => Date;
}): BundleHolder & { loadPersisted(): ApplyResult | undefined } {
  const path = join(options.dataDir, "bundle.pb");
  const now = options.now ?? (() => new Date());
  let active: ActiveBundle | undefined;
  let trusted = options.trustedKeys;

  function verify(signed: SignedBundle, at: Date, fromDisk: boolean): ActiveBundle {
    if (signed.algorithm !== "Ed25519")
      throw new BundleRejected(`unsupported signature algorithm "${signed.algorithm}"`);
    const key = trusted.find((k) => k.keyId === signed.keyId);
    if (!key)
      throw new BundleRejected(
        `signed by an unknown key "${signed.keyId}" (this agent trusts ${trusted.map((k) => `"${k.keyId}"`).join(", ") || "no key"}; ` +
          "an agent offline through a bundle-key rotation for longer than the control plane's grace period must be re-enrolled)",
      );
    let ok = false;
    try {
      ok = cryptoVerify(null, signed.payload, createPublicKey({ key: key.jwk, format: "jwk" }), signed.signature);
    } catch {
      ok = false;
    }
    if (!ok) throw new BundleRejected("bad signature");
    let bundle;
    try {
      bundle = fromBinary(BundleSchema, signed.payload);
    } catch {
      throw new BundleRejected("payload is not a bundle");
    }
    if (bundle.agentId !== options.agentId) throw new BundleRejected(`addressed to another agent (${bundle.agentId})`);
    const issuedAt = bundle.issuedAt ? timestampDate(bundle.issuedAt) : new Date(0);
    const notAfter = bundle.notAfter ? timestampDate(bundle.notAfter) : new Date(0);
    if (active && !fromDisk) {
      if (bundle.version < active.version)
        throw new BundleRejected(`version ${bundle.version} is older than the active ${active.version} (rollback)`);
      if (bundle.version === active.version && issuedAt <= active.issuedAt)
        throw new BundleRejected(`version ${bundle.version} is not newer than the active one (replay)`);
    }
    if (!fromDisk && notAfter <= at) throw new BundleRejected("already expired");
    const documents: PolicyDocument[] = [];
    bundle.policyDocuments.forEach((text, i) => {
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        throw new BundleRejected(`policy ${i} is not JSON`);
      }
      const problems = schemaProblems(value);
      if (problems.length > 0)
        throw new BundleRejected(`policy ${i} is invalid: ${problems[0]?.field}: ${problems[0]?.message}`);
      documents.push(value as PolicyDocument);
    });
    let policies: CompiledPolicies;
    try {
      policies = compilePolicies(documents);
    } catch (error) {
      throw new BundleRejected(error instanceof PolicyError ? error.message : "policies do not compile");
    }
    const resources = new Map<string, PolicyRequest["resource"]>();
    for (const r of bundle.resources) {
      const type = TYPE_NAMES[r.type];
      if (type && (RESOURCE_TYPES as readonly string[]).includes(type)) {
        const labels = Object.fromEntries(r.labels.map((l) => [l.key, l.value]));
        resources.set(r.name, Object.freeze({ name: r.name, type, labels: Object.freeze(labels) }));
      }
    }
    const keys = (list: typeof bundle.tokenKeys): TrustedKey[] =>
      list.map((k) => ({
        keyId: k.keyId,
        algorithm: k.algorithm,
        jwk: JSON.parse(k.jwkJson) as Record<string, string>,
      }));
    return {
      version: bundle.version,
      issuedAt,
      notAfter,
      policies,
      policyCount: documents.length,
      resources,
      tokenKeys: keys(bundle.tokenKeys),
      tokenIssuer: bundle.tokenIssuer,
      tokenAudience: bundle.tokenAudience,
      revokedTokenIds: new Set(bundle.revokedTokenIds),
      disabledUsers: new Set(bundle.disabledUsers.map((u) => u.toLowerCase())),
      bundleKeys: keys(bundle.bundleKeys),
    };
  }

  function activate(next: ActiveBundle, signed: SignedBundle, persist: boolean): void {
    if (persist) {
      // On disk (and synced) first: a bundle the agent enforces must survive a crash, or a restart
      // would lose the version baseline that stops rollbacks. If this fails, nothing changes.
      const temp = `${path}.tmp`;
      const fd = openSync(temp, "w", 0o600);
      try {
        writeSync(fd, toBinary(SignedBundleSchema, signed));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temp, path);
      const dir = openSync(options.dataDir, "r");
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    }
    active = next; // one reference swap: decisions see the old bundle or the new one, never a mix
    if (next.bundleKeys.length > 0) {
      trusted = next.bundleKeys;
      options.onTrustedKeys?.(trusted);
    }
  }

  function tryApply(signed: SignedBundle, at: Date, fromDisk: boolean): ApplyResult {
    try {
      const next = verify(signed, at, fromDisk);
      activate(next, signed, !fromDisk);
      return { applied: true, version: next.version };
    } catch (error) {
      const message = error instanceof BundleRejected ? error.message : `unexpected error: ${(error as Error).message}`;
      let version = 0n;
      try {
        version = fromBinary(BundleSchema, signed.payload).version;
      } catch {
        // unreadable payload: version unknown
      }
      return { applied: false, version, error: message };
    }
  }

  return {
    current: () => active,
    trustedKeys: () => trusted,
    apply: (signed, at) => tryApply(signed, at, false),

    loadPersisted() {
      if (!existsSync(path)) return undefined;
      let signed: SignedBundle;
      try {
        signed = fromBinary(SignedBundleSchema, readFileSync(path));
      } catch {
        return { applied: false, version: 0n, error: `${path} is unreadable` };
      }
      return tryApply(signed, now(), true);
    },

    decide(request) {
      const bundle = active;
      if (!bundle)
        return denial("access denied: this agent has not received a policy bundle from the control plane yet");
      if (bundle.notAfter.getTime() <= request.now) {
        return denial(
          `access denied: this agent's policy bundle expired at ${bundle.notAfter.toISOString()} (no contact with the control plane since)`,
        );
      }
      const resource = bundle.resources.get(request.resource);
      if (!resource)
        return denial(`access denied: resource "${request.resource}" is not in this agent's policy bundle`);
      if (bundle.disabledUsers.has(request.user.toLowerCase()))
        return denial(`access denied: user ${request.user} is disabled`);
      // Field by field (one per statement: a spread with an override costs a slow object path).
      return evaluate(bundle.policies, {
        user: request.user,
        groups: request.groups,
        serviceAccount: request.serviceAccount,
        resource,
        action: request.action,
        tables: request.tables,
        command: request.command,
        sourceIp: request.sourceIp,
        reason: request.reason,
        now: request.now,
      });
    },

    mayAllow(request) {
      const resource = active?.resources.get(request.resource);
      if (!active || !resource) return false;
      return mayAllow(active.policies, { ...request, resource });
    },
  };
}
