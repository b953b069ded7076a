/**
 * Federated login through an OpenID Connect issuer. The CLI runs the browser (authorization code +
 * PKCE) or device flow against the issuer itself and hands the ID token here; the control plane
 * verifies it against the issuer's published keys (discovery + JWKS, refetched when the issuer
 * rotates), maps the groups claim to Moat groups, creates or updates the user, and the caller
 * issues a Moat access token.
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
  publicConfig(): Promise<OidcPublicConfig>;
  /** Verifies an ID token from the issuer and returns the (created or updated) Moat user. */
  exchange(idToken: string, expectedNonce?: string): Promise<UserRecord>;
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

  function mapGroups(claim: unknown): string[] {
    const raw = Array.isArray(claim) ? claim.filter((g): g is string => typeof g === "string") : [];
    const mapped = config.groupMapping
      ? raw.flatMap((g) => (config.groupMapping?.[g] ? [config.groupMapping[g] as string] : []))
      : raw;
    return [...new Set(mapped.filter((g) => GROUP_NAME.test(g)))].sort();
  }

  return {
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
      const existing = await store.users.findByEmail(email.toLowerCase());
      if (existing) {
        if (existing.kind !== "user") throw new AppError("permission_denied", "this name belongs to a service account");
        if (existing.disabledAt) throw new AppError("permission_denied", "this account is disabled");
        if (config.syncGroups && groups.join(",") !== existing.groups.join(",")) {
          const updated = await store.users.update(existing.id, { groups }, now());
          // Tokens carry the old groups: revoke them, as an admin's change of groups does.
          await store.accessTokens.revokeAllOf(existing.id, now());
          await deps.bus.publish("bundle.changed", { agentIds: "*" });
          return updated;
        }
        return existing;
      }
      const name = typeof payload.name === "string" ? payload.name.slice(0, 200) : email;
      return store.users.create({
        id: randomId(),
        email: email.toLowerCase(),
        displayName: name,
        role: config.defaultRole,
        kind: "user",
        groups,
      });
    },
  };
}
