/**
 * Single sign-on against a real OpenID Connect issuer on loopback: the authorization code flow with
 * PKCE (as the CLI runs it), ID token exchange, group mapping, key rotation at the issuer, and the
 * attacks: wrong audience, wrong issuer, unverified email, forged signature, disabled user. Users
 * are bound to the issuer and subject: another account with the same email is refused, local users
 * are never taken over, an email change at the issuer follows the binding, and admins link users.
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

/** Calls the REST API as the bootstrap admin. */
async function asAdmin(method: string, path: string, body?: unknown) {
  const res = await fetch(`${cp.httpUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${cp.bootstrap?.apiKey}`,
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as Record<string, unknown> };
}

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
    expect(user).toMatchObject({
      role: "member",
      groups: ["engineers", "oncall"],
      oidc: { issuer: idp.issuer, subject: "1" },
    });

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

  it("refuses another account of the issuer with a user's email, and does not touch the user", async () => {
    const alice = await cp.store.users.findByEmail("alice@example.com");
    // An issuer admin gives a second account alice's (verified) email.
    const res = await exchange(await idp.idToken({ sub: "attacker-9", email: "alice@example.com" }));
    expect(res).toMatchObject({ status: 403, body: { code: "identity_not_linked" } });
    expect(res.body.detail).toContain('subject "attacker-9"');
    expect(res.body).not.toHaveProperty("accessToken");
    expect(await cp.store.users.findByEmail("alice@example.com")).toEqual(alice);
    // Case does not help either.
    const upper = await exchange(await idp.idToken({ sub: "attacker-9", email: "ALICE@example.com" }));
    expect(upper.body.code).toBe("identity_not_linked");
    // The refusal is in the audit trail.
    const audit = await asAdmin("GET", "/api/v1/audit/events?type=auth.login_failed");
    expect(JSON.stringify(audit.body)).toContain("attacker-9");
  });

  it("follows an email change at the issuer for the same subject: same user, new email", async () => {
    const first = await exchange(await idp.idToken({ sub: "carol-7", email: "carol@example.com" }));
    expect(first.status).toBe(200);
    const carol = await cp.store.users.findByEmail("carol@example.com");
    const renamed = await exchange(await idp.idToken({ sub: "carol-7", email: "carol.new@example.com" }));
    expect(renamed.status).toBe(200);
    expect(decodeJwt(renamed.body.accessToken as string).sub).toBe("carol.new@example.com");
    expect(await cp.store.users.findByEmail("carol@example.com")).toBeUndefined();
    expect(await cp.store.users.findByEmail("carol.new@example.com")).toMatchObject({
      id: carol?.id,
      oidc: { issuer: idp.issuer, subject: "carol-7" },
    });
    // The token carrying the old email no longer works.
    const whoami = await fetch(`${cp.httpUrl}/api/v1/whoami`, {
      headers: { authorization: `Bearer ${first.body.accessToken as string}` },
    });
    expect(whoami.status).toBe(401);
    // Someone else's email is not followed: the stored one stays, the login still works.
    const taken = await exchange(await idp.idToken({ sub: "carol-7", email: "bob@example.com" }));
    expect(taken.status).toBe(200);
    expect(decodeJwt(taken.body.accessToken as string).sub).toBe("carol.new@example.com");
    expect((await cp.store.users.findByEmail("bob@example.com"))?.oidc?.subject).toBe("2");
  });

  it("never takes over a local user with the same email; an admin links it explicitly", async () => {
    // The bootstrap admin is a local user: an issuer account with its email is not it.
    const adminEmail = cp.config.bootstrap.adminEmail;
    const takeover = await exchange(await idp.idToken({ sub: "evil-admin", email: adminEmail }));
    expect(takeover).toMatchObject({ status: 403, body: { code: "identity_not_linked" } });
    const admin = await cp.store.users.findByEmail(adminEmail);
    expect(admin).toMatchObject({ role: "admin", oidc: null });

    const created = await asAdmin("POST", "/api/v1/users", {
      email: "dana@example.com",
      role: "reviewer",
      password: "correct horse battery staple",
    });
    expect(created.status).toBe(201);
    const dana = created.body as { id: string };
    expect((await exchange(await idp.idToken({ sub: "dana-3", email: "dana@example.com" }))).status).toBe(403);

    const linked = await asAdmin("POST", `/api/v1/users/${dana.id}/oidc-link`, { subject: "dana-3" });
    expect(linked).toMatchObject({
      status: 200,
      body: { id: dana.id, oidc: { issuer: idp.issuer, subject: "dana-3" } },
    });
    const login = await exchange(await idp.idToken({ sub: "dana-3", email: "dana@example.com" }));
    expect(login.status).toBe(200);
    expect(decodeJwt(login.body.accessToken as string)).toMatchObject({ sub: "dana@example.com" });
    expect(await cp.store.users.findByEmail("dana@example.com")).toMatchObject({ id: dana.id, role: "reviewer" });

    // An account already linked to another user cannot be linked again; service accounts cannot be.
    const alice = await cp.store.users.findByEmail("alice@example.com");
    expect((await asAdmin("POST", `/api/v1/users/${alice?.id}/oidc-link`, { subject: "dana-3" })).body.code).toBe(
      "conflict",
    );
    const sa = await asAdmin("POST", "/api/v1/service-accounts", { name: "ci-bot" });
    expect(
      (await asAdmin("POST", `/api/v1/users/${(sa.body as { id: string }).id}/oidc-link`, { subject: "x" })).status,
    ).toBe(400);

    // Unlinking revokes the user's tokens and refuses the account again.
    expect((await asAdmin("DELETE", `/api/v1/users/${dana.id}/oidc-link`)).status).toBe(204);
    const whoami = await fetch(`${cp.httpUrl}/api/v1/whoami`, {
      headers: { authorization: `Bearer ${login.body.accessToken as string}` },
    });
    expect(whoami.status).toBe(401);
    expect((await exchange(await idp.idToken({ sub: "dana-3", email: "dana@example.com" }))).body.code).toBe(
      "identity_not_linked",
    );
  });

  it("refuses disabled users", async () => {
    const user = await cp.store.users.findByEmail("alice@example.com");
    await cp.store.users.update(user!.id, { disabled: true }, new Date());
    const res = await exchange(await idp.idToken({ sub: "1", email: "alice@example.com" }));
    expect(res).toMatchObject({ status: 403, body: { code: "permission_denied" } });
  });
});
