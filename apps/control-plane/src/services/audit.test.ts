import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuditEventSchema, create, timestampFromDate, toBinary, Verdict } from "@moat/proto";
import { createTestApp, type TestApp } from "../test-support/app.js";
import { createAuditService } from "./audit.js";

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp();
});
afterAll(async () => t?.close());

function chain(n: number, start = 1): Uint8Array[] {
  const out: Uint8Array[] = [];
  let prev: Uint8Array = new Uint8Array(0);
  for (let i = 0; i < n; i++) {
    const seq = BigInt(start + i);
    const bytes = toBinary(
      AuditEventSchema,
      create(AuditEventSchema, {
        id: `01JD${String(seq).padStart(22, "0")}`,
        seq,
        time: timestampFromDate(new Date(1_700_000_000_000 + i)),
        type: "db.query",
        actor: { user: "alice@example.com" },
        resource: "orders-db",
        verdict: i % 2 ? Verdict.DENY : Verdict.ALLOW,
        prevHash: prev,
        detail: { case: "dbQuery", value: { text: `select ${i}` } },
      }),
    );
    prev = createHash("sha256").update(bytes).digest();
    out.push(bytes);
  }
  return out;
}

describe("audit ingestion", () => {
  it("stores a resent batch once, acks the last sequence, and the chain verifies", async () => {
    const agent = await t.store.agents.create({
      id: "auditagent000001",
      name: "audit-agent",
      description: "",
      enrolmentHash: "x",
      enrolmentExpiresAt: new Date(),
    });
    const audit = createAuditService({ store: t.store });
    const events = chain(10);
    expect(await audit.ingest(agent.id, events.slice(0, 6))).toEqual({ stored: 6, lastSeq: 6n });
    expect(await audit.ingest(agent.id, events.slice(3, 10))).toEqual({ stored: 4, lastSeq: 10n }); // overlap resent
    expect(await audit.ingest(agent.id, events)).toEqual({ stored: 0, lastSeq: 10n });
    expect((await t.store.agents.findById(agent.id))?.auditSeq).toBe(10n);
    expect(await audit.verify(agent.id)).toEqual({ agentId: agent.id, checked: 10, ok: true });
    const denied = await audit.search({ agentId: agent.id, verdict: "deny", text: "select" }, 100);
    expect(denied.items.map((e) => e.seq)).toEqual(["10", "8", "6", "4", "2"]);
    expect(denied.items[0]?.detail).toMatchObject({ kind: "dbQuery", text: "select 9" });
  });

  it("refuses malformed events without storing any of the batch", async () => {
    const audit = createAuditService({ store: t.store });
    await expect(
      audit.ingest("auditagent000001", [chain(1, 11)[0] as Uint8Array, Uint8Array.from([0xff, 0xff, 0xff])]),
    ).rejects.toMatchObject({ code: "bad_request" });
    expect((await t.store.agents.findById("auditagent000001"))?.auditSeq).toBe(10n);
  });
});

describe("control-plane actions in the audit trail", () => {
  it("records policy, user, token and login events in a verifiable chain, without secrets", async () => {
    const admin = t.auth("admin");
    const policy = {
      apiVersion: "moat.dev/v1",
      kind: "Policy",
      metadata: { name: "audited" },
      spec: {
        subjects: { users: ["*"] },
        resources: { names: ["db"] },
        rules: [{ name: "r", effect: "allow", actions: ["connect"] }],
      },
    };
    expect(
      (await t.app.inject({ method: "PUT", url: "/api/v1/policies/audited", headers: admin, payload: policy }))
        .statusCode,
    ).toBe(201);
    const user = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: admin,
        payload: { email: "gina@example.com", role: "member", password: "correct horse battery staple" },
      })
    ).json();
    await t.app.inject({
      method: "POST",
      url: "/api/v1/auth/login",
      payload: { email: "gina@example.com", password: "wrong password!" },
    });
    const login = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { email: "gina@example.com", password: "correct horse battery staple" },
      })
    ).json();
    await t.app.inject({ method: "DELETE", url: `/api/v1/tokens/${login.tokenId}`, headers: admin });
    await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${user.id}`,
      headers: admin,
      payload: { disabled: true },
    });

    const res = await t.app.inject({
      method: "GET",
      url: "/api/v1/audit/events?agent=control-plane&limit=100",
      headers: t.auth("auditor"),
    });
    const types = (res.json().items as { type: string }[]).map((e) => e.type).reverse();
    expect(types).toEqual(
      expect.arrayContaining([
        "policy.changed",
        "user.created",
        "auth.login_failed",
        "auth.login",
        "token.revoked",
        "user.changed",
      ]),
    );
    expect(JSON.stringify(res.json())).not.toContain("correct horse battery staple");
    expect(JSON.stringify(res.json())).not.toContain(login.accessToken);
    const verify = await t.app.inject({
      method: "GET",
      url: "/api/v1/audit/verify?agent=control-plane",
      headers: t.auth("auditor"),
    });
    expect(verify.json()).toMatchObject({ ok: true });
    expect(verify.json().checked).toBeGreaterThanOrEqual(6);
  });
});
