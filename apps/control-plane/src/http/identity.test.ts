import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestApp, type TestApp } from "../test-support/app.js";

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp();
});
afterAll(async () => t?.close());

const bearer = (value: string) => ({ authorization: `Bearer ${value}` });
const PASSWORD = "correct horse battery staple";

async function createUser(email: string, extra: object = {}) {
  const res = await t.app.inject({
    method: "POST",
    url: "/api/v1/users",
    headers: t.auth("admin"),
    payload: { email, role: "member", groups: ["engineers"], password: PASSWORD, ...extra },
  });
  expect(res.statusCode).toBe(201);
  return res.json() as { id: string; email: string; groups: string[]; hasPassword: boolean };
}

const login = (email: string, password: string) =>
  t.app.inject({ method: "POST", url: "/api/v1/auth/login", payload: { email, password } });

describe("users, login and access tokens", () => {
  it("a user with a password logs in and uses the access token on the API", async () => {
    const user = await createUser("Carol@Example.com");
    expect(user).toMatchObject({ email: "carol@example.com", groups: ["engineers"], hasPassword: true });
    const res = await login("carol@example.com", PASSWORD);
    expect(res.statusCode).toBe(200);
    const { accessToken, tokenId } = res.json();
    const claims = decodeJwt(accessToken);
    expect(claims).toMatchObject({
      sub: "carol@example.com",
      groups: ["engineers"],
      kind: "user",
      iss: "moat",
      aud: "moat-api",
      jti: tokenId,
    });
    expect((claims.exp as number) - (claims.iat as number)).toBe(900);
    const whoami = await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(accessToken) });
    expect(whoami.json()).toMatchObject({ email: "carol@example.com", tokenId });
    // The login token (REST audience) mints tokens for agents; an agent token is refused by REST.
    const forAgents = await t.app.inject({ method: "POST", url: "/api/v1/tokens", headers: bearer(accessToken) });
    expect(forAgents.statusCode).toBe(201);
    expect(decodeJwt(forAgents.json().accessToken)).toMatchObject({ aud: "moat-agents", sub: "carol@example.com" });
    expect(
      (await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(forAgents.json().accessToken) }))
        .statusCode,
    ).toBe(401);
    expect(
      (await t.app.inject({ method: "POST", url: "/users/me/api-keys", headers: bearer(forAgents.json().accessToken) }))
        .statusCode,
    ).toBe(404);
    expect(
      (
        await t.app.inject({
          method: "POST",
          url: "/api/v1/users/me/api-keys",
          headers: bearer(forAgents.json().accessToken),
          payload: { name: "x" },
        })
      ).statusCode,
    ).toBe(401);
  });

  it("refuses wrong passwords the same way for unknown users, then rate-limits", async () => {
    await createUser("dave@example.com");
    const wrong = await login("dave@example.com", "nope nope nope");
    const unknown = await login("nobody@example.com", "nope nope nope");
    expect([wrong.statusCode, unknown.statusCode]).toEqual([401, 401]);
    expect(wrong.json().detail).toBe(unknown.json().detail);
    for (let i = 0; i < 9; i++) await login("dave@example.com", "nope nope nope");
    const limited = await login("dave@example.com", PASSWORD);
    expect(limited.statusCode).toBe(429);
    expect(limited.json().code).toBe("rate_limited");
  });

  it("counts parallel guesses too", async () => {
    await createUser("henry@example.com");
    const results = await Promise.all(
      Array.from({ length: 30 }, () => login("henry@example.com", "guess guess guess")),
    );
    const codes = results.map((r) => r.statusCode);
    expect(codes.filter((c) => c === 401).length).toBeLessThanOrEqual(10);
    expect(codes.filter((c) => c === 429).length).toBeGreaterThanOrEqual(20);
    expect((await login("henry@example.com", PASSWORD)).statusCode).toBe(429);
  });

  it("rejects weak passwords with a field error", async () => {
    const res = await t.app.inject({
      method: "POST",
      url: "/api/v1/users",
      headers: t.auth("admin"),
      payload: { email: "weak@example.com", role: "member", password: "short" },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().errors).toEqual([{ field: "body/password", message: "must be at least 12 characters" }]);
  });

  it("an API key holder gets tokens with POST /tokens; members see and revoke only their own", async () => {
    const issued = await t.app.inject({ method: "POST", url: "/api/v1/tokens", headers: t.auth("member") });
    expect(issued.statusCode).toBe(201);
    const { accessToken, tokenId } = issued.json();
    const mine = await t.app.inject({ method: "GET", url: "/api/v1/tokens", headers: t.auth("member") });
    expect(mine.json().items.map((x: { id: string }) => x.id)).toContain(tokenId);
    expect(JSON.stringify(mine.json())).not.toContain(accessToken);

    const admin = (await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: t.auth("admin") })).json();
    const others = await t.app.inject({
      method: "GET",
      url: `/api/v1/tokens?user=${admin.id}`,
      headers: t.auth("member"),
    });
    expect(others.statusCode).toBe(403);
    const adminToken = (await t.app.inject({ method: "POST", url: "/api/v1/tokens", headers: t.auth("admin") })).json();
    expect(
      (await t.app.inject({ method: "DELETE", url: `/api/v1/tokens/${adminToken.tokenId}`, headers: t.auth("member") }))
        .statusCode,
    ).toBe(404);
    expect(
      (await t.app.inject({ method: "GET", url: `/api/v1/tokens?user=${admin.id}`, headers: t.auth("auditor") }))
        .statusCode,
    ).toBe(200);

    expect(
      (await t.app.inject({ method: "DELETE", url: `/api/v1/tokens/${tokenId}`, headers: t.auth("member") }))
        .statusCode,
    ).toBe(204);
    expect(
      (await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(accessToken) })).statusCode,
    ).toBe(401);
  });

  it("disabling a user revokes their tokens and locks every credential", async () => {
    const user = await createUser("erin@example.com");
    const token = (await login("erin@example.com", PASSWORD)).json().accessToken as string;
    const key = (
      await t.app.inject({
        method: "POST",
        url: `/api/v1/users/${user.id}/api-keys`,
        headers: t.auth("admin"),
        payload: { name: "ci" },
      })
    ).json().apiKey as string;
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(key) })).statusCode).toBe(200);

    const disabled = await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${user.id}`,
      headers: t.auth("admin"),
      payload: { disabled: true },
    });
    expect(disabled.json().disabled).toBe(true);
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(token) })).statusCode).toBe(401);
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(key) })).statusCode).toBe(401);
    expect((await login("erin@example.com", PASSWORD)).statusCode).toBe(401);
    expect(await t.store.accessTokens.revokedUnexpired(new Date())).toContain(decodeJwt(token).jti);
    expect(await t.store.users.disabledEmails()).toContain("erin@example.com");
  });

  it("logs in whatever the email's case, and a change of groups or password revokes the user's tokens", async () => {
    const user = await createUser("Frank@Example.com");
    const token = (await login("FRANK@example.COM", PASSWORD)).json().accessToken as string;
    expect(token).toBeDefined();
    await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${user.id}`,
      headers: t.auth("admin"),
      payload: { groups: ["engineers"] },
    });
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(token) })).statusCode).toBe(200); // same groups: kept
    await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${user.id}`,
      headers: t.auth("admin"),
      payload: { groups: [] },
    });
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(token) })).statusCode).toBe(401);
    const second = (await login("frank@example.com", PASSWORD)).json().accessToken as string;
    await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${user.id}`,
      headers: t.auth("admin"),
      payload: { password: "another long password" },
    });
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(second) })).statusCode).toBe(
      401,
    );
  });

  it("admins cannot disable themselves or drop their own admin role", async () => {
    const res = await t.app.inject({
      method: "PATCH",
      url: "/api/v1/users/me",
      headers: t.auth("admin"),
      payload: { disabled: true },
    });
    expect(res.statusCode).toBe(400);
  });
});

describe("service accounts and API keys", () => {
  it("a service account authenticates with an API key and gets service-account tokens; it has no password", async () => {
    const sa = await t.app.inject({
      method: "POST",
      url: "/api/v1/service-accounts",
      headers: t.auth("admin"),
      payload: { name: "etl", groups: ["pipelines"] },
    });
    expect(sa.statusCode).toBe(201);
    expect(sa.json()).toMatchObject({ email: "etl", kind: "service-account", role: "member", hasPassword: false });
    const created = await t.app.inject({
      method: "POST",
      url: `/api/v1/users/${sa.json().id}/api-keys`,
      headers: t.auth("admin"),
      payload: { name: "airflow", expiresInDays: 30 },
    });
    expect(created.statusCode).toBe(201);
    const { apiKey, key } = created.json();
    expect(apiKey).toMatch(/^moat_ak_/);
    expect(key.expiresAt).not.toBeNull();
    const token = (await t.app.inject({ method: "POST", url: "/api/v1/tokens", headers: bearer(apiKey) })).json()
      .accessToken;
    expect(decodeJwt(token)).toMatchObject({ sub: "etl", kind: "service-account", groups: ["pipelines"] });
    const pw = await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${sa.json().id}`,
      headers: t.auth("admin"),
      payload: { password: "a long enough password" },
    });
    expect(pw.statusCode).toBe(400);

    const listed = await t.app.inject({
      method: "GET",
      url: `/api/v1/users/${sa.json().id}/api-keys`,
      headers: t.auth("admin"),
    });
    expect(JSON.stringify(listed.json())).not.toContain("hash");
    expect(
      (await t.app.inject({ method: "DELETE", url: `/api/v1/api-keys/${key.id}`, headers: t.auth("member") }))
        .statusCode,
    ).toBe(404);
    expect(
      (await t.app.inject({ method: "DELETE", url: `/api/v1/api-keys/${key.id}`, headers: t.auth("admin") }))
        .statusCode,
    ).toBe(204);
    expect((await t.app.inject({ method: "POST", url: "/api/v1/tokens", headers: bearer(apiKey) })).statusCode).toBe(
      401,
    );
  });

  it("members manage their own API keys only", async () => {
    const mine = await t.app.inject({
      method: "POST",
      url: "/api/v1/users/me/api-keys",
      headers: t.auth("member"),
      payload: { name: "laptop" },
    });
    expect(mine.statusCode).toBe(201);
    const admin = (await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: t.auth("admin") })).json();
    expect(
      (
        await t.app.inject({
          method: "POST",
          url: `/api/v1/users/${admin.id}/api-keys`,
          headers: t.auth("member"),
          payload: { name: "x" },
        })
      ).statusCode,
    ).toBe(403);
    expect(
      (await t.app.inject({ method: "GET", url: `/api/v1/users/${admin.id}`, headers: t.auth("member") })).statusCode,
    ).toBe(403);
  });

  it("lists groups with member counts", async () => {
    const groups = (await t.app.inject({ method: "GET", url: "/api/v1/groups", headers: t.auth("reviewer") })).json()
      .items as { name: string; members: number }[];
    expect(groups.find((g) => g.name === "engineers")?.members).toBeGreaterThanOrEqual(2);
  });
});

describe("token signing key rotation", () => {
  it("publishes the new key, signs with it after the activation delay, keeps old tokens valid, then retires the old key", async () => {
    const adminUser = (await t.store.users.findByEmail(t.emails.admin))!;
    const apiToken = async () => (await t.tokens.issue(adminUser, "api-key", "api")).accessToken;
    const before = await apiToken();
    const oldKid = (JSON.parse(Buffer.from(before.split(".")[0] as string, "base64url").toString()) as { kid: string })
      .kid;
    const rotated = await t.app.inject({ method: "POST", url: "/api/v1/keys/rotate", headers: t.auth("admin") });
    expect(rotated.statusCode).toBe(201);
    const kidOf = (token: string) =>
      (JSON.parse(Buffer.from(token.split(".")[0] as string, "base64url").toString()) as { kid: string }).kid;
    const soon = await apiToken();
    expect(kidOf(soon)).toBe(oldKid);
    expect((await t.keyring.publicKeys("token")).map((k) => k.kid)).toEqual([oldKid, rotated.json().kid]);

    await new Promise((r) => setTimeout(r, 300));
    const after = await apiToken();
    expect(kidOf(after)).toBe(rotated.json().kid);
    for (const token of [before, after]) {
      expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(token) })).statusCode).toBe(
        200,
      );
    }
    const keys = (await t.app.inject({ method: "GET", url: "/api/v1/keys", headers: t.auth("auditor") })).json()
      .items as { kid: string; use: string; signing: boolean }[];
    expect(keys.filter((k) => k.use === "token").map((k) => [k.kid, k.signing])).toEqual([
      [oldKid, false],
      [rotated.json().kid, true],
    ]);

    await new Promise((r) => setTimeout(r, 1300));
    expect(await t.keyring.retireExpired("token")).toEqual([oldKid]);
    expect((await t.keyring.publicKeys("token")).map((k) => k.kid)).toEqual([rotated.json().kid]);
    expect((await t.app.inject({ method: "GET", url: "/api/v1/whoami", headers: bearer(before) })).statusCode).toBe(
      401,
    );
  });
});
