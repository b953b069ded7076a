/**
 * Access tokens: short-lived JWTs (EdDSA) the control plane issues to users and service accounts,
 * and agents verify locally with the public keys carried in their bundles. Only metadata of an
 * issued token is stored (id, owner, expiry, revocation), never the token.
 *
 * Claims: iss, aud, sub (the user's email or service-account name), groups, kind, jti, iat, nbf, exp.
 */
import { AppError, randomId } from "@moat/common";
import { createLocalJWKSet, jwtVerify, SignJWT, type JWK } from "jose";
import type { EventBus } from "../bus.js";
import type { Keyring } from "../keys.js";
import type { Store, UserRecord } from "../store/index.js";

export interface IssuedToken {
  accessToken: string;
  tokenType: "Bearer";
  tokenId: string;
  expiresAt: Date;
}

export type TokenAudience = "api" | "agents";

export interface TokenService {
  /**
   * Issues a token for `audience`: "api" (the REST API: what logins return) or "agents" (what users
   * present to resources). A token for one is refused by the other, so a token handed to a resource
   * cannot act on the control plane.
   */
  issue(
    user: UserRecord,
    source: "api-key" | "password" | "oidc" | "token",
    audience: TokenAudience,
  ): Promise<IssuedToken>;
  /** Verifies a token presented to the REST API; returns the user it belongs to. */
  verify(token: string): Promise<{ user: UserRecord; tokenId: string }>;
  revoke(tokenId: string): Promise<void>;
}

export function createTokenService(deps: {
  store: Pick<Store, "accessTokens" | "users">;
  keyring: Keyring;
  bus: Pick<EventBus, "publish">;
  now: () => Date;
  issuer: string;
  /** `aud` of agent tokens. */
  audience: string;
  /** `aud` of REST API tokens. */
  apiAudience: string;
  ttlSeconds: number;
}): TokenService {
  const { store, keyring, now } = deps;
  const invalid = () => new AppError("unauthenticated", "the access token is invalid, expired or revoked");

  return {
    async issue(user, source, audience) {
      if (user.disabledAt) throw new AppError("permission_denied", "this account is disabled");
      const signer = await keyring.signer("token");
      const issuedAt = now();
      const expiresAt = new Date(issuedAt.getTime() + deps.ttlSeconds * 1000);
      const tokenId = randomId(20);
      await store.accessTokens.create({ id: tokenId, userId: user.id, source, issuedAt, expiresAt });
      const accessToken = await new SignJWT({ groups: user.groups, kind: user.kind })
        .setProtectedHeader({ alg: "EdDSA", kid: signer.kid, typ: "JWT" })
        .setIssuer(deps.issuer)
        .setAudience(audience === "api" ? deps.apiAudience : deps.audience)
        .setSubject(user.email)
        .setJti(tokenId)
        .setIssuedAt(Math.floor(issuedAt.getTime() / 1000))
        .setNotBefore(Math.floor(issuedAt.getTime() / 1000))
        .setExpirationTime(Math.floor(expiresAt.getTime() / 1000))
        .sign(signer.privateKey);
      return { accessToken, tokenType: "Bearer", tokenId, expiresAt };
    },

    async verify(token) {
      const keys = (await keyring.publicKeys("token")).map((k) => k.jwk as JWK);
      let payload;
      try {
        ({ payload } = await jwtVerify(token, createLocalJWKSet({ keys }), {
          algorithms: ["EdDSA"],
          issuer: deps.issuer,
          audience: deps.apiAudience,
          requiredClaims: ["jti", "sub", "exp", "iat"],
          currentDate: now(),
        }));
      } catch {
        throw invalid();
      }
      const record = await store.accessTokens.findById(payload.jti as string);
      if (!record || record.revokedAt) throw invalid();
      const user = await store.users.findById(record.userId);
      if (!user || user.disabledAt || user.email !== payload.sub) throw invalid();
      return { user, tokenId: record.id };
    },

    async revoke(tokenId) {
      const record = await store.accessTokens.findById(tokenId);
      if (!record) throw new AppError("not_found", `no token with id "${tokenId}"`);
      if (record.revokedAt) return; // already revoked: nothing changes, nothing to push
      await store.accessTokens.revoke(tokenId, now());
      await deps.bus.publish("bundle.changed", { agentIds: "*" });
    },
  };
}
