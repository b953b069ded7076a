/**
 * Policy to enforcement, on real processes: policies applied over REST are compiled into a signed
 * bundle, pushed to the agent, verified and acknowledged; the control plane's simulation and the
 * agent's own decisions agree case by case; the agent keeps enforcing from its persisted bundle
 * while the control plane is down.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parsePolicyText } from "@moat/policy";
import { waitFor } from "@moat/testkit";
import {
  api,
  cleanup,
  createAgent,
  getAgent,
  repoRoot,
  startAgent,
  startControlPlane,
  type AgentProc,
  type ControlPlaneProc,
} from "./support.js";

afterAll(cleanup);

const examples = join(repoRoot, "examples", "policies");
const documents = readdirSync(examples).flatMap((f) => parsePolicyText(readFileSync(join(examples, f), "utf8")));

const RESOURCES = `resources:
  - { name: orders-db, type: postgres, listen: "127.0.0.1:6432", labels: { env: prod } }
  - { name: orders-staging, type: postgres, listen: "127.0.0.1:6433", labels: { env: staging } }
  - { name: warehouse, type: postgres, listen: "127.0.0.1:6434" }
  - { name: web-1, type: ssh, listen: "127.0.0.1:2222", labels: { env: prod } }
`;

async function decide(agent: AgentProc, body: object) {
  const res = await fetch(`http://127.0.0.1:${agent.adminPort}/v1/decide`, {
    method: "POST",
    body: JSON.stringify(body),
  });
  return (await res.json()) as { effect: string; rule: string; message: string; bundleVersion: string };
}

/** Request cases: every combination of a few users, resources, actions and contexts. */
function cases(): object[] {
  const users = [
    { user: "alice@example.com", groups: ["engineers"] },
    { user: "dana@example.com", groups: ["dbas"] },
    { user: "omar@example.com", groups: ["oncall"] },
    { user: "etl", groups: [], serviceAccount: true },
    { user: "eve@example.com", groups: [] },
  ];
  const targets = [
    {
      resource: "orders-db",
      actions: ["connect", "db:read", "db:write", "db:ddl"],
      tables: [["public.orders"], ["public.orders", "vault.keys"]],
    },
    {
      resource: "warehouse",
      actions: ["connect", "db:copy-out", "db:read"],
      tables: [["analytics.events"], ["public.users"]],
    },
    { resource: "web-1", actions: ["connect", "ssh:shell", "ssh:exec"], tables: [[]] },
  ];
  const contexts = [
    { time: "2026-11-25T23:00:00Z", sourceIp: "10.8.1.1", reason: "INC-7", command: "systemctl status nginx" },
    { time: "2026-11-28T01:30:00Z", sourceIp: "192.0.2.1" },
  ];
  const out: object[] = [];
  for (const u of users)
    for (const t of targets)
      for (const action of t.actions)
        for (const tables of t.tables)
          for (const c of contexts) out.push({ ...u, resource: t.resource, action, tables, ...c });
  return out;
}

describe("policies reach the agent as a signed bundle", () => {
  let cp: ControlPlaneProc;
  let agent: AgentProc;
  let agentId: string;

  it("pushes the bundle on change and the agent acknowledges it", async () => {
    // Cases are decided at fixed instants up to a few days ahead: keep the bundle valid that long.
    cp = await startControlPlane({ env: { MOAT_BUNDLE_VALIDITY_SECONDS: String(30 * 24 * 3600) } });
    const created = await createAgent(cp, "edge-policy");
    agentId = created.id;
    agent = await startAgent({ token: created.token, yaml: RESOURCES, decisionEndpoint: true });
    await waitFor(async () => (await getAgent(cp, agentId)).bundleVersion !== "0", 15_000);
    const empty = await decide(agent, {
      user: "alice@example.com",
      groups: ["engineers"],
      resource: "orders-db",
      action: "db:read",
    });
    expect(empty).toMatchObject({ effect: "deny", message: expect.stringContaining("no policy allows") });

    const started = Date.now();
    const applied = await api<{ revision: string; created: string[] }>(cp, "POST", "/api/v1/policies/apply", {
      documents,
    });
    expect(applied.status).toBe(200);
    await waitFor(async () => (await getAgent(cp, agentId)).policyRevision === applied.body.revision, 10_000, 20);
    const enforcedAfterMs = Date.now() - started;
    const enforcing = await getAgent(cp, agentId);
    expect(enforcedAfterMs).toBeLessThan(5_000);
    const allowed = await decide(agent, {
      user: "alice@example.com",
      groups: ["engineers"],
      resource: "orders-db",
      action: "db:read",
      tables: ["public.orders"],
    });
    // The agent decides with the bundle the control plane compiled from that revision.
    expect(allowed).toMatchObject({
      effect: "allow",
      rule: "prod-readonly/read",
      bundleVersion: enforcing.bundleVersion,
    });
  });

  it("simulate and the agent agree on every case", async () => {
    const all = cases();
    expect(all.length).toBeGreaterThanOrEqual(50);
    const disagreements: string[] = [];
    const effects = new Set<string>();
    for (const c of all) {
      const sim = await api<{ effect: string; rule: string; message: string }>(
        cp,
        "POST",
        "/api/v1/policies/simulate",
        c,
      );
      expect(sim.status).toBe(200);
      const local = await decide(agent, c);
      effects.add(sim.body.effect);
      if (sim.body.effect !== local.effect || sim.body.rule !== local.rule || sim.body.message !== local.message) {
        disagreements.push(
          `${JSON.stringify(c)}: simulate ${sim.body.effect}/${sim.body.rule}, agent ${local.effect}/${local.rule}`,
        );
      }
    }
    expect(disagreements).toEqual([]);
    expect([...effects].sort()).toEqual(["allow", "deny", "review"]);
  });

  it("a deleted policy stops applying at the agent", async () => {
    expect((await api(cp, "DELETE", "/api/v1/policies/prod-readonly")).status).toBe(204);
    await waitFor(
      async () =>
        (
          await decide(agent, {
            user: "alice@example.com",
            groups: ["engineers"],
            resource: "orders-db",
            action: "db:read",
          })
        ).effect === "deny",
      10_000,
    );
  });

  it("keeps enforcing from the persisted bundle while the control plane is down", async () => {
    const before = await decide(agent, {
      user: "dana@example.com",
      groups: ["dbas"],
      resource: "orders-db",
      action: "db:read",
    });
    expect(before.effect).toBe("allow");
    await cp.stop("SIGKILL");
    await agent.stop("SIGTERM");
    const restarted = await startAgent({ dataDir: agent.dataDir, yaml: RESOURCES, decisionEndpoint: true });
    await waitFor(async () => (await restarted.health()).agentId !== undefined, 10_000);
    const after = await decide(restarted, {
      user: "dana@example.com",
      groups: ["dbas"],
      resource: "orders-db",
      action: "db:read",
    });
    expect(after).toMatchObject({ effect: "allow", bundleVersion: before.bundleVersion });
    expect(
      (await decide(restarted, { user: "dana@example.com", groups: ["dbas"], resource: "not-mine", action: "connect" }))
        .effect,
    ).toBe("deny");
  });
});
