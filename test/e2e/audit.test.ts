/**
 * Audit end to end on real processes: the agent spools its events durably and ships them; while
 * the control plane is down it keeps spooling and, on its return, drains everything in order; a
 * resent batch is stored once; the hash chain verifies, and an altered or deleted stored event is
 * named by `verify`.
 */
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { waitFor } from "@moat/testkit";
import { api, cleanup, createAgent, startAgent, startControlPlane } from "./support.js";

afterAll(cleanup);

interface Event {
  id: string;
  seq: string;
  type: string;
  agentId: string;
  message: string;
  detail: { kind: string } | null;
}

describe("audit trail", () => {
  it("ships, survives a control-plane outage in order, verifies, and names tampering", async () => {
    const cp = await startControlPlane();
    const { id, token } = await createAgent(cp, "edge-audit");
    const agent = await startAgent({ token });
    const events = async () =>
      (await api<{ items: Event[] }>(cp, "GET", `/api/v1/audit/events?agent=${id}&limit=1000`)).body.items;
    await waitFor(async () => (await events()).some((e) => e.type === "bundle.applied"), 15_000);
    expect((await events()).map((e) => e.type).sort()).toEqual(["agent.started", "bundle.applied"]);

    // Control plane down: the agent restarts twice (two agent.started events) and keeps them spooled.
    await cp.stop("SIGKILL");
    await agent.stop("SIGTERM");
    for (let i = 0; i < 2; i++) {
      const offline = await startAgent({ dataDir: agent.dataDir });
      await waitFor(async () => (await offline.health()).agentId !== undefined, 10_000);
      expect(
        Number(((await offline.health()) as unknown as { auditUnshipped: string }).auditUnshipped),
      ).toBeGreaterThanOrEqual(i + 1);
      await offline.stop("SIGTERM");
    }
    const again = await startControlPlane({
      dataDir: cp.dataDir,
      httpPort: Number(new URL(cp.url).port),
      grpcPort: Number(cp.grpcAddress.split(":")[1]),
    });
    const live = await startAgent({ dataDir: agent.dataDir });
    const session = { url: again.url, adminKey: cp.adminKey };
    const all = async () =>
      (await api<{ items: Event[] }>(session, "GET", `/api/v1/audit/events?agent=${id}&limit=1000`)).body.items;
    await waitFor(async () => (await all()).filter((e) => e.type === "agent.started").length === 4, 15_000);
    await waitFor(
      async () => ((await live.health()) as unknown as { auditUnshipped: string }).auditUnshipped === "0",
      10_000,
    );
    const stored = (await all()).map((e) => Number(e.seq)).sort((a, b) => a - b);
    expect(stored).toEqual(stored.map((_, i) => i + 1)); // in order, no gap, no duplicate

    const verified = await api<{ ok: boolean; checked: number }>(session, "GET", `/api/v1/audit/verify?agent=${id}`);
    expect(verified.body).toMatchObject({ ok: true, checked: stored.length });

    // Pagination and filters.
    const page = await api<{ items: Event[]; nextCursor?: string }>(
      session,
      "GET",
      `/api/v1/audit/events?agent=${id}&limit=2`,
    );
    expect(page.body.items).toHaveLength(2);
    const next = await api<{ items: Event[] }>(
      session,
      "GET",
      `/api/v1/audit/events?agent=${id}&limit=100&cursor=${page.body.nextCursor}`,
    );
    expect(next.body.items.map((e) => e.id)).not.toContain(page.body.items[0]?.id);
    expect(page.body.items.length + next.body.items.length).toBe(stored.length);
    const typed = await api<{ items: Event[] }>(session, "GET", `/api/v1/audit/events?type=bundle.applied&agent=${id}`);
    expect(typed.body.items.every((e) => e.type === "bundle.applied" && e.detail?.kind === "bundleApplied")).toBe(true);

    // Tampering with the store is found: alter one event's bytes, then delete another.
    await live.stop("SIGTERM");
    await again.stop("SIGTERM");
    const db = new Database(join(cp.dataDir, "moat.db"));
    db.prepare('UPDATE "AuditEvent" SET "text" = ? WHERE "agentId" = ? AND "seq" = 2').run("nothing to see", id);
    db.close();
    const third = await startControlPlane({ dataDir: cp.dataDir });
    const s3 = { url: third.url, adminKey: cp.adminKey };
    expect(
      (await api<{ ok: boolean; firstBreak: { seq: string } }>(s3, "GET", `/api/v1/audit/verify?agent=${id}`)).body,
    ).toMatchObject({ ok: false, firstBreak: { seq: "2" } });
    await third.stop("SIGTERM");
    const db2 = new Database(join(cp.dataDir, "moat.db"));
    db2.prepare('DELETE FROM "AuditEvent" WHERE "agentId" = ? AND "seq" = 2').run(id);
    db2.close();
    const fourth = await startControlPlane({ dataDir: cp.dataDir });
    const missing = await api<{ ok: boolean; firstBreak: { seq: string; problem: string } }>(
      { url: fourth.url, adminKey: cp.adminKey },
      "GET",
      `/api/v1/audit/verify?agent=${id}`,
    );
    expect(missing.body).toMatchObject({
      ok: false,
      firstBreak: { seq: "2", problem: expect.stringContaining("missing") },
    });
  });
});
