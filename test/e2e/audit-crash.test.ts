/**
 * Audit under crashes, with the Postgres enforcer as the event source (real processes throughout):
 *
 * - the control plane is killed with SIGKILL in the middle of a 10 000-statement burst and
 *   restarted: once the agent's spool has drained, every statement's event is stored exactly once;
 * - the agent is killed with SIGKILL in the middle of a burst and restarted on the same data dir:
 *   every statement acknowledged to the client before the kill (the guarantee for per-statement
 *   events: durable before the session's next response) is stored exactly once, in sequence.
 */
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import {
  api,
  cleanup,
  startAgent,
  startControlPlane,
  startPostgresStack,
  type AgentProc,
  type ControlPlaneProc,
  type PostgresStack,
} from "./support.js";

let pgServer: TestPostgres | undefined;
afterAll(async () => {
  await cleanup();
  await pgServer?.stop();
});

const POLICY = {
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name: "burst" },
  spec: {
    subjects: { groups: ["load"] },
    resources: { names: ["burst-db"] },
    rules: [{ name: "read", effect: "allow", actions: ["connect", "db:read"] }],
  },
};

async function setup(): Promise<PostgresStack> {
  pgServer ??= await startPostgres();
  return startPostgresStack({
    pgPort: pgServer.port,
    database: "postgres",
    resource: "burst-db",
    policy: POLICY,
    user: "loader@example.com",
    groups: ["load"],
  });
}

function client(listen: number, password: string): pg.Client {
  return new pg.Client({ host: "127.0.0.1", port: listen, user: "loader@example.com", password, database: "postgres" });
}

/** db.query events of the agent in the control plane's store: statement text -> how many times. */
function storedStatements(cp: ControlPlaneProc, agentId: string): { texts: Map<string, number>; seqs: number[] } {
  const db = new Database(join(cp.dataDir, "moat.db"), { readonly: true });
  try {
    const rows = db
      .prepare(`SELECT "text", "seq" FROM "AuditEvent" WHERE "agentId" = ? ORDER BY "seq"`)
      .all(agentId) as { text: string; seq: number | bigint }[];
    const texts = new Map<string, number>();
    for (const r of rows) texts.set(r.text, (texts.get(r.text) ?? 0) + 1);
    return { texts, seqs: rows.map((r) => Number(r.seq)) };
  } finally {
    db.close();
  }
}

async function drained(agent: AgentProc): Promise<void> {
  await waitFor(
    async () => ((await agent.health()) as unknown as { auditUnshipped?: string }).auditUnshipped === "0",
    60_000,
    200,
  );
}

describe("audit under crashes", () => {
  it("keeps every event of a 10 000-statement burst exactly once when the control plane is killed mid-burst", async () => {
    const s = await setup();
    const c = client(s.listen, await s.token());
    await c.connect();
    const total = 10_000;
    let killedAt = -1;
    let restarted: Promise<ControlPlaneProc> | undefined;
    for (let i = 1; i <= total; i++) {
      await c.query(`SELECT ${i} AS burst`);
      if (i === 3_000) {
        killedAt = i;
        await s.cp.stop("SIGKILL");
        // Back a moment later on the same store and ports, while the burst goes on.
        restarted = new Promise((resolve, reject) =>
          setTimeout(
            () =>
              startControlPlane({
                dataDir: s.cp.dataDir,
                httpPort: Number(new URL(s.cp.url).port),
                grpcPort: Number(s.cp.grpcAddress.split(":")[1]),
              }).then(resolve, reject),
            1_000,
          ),
        );
      }
    }
    await c.end();
    expect(killedAt).toBe(3_000);
    const cp = await (restarted as Promise<ControlPlaneProc>);
    await drained(s.agent);
    const { texts, seqs } = storedStatements(cp, s.agentId);
    for (let i = 1; i <= total; i++) expect(texts.get(`SELECT ${i} AS burst`), `statement ${i}`).toBe(1);
    expect(seqs).toEqual(seqs.map((_, k) => k + 1)); // the agent's sequence: no gap, no duplicate
    const verify = await api<{ ok: boolean }>(
      { url: cp.url, adminKey: s.cp.adminKey },
      "GET",
      `/api/v1/audit/verify?agent=${s.agentId}`,
    );
    expect(verify.body.ok).toBe(true);
  }, 240_000);

  it("keeps every event acknowledged to the client when the agent is killed mid-burst", async () => {
    const s = await setup();
    const c = client(s.listen, await s.token());
    c.on("error", () => undefined);
    await c.connect();
    const acknowledged: number[] = [];
    const burst = (async () => {
      for (let i = 1; ; i++) {
        await c.query(`SELECT ${i} AS acked`);
        acknowledged.push(i);
      }
    })().catch(() => undefined);
    await waitFor(async () => acknowledged.length >= 2_000, 60_000, 20);
    await s.agent.stop("SIGKILL");
    await burst;
    const last = acknowledged[acknowledged.length - 1] as number;
    const again = await startAgent({ dataDir: s.agent.dataDir, yaml: s.yaml });
    await drained(again);
    const { texts, seqs } = storedStatements(s.cp, s.agentId);
    // Durable before the session's next response: every statement answered and followed by another
    // answered one; the very last answered one is durable unless the kill fell between its answer
    // and the end of that event-loop turn (documented).
    for (let i = 1; i < last; i++) expect(texts.get(`SELECT ${i} AS acked`), `statement ${i}`).toBe(1);
    expect(texts.get(`SELECT ${last} AS acked`) ?? 1).toBe(1);
    for (const [text, n] of texts) if (text.endsWith("AS acked")) expect(n, text).toBe(1);
    expect(seqs).toEqual(seqs.map((_, k) => k + 1));
    await again.stop();
  }, 240_000);
});
