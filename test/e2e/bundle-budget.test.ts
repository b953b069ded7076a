/**
 * The bundle size budget on real processes, with a small configured message limit: a bundle that
 * would not fit is not sent (the agent keeps enforcing its last good bundle), the agent's status
 * says why, it is logged, counted and audited; a policy write that would grow an agent's bundle
 * past the budget is refused up front naming the agent; shrinking the set delivers again.
 */
import { afterAll, describe, expect, it } from "vitest";
import { waitFor } from "@moat/testkit";
import { api, cleanup, createAgent, getAgent, startAgent, startControlPlane } from "./support.js";

afterAll(cleanup);

const MAX_MESSAGE_BYTES = 64 * 1024;

/** A policy of about 14 KB (many table-scoped rules) for resources labelled size: big. */
function bigPolicy(name: string) {
  return {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name },
    spec: {
      subjects: { groups: ["analysts"] },
      resources: { labels: { size: "big" } },
      rules: Array.from({ length: 150 }, (_, i) => ({
        name: `read-${i}`,
        effect: "allow",
        actions: ["db:read"],
        tables: [`warehouse_schema_${i}.fact_table_with_a_rather_long_name_${i}`],
      })),
    },
  };
}

const SMALL = {
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name: "small" },
  spec: {
    subjects: { users: ["*"] },
    resources: { labels: { size: "small" } },
    rules: [{ name: "connect", effect: "allow", actions: ["connect"] }],
  },
};

const resources = (names: [string, string][]) =>
  `resources:\n${names.map(([name, size]) => `  - { name: ${name}, type: postgres, listen: "127.0.0.1:6432", labels: { size: ${size} } }\n`).join("")}`;

describe("bundle size budget", () => {
  it("keeps the agent on its last good bundle, reports and refuses what does not fit", async () => {
    const cp = await startControlPlane({ env: { MOAT_GRPC_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) } });
    const { id, token } = await createAgent(cp, "budget-edge");
    const yaml = resources([["small-db", "small"]]);
    const agent = await startAgent({ token, yaml, decisionEndpoint: true });
    expect((await api(cp, "PUT", "/api/v1/policies/small", SMALL)).status).toBe(201);
    await waitFor(async () => (await getAgent(cp, id)).policyRevision !== "0", 15_000);
    expect((await getAgent(cp, id)).bundleError).toBe("");

    // Big policies for resources no agent has yet: nobody's bundle grows, so they are accepted.
    let lastRevision = "";
    for (let i = 0; i < 5; i++) {
      const put = await api<{ revision: string }>(cp, "PUT", `/api/v1/policies/big-${i}`, bigPolicy(`big-${i}`));
      expect(put.status, JSON.stringify(put.body)).toBe(201);
      lastRevision = put.body.revision;
    }
    // Every change delivered (a bundle per change may still be on its way after the first one).
    await waitFor(async () => (await getAgent(cp, id)).policyRevision === lastRevision, 10_000);
    const beforeBig = await getAgent(cp, id);
    expect(beforeBig.bundleError).toBe("");

    // The agent now announces a resource they select: its bundle would be over 64 KiB.
    await agent.stop();
    const restarted = await startAgent({
      dataDir: agent.dataDir,
      yaml: resources([
        ["small-db", "small"],
        ["big-db", "big"],
      ]),
      decisionEndpoint: true,
    });
    await waitFor(async () => (await getAgent(cp, id)).bundleError !== "", 15_000);
    const refused = await getAgent(cp, id);
    expect(refused.bundleError).toMatch(/the policy bundle is \d+ bytes, over the 61440-byte budget/);
    expect(refused.bundleError).toContain("keeps enforcing its last bundle");
    expect(refused.bundleVersion).toBe(beforeBig.bundleVersion); // nothing newer was delivered
    // The agent still enforces its last good bundle (and knows nothing of the new resource: deny).
    const decide = async (resource: string) =>
      (await (
        await fetch(`http://127.0.0.1:${restarted.adminPort}/v1/decide`, {
          method: "POST",
          body: JSON.stringify({ user: "ann@example.com", groups: ["analysts"], resource, action: "connect" }),
        })
      ).json()) as { effect: string; message: string; bundleVersion: string };
    expect(await decide("small-db")).toMatchObject({ effect: "allow", bundleVersion: beforeBig.bundleVersion });
    expect(await decide("big-db")).toMatchObject({ effect: "deny", message: expect.stringContaining("not in") });
    // Logged, counted, audited.
    expect(cp.output()).toContain("bundle over the size budget");
    const metrics = await (await fetch(`${cp.url}/metrics`)).text();
    expect(metrics).toMatch(/moat_cp_bundle_failures_total\{reason="too_large"\} [1-9]/);
    const audit = await api<{ items: { type: string; message: string }[] }>(
      cp,
      "GET",
      "/api/v1/audit/events?type=bundle.refused",
    );
    expect(audit.body.items.some((e) => e.message.includes("budget-edge"))).toBe(true);

    // A write that would grow it further is refused up front, naming the agent.
    const grow = await api<{ code: string; detail: string; errors: { field: string }[] }>(
      cp,
      "PUT",
      "/api/v1/policies/big-5",
      bigPolicy("big-5"),
    );
    expect(grow.status).toBe(422);
    expect(grow.body).toMatchObject({ code: "bundle_too_large", errors: [{ field: "agents/budget-edge" }] });
    expect(grow.body.detail).toContain("budget-edge");

    // Shrinking is always allowed; once it fits, the agent gets a bundle again and the error clears.
    expect((await api(cp, "DELETE", "/api/v1/policies/big-4")).status).toBe(204);
    expect((await api(cp, "DELETE", "/api/v1/policies/big-3")).status).toBe(204);
    await waitFor(async () => {
      const v = await getAgent(cp, id);
      return v.bundleError === "" && BigInt(v.bundleVersion) > BigInt(beforeBig.bundleVersion);
    }, 15_000);
    expect((await decide("big-db")).message).not.toContain("not in");
  });
});
