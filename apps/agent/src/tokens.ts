/**
 * Verifies users' access tokens locally, with the keys, issuer and audience of the bundle in
 * force: EdDSA only (no `none`, no HMAC confusion), signature by a key the bundle names, time
 * claims checked against the caller's clock, revoked token ids and disabled users refused.
 * Without a valid bundle nothing verifies (fail closed).
 */
import { createLocalJWKSet, jwtVerify, type JWK, type JWTVerifyGetKey } from "jose";
import type { ActiveBundle } from "./bundle.js";

export interface VerifiedIdentity {
  user: string;
  groups: string[];
  serviceAccount: boolean;
  tokenId: string;
  expiresAt: Date;
}

/** Why a token was refused; `message` is safe to show to the user. */
export class TokenRejected extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenRejected";
  }
}

const keySets = new WeakMap<ActiveBundle, JWTVerifyGetKey>();
const MAX_TOKEN_LENGTH = 8192;
const CLOCK_TOLERANCE_SECONDS = 30;

export async function verifyAccessToken(
  token: string,
  bundle: ActiveBundle | undefined,
  now: Date,
): Promise<VerifiedIdentity> {
  if (!bundle) throw new TokenRejected("this agent has no policy bundle yet, so it cannot verify tokens");
  if (bundle.notAfter <= now)
    throw new TokenRejected("this agent's policy bundle has expired, so it cannot verify tokens");
  if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) throw new TokenRejected("the access token is malformed");
  let keys = keySets.get(bundle);
  if (!keys) {
    keys = createLocalJWKSet({ keys: bundle.tokenKeys.map((k) => k.jwk as JWK) });
    keySets.set(bundle, keys);
  }
  let payload;
  try {
    ({ payload } = await jwtVerify(token, keys, {
      algorithms: ["EdDSA"],
      issuer: bundle.tokenIssuer,
      audience: bundle.tokenAudience,
      requiredClaims: ["jti", "sub", "exp", "iat", "nbf"],
      currentDate: now,
      clockTolerance: CLOCK_TOLERANCE_SECONDS,
    }));
  } catch (error) {
    const code = (error as { code?: string }).code ?? "";
    const reason =
      code === "ERR_JWT_EXPIRED"
        ? "the access token has expired; get a new one (moat token / moat login)"
        : code === "ERR_JWT_CLAIM_VALIDATION_FAILED"
          ? `the access token is not valid here (${(error as { claim?: string }).claim ?? "claim"} check failed)`
          : "the access token is invalid";
    throw new TokenRejected(reason);
  }
  const jti = String(payload.jti);
  const sub = String(payload.sub);
  if (bundle.revokedTokenIds.has(jti)) throw new TokenRejected("the access token has been revoked");
  if (bundle.disabledUsers.has(sub.toLowerCase())) throw new TokenRejected(`user ${sub} is disabled`);
  const groups = Array.isArray(payload.groups) ? payload.groups.filter((g): g is string => typeof g === "string") : [];
  return {
    user: sub,
    groups,
    serviceAccount: payload.kind === "service-account",
    tokenId: jti,
    expiresAt: new Date((payload.exp as number) * 1000),
  };
}
