/**
 * 200 concurrent sessions through one agent for a minute (issue 4's acceptance), real processes
 * throughout: PostgreSQL 15, the built control plane and agent, two pgbench processes and
 * node-postgres clients, each kind on another path through the agent:
 *
 * - 100 pgbench clients, select-only, simple protocol, plaintext from loopback;
 * - 50 pgbench clients, select-only, prepared statements (extended protocol), TLS to the agent;
 * - 50 node-postgres clients reading a masked column (checked masked on every row) and, every tenth
 *   statement, trying a DELETE that must be refused with 42501 while the session goes on.
 *
 * No errors anywhere: every pgbench transaction succeeds, every client statement gets the answer it
 * should, the agent and the control plane log no error, all 200 sessions are open at once, and once
 * the agent's spool has drained, the control plane holds one event per pgbench statement run.
 * Rate-limited (pgbench -R) so that a 2-core CI box runs it without overload being the point; the
 * agent's throughput is measured by bench/pg-proxy.mjs, not here.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { cleanup, startPostgresStack, type AgentProc } from "./support.js";

const SECONDS = 60;
const PGBENCH_SIMPLE = 100;
const PGBENCH_PREPARED = 50;
const NODE_CLIENTS = 50;
const SESSIONS = PGBENCH_SIMPLE + PGBENCH_PREPARED + NODE_CLIENTS;

let pgServer: TestPostgres | undefined;
afterAll(async () => {
  await cleanup();
  await pgServer?.stop();
});

const POLICY = {
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name: "load-read" },
  spec: {
    subjects: { groups: ["load"] },
    resources: { names: ["load-db"] },
    rules: [{ name: "read", effect: "allow", actions: ["connect", "db:read"] }],
    masking: [{ columns: ["email"], style: "full" }],
  },
};

function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-20_000)));
    child.on("exit", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** pgbench's count of completed transactions, from its summary. */
function processed(output: string): number {
  const m = /number of transactions actually processed: (\d+)/.exec(output);
  return m ? Number(m[1]) : -1;
}

/** The highest value the agent's open-sessions gauge reached while `until` was pending. */
async function peakSessions(agent: AgentProc, until: Promise<unknown>): Promise<number> {
  let done = false;
  void until.finally(() => (done = true));
  let peak = 0;
  while (!done) {
    const text = await (await fetch(`http://127.0.0.1:${agent.adminPort}/metrics`)).text();
    const m = /^moat_agent_pg_sessions\{resource="load-db"\} (\d+)/m.exec(text);
    if (m) peak = Math.max(peak, Number(m[1]));
    await new Promise((r) => setTimeout(r, 500));
  }
  return peak;
}

/** Pino lines at level error (50) or fatal (60). */
const errorLines = (output: string) => output.split("\n").filter((l) => /"level":(50|60)\b/.test(l));

describe("postgres under load", () => {
  it(`serves ${SESSIONS} concurrent sessions for a minute with no errors, and audits every statement`, async () => {
    pgServer = await startPostgres({ settings: { max_connections: String(SESSIONS + 40) } });
    await pgServer.createDatabase("app");
    const init = await run("pgbench", [
      "-i",
      "-s",
      "1",
      "-q",
      `host=127.0.0.1 port=${pgServer.port} user=postgres dbname=app`,
    ]);
    expect(init.code, init.stderr).toBe(0);
    await pgServer.sql(
      "CREATE TABLE customers (id int PRIMARY KEY, email text); INSERT INTO customers SELECT i, 'customer' || i || '@example.com' FROM generate_series(1, 100) i",
      "app",
    );

    const { cp, agent, agentId, listen, ...stack } = await startPostgresStack({
      pgPort: pgServer.port,
      database: "app",
      resource: "load-db",
      policy: POLICY,
      user: "loader@example.com",
      groups: ["load"],
      // Per-statement debug lines would be most of the work at this rate.
      env: { MOAT_AGENT_LOG_LEVEL: "info" },
    });
    const token = await stack.token();
    const conninfo = (sslmode: string) =>
      `host=127.0.0.1 port=${listen} user=loader@example.com dbname=app sslmode=${sslmode}`;

    // The node-postgres clients connect first, so that all 200 sessions overlap for the whole run.
    const clients = await Promise.all(
      Array.from({ length: NODE_CLIENTS }, async () => {
        const c = new pg.Client({
          host: "127.0.0.1",
          port: listen,
          user: "loader@example.com",
          password: token,
          database: "app",
        });
        await c.connect();
        return c;
      }),
    );
    const problems: string[] = [];
    let reads = 0;
    let refusals = 0;
    const end = Date.now() + SECONDS * 1000;
    const clientLoops = clients.map(async (c, k) => {
      for (let i = k; Date.now() < end; i++) {
        const id = 1 + (i % 100);
        try {
          const r = await c.query<{ id: number; email: string }>("SELECT id, email FROM customers WHERE id = $1", [id]);
          const row = r.rows[0];
          if (r.rows.length !== 1 || row?.id !== id || row.email.includes("@example.com"))
            problems.push(`client ${k}: unexpected rows ${JSON.stringify(r.rows)}`);
          else reads++;
        } catch (error) {
          problems.push(`client ${k}: ${(error as Error).message}`);
        }
        if (i % 10 === 0) {
          try {
            await c.query("DELETE FROM customers WHERE id = $1", [id]);
            problems.push(`client ${k}: a DELETE ran`);
          } catch (error) {
            if ((error as { code?: string }).code === "42501") refusals++;
            else problems.push(`client ${k}: DELETE failed with ${(error as Error).message}`);
          }
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    });
    const bench = (clientsN: number, mode: string, sslmode: string, rate: number) =>
      run(
        "pgbench",
        [
          "-n",
          "-S",
          "-M",
          mode,
          "-c",
          String(clientsN),
          "-j",
          "2",
          "-T",
          String(SECONDS),
          "-R",
          String(rate),
          conninfo(sslmode),
        ],
        { PGPASSWORD: token },
      );
    const load = Promise.all([
      bench(PGBENCH_SIMPLE, "simple", "disable", 800),
      bench(PGBENCH_PREPARED, "prepared", "require", 400),
      Promise.all(clientLoops),
    ]);
    const peak = await peakSessions(agent, load);
    const [simple, prepared] = await load;
    await Promise.all(clients.map((c) => c.end()));

    for (const [name, r] of [
      ["simple", simple],
      ["prepared", prepared],
    ] as const) {
      const out = r.stdout + r.stderr;
      expect(r.code, `pgbench ${name}: ${out}`).toBe(0);
      expect(out, `pgbench ${name}`).toMatch(/number of failed transactions: 0 /);
      expect(out, `pgbench ${name}`).not.toMatch(/abort|error/i);
      expect(processed(out), `pgbench ${name}`).toBeGreaterThan(0);
    }
    expect(problems.slice(0, 10)).toEqual([]);
    expect(reads).toBeGreaterThan(NODE_CLIENTS * 100);
    expect(refusals).toBeGreaterThan(NODE_CLIENTS * 10);
    expect(peak).toBe(SESSIONS);

    // Every pgbench statement that ran is in the control plane's store, once (a transaction cut by
    // pgbench's own stop at -T is recorded too, so a few more than pgbench counted).
    await waitFor(
      async () => ((await agent.health()) as unknown as { auditUnshipped?: string }).auditUnshipped === "0",
      120_000,
      500,
    );
    const ran = processed(simple.stdout) + processed(prepared.stdout);
    const db = new Database(join(cp.dataDir, "moat.db"), { readonly: true });
    try {
      const count = (like: string) =>
        (
          db
            .prepare(
              `SELECT count(*) AS n FROM "AuditEvent" WHERE "agentId" = ? AND "type" = 'db.query' AND "text" LIKE ?`,
            )
            .get(agentId, like) as { n: number }
        ).n;
      const audited = count("SELECT abalance FROM pgbench_accounts WHERE aid = %");
      expect(audited).toBeGreaterThanOrEqual(ran);
      expect(audited).toBeLessThanOrEqual(ran + PGBENCH_SIMPLE + PGBENCH_PREPARED);
      expect(count("DELETE FROM customers%")).toBe(refusals);
    } finally {
      db.close();
    }
    const status = readFileSync(`/proc/${agent.child.pid}/status`, "utf8");
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
    console.info(
      `load: ${SESSIONS} sessions (peak ${peak}); pgbench transactions simple ${processed(simple.stdout)}, prepared ${processed(prepared.stdout)}; ` +
        `client reads ${reads}, refusals ${refusals}; agent RSS ${Math.round(kib("VmRSS") / 1024)} MiB, peak ${Math.round(kib("VmHWM") / 1024)} MiB`,
    );
    expect(errorLines(agent.output())).toEqual([]);
    expect(errorLines(cp.output())).toEqual([]);
    await agent.stop();
  }, 300_000);
});
