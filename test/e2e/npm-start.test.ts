/**
 * `npm start`'s launcher (scripts/start.mjs) on a fresh data dir: control plane + local agent,
 * banner with the one-time admin key, agent connected; a second start reuses both; Ctrl-C stops it.
 */
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { freePort, tempDir, waitFor } from "@moat/testkit";
import { api, cleanup, repoRoot, spawnNode } from "./support.js";

afterAll(cleanup);

async function launch(home: string, ports: { http: number; grpc: number; admin: number }) {
  const proc = spawnNode(join(repoRoot, "scripts/start.mjs"), [], {
    MOAT_HOME: home,
    MOAT_HTTP_PORT: String(ports.http),
    MOAT_GRPC_PORT: String(ports.grpc),
    MOAT_AGENT_ADMIN_PORT: String(ports.admin),
  });
  await waitFor(() => proc.output().includes("Ctrl-C stops Moat.") || proc.child.exitCode !== null, 30_000);
  return proc;
}

describe("npm start", () => {
  it("starts the control plane and a connected local agent, and stops on SIGINT", async () => {
    const home = tempDir("moat-home-");
    const ports = { http: await freePort(), grpc: await freePort(), admin: await freePort() };
    const first = await launch(home, ports);
    const out = first.output();
    expect(out).toContain("Moat is running");
    expect(out).toContain(`REST API        http://127.0.0.1:${ports.http}`);
    expect(out).toMatch(/local agent\s+connected/);
    const key = /API key\s+(moat_ak_\S+)/.exec(out)?.[1];
    expect(key).toBeDefined();

    const cp = { url: `http://127.0.0.1:${ports.http}`, adminKey: key as string };
    const agents = await api<{ items: { name: string; connected: boolean }[] }>(cp, "GET", "/api/v1/agents");
    expect(agents.body.items).toEqual([expect.objectContaining({ name: "local", connected: true })]);

    first.child.kill("SIGINT");
    expect((await first.exited).code).toBe(0);

    // Second start: same data, no new admin, the agent reuses its identity.
    const second = await launch(home, ports);
    expect(second.output()).toMatch(/local agent\s+connected/);
    expect(second.output()).not.toMatch(/moat_ak_/);
    const again = await api<{ items: { name: string }[] }>(cp, "GET", "/api/v1/agents");
    expect(again.body.items.map((a) => a.name)).toEqual(["local"]);
    second.child.kill("SIGINT");
    expect((await second.exited).code).toBe(0);
  });
});
