/**
 * The Postgres enforcer end to end, as a new user meets it: a control plane, an agent process with
 * a postgres resource in front of a real PostgreSQL server, a user and a policy made through the
 * REST API, an access token minted by the control plane, stock psql through the agent. Statements
 * are decided locally, audit events reach the control plane's store, and revoking the token cuts
 * the live session.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { freePort, startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { api, cleanup, createAgent, getAgent, startAgent, startControlPlane } from "./support.js";

const CLI = fileURLToPath(new URL("../../apps/cli/dist/main.js", import.meta.url));

let pgServer: TestPostgres | undefined;
afterAll(async () => {
  await cleanup();
  await pgServer?.stop();
});

const POLICY = {
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name: "prod-readonly" },
  spec: {
    subjects: { groups: ["engineers"] },
    resources: { names: ["prod-db"] },
    rules: [{ name: "read", effect: "allow", actions: ["connect", "db:read"] }],
    masking: [{ columns: ["email"], style: "partial" }],
  },
};

function psql(port: number, token: string, sql: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      "psql",
      [`host=127.0.0.1 port=${port} user=carol@example.com dbname=app sslmode=require`, "-X", "-A", "-t", "-c", sql],
      { env: { ...process.env, PGPASSWORD: token } },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("exit", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe("postgres through the agent", () => {
  it("enforces policy on psql with a control-plane token, audits to the control plane, cuts revoked sessions", async () => {
    pgServer = await startPostgres();
    await pgServer.createDatabase("app");
    await pgServer.sql(
      "CREATE TABLE customers (id int, email text); INSERT INTO customers VALUES (1, 'jane.doe@example.com');",
      "app",
    );
    const cp = await startControlPlane();
    const { id, token: enrolment } = await createAgent(cp, "edge-pg");
    const listen = await freePort();
    const agent = await startAgent({
      token: enrolment,
      yaml: [
        "resources:",
        "  - name: prod-db",
        "    type: postgres",
        `    listen: 127.0.0.1:${listen}`,
        "    labels: { env: prod }",
        "    postgres:",
        `      target: { host: 127.0.0.1, port: ${pgServer.port}, user: postgres, sslmode: disable }`,
        "shutdown: { drainSeconds: 30 }",
        "",
      ].join("\n"),
    });
    expect((await api(cp, "PUT", "/api/v1/policies/prod-readonly", POLICY)).status).toBe(201);
    const user = await api<{ id: string }>(cp, "POST", "/api/v1/users", {
      email: "carol@example.com",
      role: "member",
      groups: ["engineers"],
      password: "correct horse battery staple",
    });
    expect(user.status).toBe(201);
    await waitFor(async () => (await getAgent(cp, id)).bundleVersion !== "0", 15_000);

    const login = await fetch(`${cp.url}/api/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: "carol@example.com", password: "correct horse battery staple" }),
    });
    const session = (await login.json()) as { accessToken: string };
    const minted = (await (
      await fetch(`${cp.url}/api/v1/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${session.accessToken}` },
      })
    ).json()) as { accessToken: string; tokenId: string };
    const token = minted.accessToken;
    await waitFor(async () => (await psql(listen, token, "SELECT 1")).stdout.trim() === "1", 10_000);

    const read = await psql(listen, token, "SELECT id, email FROM customers");
    expect(read.stderr).toBe("");
    expect(read.stdout).toMatch(/^1\|j\*+@example\.com/);
    const write = await psql(listen, token, "DELETE FROM customers");
    expect(write.stderr).toMatch(/ERROR: {2}no policy allows db:write on prod-db \(table public\.customers\)/);
    // Texts over parseOffThreadBytes (16 KiB) are classified on the agent's worker thread: same verdicts.
    const ids = Array.from({ length: 4000 }, (_, i) => i + 1).join(",");
    const longRead = await psql(listen, token, `SELECT id, email FROM customers WHERE id IN (${ids})`);
    expect(longRead.stderr).toBe("");
    expect(longRead.stdout).toMatch(/^1\|j\*+@example\.com/);
    const longWrite = await psql(listen, token, `DELETE FROM customers WHERE id IN (${ids})`);
    expect(longWrite.stderr).toMatch(/ERROR: {2}no policy allows db:write on prod-db \(table public\.customers\)/);
    expect(await pgServer.sql("SELECT count(*) FROM customers", "app")).toMatch(/^1/);
    // The agent's metrics count the statements by verdict (psql's own queries are none here: -c).
    const metrics = await (await fetch(`http://127.0.0.1:${agent.adminPort}/metrics`)).text();
    const counted = (verdict: string) =>
      Number(
        new RegExp(`moat_agent_pg_statements_total\\{resource="prod-db",verdict="${verdict}"\\} (\\d+)`).exec(
          metrics,
        )?.[1],
      );
    expect(counted("allow")).toBeGreaterThanOrEqual(3);
    expect(counted("deny")).toBe(2);

    // Audit events reach the control plane, with the statement, verdict and masked columns.
    await waitFor(async () => {
      const events = await api<{ items: { type: string; verdict: string; detail?: unknown }[] }>(
        cp,
        "GET",
        "/api/v1/audit/events?resource=prod-db&type=db.query&limit=50",
      );
      return events.body.items.length >= 3;
    }, 10_000);
    const all = await api<{ items: Record<string, unknown>[] }>(
      cp,
      "GET",
      "/api/v1/audit/events?resource=prod-db&limit=100",
    );
    const text = JSON.stringify(all.body.items);
    expect(text).toContain("DELETE FROM customers");
    expect(text).toContain("session.start");
    expect(text).not.toContain(token);
    expect(text).not.toContain("jane.doe@example.com");

    // Revoking the token ends a live session within a second.
    const child = spawn(
      "psql",
      [
        `host=127.0.0.1 port=${listen} user=carol@example.com dbname=app sslmode=require`,
        "-X",
        "-c",
        "SELECT pg_sleep(30)",
      ],
      { env: { ...process.env, PGPASSWORD: token } },
    );
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number>((r) => child.on("exit", (code) => r(code ?? -1)));
    await new Promise((r) => setTimeout(r, 700));
    const started = Date.now();
    expect((await api(cp, "DELETE", `/api/v1/tokens/${minted.tokenId}`)).status).toBe(204);
    expect(await exited).not.toBe(0);
    const cutAfter = Date.now() - started;
    console.log(`revocation cut the live session in ${cutAfter} ms`);
    expect(cutAfter).toBeLessThan(2_000);
    expect(stderr).toMatch(/revoked/);
    expect((await psql(listen, token, "SELECT 1")).stderr).toMatch(/revoked/);

    // `moat connect`: the CLI mints a fresh token with carol's API key and runs the real psql.
    const key = await api<{ apiKey: string }>(cp, "POST", `/api/v1/users/${user.body.id}/api-keys`, { name: "laptop" });
    expect(key.status).toBe(201);
    const moat = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, ...args], {
          env: { ...process.env, MOAT_SERVER: cp.url, MOAT_API_KEY: key.body.apiKey, PGPASSWORD: "" },
        });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
        child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
        child.on("exit", (code) => resolve({ code: code ?? -1, stdout, stderr }));
      });
    const connected = await moat(
      "connect",
      "prod-db",
      "--db",
      "app",
      "--",
      "-X",
      "-A",
      "-t",
      "-c",
      "SELECT email FROM customers",
    );
    expect(connected.stderr).toBe("");
    expect(connected.code).toBe(0);
    expect(connected.stdout.trim()).toMatch(/^j\*+@example\.com$/);
    const failed = await moat(
      "connect",
      "prod-db",
      "--db",
      "app",
      "--",
      "-X",
      "-v",
      "ON_ERROR_STOP=1",
      "-c",
      "DELETE FROM customers",
    );
    expect(failed.stderr).toMatch(/no policy allows db:write/);
    expect(failed.code).toBe(1); // psql's own exit status
    const printed = await moat("connect", "prod-db", "--db", "app", "--print");
    expect(printed.stdout).toContain(`postgresql://carol%40example.com@127.0.0.1:${listen}/app?sslmode=require`);
    expect(printed.stdout).not.toMatch(/eyJ/); // no token

    // Stopping with shutdown.drainSeconds: the running statement completes and is answered, new
    // connections are refused, and the agent exits as soon as its sessions are done (not after 30 s).
    const fresh = (await (
      await fetch(`${cp.url}/api/v1/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${session.accessToken}` },
      })
    ).json()) as { accessToken: string };
    const running = psql(listen, fresh.accessToken, "SELECT pg_sleep(1.5)::text || 'finished'");
    await new Promise((r) => setTimeout(r, 500));
    const stopping = Date.now();
    const stopped = agent.stop("SIGTERM");
    await new Promise((r) => setTimeout(r, 200));
    expect(((await agent.health()) as unknown as { status: string }).status).toBe("draining");
    expect((await psql(listen, fresh.accessToken, "SELECT 1")).stderr).toMatch(/refused|shutting down/i);
    const last = await running;
    expect(last.stdout.trim()).toBe("finished");
    expect(last.code).toBe(0);
    expect((await stopped).code).toBe(0);
    expect(Date.now() - stopping).toBeLessThan(10_000);
  });
});
