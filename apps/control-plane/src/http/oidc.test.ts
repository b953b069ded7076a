/**
 * Single sign-on against a real OpenID Connect issuer on loopback: the authorization code flow with
 * PKCE (as the CLI runs it), ID token exchange, group mapping, key rotation at the issuer, and the
 * attacks: wrong audience, wrong issuer, unverified email, forged signature, disabled user.
 */
import { createHash, randomBytes } from "node:crypto";
import { decodeJwt, SignJWT, generateKeyPair } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startOidcIssuer, tempDir, type TestOidcIssuer } from "@moat/testkit";
import { loadControlPlaneConfig } from "../config.js";
import { startControlPlane, type RunningControlPlane } from "../server.js";

let idp: TestOidcIssuer;
let cp: RunningControlPlane;

beforeAll(async () => {
  idp = await startOidcIssuer({ clientId: "moat-cli" });
  const config = loadControlPlaneConfig({
    env: {},
    overrides: {
      dataDir: tempDir(),
      logLevel: "silent",
      http: { port: 0 },
      grpc: { port: 0 },
      oidc: {
        issuer: idp.issuer,
        clientId: "moat-cli",
        groupMapping: { "eng-all": "engineers", "sre-oncall": "oncall" },
        jwksRefreshCooldownSeconds: 0,
      },
    },
  });
  cp = await startControlPlane(config);
});
afterAll(async () => {
  await cp?.close();
  await idp?.close();
});

async function exchange(idToken: string, nonce?: string) {
  const res = await fetch(`${cp.httpUrl}/api/v1/auth/oidc/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ idToken, ...(nonce ? { nonce } : {}) }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** The browser part of the authorization code flow with PKCE, as `moat login --sso` runs it. */
async function codeFlow(): Promise<{ idToken: string; nonce: string }> {
  const config = (await (await fetch(`${cp.httpUrl}/api/v1/auth/oidc`)).json()) as {
    authorizationEndpoint: string;
    tokenEndpoint: string;
    clientId: string;
    scopes: string[];
  };
  const verifier = randomBytes(32).toString("base64url");
  const challenge = createHash("sha256").update(verifier).digest("base64url");
  const nonce = randomBytes(8).toString("hex");
  const redirectUri = "http://127.0.0.1:1/callback";
  const authorize = new URL(config.authorizationEndpoint);
  for (const [k, v] of Object.entries({
    client_id: config.clientId,
    response_type: "code",
    redirect_uri: redirectUri,
    scope: config.scopes.join(" "),
    code_challenge: challenge,
    code_challenge_method: "S256",
    state: "s1",
    nonce,
  })) {
    authorize.searchParams.set(k, v);
  }
  const redirected = await fetch(authorize, { redirect: "manual" });
  const code = new URL(redirected.headers.get("location") as string).searchParams.get("code") as string;
  const token = await fetch(config.tokenEndpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code,
      redirect_uri: redirectUri,
      client_id: config.clientId,
      code_verifier: verifier,
    }),
  });
  return { idToken: ((await token.json()) as { id_token: string }).id_token, nonce };
}

describe("OIDC login", () => {
  it("publishes the issuer's endpoints for the CLI", async () => {
    const res = await fetch(`${cp.httpUrl}/api/v1/auth/oidc`);
    expect(await res.json()).toMatchObject({
      issuer: idp.issuer,
      clientId: "moat-cli",
      authorizationEndpoint: `${idp.issuer}/authorize`,
      deviceAuthorizationEndpoint: `${idp.issuer}/device`,
    });
  });

  it("creates the user on first login with mapped groups, and syncs groups later", async () => {
    idp.setUser({ sub: "1", email: "Alice@Example.com", groups: ["eng-all", "unmapped", "sre-oncall"] });
    const { idToken, nonce } = await codeFlow();
    const first = await exchange(idToken, nonce);
    expect(first.status).toBe(200);
    expect(decodeJwt(first.body.accessToken as string)).toMatchObject({
      sub: "alice@example.com",
      groups: ["engineers", "oncall"],
      kind: "user",
    });
    const user = await cp.store.users.findByEmail("alice@example.com");
    expect(user).toMatchObject({ role: "member", groups: ["engineers", "oncall"] });

    idp.setUser({ sub: "1", email: "alice@example.com", groups: ["eng-all"] });
    const again = await exchange(await idp.idToken({ sub: "1", email: "alice@example.com", groups: ["eng-all"] }));
    expect(decodeJwt(again.body.accessToken as string).groups).toEqual(["engineers"]);
  });

  it("follows key rotation at the issuer", async () => {
    await idp.rotateKey();
    const res = await exchange(await idp.idToken({ sub: "2", email: "bob@example.com" }));
    expect(res.status).toBe(200);
  });

  it("rejects tokens for another client, from another issuer, with a wrong nonce, unverified or forged", async () => {
    const bob = { sub: "2", email: "bob@example.com" };
    expect((await exchange(await idp.idToken(bob, { aud: "other-client" }))).status).toBe(401);
    expect((await exchange(await idp.idToken(bob, { iss: "https://evil.example" }))).status).toBe(401);
    expect((await exchange(await idp.idToken(bob), "expected-nonce")).status).toBe(401);
    expect((await exchange(await idp.idToken(bob, { nonce: "from-another-login" }))).status).toBe(401); // replay without the nonce
    expect((await exchange(await idp.idToken(bob, { email_verified: undefined }))).status).toBe(401);
    expect((await exchange(await idp.idToken({ ...bob, emailVerified: false }))).body.detail).toContain("not verified");
    expect((await exchange(await idp.idToken(bob, { exp: Math.floor(Date.now() / 1000) - 120 }))).status).toBe(401);
    const { privateKey } = await generateKeyPair("RS256");
    const forged = await new SignJWT({ email: "root@example.com", email_verified: true })
      .setProtectedHeader({ alg: "RS256", kid: "k-forged" })
      .setIssuer(idp.issuer)
      .setAudience("moat-cli")
      .setSubject("x")
      .setIssuedAt()
      .setExpirationTime("5m")
      .sign(privateKey);
    expect((await exchange(forged)).status).toBe(401);
    const none = `${Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url")}.${Buffer.from(JSON.stringify({ iss: idp.issuer, aud: "moat-cli", sub: "x", email: "root@example.com", iat: 1, exp: 9999999999 })).toString("base64url")}.`;
    expect((await exchange(none)).status).toBe(401);
  });

  it("refuses disabled users", async () => {
    const user = await cp.store.users.findByEmail("alice@example.com");
    await cp.store.users.update(user!.id, { disabled: true }, new Date());
    const res = await exchange(await idp.idToken({ sub: "1", email: "alice@example.com" }));
    expect(res).toMatchObject({ status: 403, body: { code: "permission_denied" } });
  });
});
