/**
 * The control plane on PostgreSQL (the production store) as a real process: migrations at start,
 * an agent enrolled and connected, two replicas sharing one database.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashSecret, randomId } from "@moat/common";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { api, cleanup, createAgent, getAgent, startAgent, startControlPlane } from "./support.js";

let postgres: TestPostgres;
beforeAll(async () => {
  postgres = await startPostgres();
}, 60_000);
afterAll(async () => {
  await cleanup();
  await postgres?.stop();
});

describe("control plane on PostgreSQL", () => {
  it("migrates, enrols and connects an agent, and shares its state with a second replica", async () => {
    const url = await postgres.createDatabase(`cp_${randomId(8)}`);
    const cp = await startControlPlane({ env: { DATABASE_URL: url } });
    expect((await api<{ store: string }>(cp, "GET", "/api/v1/status")).body.store).toBe("postgres");
    const { id, token } = await createAgent(cp, "pg-edge");
    const agent = await startAgent({
      token,
      yaml: "resources:\n  - { name: orders-db, type: postgres, listen: '127.0.0.1:6432' }\n",
    });
    await waitFor(async () => (await getAgent(cp, id)).connected, 15_000);

    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const { rows } = await client.query<{ credentialHash: string }>(
      'SELECT "credentialHash" FROM "Agent" WHERE id = $1',
      [id],
    );
    const { rows: migrations } = await client.query<{ name: string }>('SELECT name FROM "_moat_migrations"');
    await client.end();
    const credential = (JSON.parse(readFileSync(join(agent.dataDir, "agent.json"), "utf8")) as { credential: string })
      .credential;
    expect(rows[0]?.credentialHash).toBe(hashSecret(credential));
    expect(migrations.map((m) => m.name)).toEqual([
      "0001_init",
      "0002_policies_and_keys",
      "0003_identities",
      "0004_audit_events",
      "0005_identity_binding",
      "0006_audit_sessions",
    ]);

    // The agent's audit trail lands in PostgreSQL through the batched ingestion, and its chain verifies.
    const events = async () =>
      (await api<{ items: { type: string }[] }>(cp, "GET", `/api/v1/audit/events?agent=${id}`)).body.items;
    await waitFor(async () => (await events()).some((e) => e.type === "bundle.applied"), 15_000);
    expect((await api(cp, "GET", `/api/v1/audit/verify?agent=${id}`)).body).toMatchObject({ ok: true });

    // A second replica on the same database sees the same agents and resources.
    const replica = await startControlPlane({ env: { DATABASE_URL: url } });
    const seen = await api<{ items: { name: string; connected: boolean }[] }>(
      { url: replica.url, adminKey: cp.adminKey },
      "GET",
      "/api/v1/agents",
    );
    expect(seen.body.items).toEqual([expect.objectContaining({ name: "pg-edge", connected: true })]);
    const resources = await api<{ items: { name: string }[] }>(
      { url: replica.url, adminKey: cp.adminKey },
      "GET",
      "/api/v1/resources",
    );
    expect(resources.body.items.map((r) => r.name)).toEqual(["orders-db"]);
  });

  it("a policy change made on another replica reaches agents connected elsewhere within seconds", async () => {
    const url = await postgres.createDatabase(`cp_${randomId(8)}`);
    const first = await startControlPlane({ env: { DATABASE_URL: url } });
    const second = await startControlPlane({ env: { DATABASE_URL: url } });
    const { id, token } = await createAgent(first, "replicated");
    await startAgent({
      token,
      yaml: "resources:\n  - { name: shared-db, type: postgres, listen: '127.0.0.1:6432' }\n",
    });
    await waitFor(async () => (await getAgent(first, id)).bundleVersion !== "0", 15_000);
    const policy = {
      apiVersion: "moat.dev/v1",
      kind: "Policy",
      metadata: { name: "replicated" },
      spec: {
        subjects: { users: ["*"] },
        resources: { names: ["shared-db"] },
        rules: [{ name: "r", effect: "allow", actions: ["connect"] }],
      },
    };
    const started = Date.now();
    const put = await api<{ revision: string }>(
      { url: second.url, adminKey: first.adminKey },
      "PUT",
      "/api/v1/policies/replicated",
      policy,
    );
    expect(put.status).toBe(201);
    await waitFor(async () => (await getAgent(first, id)).policyRevision === put.body.revision, 10_000, 50);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("a revocation made on another replica cuts the stream by the next heartbeat", async () => {
    const url = await postgres.createDatabase(`cp_${randomId(8)}`);
    const env = { DATABASE_URL: url, MOAT_GRPC_HEARTBEAT_SECONDS: "1" };
    const first = await startControlPlane({ env });
    const second = await startControlPlane({ env });
    const { id, token } = await createAgent(first, "roaming");
    const agent = await startAgent({ token });
    await waitFor(async () => (await agent.health()).controlPlane === "connected", 15_000);
    const started = Date.now();
    expect((await api({ url: second.url, adminKey: first.adminKey }, "DELETE", `/api/v1/agents/${id}`)).status).toBe(
      204,
    );
    expect((await agent.exited).code).toBe(77);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
