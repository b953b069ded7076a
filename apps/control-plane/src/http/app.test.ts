import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateSecret, randomId, SecretKind } from "@moat/common";
import { ROLES, type Role, type Store } from "../store/index.js";
import { createTestApp, type TestApp } from "../test-support/app.js";

let t: TestApp;
let store: Store;
let app: TestApp["app"];
let keys: TestApp["keys"];

beforeAll(async () => {
  t = await createTestApp();
  ({ store, app, keys } = t);
});

afterAll(async () => t?.close());

const auth = (role: Role) => t.auth(role);

describe("REST errors are problem+json with stable codes", () => {
  it("unknown route: 404 not_found", async () => {
    const res = await app.inject({ method: "GET", url: "/api/v1/nope", headers: auth("admin") });
    expect(res.statusCode).toBe(404);
    expect(res.headers["content-type"]).toContain("application/problem+json");
    expect(res.json()).toMatchObject({ status: 404, code: "not_found", type: "urn:moat:problem:not_found" });
  });

  it("no credential: 401 unauthenticated", async () => {
    const res = await app.inject({ method: "GET", url: "/api/v1/agents" });
    expect(res.statusCode).toBe(401);
    expect(res.json()).toMatchObject({ code: "unauthenticated" });
  });

  it.each([
    ["garbage", "Bearer nonsense"],
    ["well-formed but unknown key", `Bearer ${generateSecret(SecretKind.apiKey).value}`],
    ["right id, wrong secret", () => `Bearer ${keys.admin.slice(0, -4)}AAAA`],
    ["basic auth", "Basic YWRtaW46YWRtaW4="],
  ])("bad credential (%s): 401", async (_name, header) => {
    const authorization = typeof header === "function" ? header() : header;
    const res = await app.inject({ method: "GET", url: "/api/v1/agents", headers: { authorization } });
    expect(res.statusCode).toBe(401);
    expect(res.json().code).toBe("unauthenticated");
    expect(res.body).not.toContain(keys.admin);
  });

  it("wrong role: 403 permission_denied", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: auth("member"),
      payload: { name: "x" },
    });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toMatchObject({ code: "permission_denied" });
  });

  it("malformed bodies: 400 with field-level messages", async () => {
    const missing = await app.inject({ method: "POST", url: "/api/v1/agents", headers: auth("admin"), payload: {} });
    expect(missing.statusCode).toBe(400);
    expect(missing.json()).toMatchObject({ code: "validation_failed", errors: [{ field: "body/name" }] });

    const bad = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: auth("admin"),
      payload: { name: "Bad Name!", colour: "red" },
    });
    expect(bad.statusCode).toBe(400);
    const fields = (bad.json().errors as { field: string; message: string }[]).map((e) => e.field);
    expect(fields).toEqual(expect.arrayContaining(["body/name", "body/colour"]));

    const notJson = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: { ...auth("admin"), "content-type": "application/json" },
      payload: "{name:",
    });
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json().code).toBe("bad_request");

    const wrongType = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: { ...auth("admin"), "content-type": "application/xml" },
      payload: "<name>x</name>",
    });
    expect(wrongType.statusCode).toBe(415);
    expect(wrongType.json().code).toBe("unsupported_media_type");
  });

  it("oversized body: 413", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: { ...auth("admin"), "content-type": "application/json" },
      payload: JSON.stringify({ name: "x", description: "y".repeat(2 * 1024 * 1024) }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json().code).toBe("payload_too_large");
  });
});

describe("agents API", () => {
  it("creates an agent with a one-time token, lists, gets and deletes it", async () => {
    const created = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: auth("admin"),
      payload: { name: "edge-1", description: "rack 4" },
    });
    expect(created.statusCode).toBe(201);
    const body = created.json();
    expect(body.enrolmentToken).toMatch(/^moat_et1_/);
    expect(body.agent).toMatchObject({ name: "edge-1", state: "pending", connected: false, bundleVersion: "0" });

    const dup = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: auth("admin"),
      payload: { name: "edge-1" },
    });
    expect(dup.statusCode).toBe(409);
    expect(dup.json().code).toBe("conflict");

    const list = await app.inject({ method: "GET", url: "/api/v1/agents", headers: auth("auditor") });
    expect(list.json().items.map((a: { name: string }) => a.name)).toContain("edge-1");

    const one = await app.inject({ method: "GET", url: `/api/v1/agents/${body.agent.id}`, headers: auth("admin") });
    expect(one.json().description).toBe("rack 4");

    const token = await app.inject({
      method: "POST",
      url: `/api/v1/agents/${body.agent.id}/enrolment-token`,
      headers: auth("admin"),
    });
    expect(token.statusCode).toBe(201);
    expect(token.json().enrolmentToken).not.toBe(body.enrolmentToken);

    const del = await app.inject({ method: "DELETE", url: `/api/v1/agents/${body.agent.id}`, headers: auth("admin") });
    expect(del.statusCode).toBe(204);
    const gone = await app.inject({ method: "GET", url: `/api/v1/agents/${body.agent.id}`, headers: auth("admin") });
    expect(gone.statusCode).toBe(404);
    const again = await app.inject({
      method: "DELETE",
      url: `/api/v1/agents/${body.agent.id}`,
      headers: auth("admin"),
    });
    expect(again.statusCode).toBe(404);
  });

  it("never stores the enrolment token in clear", async () => {
    const created = await app.inject({
      method: "POST",
      url: "/api/v1/agents",
      headers: auth("admin"),
      payload: { name: "edge-2" },
    });
    const { agent, enrolmentToken } = created.json();
    const record = await store.agents.findById(agent.id);
    expect(JSON.stringify(record, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain(
      enrolmentToken.slice(9, 40),
    );
  });
});

describe("route x role matrix", () => {
  // Every /api route and who may call it. A new route must be added here (the last test checks).
  const matrix: {
    method: string;
    url: string;
    allowed: Role[];
    payload?: object | ((role: Role) => object);
    path?: string;
    public?: boolean;
  }[] = [
    { method: "GET", url: "/api/v1/whoami", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "GET", url: "/api/v1/status", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "GET", url: "/api/v1/agents", allowed: ["admin", "auditor"] },
    { method: "POST", url: "/api/v1/agents", allowed: ["admin"], payload: { name: "matrix" } },
    { method: "GET", url: "/api/v1/agents/:id", allowed: ["admin", "auditor"] },
    { method: "POST", url: "/api/v1/agents/:id/enrolment-token", allowed: ["admin"] },
    { method: "DELETE", url: "/api/v1/agents/:id", allowed: ["admin"] },
    { method: "GET", url: "/api/v1/resources", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "GET", url: "/api/v1/policies", allowed: ["admin", "auditor", "reviewer"] },
    {
      method: "POST",
      url: "/api/v1/auth/login",
      allowed: ["admin", "auditor", "reviewer", "member"],
      payload: { email: "nobody@example.com", password: "wrong" },
      public: true,
    },
    { method: "POST", url: "/api/v1/tokens", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "GET", url: "/api/v1/tokens", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "DELETE", url: "/api/v1/tokens/:id", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "GET", url: "/api/v1/users", allowed: ["admin", "auditor"] },
    {
      method: "POST",
      url: "/api/v1/users",
      allowed: ["admin"],
      payload: () => ({ email: `u-${randomId(6)}@example.com`, role: "member" }),
    },
    {
      method: "POST",
      url: "/api/v1/service-accounts",
      allowed: ["admin"],
      payload: () => ({ name: `sa-${randomId(6)}` }),
    },
    {
      method: "GET",
      url: "/api/v1/users/:id",
      allowed: ["admin", "auditor", "reviewer", "member"],
      path: "/api/v1/users/me",
    },
    {
      method: "PATCH",
      url: "/api/v1/users/:id",
      allowed: ["admin"],
      path: "/api/v1/users/does-not-exist",
      payload: { displayName: "x" },
    },
    {
      method: "GET",
      url: "/api/v1/users/:id/api-keys",
      allowed: ["admin", "auditor", "reviewer", "member"],
      path: "/api/v1/users/me/api-keys",
    },
    {
      method: "POST",
      url: "/api/v1/users/:id/api-keys",
      allowed: ["admin", "auditor", "reviewer", "member"],
      path: "/api/v1/users/me/api-keys",
      payload: { name: "k" },
    },
    {
      method: "POST",
      url: "/api/v1/users/:id/oidc-link",
      allowed: ["admin"],
      path: "/api/v1/users/does-not-exist/oidc-link",
      payload: { subject: "s-1", issuer: "https://idp.example" },
    },
    {
      method: "DELETE",
      url: "/api/v1/users/:id/oidc-link",
      allowed: ["admin"],
      path: "/api/v1/users/does-not-exist/oidc-link",
    },
    { method: "DELETE", url: "/api/v1/api-keys/:id", allowed: ["admin", "auditor", "reviewer", "member"] },
    { method: "GET", url: "/api/v1/groups", allowed: ["admin", "auditor", "reviewer"] },
    { method: "GET", url: "/api/v1/keys", allowed: ["admin", "auditor"] },
    { method: "GET", url: "/api/v1/audit/events", allowed: ["admin", "auditor"] },
    { method: "GET", url: "/api/v1/audit/sessions", allowed: ["admin", "auditor"] },
    { method: "GET", url: "/api/v1/audit/sessions/:id", allowed: ["admin", "auditor"] },
    { method: "GET", url: "/api/v1/audit/export", allowed: ["admin", "auditor"] },
    { method: "GET", url: "/api/v1/audit/follow", allowed: ["admin", "auditor"] },
    {
      method: "GET",
      url: "/api/v1/audit/verify",
      allowed: ["admin", "auditor"],
      path: "/api/v1/audit/verify?agent=none",
    },
    { method: "GET", url: "/api/v1/auth/oidc", allowed: ["admin", "auditor", "reviewer", "member"], public: true },
    {
      method: "POST",
      url: "/api/v1/auth/oidc/token",
      allowed: ["admin", "auditor", "reviewer", "member"],
      payload: { idToken: "x".repeat(20) },
      public: true,
    },
    { method: "POST", url: "/api/v1/keys/rotate", allowed: ["admin"] },
    { method: "POST", url: "/api/v1/keys/bundle/rotate", allowed: ["admin"] },
    { method: "GET", url: "/api/v1/policies/:name", allowed: ["admin", "auditor", "reviewer"] },
    { method: "PUT", url: "/api/v1/policies/:name", allowed: ["admin"], payload: {} },
    { method: "DELETE", url: "/api/v1/policies/:name", allowed: ["admin"] },
    { method: "POST", url: "/api/v1/policies/apply", allowed: ["admin"], payload: { documents: [], dryRun: true } },
    {
      method: "POST",
      url: "/api/v1/policies/simulate",
      allowed: ["admin", "auditor", "reviewer", "member"],
      payload: (role: Role) => ({ user: t.emails[role], resource: "nope", action: "connect" }),
    },
  ];

  for (const route of matrix) {
    for (const role of ROLES) {
      const allowed = route.allowed.includes(role);
      it(`${route.method} ${route.url} as ${role}: ${allowed ? "allowed" : "403"}`, async () => {
        const url = route.path ?? route.url.replace(":id", "does-not-exist").replace(":name", "does-not-exist");
        const given = typeof route.payload === "function" ? route.payload(role) : route.payload;
        const payload = given && route.url === "/api/v1/agents" ? { ...given, name: `m-${randomId(6)}` } : given;
        const res = await app.inject({
          method: route.method as "GET",
          url,
          headers: auth(role),
          ...(payload ? { payload } : {}),
        });
        if (allowed) expect(res.statusCode).not.toBe(403);
        else expect(res.statusCode).toBe(403);
        if (!route.public) expect(res.statusCode).not.toBe(401);
      });
    }
  }

  it("covers every registered /api route", () => {
    const registered = app
      .printRoutes({ commonPrefix: false })
      .split("\n")
      .filter((l) => l.includes("/api/"));
    const tested = new Set(matrix.map((r) => `${r.method} ${r.url}`));
    const apiRoutes: string[] = [];
    for (const r of matrix) apiRoutes.push(`${r.method} ${r.url}`);
    expect(registered.length).toBeGreaterThan(0);
    // printRoutes lists paths; check each listed path is in the matrix for at least one method.
    const paths = new Set(matrix.map((r) => r.url));
    for (const line of registered) {
      const path = line
        .replace(/^[\s│├└─]+/, "")
        .replace(/\s*\(.*\)$/, "")
        .trim();
      expect(paths, `route ${path} missing from the role matrix`).toContain(path);
    }
    expect(tested.size).toBe(matrix.length);
  });
});

describe("probes and documents", () => {
  it("healthz, readyz, metrics and openapi.json answer without credentials", async () => {
    expect((await app.inject({ url: "/healthz" })).json()).toEqual({ status: "ok" });
    expect((await app.inject({ url: "/readyz" })).json()).toMatchObject({
      status: "ready",
      checks: { store: "ok", grpc: "ok" },
    });
    const metrics = await app.inject({ url: "/metrics" });
    expect(metrics.body).toContain("moat_cp_http_request_duration_seconds");
    const doc = (await app.inject({ url: "/openapi.json" })).json();
    expect(doc.openapi).toBe("3.1.0");
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining(["/api/v1/agents", "/api/v1/agents/{id}", "/api/v1/resources"]),
    );
  });
});
