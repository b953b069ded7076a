/**
 * Who is calling, and the identities Moat knows: users (people, optionally with a password),
 * service accounts, groups, API keys. API keys are `moat_ak_<id>_<secret>`, stored as SHA-256
 * hashes, looked up by id and compared in constant time; REST callers may also present an access
 * token (JWT) issued by the token service.
 */
import { AppError, generateSecret, parseSecret, randomId, SecretKind, verifySecret } from "@moat/common";
import type { EventBus } from "../bus.js";
import type { ApiKeyRecord, OidcBinding, Role, Store, UserRecord } from "../store/index.js";
import { hashPassword, passwordProblem, verifyPassword } from "./passwords.js";
import type { IssuedToken, TokenService } from "./tokens.js";

/** The authenticated caller of a request: with an API key or with an access token. */
export interface Principal {
  user: UserRecord;
  apiKeyId?: string;
  tokenId?: string;
}

export interface NewUser {
  email: string;
  displayName?: string;
  role: Role;
  groups?: string[];
  password?: string;
}

export interface UserPatch {
  displayName?: string;
  role?: Role;
  groups?: string[];
  disabled?: boolean;
  password?: string;
}

export interface IdentityService {
  /** Creates the first admin and an API key for it when the store has no users; returns the key (shown once). */
  bootstrapAdmin(email: string): Promise<{ email: string; apiKey: string } | undefined>;
  /** Issues a new API key for an existing admin (operator recovery from the control-plane host). */
  issueAdminKey(email: string, name: string): Promise<string>;
  /** Resolves a presented API key or access token to its principal; throws AppError("unauthenticated"). */
  authenticate(presented: string): Promise<Principal>;
  /** Password login: an access token, or unauthenticated / rate_limited. */
  login(email: string, password: string): Promise<IssuedToken>;
  createUser(input: NewUser): Promise<UserRecord>;
  createServiceAccount(input: { name: string; role?: Role; groups?: string[] }): Promise<UserRecord>;
  updateUser(id: string, patch: UserPatch): Promise<UserRecord>;
  /**
   * Binds a user to an identity provider's account, so single sign-on as that account logs in as
   * this user (admin only; the explicit path for users that exist before their first SSO login).
   * Conflict when another user is bound to it; replacing a binding revokes the user's tokens.
   */
  linkOidc(id: string, binding: OidcBinding): Promise<UserRecord>;
  /** Removes a user's single sign-on binding (its tokens are revoked); a no-op without one. */
  unlinkOidc(id: string): Promise<UserRecord>;
  getUser(id: string): Promise<UserRecord>;
  listUsers(): Promise<UserRecord[]>;
  createApiKey(userId: string, name: string, expiresInDays?: number): Promise<{ key: ApiKeyRecord; value: string }>;
  listApiKeys(userId: string): Promise<ApiKeyRecord[]>;
  /** Revokes an API key; `actor` must own it or be an admin. */
  revokeApiKey(id: string, actor: UserRecord): Promise<void>;
}

const TOUCH_INTERVAL_MS = 60_000;
const LOGIN_WINDOW_MS = 15 * 60_000;
const LOGIN_MAX_FAILURES = 10;
/** Accounts whose recent failures are remembered (per replica); the oldest are forgotten first. */
const MAX_TRACKED_LOGINS = 100_000;
// Verified against when the user does not exist, so both paths cost one scrypt.
const DUMMY_HASH = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

export function createIdentityService(deps: {
  store: Pick<Store, "users" | "apiKeys" | "accessTokens">;
  tokens?: TokenService;
  bus?: Pick<EventBus, "publish">;
  now: () => Date;
}): IdentityService {
  const { store, now } = deps;
  const unauthenticated = () => new AppError("unauthenticated", "the API key or token is invalid, expired or revoked");
  const failures = new Map<string, { count: number; since: number }>();

  function tokens(): TokenService {
    if (!deps.tokens) throw new AppError("unavailable", "access tokens are not configured");
    return deps.tokens;
  }

  async function mustGetUser(id: string): Promise<UserRecord> {
    const user = await store.users.findById(id);
    if (!user) throw new AppError("not_found", `no user with id "${id}"`);
    return user;
  }

  /** Revokes a user's tokens (a login they came from no longer stands) and tells the agents. */
  async function revokeSessions(id: string): Promise<void> {
    await store.accessTokens.revokeAllOf(id, now());
    await deps.bus?.publish("bundle.changed", { agentIds: "*" });
  }

  async function authenticateApiKey(presented: string): Promise<Principal> {
    const parsed = parseSecret(presented);
    if (!parsed || parsed.kind !== SecretKind.apiKey) throw unauthenticated();
    const key = await store.apiKeys.findById(parsed.id);
    if (!key || !verifySecret(presented, key.hash)) throw unauthenticated();
    const at = now();
    if (key.revokedAt || (key.expiresAt && key.expiresAt <= at)) throw unauthenticated();
    const user = await store.users.findById(key.userId);
    if (!user || user.disabledAt) throw unauthenticated();
    if (!key.lastUsedAt || at.getTime() - key.lastUsedAt.getTime() > TOUCH_INTERVAL_MS)
      await store.apiKeys.touch(key.id, at);
    return { user, apiKeyId: key.id };
  }

  return {
    async bootstrapAdmin(email) {
      if ((await store.users.count()) > 0) return undefined;
      const user = await store.users.create({
        id: randomId(),
        email: email.toLowerCase(),
        displayName: "Administrator",
        role: "admin",
      });
      const key = generateSecret(SecretKind.apiKey);
      await store.apiKeys.create({ id: key.id, name: "bootstrap", hash: key.hash, userId: user.id });
      return { email, apiKey: key.value };
    },

    async issueAdminKey(email, name) {
      const user = await store.users.findByEmail(email.toLowerCase());
      if (!user || user.role !== "admin" || user.disabledAt)
        throw new AppError("not_found", `no enabled admin user with email ${email}`);
      const key = generateSecret(SecretKind.apiKey);
      await store.apiKeys.create({ id: key.id, name, hash: key.hash, userId: user.id });
      return key.value;
    },

    async authenticate(presented) {
      if (presented.startsWith("eyJ")) {
        const { user, tokenId } = await tokens().verify(presented);
        return { user, tokenId };
      }
      return authenticateApiKey(presented);
    },

    async login(email, password) {
      const key = email.toLowerCase();
      const at = now().getTime();
      let record = failures.get(key);
      if (!record || at - record.since >= LOGIN_WINDOW_MS) record = { count: 0, since: at };
      if (record.count >= LOGIN_MAX_FAILURES) {
        throw new AppError("rate_limited", "too many failed logins for this account; try again later");
      }
      // Count the attempt before the (slow) password check, so parallel guesses are counted too;
      // a success takes it back.
      record.count++;
      failures.delete(key);
      failures.set(key, record); // most recent last: the oldest entries go first when bounded
      while (failures.size > MAX_TRACKED_LOGINS) failures.delete(failures.keys().next().value as string);
      const user = await store.users.findByEmail(key);
      const hash = user ? await store.users.passwordHashOf(user.id) : null;
      const ok = await verifyPassword(password, hash ?? DUMMY_HASH);
      if (!user || !hash || !ok || user.disabledAt || user.kind !== "user") {
        throw new AppError("unauthenticated", "wrong email or password");
      }
      failures.delete(key);
      return tokens().issue(user, "password", "api");
    },

    async createUser(input) {
      if (input.password !== undefined) {
        const problem = passwordProblem(input.password);
        if (problem)
          throw new AppError("validation_failed", "the user is invalid: see errors", {
            fields: [{ field: "body/password", message: problem }],
          });
      }
      return store.users.create({
        id: randomId(),
        email: input.email.toLowerCase(),
        displayName: input.displayName ?? input.email,
        role: input.role,
        kind: "user",
        groups: input.groups ?? [],
        passwordHash: input.password !== undefined ? await hashPassword(input.password) : null,
      });
    },

    async createServiceAccount(input) {
      return store.users.create({
        id: randomId(),
        email: input.name.toLowerCase(),
        displayName: input.name,
        role: input.role ?? "member",
        kind: "service-account",
        groups: input.groups ?? [],
      });
    },

    async updateUser(id, patch) {
      const before = await mustGetUser(id);
      if (patch.password !== undefined) {
        const problem = passwordProblem(patch.password);
        if (problem)
          throw new AppError("validation_failed", "the change is invalid: see errors", {
            fields: [{ field: "body/password", message: problem }],
          });
        if (before.kind !== "user")
          throw new AppError("bad_request", "service accounts have no password; use API keys");
      }
      const { password, ...rest } = patch;
      const updated = await store.users.update(
        id,
        { ...rest, ...(password !== undefined ? { passwordHash: await hashPassword(password) } : {}) },
        now(),
      );
      // Tokens carry the groups and stand for the password they came from: a change to either (or
      // disabling) revokes them, so no agent acts on an identity that no longer holds.
      const groupsChanged =
        patch.groups !== undefined && [...patch.groups].sort().join(",") !== before.groups.join(",");
      const revokeTokens = (patch.disabled === true && !before.disabledAt) || groupsChanged || password !== undefined;
      if (revokeTokens) await store.accessTokens.revokeAllOf(id, now());
      const identityChanged = patch.disabled !== undefined || groupsChanged || revokeTokens;
      if (identityChanged) await deps.bus?.publish("bundle.changed", { agentIds: "*" });
      return updated;
    },

    async linkOidc(id, binding) {
      const user = await mustGetUser(id);
      if (user.kind !== "user")
        throw new AppError("bad_request", "service accounts do not log in with single sign-on; use API keys");
      const holder = await store.users.findByOidc(binding);
      if (holder && holder.id !== id)
        throw new AppError("conflict", `this identity-provider account is already linked to ${holder.email}`);
      if (user.oidc?.issuer === binding.issuer && user.oidc.subject === binding.subject) return user;
      const updated = await store.users.update(id, { oidc: binding }, now());
      if (user.oidc) await revokeSessions(id);
      return updated;
    },

    async unlinkOidc(id) {
      const user = await mustGetUser(id);
      if (!user.oidc) return user;
      const updated = await store.users.update(id, { oidc: null }, now());
      await revokeSessions(id);
      return updated;
    },

    getUser: mustGetUser,
    listUsers: () => store.users.list(),

    async createApiKey(userId, name, expiresInDays) {
      const user = await mustGetUser(userId);
      if (user.disabledAt) throw new AppError("permission_denied", "this account is disabled");
      const secret = generateSecret(SecretKind.apiKey);
      const expiresAt = expiresInDays ? new Date(now().getTime() + expiresInDays * 86_400_000) : null;
      await store.apiKeys.create({ id: secret.id, name, hash: secret.hash, userId, expiresAt });
      const key = await store.apiKeys.findById(secret.id);
      return { key: key as ApiKeyRecord, value: secret.value };
    },

    listApiKeys: (userId) => store.apiKeys.listForUser(userId),

    async revokeApiKey(id, actor) {
      const key = await store.apiKeys.findById(id);
      if (!key || (key.userId !== actor.id && actor.role !== "admin"))
        throw new AppError("not_found", `no API key with id "${id}"`);
      await store.apiKeys.revoke(id, now());
    },
  };
}
