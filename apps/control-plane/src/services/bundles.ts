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

export interface BundleService {
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

  return {
    bundleKeys: () => keys("bundle"),

    async build(agentId) {
      const at = now();
      const [resources, snapshot, tokenKeys, bundleKeys, signer, revokedTokenIds, disabledUsers] = await Promise.all([
        store.resources.list({ agentId }),
        deps.policies.snapshot(),
        keys("token"),
        keys("bundle"),
        keyring.signer("bundle"),
        store.accessTokens.revokedUnexpired(at),
        store.users.disabledEmails(),
      ]);
      const documents = snapshot.documents.filter((doc) => {
        const matches = resourceMatcher(doc.spec.resources);
        return resources.some((r) => matches({ name: r.name, type: r.type, labels: r.labels }));
      });
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
        policyDocuments: documents.map((d) => canonicalJson(d)),
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
