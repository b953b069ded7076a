/**
 * Bundles: what one agent needs to enforce alone, compiled from the stored policies at the current
 * revision and signed with the bundle key. Only the policies that select one of the agent's
 * resources go in; the agent never sees the rest of the organisation's rules.
 */
import { resourceMatcher } from "@moat/policy";
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
import type { ResourceType, Store } from "../store/index.js";
import { canonicalJson, type PolicyService } from "./policies.js";

const PROTO_TYPES: Record<ResourceType, ProtoResourceType> = {
  postgres: ProtoResourceType.POSTGRES,
  ssh: ProtoResourceType.SSH,
  kubernetes: ProtoResourceType.KUBERNETES,
  http: ProtoResourceType.HTTP,
};

export const BUNDLE_SIGNATURE_ALGORITHM = "Ed25519";

const SHARED_MAX_AGE_MS = 5_000;

export interface BundleService {
  /** Drops the shared parts cached for building bundles (call when policies, keys or identities change). */
  invalidate(): void;
  /** Compiles and signs the current bundle for `agentId`. */
  build(agentId: string): Promise<{ signed: SignedBundle; version: bigint; policies: number }>;
  /** The keys agents accept on bundles (sent at enrolment). */
  bundleKeys(): Promise<VerificationKey[]>;
}

export function createBundleService(deps: {
  store: Pick<Store, "resources" | "accessTokens" | "users">;
  policies: Pick<PolicyService, "snapshot">;
  keyring: Keyring;
  now: () => Date;
  validitySeconds: number;
  tokenIssuer: string;
  tokenAudience: string;
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
    const [snapshot, tokenKeys, bundleKeys, signer, revokedTokenIds, disabledUsers] = await Promise.all([
      deps.policies.snapshot(),
      keys("token"),
      keys("bundle"),
      keyring.signer("bundle"),
      // Kept past expiry by the agents' clock tolerance (30 s) and a margin.
      store.accessTokens.revokedUnexpired(new Date(at.getTime() - 120_000)),
      store.users.disabledEmails(),
    ]);
    // Policy tests are for authors and CI, not for agents: bundles carry the rules only.
    const selectors = snapshot.documents.map((doc) => {
      const { tests: _tests, ...spec } = doc.spec;
      return { doc, matches: resourceMatcher(doc.spec.resources), json: canonicalJson({ ...doc, spec }) };
    });
    // Bundles are stamped with the moment their shared content was read (not when each is built),
    // so a build that started before a change and finishes after it is older, and agents refuse it.
    return { snapshot, tokenKeys, bundleKeys, signer, revokedTokenIds, disabledUsers, selectors, at };
  }
  let shared: Promise<Awaited<ReturnType<typeof loadShared>>> | undefined;
  let sharedAt = 0;

  return {
    bundleKeys: () => keys("bundle"),

    invalidate() {
      shared = undefined;
    },

    async build(agentId) {
      // Shared parts are reloaded after a change (invalidate) and at least every few seconds.
      if (!shared || now().getTime() - sharedAt > SHARED_MAX_AGE_MS) {
        sharedAt = now().getTime();
        shared = loadShared().catch((error: unknown) => {
          shared = undefined;
          throw error;
        });
      }
      const [resources, { snapshot, tokenKeys, bundleKeys, signer, revokedTokenIds, disabledUsers, selectors, at }] =
        await Promise.all([store.resources.list({ agentId }), shared]);
      const documents = selectors.filter((s) =>
        resources.some((r) => s.matches({ name: r.name, type: r.type, labels: r.labels })),
      );
      const issuedAt = at;
      const bundle = create(BundleSchema, {
        agentId,
        version: snapshot.revision,
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
      const signed = create(SignedBundleSchema, {
        payload,
        signature: signer.sign(payload),
        keyId: signer.kid,
        algorithm: BUNDLE_SIGNATURE_ALGORITHM,
      });
      return { signed, version: snapshot.revision, policies: documents.length };
    },
  };
}
