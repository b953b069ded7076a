/**
 * Delivery over a real PostgreSQL store, where the hard cases live: a transaction that commits
 * after a later one (its events have the smaller keys, and appear late), and replicas racing for
 * a sink's lease.
 */
import pg from "pg";
import { Registry } from "prom-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createLogger, randomId } from "@moat/common";
import { startPostgres, waitFor, type TestPostgres } from "@moat/testkit";
import { createAuditService, toRow } from "../services/audit.js";
import { openStore, type Store } from "../store/index.js";
import { shippedEvents, startWebhookReceiver, type WebhookReceiver } from "../test-support/audit-sinks.js";
import { createSinkMetrics } from "./metrics.js";
import { createWebhookSink } from "./webhook.js";
import { createSinkWorker, type SinkWorker } from "./worker.js";

const SECRET = "pg-hook-secret";
const silent = createLogger({ name: "test", level: "silent" });

let server: TestPostgres;
let url: string;
let store: Store;
let receiver: WebhookReceiver;
const running: SinkWorker[] = [];

function startWorker(s: Store, leaseMs = 2000): SinkWorker {
  const settings = { batchSize: 10, minBackoffMs: 20, maxBackoffMs: 100, startFrom: "earliest" as const };
  const worker = createSinkWorker({
    sink: createWebhookSink({
      name: "siem",
      url: receiver.url,
      secret: SECRET,
      timeoutMs: 2000,
      maxBodyBytes: 1024 * 1024,
      ...settings,
    }),
    repo: s.auditSinks,
    holder: `test/${randomId(6)}`,
    ...settings,
    pollMs: 30,
    leaseMs,
    gapGraceMs: 60_000,
    logger: silent,
    metrics: createSinkMetrics(new Registry()),
  });
  running.push(worker);
  worker.start();
  return worker;
}

const seqsOf = (agentId: string) =>
  receiver
    .accepted()
    .filter((e) => e.agentId === agentId)
    .map((e) => Number(e.seq));

beforeAll(async () => {
  server = await startPostgres();
  url = await server.createDatabase("sinks");
  store = await openStore(url);
  for (const id of ["agent-p", "agent-q", "agent-r"])
    await store.agents.create({ id, name: id, description: "", enrolmentHash: "x", enrolmentExpiresAt: new Date() });
}, 120_000);
afterEach(async () => {
  await Promise.all(running.splice(0).map((w) => w.stop()));
  await receiver?.close();
});
afterAll(async () => {
  await store?.close();
  await server?.stop();
});

describe("audit sink on PostgreSQL", () => {
  it("does not pass over events whose transaction commits after a later one", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const audit = createAuditService({ store });

    const slow = new pg.Client({ connectionString: url });
    await slow.connect();
    // T1 stores agent-p's events from..from+1 and stays open (a slow replica, or one about to lose its stream).
    const beginSlow = async (from: number) => {
      await slow.query("BEGIN");
      for (const bytes of shippedEvents("P", from, from + 1)) {
        const r = toRow(bytes);
        await slow.query(
          `INSERT INTO "AuditEvent" ("id", "agentId", "seq", "time", "type", "user", "resource", "sessionId", "verdict",
             "rule", "text", "bundleVersion", "prevHash", "hash", "payload", "receivedAt")
           VALUES ($1, 'agent-p', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now())`,
          [
            r.id,
            r.seq.toString(),
            r.time,
            r.type,
            r.user,
            r.resource,
            r.sessionId,
            r.verdict,
            r.rule,
            r.text,
            r.bundleVersion.toString(),
            r.prevHash,
            r.hash,
            Buffer.from(r.payload),
          ],
        );
      }
    };
    // Ingestion moves Agent.auditSeq last (its row lock would otherwise order the two transactions).
    const commitSlow = async (high: number) => {
      await slow.query(`UPDATE "Agent" SET "auditSeq" = $1 WHERE "id" = 'agent-p' AND "auditSeq" < $1`, [high]);
      await slow.query("COMMIT");
    };
    try {
      // On the sink's first start (no cursor yet) ...
      await beginSlow(1);
      // ... T2 (another replica) stores 3..4 and commits first; agent-q's events go on meanwhile.
      await audit.ingest("agent-p", shippedEvents("P", 3, 4));
      await audit.ingest("agent-q", shippedEvents("Q", 1, 3));
      startWorker(store);
      await waitFor(() => seqsOf("agent-q").length === 3, 10_000);
      await new Promise((r) => setTimeout(r, 300));
      expect(seqsOf("agent-p")).toEqual([]);
      await commitSlow(2);
      await waitFor(() => seqsOf("agent-p").length === 4, 10_000);
      expect(seqsOf("agent-p")).toEqual([1, 2, 3, 4]);

      // The late events do carry the smaller keys: a (receivedAt, id) cursor would have skipped them.
      const { rows } = await slow.query<{ seq: string; late: boolean }>(
        `SELECT "seq", "receivedAt" < (SELECT MIN("receivedAt") FROM "AuditEvent" WHERE "agentId" = 'agent-p' AND "seq" >= 3) AS late
         FROM "AuditEvent" WHERE "agentId" = 'agent-p' AND "seq" <= 2 ORDER BY "seq"`,
      );
      expect(rows.map((r) => r.late)).toEqual([true, true]);

      // And with a cursor in place (steady state): 5..6 commit after 7..8.
      await beginSlow(5);
      await audit.ingest("agent-p", shippedEvents("P", 7, 8));
      await audit.ingest("agent-q", shippedEvents("Q", 4, 4));
      await waitFor(() => seqsOf("agent-q").length === 4, 10_000);
      await new Promise((r) => setTimeout(r, 300));
      expect(seqsOf("agent-p")).toEqual([1, 2, 3, 4]);
      await commitSlow(6);
      await waitFor(() => seqsOf("agent-p").length === 8, 10_000);
      expect(seqsOf("agent-p")).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(seqsOf("agent-q")).toEqual([1, 2, 3, 4]);
    } finally {
      await slow.end();
    }
  });

  it("lets exactly one replica deliver a sink, and another take over when it stops", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const audit = createAuditService({ store });
    await audit.ingest("agent-r", shippedEvents("R", 1, 5));
    const replicas = await Promise.all([openStore(url), openStore(url), openStore(url)]);
    try {
      const workers = replicas.map((s) => startWorker(s, 800));
      await waitFor(() => seqsOf("agent-r").length === 5, 10_000);
      await new Promise((r) => setTimeout(r, 500));
      expect(workers.filter((w) => w.isLeading())).toHaveLength(1);
      const leader = workers.find((w) => w.isLeading()) as SinkWorker;
      await leader.stop();
      await audit.ingest("agent-r", shippedEvents("R", 6, 9));
      await waitFor(() => seqsOf("agent-r").length === 9, 10_000);
      expect(workers.filter((w) => w.isLeading())).toHaveLength(1);
      expect(seqsOf("agent-r")).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    } finally {
      await Promise.all(running.splice(0).map((w) => w.stop()));
      await Promise.all(replicas.map((s) => s.close()));
    }
  });
});
