/**
 * Federated login through an OpenID Connect issuer. The CLI runs the browser (authorization code +
 * PKCE) or device flow against the issuer itself and hands the ID token here; the control plane
 * verifies it against the issuer's published keys (discovery + JWKS, refetched when the issuer
 * rotates), maps the groups claim to Moat groups, creates or updates the user, and the caller
 * issues a Moat access token.
 *
 * A Moat user is bound to one identity-provider account: the issuer and the subject (`sub`), set
 * when the first login creates the user (or by an admin). Logins find the user by that binding
 * only, never by email: whoever controls an email address at the identity provider does not
 * become the Moat user with that email. An email change at the provider follows the binding.
 */
import { AppError, randomId } from "@moat/common";
import { createRemoteJWKSet, jwtVerify, type JWTVerifyGetKey } from "jose";
import type { EventBus } from "../bus.js";
import type { Role, Store, UserRecord } from "../store/index.js";

export interface OidcConfig {
  issuer: string;
  clientId: string;
  scopes: string[];
  emailClaim: string;
  groupsClaim: string;
  /** IdP group -> Moat group. When set, only mapped groups count; otherwise groups pass through. */
  groupMapping?: Record<string, string>;
  defaultRole: Role;
  allowedEmailDomains?: string[];
  /** Replace the user's groups with the IdP's at every login. */
  syncGroups: boolean;
  /** Require `email_verified: true` (default). Turn off only for issuers that never send the claim. */
  requireVerifiedEmail?: boolean;
}

export interface OidcPublicConfig {
  issuer: string;
  clientId: string;
  scopes: string[];
  authorizationEndpoint: string;
  tokenEndpoint: string;
  deviceAuthorizationEndpoint?: string;
}

export interface OidcService {
  /** The configured issuer (what bindings made at login record). */
  readonly issuer: string;
  publicConfig(): Promise<OidcPublicConfig>;
  /**
   * Verifies an ID token from the issuer and returns the Moat user bound to its issuer and
   * subject (updated: email, groups), creating it on the first login. An email that belongs to a
   * user not bound to this subject is refused (identity_not_linked), never taken over.
   */
  exchange(idToken: string, expectedNonce?: string): Promise<OidcLogin>;
}

/** A single sign-on login: the user, and what changed on it. */
export interface OidcLogin {
  user: UserRecord;
  created: boolean;
  /** The email before an email change at the identity provider followed here. */
  previousEmail?: string;
  /** The identity provider's email, when it could not be followed (another user holds it). */
  emailNotFollowed?: string;
}

const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$/;
const DISCOVERY_MAX_AGE_MS = 3600_000;

export function createOidcService(deps: {
  config: OidcConfig;
  store: Pick<Store, "users" | "accessTokens">;
  bus: Pick<EventBus, "publish">;
  now: () => Date;
  /** How soon an unknown `kid` may trigger a JWKS refetch (issuer key rotation). */
  jwksCooldownMs?: number;
}): OidcService {
  const { config, store, now } = deps;
  let discovery: { at: number; doc: Record<string, unknown>; jwks: JWTVerifyGetKey } | undefined;

  async function discover() {
    if (discovery && now().getTime() - discovery.at < DISCOVERY_MAX_AGE_MS) return discovery;
    const url = `${config.issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
    let doc: Record<string, unknown>;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      doc = (await res.json()) as Record<string, unknown>;
    } catch (error) {
      throw new AppError("unavailable", `the identity provider cannot be reached (${url})`, { cause: error });
    }
    if (doc.issuer !== config.issuer || typeof doc.jwks_uri !== "string") {
      throw new AppError(
        "unavailable",
        "the identity provider's discovery document does not match the configured issuer",
      );
    }
    const jwks = createRemoteJWKSet(new URL(doc.jwks_uri), {
      cooldownDuration: deps.jwksCooldownMs ?? 30_000,
      timeoutDuration: 5000,
      cacheMaxAge: 600_000,
    });
    discovery = { at: now().getTime(), doc, jwks };
    return discovery;
  }

  function notLinked(email: string, subject: string): AppError {
    return new AppError(
      "identity_not_linked",
      `a Moat user with the email ${email} exists but is not linked to this account of the identity provider ` +
        `(subject "${subject}"): it is not taken over by email. An admin can link it: ` +
        `moat users link-oidc ${email} --subject '${subject}'`,
    );
  }

  /** Applies the identity provider's email and groups to the user bound to the account. */
  async function followIdentityProvider(user: UserRecord, email: string, groups: string[]): Promise<OidcLogin> {
    if (user.kind !== "user") throw new AppError("permission_denied", "this name belongs to a service account");
    if (user.disabledAt) throw new AppError("permission_denied", "this account is disabled");
    const login: OidcLogin = { user, created: false };
    const patch: { email?: string; groups?: string[] } = {};
    if (email !== user.email) {
      // Follow the new email unless another user or service account already has it.
      if (await store.users.findByEmail(email)) login.emailNotFollowed = email;
      else patch.email = email;
    }
    if (config.syncGroups && groups.join(",") !== user.groups.join(",")) patch.groups = groups;
    if (Object.keys(patch).length === 0) return login;
    try {
      login.user = await store.users.update(user.id, patch, now());
    } catch (error) {
      if ((error as { code?: unknown }).code !== "conflict" || !patch.email) throw error;
      // The email was taken meanwhile: keep the stored one.
      login.emailNotFollowed = patch.email;
      delete patch.email;
      if (!patch.groups) return login;
      login.user = await store.users.update(user.id, patch, now());
    }
    if (patch.email) login.previousEmail = user.email;
    // Tokens carry the old email or groups: revoke them, as an admin's change of groups does, and
    // tell the agents (their bundles list the revoked tokens).
    await store.accessTokens.revokeAllOf(user.id, now());
    await deps.bus.publish("bundle.changed", { agentIds: "*" });
    return login;
  }

  function mapGroups(claim: unknown): string[] {
    const raw = Array.isArray(claim) ? claim.filter((g): g is string => typeof g === "string") : [];
    const mapped = config.groupMapping
      ? raw.flatMap((g) => (config.groupMapping?.[g] ? [config.groupMapping[g] as string] : []))
      : raw;
    return [...new Set(mapped.filter((g) => GROUP_NAME.test(g)))].sort();
  }

  return {
    issuer: config.issuer,

    async publicConfig() {
      const { doc } = await discover();
      if (typeof doc.authorization_endpoint !== "string" || typeof doc.token_endpoint !== "string") {
        throw new AppError(
          "unavailable",
          "the identity provider's discovery document names no authorization or token endpoint",
        );
      }
      return {
        issuer: config.issuer,
        clientId: config.clientId,
        scopes: config.scopes,
        authorizationEndpoint: String(doc.authorization_endpoint ?? ""),
        tokenEndpoint: String(doc.token_endpoint ?? ""),
        ...(typeof doc.device_authorization_endpoint === "string"
          ? { deviceAuthorizationEndpoint: doc.device_authorization_endpoint }
          : {}),
      };
    },

    async exchange(idToken, expectedNonce) {
      const { jwks } = await discover();
      let payload;
      try {
        ({ payload } = await jwtVerify(idToken, jwks, {
          issuer: config.issuer,
          audience: config.clientId,
          algorithms: ["RS256", "PS256", "ES256", "EdDSA"],
          requiredClaims: ["sub", "exp", "iat"],
          currentDate: now(),
          clockTolerance: 30,
        }));
      } catch (error) {
        throw new AppError("unauthenticated", "the identity provider's token is invalid or expired", { cause: error });
      }
      // A token minted for a browser login carries that login's nonce and is accepted only together
      // with it. (This binds the token to the CLI's login request; it does not stop a thief who has
      // the token, since the nonce is readable in it: tokens are short-lived and go over TLS.)
      if ((payload.nonce !== undefined || expectedNonce !== undefined) && payload.nonce !== expectedNonce) {
        throw new AppError("unauthenticated", "the identity provider's token does not match this login (nonce)");
      }
      if (typeof payload.sub !== "string" || payload.sub.length === 0 || payload.sub.length > 255)
        throw new AppError("unauthenticated", "the identity provider's token has no usable subject (sub)");
      const email = payload[config.emailClaim];
      if (typeof email !== "string" || !email.includes("@"))
        throw new AppError("unauthenticated", `the identity provider's token has no ${config.emailClaim} claim`);
      if (payload.email_verified !== true && (config.requireVerifiedEmail ?? true)) {
        throw new AppError("unauthenticated", "the identity provider has not verified this email address");
      }
      const domain = email.split("@").pop()?.toLowerCase() ?? "";
      if (config.allowedEmailDomains && !config.allowedEmailDomains.map((d) => d.toLowerCase()).includes(domain)) {
        throw new AppError("permission_denied", `accounts of ${domain} may not log in here`);
      }
      const groups = mapGroups(payload[config.groupsClaim]);
      const binding = { issuer: config.issuer, subject: payload.sub };
      const lowerEmail = email.toLowerCase();
      const bound = await store.users.findByOidc(binding);
      if (bound) return followIdentityProvider(bound, lowerEmail, groups);

      const existing = await store.users.findByEmail(lowerEmail);
      if (existing) {
        if (existing.kind !== "user") throw new AppError("permission_denied", "this name belongs to a service account");
        // A local user, or one bound to another account of the identity provider: never taken over.
        throw notLinked(lowerEmail, binding.subject);
      }
      const name = typeof payload.name === "string" ? payload.name.slice(0, 200) : email;
      try {
        const user = await store.users.create({
          id: randomId(),
          email: lowerEmail,
          displayName: name,
          role: config.defaultRole,
          kind: "user",
          groups,
          oidc: binding,
        });
        return { user, created: true };
      } catch (error) {
        if ((error as { code?: unknown }).code !== "conflict") throw error;
        // A concurrent first login of the same account won the race: use the user it created.
        const raced = await store.users.findByOidc(binding);
        if (raced) return followIdentityProvider(raced, lowerEmail, groups);
        throw notLinked(lowerEmail, binding.subject);
      }
    },
  };
}
