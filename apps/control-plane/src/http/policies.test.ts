import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomId } from "@moat/common";
import { parsePolicyText } from "@moat/policy";
import { createTestApp, type TestApp } from "../test-support/app.js";

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp();
});
afterAll(async () => t?.close());

const examples = join(import.meta.dirname, "..", "..", "..", "..", "examples", "policies");
const example = (file: string) => parsePolicyText(readFileSync(join(examples, file), "utf8"));

function policy(name: string, effect = "allow") {
  return {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name },
    spec: {
      subjects: { groups: ["eng"] },
      resources: { names: ["db"] },
      rules: [{ name: "r", effect, actions: ["connect", "db:read"] }],
    },
  };
}

describe("policy CRUD", () => {
  it("creates, re-puts unchanged without a new revision, updates with one, deletes", async () => {
    const name = `p-${randomId(6)}`;
    const put = (body: object) =>
      t.app.inject({ method: "PUT", url: `/api/v1/policies/${name}`, headers: t.auth("admin"), payload: body });
    const created = await put(policy(name));
    expect(created.statusCode).toBe(201);
    const first = created.json().revision as string;
    const same = await put(policy(name));
    expect(same.statusCode).toBe(200);
    expect(same.json().revision).toBe(first);
    const changed = await put(policy(name, "deny"));
    expect(BigInt(changed.json().revision)).toBeGreaterThan(BigInt(first));
    expect(changed.json().updatedBy).toBe(t.emails.admin);

    const got = await t.app.inject({ method: "GET", url: `/api/v1/policies/${name}`, headers: t.auth("auditor") });
    expect(got.json().document.spec.rules[0].effect).toBe("deny");
    expect(
      (await t.app.inject({ method: "DELETE", url: `/api/v1/policies/${name}`, headers: t.auth("admin") })).statusCode,
    ).toBe(204);
    expect(
      (await t.app.inject({ method: "GET", url: `/api/v1/policies/${name}`, headers: t.auth("admin") })).statusCode,
    ).toBe(404);
  });

  it("rejects invalid documents with the document fields at fault", async () => {
    const bad = policy("bad");
    (bad.spec.rules[0] as { effect: string }).effect = "permit";
    (bad.spec.rules[0] as { actions: string[] }).actions = ["db:reed"];
    const res = await t.app.inject({
      method: "PUT",
      url: "/api/v1/policies/bad",
      headers: t.auth("admin"),
      payload: bad,
    });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: "validation_failed" });
    expect(res.json().errors.map((e: { field: string }) => e.field)).toContain("spec.rules.0.effect");

    const semantic = await t.app.inject({
      method: "PUT",
      url: "/api/v1/policies/sem",
      headers: t.auth("admin"),
      payload: {
        ...policy("sem"),
        spec: { ...policy("sem").spec, rules: [{ name: "r", effect: "allow", actions: ["db:reed"] }] },
      },
    });
    expect(semantic.statusCode).toBe(400);
    expect(JSON.stringify(semantic.json().errors)).toContain('unknown action \\"db:reed\\"');

    const mismatch = await t.app.inject({
      method: "PUT",
      url: "/api/v1/policies/other",
      headers: t.auth("admin"),
      payload: policy("bad"),
    });
    expect(mismatch.statusCode).toBe(400);
    expect(mismatch.json().errors[0].field).toBe("metadata.name");
  });
});

describe("apply", () => {
  const apply = (documents: object[], extra: object = {}) =>
    t.app.inject({
      method: "POST",
      url: "/api/v1/policies/apply",
      headers: t.auth("admin"),
      payload: { documents, ...extra },
    });

  it("reports a diff on dry run, applies, and is a no-op the second time; prune deletes the rest", async () => {
    const docs = [...example("prod-readonly.yaml"), ...example("etl-copy-out.yaml")];
    await t.app.inject({
      method: "PUT",
      url: "/api/v1/policies/stray",
      headers: t.auth("admin"),
      payload: policy("stray"),
    });

    const dry = await apply(docs, { dryRun: true, prune: true });
    expect(dry.json()).toMatchObject({ dryRun: true, created: ["prod-readonly", "etl-copy-out"], deleted: ["stray"] });
    const listed = await t.app.inject({ method: "GET", url: "/api/v1/policies", headers: t.auth("admin") });
    expect(listed.json().items.map((p: { name: string }) => p.name)).toEqual(["stray"]);

    const applied = await apply(docs, { prune: true });
    expect(applied.json()).toMatchObject({
      dryRun: false,
      created: ["prod-readonly", "etl-copy-out"],
      deleted: ["stray"],
    });
    const again = await apply(docs, { prune: true });
    expect(again.json()).toMatchObject({
      created: [],
      updated: [],
      deleted: [],
      unchanged: ["prod-readonly", "etl-copy-out"],
      revision: applied.json().revision,
    });

    const modified = structuredClone(docs);
    modified[0]!.spec.session = { record: false };
    expect((await apply(modified)).json()).toMatchObject({ updated: ["prod-readonly"], unchanged: ["etl-copy-out"] });
  });

  it("refuses a set with duplicate names or an invalid member, changing nothing", async () => {
    const before = (await t.app.inject({ method: "GET", url: "/api/v1/policies", headers: t.auth("admin") })).json();
    expect((await apply([policy("dup"), policy("dup")])).statusCode).toBe(400);
    const res = await apply([policy("fine"), { apiVersion: "moat.dev/v1" }]);
    expect(res.statusCode).toBe(400);
    expect(res.json().errors[0].field).toMatch(/^1\./);
    expect((await t.app.inject({ method: "GET", url: "/api/v1/policies", headers: t.auth("admin") })).json()).toEqual(
      before,
    );
  });
});

describe("simulate", () => {
  beforeAll(async () => {
    await t.app.inject({
      method: "POST",
      url: "/api/v1/policies/apply",
      headers: t.auth("admin"),
      payload: {
        documents: [...example("prod-readonly.yaml"), ...example("dba-writes-need-approval.yaml")],
        prune: true,
      },
    });
  });
  const simulate = (role: keyof TestApp["keys"], body: object) =>
    t.app.inject({ method: "POST", url: "/api/v1/policies/simulate", headers: t.auth(role), payload: body });

  it("answers with the verdict, the deciding rule and every matched rule", async () => {
    const res = await simulate("admin", {
      user: "dana@example.com",
      groups: ["dbas"],
      resource: "orders-db",
      resourceType: "postgres",
      labels: { env: "prod" },
      action: "db:write",
      reason: "INC-1",
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({
      effect: "review",
      rule: "dba-writes-need-approval/writes",
      message: "Writes to production need a second pair of eyes",
    });
    expect(res.json().matched).toEqual([{ rule: "dba-writes-need-approval/writes", effect: "review" }]);
    expect(res.json().obligations.approvers.groups).toEqual(["dbas", "oncall-leads"]);
  });

  it("an unknown resource without a type is a 404 that says how to simulate a hypothetical one", async () => {
    const res = await simulate("admin", { user: "a", resource: "ghost", action: "connect" });
    expect(res.statusCode).toBe(404);
    expect(res.json().detail).toContain("give resourceType");
  });

  it("members may simulate only themselves", async () => {
    const other = await simulate("member", {
      user: "someone@example.com",
      resource: "orders-db",
      resourceType: "postgres",
      action: "connect",
    });
    expect(other.statusCode).toBe(403);
    const self = await simulate("member", {
      user: t.emails.member.toUpperCase(),
      resource: "orders-db",
      resourceType: "postgres",
      action: "connect",
    });
    expect(self.statusCode).toBe(200);
    expect(self.json().effect).toBe("deny");
  });
});
