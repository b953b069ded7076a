/**
 * Bundles: what one agent needs to enforce alone, compiled from the stored policies at the current
 * revision and signed with a bundle key. Only the policies that select one of the agent's
 * resources go in; the agent never sees the rest of the organisation's rules.
 *
 * Versions are issued by the store, per agent, strictly increasing (never a replica's clock), and
 * before the content is read: a bundle with a higher version was compiled from content read later.
 * Every bundle must fit the agent channel's message limit (with headroom for the envelope); one
 * that does not is not signed and not sent, and policy writes that would cause one are refused.
 */
import { AppError } from "@moat/common";
import { resourceMatcher, type PolicyDocument } from "@moat/policy";
import {
  BundleSchema,
  create,
  ResourceType as ProtoResourceType,
  SignedBundleSchema,
  timestampFromDate,
  toBinary,
  VerificationKeySchema,
  type SignedBundle,
  type VerificationKey,
} from "@moat/proto";
import type { Keyring } from "../keys.js";
import { REVOKED_TOKENS_KEPT_MS, type ResourceType, type Store } from "../store/index.js";
import { canonicalJson, type PolicyService } from "./policies.js";

const PROTO_TYPES: Record<ResourceType, ProtoResourceType> = {
  postgres: ProtoResourceType.POSTGRES,
  ssh: ProtoResourceType.SSH,
  kubernetes: ProtoResourceType.KUBERNETES,
  http: ProtoResourceType.HTTP,
};

export const BUNDLE_SIGNATURE_ALGORITHM = "Ed25519";

/**
 * Bytes of the agent channel's message limit kept free around a bundle's payload: the signature,
 * key id and algorithm of SignedBundle and the ConnectResponse wrapping take under 200.
 */
export const BUNDLE_ENVELOPE_HEADROOM_BYTES = 4096;

/** The largest bundle payload (serialized Bundle) that fits messages of `maxMessageBytes`. */
export function bundleBudgetBytes(maxMessageBytes: number): number {
  return maxMessageBytes - BUNDLE_ENVELOPE_HEADROOM_BYTES;
}

const SHARED_MAX_AGE_MS = 5_000;
const MAX_UINT64 = 2n ** 64n - 1n;

/** A bundle built, signed and ready to send. */
export interface SignedBundleResult {
  kind: "signed";
  signed: SignedBundle;
  version: bigint;
  policyRevision: bigint;
  /** The bundle key that signed it. */
  keyId: string;
  /** The bundle keys it carries (what the agent trusts once it applies it). */
  bundleKeyIds: string[];
  policies: number;
  /** Size of the payload (serialized Bundle). */
  bytes: number;
}

/** A bundle over the size budget: not signed, never sent. Its version is spent. */
export interface OversizedBundleResult {
  kind: "too_large";
  version: bigint;
  policyRevision: bigint;
  bytes: number;
  budget: number;
  policies: number;
}

export interface BundleService {
  /** Drops the shared parts cached for building bundles (call when policies, keys or identities change). */
  invalidate(): void;
  /**
   * Issues the agent's next version, compiles the current bundle and, if it fits the budget, signs
   * it: with the newest bundle key in `trustedKeyIds` (the keys the agent is known to trust), or
   * with the oldest active key when none is known (a transition bundle every agent that can still
   * catch up accepts; it carries the newer keys).
   */
  build(
    agentId: string,
    options?: { trustedKeyIds?: ReadonlySet<string> },
  ): Promise<SignedBundleResult | OversizedBundleResult>;
  /**
   * Refuses (bundle_too_large, naming the agents) a change of the policy set from `current` to
   * `proposed` that would make some agent's bundle exceed the budget and grow it. Agents already
   * over the budget may shrink, so an operator can always back out.
   */
  checkBudget(current: PolicyDocument[], proposed: PolicyDocument[]): Promise<void>;
  /** The keys agents accept on bundles (sent at enrolment). */
  bundleKeys(): Promise<VerificationKey[]>;
}

/** The text of a policy as bundles carry it: canonical JSON, without its tests (for authors and CI only). */
function bundleDocumentJson(doc: PolicyDocument): string {
  const { tests: _tests, ...spec } = doc.spec;
  return canonicalJson({ ...doc, spec });
}

/** Bytes a string takes as one element of a repeated string field with a one-byte tag. */
function repeatedStringBytes(text: string): number {
  const length = Buffer.byteLength(text);
  let varint = 1;
  for (let n = length; n >= 0x80; n >>>= 7) varint++;
  return 1 + varint + length;
}

export function createBundleService(deps: {
  store: Pick<Store, "resources" | "accessTokens" | "users" | "agents">;
  policies: Pick<PolicyService, "snapshot">;
  keyring: Keyring;
  now: () => Date;
  validitySeconds: number;
  tokenIssuer: string;
  tokenAudience: string;
  /** Largest payload sent (see `bundleBudgetBytes`). */
  maxBytes: number;
}): BundleService {
  const { store, keyring, now } = deps;

  async function keys(use: "bundle" | "token"): Promise<VerificationKey[]> {
    return (await keyring.publicKeys(use)).map((k) =>
      create(VerificationKeySchema, { keyId: k.kid, algorithm: k.algorithm, jwkJson: JSON.stringify(k.jwk) }),
    );
  }

  /** What every agent's bundle shares at one moment: loaded once, reused across a fan-out. */
  async function loadShared() {
    const at = now();
    const [snapshot, tokenKeys, bundleKeys, revokedTokenIds, disabledUsers] = await Promise.all([
      deps.policies.snapshot(),
      keys("token"),
      keys("bundle"),
      // Kept past expiry: sessions started with a token outlive it (see REVOKED_TOKENS_KEPT_MS).
      store.accessTokens.revokedUnexpired(new Date(at.getTime() - REVOKED_TOKENS_KEPT_MS)),
      store.users.disabledEmails(),
    ]);
    // Policy tests are for authors and CI, not for agents: bundles carry the rules only.
    const selectors = snapshot.documents.map((doc) => ({
      doc,
      matches: resourceMatcher(doc.spec.resources),
      json: bundleDocumentJson(doc),
    }));
    return { snapshot, tokenKeys, bundleKeys, revokedTokenIds, disabledUsers, selectors, at };
  }
  let shared: Promise<Awaited<ReturnType<typeof loadShared>>> | undefined;
  let sharedAt = 0;

  /** The shared parts, reloaded after a change (invalidate) and at least every few seconds. */
  function sharedParts() {
    if (!shared || now().getTime() - sharedAt > SHARED_MAX_AGE_MS) {
      sharedAt = now().getTime();
      shared = loadShared().catch((error: unknown) => {
        shared = undefined;
        throw error;
      });
    }
    return shared;
  }

  return {
    bundleKeys: () => keys("bundle"),

    invalidate() {
      shared = undefined;
    },

    async build(agentId, options = {}) {
      // The version first, the content after: of two builds for one agent, the one with the higher
      // version read its content later (an in-flight build that read stale content loses).
      const version = await store.agents.nextBundleVersion(agentId);
      const [resources, { snapshot, tokenKeys, bundleKeys, revokedTokenIds, disabledUsers, selectors, at }] =
        await Promise.all([store.resources.list({ agentId }), sharedParts()]);
      const documents = selectors.filter((s) =>
        resources.some((r) => s.matches({ name: r.name, type: r.type, labels: r.labels })),
      );
      const issuedAt = at;
      const bundle = create(BundleSchema, {
        agentId,
        version,
        issuedAt: timestampFromDate(issuedAt),
        notAfter: timestampFromDate(new Date(issuedAt.getTime() + deps.validitySeconds * 1000)),
        tokenKeys,
        bundleKeys,
        revokedTokenIds,
        disabledUsers,
        resources: resources.map((r) => ({
          name: r.name,
          type: PROTO_TYPES[r.type],
          labels: Object.entries(r.labels).map(([key, value]) => ({ key, value })),
        })),
        policyDocuments: documents.map((d) => d.json),
        tokenIssuer: deps.tokenIssuer,
        tokenAudience: deps.tokenAudience,
      });
      const payload = toBinary(BundleSchema, bundle);
      const policyRevision = snapshot.revision;
      if (payload.length > deps.maxBytes) {
        return {
          kind: "too_large",
          version,
          policyRevision,
          bytes: payload.length,
          budget: deps.maxBytes,
          policies: documents.length,
        };
      }
      const bundleKeyIds = bundleKeys.map((k) => k.keyId); // oldest first
      const trusted = options.trustedKeyIds;
      const keyId = (trusted && bundleKeyIds.filter((kid) => trusted.has(kid)).pop()) || bundleKeyIds[0];
      if (!keyId) throw new Error("no bundle signing key");
      const signer = await keyring.signerFor("bundle", keyId);
      const signed = create(SignedBundleSchema, {
        payload,
        signature: signer.sign(payload),
        keyId: signer.kid,
        algorithm: BUNDLE_SIGNATURE_ALGORITHM,
      });
      return {
        kind: "signed",
        signed,
        version,
        policyRevision,
        keyId,
        bundleKeyIds,
        policies: documents.length,
        bytes: payload.length,
      };
    },

    async checkBudget(current, proposed) {
      const [agents, resources, parts] = await Promise.all([
        store.agents.listActive(),
        store.resources.list(),
        sharedParts(),
      ]);
      // Protobuf fields encode independently: a bundle's size is the size of its shared fields
      // (at their largest), plus the agent's own fields, plus one entry per policy it carries.
      const sharedBytes = toBinary(
        BundleSchema,
        create(BundleSchema, {
          version: MAX_UINT64,
          issuedAt: timestampFromDate(parts.at),
          notAfter: timestampFromDate(new Date(parts.at.getTime() + deps.validitySeconds * 1000)),
          tokenKeys: parts.tokenKeys,
          bundleKeys: parts.bundleKeys,
          revokedTokenIds: parts.revokedTokenIds,
          disabledUsers: parts.disabledUsers,
          tokenIssuer: deps.tokenIssuer,
          tokenAudience: deps.tokenAudience,
        }),
      ).length;
      const sized = (docs: PolicyDocument[]) =>
        docs.map((doc) => ({
          matches: resourceMatcher(doc.spec.resources),
          bytes: repeatedStringBytes(bundleDocumentJson(doc)),
        }));
      const before = sized(current);
      const after = sized(proposed);
      const over: { name: string; bytes: number }[] = [];
      for (const agent of agents) {
        const own = resources.filter((r) => r.agentId === agent.id);
        if (own.length === 0) continue;
        const ownBytes = toBinary(
          BundleSchema,
          create(BundleSchema, {
            agentId: agent.id,
            resources: own.map((r) => ({
              name: r.name,
              type: PROTO_TYPES[r.type],
              labels: Object.entries(r.labels).map(([key, value]) => ({ key, value })),
            })),
          }),
        ).length;
        const total = (set: typeof after) =>
          set
            .filter((s) => own.some((r) => s.matches({ name: r.name, type: r.type, labels: r.labels })))
            .reduce((sum, s) => sum + s.bytes, sharedBytes + ownBytes);
        const next = total(after);
        if (next > deps.maxBytes && next > total(before)) over.push({ name: agent.name, bytes: next });
      }
      if (over.length === 0) return;
      throw new AppError(
        "bundle_too_large",
        `this change would make the policy bundle of ${over.length === 1 ? "agent" : "agents"} ${over.map((o) => o.name).join(", ")} larger than the ${deps.maxBytes}-byte budget (grpc.maxMessageBytes minus ${BUNDLE_ENVELOPE_HEADROOM_BYTES} bytes): split or shorten the policies, or narrow their resources`,
        {
          fields: over.map((o) => ({
            field: `agents/${o.name}`,
            message: `its bundle would be ${o.bytes} bytes (budget ${deps.maxBytes})`,
          })),
        },
      );
    },
  };
}
