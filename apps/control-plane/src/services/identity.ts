/**
 * Who is calling the REST API: API-key authentication and the first-start admin. Keys are
 * `moat_ak_<id>_<secret>`; only SHA-256 hashes are stored, looked up by id, compared in constant time.
 */
import { AppError, generateSecret, parseSecret, randomId, SecretKind, verifySecret } from "@moat/common";
import type { Role, Store, UserRecord } from "../store/index.js";

/** The authenticated caller of a request. */
export interface Principal {
  user: UserRecord;
  apiKeyId: string;
}

export interface IdentityService {
  /** Creates the first admin and an API key for it when the store has no users; returns the key (shown once). */
  bootstrapAdmin(email: string): Promise<{ email: string; apiKey: string } | undefined>;
  /**
   * Issues a new API key for an existing admin (operator recovery from the control-plane host, when
   * the bootstrap key is lost). Returns the key (shown once).
   */
  issueAdminKey(email: string, name: string): Promise<string>;
  /** Resolves a presented API key to its principal; throws AppError("unauthenticated") otherwise. */
  authenticateApiKey(presented: string): Promise<Principal>;
}

const TOUCH_INTERVAL_MS = 60_000;

export function createIdentityService(deps: {
  store: Pick<Store, "users" | "apiKeys">;
  now: () => Date;
}): IdentityService {
  const { store, now } = deps;
  const unauthenticated = () => new AppError("unauthenticated", "the API key is invalid, expired or revoked");

  return {
    async bootstrapAdmin(email) {
      if ((await store.users.count()) > 0) return undefined;
      const user = await store.users.create({ id: randomId(), email, displayName: "Administrator", role: "admin" });
      const key = generateSecret(SecretKind.apiKey);
      await store.apiKeys.create({ id: key.id, name: "bootstrap", hash: key.hash, userId: user.id });
      return { email, apiKey: key.value };
    },

    async issueAdminKey(email, name) {
      const user = await store.users.findByEmail(email);
      if (!user || user.role !== "admin" || user.disabledAt) {
        throw new AppError("not_found", `no enabled admin user with email ${email}`);
      }
      const key = generateSecret(SecretKind.apiKey);
      await store.apiKeys.create({ id: key.id, name, hash: key.hash, userId: user.id });
      return key.value;
    },

    async authenticateApiKey(presented) {
      const parsed = parseSecret(presented);
      if (!parsed || parsed.kind !== SecretKind.apiKey) throw unauthenticated();
      const key = await store.apiKeys.findById(parsed.id);
      if (!key || !verifySecret(presented, key.hash)) throw unauthenticated();
      const at = now();
      if (key.revokedAt || (key.expiresAt && key.expiresAt <= at)) throw unauthenticated();
      const user = await store.users.findById(key.userId);
      if (!user || user.disabledAt) throw unauthenticated();
      if (!key.lastUsedAt || at.getTime() - key.lastUsedAt.getTime() > TOUCH_INTERVAL_MS) {
        await store.apiKeys.touch(key.id, at);
      }
      return { user, apiKeyId: key.id };
    },
  };
}

/** True when `role` is one of `allowed`. */
export function hasRole(role: Role, allowed: readonly Role[]): boolean {
  return allowed.includes(role);
}
