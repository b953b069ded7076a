/**
 * The webhook sink end to end over a real SQLite store and a real HTTP receiver on 127.0.0.1:
 * signing, retries, ordering, holes in an agent's sequence, leases, and a control-plane restart.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Registry } from "prom-client";
import * as grpc from "@grpc/grpc-js";
import {
  agentServiceDefinition,
  ConnectRequestSchema,
  create,
  EnrolRequestSchema,
  type EnrolResponse,
} from "@moat/proto";
import { createLogger, randomId } from "@moat/common";
import { tempDir, waitFor } from "@moat/testkit";
import { loadControlPlaneConfig } from "../config.js";
import { startControlPlane } from "../server.js";
import { createAuditService } from "../services/audit.js";
import { openStore, type Store } from "../store/index.js";
import { shippedEvents, startWebhookReceiver, type WebhookReceiver } from "../test-support/audit-sinks.js";
import { createSinkMetrics, type SinkMetrics } from "./metrics.js";
import { createWebhookSink } from "./webhook.js";
import { createSinkWorker, type SinkWorker, type SinkWorkerOptions } from "./worker.js";

const SECRET = "hook-secret-0123456789";
const silent = createLogger({ name: "test", level: "silent" });

let dir: string;
let store: Store;
let receiver: WebhookReceiver;
const running: SinkWorker[] = [];

async function newAgent(s: Store, id: string) {
  await s.agents.create({ id, name: id, description: "", enrolmentHash: "x", enrolmentExpiresAt: new Date() });
}

function startWorker(
  s: Store,
  overrides: Partial<SinkWorkerOptions> = {},
  hook: { batchSize?: number; maxBodyBytes?: number } = {},
): { worker: SinkWorker; metrics: SinkMetrics } {
  const metrics = createSinkMetrics(new Registry());
  const sink = createWebhookSink({
    name: "siem",
    url: receiver.url,
    secret: SECRET,
    batchSize: hook.batchSize ?? 4,
    timeoutMs: 2000,
    minBackoffMs: 20,
    maxBackoffMs: 100,
    startFrom: "earliest",
    maxBodyBytes: hook.maxBodyBytes ?? 1024 * 1024,
  });
  const worker = createSinkWorker({
    sink,
    repo: s.auditSinks,
    holder: `test/${randomId(6)}`,
    batchSize: hook.batchSize ?? 4,
    minBackoffMs: 20,
    maxBackoffMs: 100,
    startFrom: "earliest",
    pollMs: 30,
    leaseMs: 2000,
    gapGraceMs: 60_000,
    logger: silent,
    metrics,
    ...overrides,
  });
  running.push(worker);
  worker.start();
  return { worker, metrics };
}

const seqsOf = (events: { agentId: string; seq: string }[], agentId: string) =>
  events.filter((e) => e.agentId === agentId).map((e) => Number(e.seq));
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const counterValue = async (metric: SinkMetrics["failures"] | SinkMetrics["delivered"], labels: object) =>
  (await metric.get()).values.find((v) =>
    Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x),
  )?.value ?? 0;

beforeAll(async () => {
  dir = tempDir("moat-sinks-");
  store = await openStore(`file:${join(dir, "moat.db")}`);
});
afterAll(async () => {
  await store?.close();
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((w) => w.stop()));
  await receiver?.close();
});

describe("webhook sink", () => {
  it("retries failed deliveries with backoff, then delivers every event once, signed and in order", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const audit = createAuditService({ store });
    await newAgent(store, "agent-a");
    await newAgent(store, "agent-b");
    // Interleaved batches of two agents.
    await audit.ingest("agent-a", shippedEvents("A", 1, 5));
    await audit.ingest("agent-b", shippedEvents("B", 1, 3));
    await audit.ingest("agent-a", shippedEvents("A", 6, 9));
    receiver.failNext(3, 503);
    const { metrics } = startWorker(store);
    await waitFor(() => receiver.accepted().length === 12, 10_000);
    await audit.ingest("agent-b", shippedEvents("B", 4, 6));
    await waitFor(() => receiver.accepted().length === 15, 10_000);
    // The receiver has the events before the worker has read its answer, counted the delivery and
    // looked for more (the lag).
    await waitFor(
      async () =>
        (await counterValue(metrics.delivered, { sink: "webhook.siem" })) === 15 &&
        (await metrics.lagEvents.get()).values[0]?.value === 0,
      10_000,
    );

    const events = receiver.accepted();
    expect(seqsOf(events, "agent-a")).toEqual(range(1, 9));
    expect(seqsOf(events, "agent-b")).toEqual(range(1, 6));
    expect(new Set(events.map((e) => e.id)).size).toBe(15);
    expect(events[0]).toMatchObject({
      type: "db.query",
      message: "event A1",
      detail: { kind: "dbQuery", text: "select 1" },
    });

    const [first, second, third, fourth] = receiver.deliveries;
    expect([first, second, third, fourth].map((d) => d?.status)).toEqual([503, 503, 503, 200]);
    // A retried batch is the same delivery (same id, same events); every request carried a valid signature.
    expect(new Set([first, second, third, fourth].map((d) => d?.deliveryId)).size).toBe(1);
    expect(receiver.deliveries.every((d) => d.signatureOk && d.count === d.events.length && d.count <= 4)).toBe(true);
    expect(fourth?.headers["user-agent"]).toMatch(/^moat-control-plane\//);
    expect(await counterValue(metrics.failures, { sink: "webhook.siem", reason: "http_5xx" })).toBe(3);
    expect(await counterValue(metrics.delivered, { sink: "webhook.siem" })).toBe(15);
    expect((await metrics.lagEvents.get()).values[0]?.value).toBe(0);
    expect((await metrics.leader.get()).values[0]?.value).toBe(1);
  });

  it("never logs the signing key, the URL's query or header values, even when the receiver echoes them", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const lines: string[] = [];
    const logger = createLogger({ name: "test", level: "debug", destination: { write: (l: string) => lines.push(l) } });
    const local = await openStore(`file:${join(tempDir("moat-sinks-"), "moat.db")}`);
    try {
      await newAgent(local, "agent-s");
      await createAuditService({ store: local }).ingest("agent-s", shippedEvents("S", 1, 2));
      receiver.failNext(2, 401);
      const metrics = createSinkMetrics(new Registry());
      const worker = createSinkWorker({
        sink: createWebhookSink({
          name: "siem",
          url: receiver.url,
          secret: SECRET,
          headers: { Authorization: "Bearer collector-token-123" },
          batchSize: 10,
          timeoutMs: 2000,
          minBackoffMs: 20,
          maxBackoffMs: 50,
          startFrom: "earliest",
          maxBodyBytes: 1 << 20,
        }),
        repo: local.auditSinks,
        holder: "test/logs",
        batchSize: 10,
        minBackoffMs: 20,
        maxBackoffMs: 50,
        startFrom: "earliest",
        pollMs: 30,
        leaseMs: 2000,
        gapGraceMs: 60_000,
        logger,
        metrics,
      });
      running.push(worker);
      worker.start();
      await waitFor(() => seqsOf(receiver.accepted(), "agent-s").length === 2, 10_000);
      await worker.stop();
      const log = lines.join("");
      expect(log).toContain("delivery failed; retrying");
      expect(log).toContain("the receiver answered 401");
      expect(log).toContain("[redacted]");
      for (const secret of [SECRET, "collector-token-123", "query-secret"]) expect(log).not.toContain(secret);
      // The receiver did get them (the echo is real).
      expect(receiver.deliveries[0]?.headers.authorization).toBe("Bearer collector-token-123");
    } finally {
      await local.close();
    }
  });

  it("keeps retrying a receiver that answers 4xx (audit is not dropped), and sends fewer events on 413", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const audit = createAuditService({ store });
    await newAgent(store, "agent-c");
    await audit.ingest("agent-c", shippedEvents("C", 1, 4));
    receiver.failNext(2, 400);
    const { worker, metrics } = startWorker(store, {}, { batchSize: 4 });
    await waitFor(() => seqsOf(receiver.accepted(), "agent-c").length === 4, 10_000);
    expect(await counterValue(metrics.failures, { sink: "webhook.siem", reason: "http_4xx" })).toBe(2);
    await worker.stop();

    await audit.ingest("agent-c", shippedEvents("C", 5, 8));
    receiver.failNext(1, 413);
    const before = receiver.deliveries.length;
    startWorker(store, {}, { batchSize: 4 });
    await waitFor(() => seqsOf(receiver.accepted(), "agent-c").length === 8, 10_000);
    const after = receiver.deliveries.slice(before);
    expect(after.map((d) => [d.status, d.count])).toEqual([
      [413, 4],
      [200, 2],
      [200, 2],
    ]);
    expect(seqsOf(receiver.accepted(), "agent-c")).toEqual(range(1, 8));
  });

  it("holds back an agent whose next event is missing until it arrives, without holding back the others", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const local = await openStore(`file:${join(tempDir("moat-sinks-"), "moat.db")}`);
    try {
      const audit = createAuditService({ store: local });
      await newAgent(local, "agent-d");
      await newAgent(local, "agent-e");
      await audit.ingest("agent-d", shippedEvents("D", 1, 2));
      // 3 and 4 are stored after 5..7 (e.g. two replicas' transactions committing out of order).
      await audit.ingest("agent-d", shippedEvents("D", 5, 7));
      await audit.ingest("agent-e", shippedEvents("E", 1, 3));
      startWorker(local);
      await waitFor(() => receiver.accepted().length === 5, 10_000);
      await new Promise((r) => setTimeout(r, 300));
      expect(seqsOf(receiver.accepted(), "agent-d")).toEqual([1, 2]);
      expect(seqsOf(receiver.accepted(), "agent-e")).toEqual([1, 2, 3]);

      await audit.ingest("agent-e", shippedEvents("E", 4, 4));
      await waitFor(() => seqsOf(receiver.accepted(), "agent-e").length === 4, 10_000);
      await audit.ingest("agent-d", shippedEvents("D", 3, 4));
      await waitFor(() => seqsOf(receiver.accepted(), "agent-d").length === 7, 10_000);
      expect(seqsOf(receiver.accepted(), "agent-d")).toEqual(range(1, 7));
    } finally {
      await Promise.all(running.splice(0).map((w) => w.stop()));
      await local.close();
    }
  });

  it("moves past a hole that outlives the grace period, and counts what it skipped", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const local = await openStore(`file:${join(tempDir("moat-sinks-"), "moat.db")}`);
    try {
      const audit = createAuditService({ store: local });
      await newAgent(local, "agent-f");
      await audit.ingest("agent-f", shippedEvents("F", 1, 2));
      await audit.ingest("agent-f", shippedEvents("F", 6, 7)); // 3..5 were dropped by the agent
      const { metrics } = startWorker(local, { gapGraceMs: 400 });
      await waitFor(() => seqsOf(receiver.accepted(), "agent-f").length === 4, 10_000);
      expect(seqsOf(receiver.accepted(), "agent-f")).toEqual([1, 2, 6, 7]);
      expect((await metrics.skipped.get()).values[0]?.value).toBe(3);
    } finally {
      await Promise.all(running.splice(0).map((w) => w.stop()));
      await local.close();
    }
  });

  it("is delivered by one replica at a time; another takes over when it stops", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const file = `file:${join(tempDir("moat-sinks-"), "moat.db")}`;
    const one = await openStore(file);
    const two = await openStore(file);
    try {
      const audit = createAuditService({ store: one });
      await newAgent(one, "agent-g");
      await audit.ingest("agent-g", shippedEvents("G", 1, 6));
      const a = startWorker(one, { leaseMs: 600 });
      await waitFor(() => a.worker.isLeading(), 5000);
      const b = startWorker(two, { leaseMs: 600 });
      await waitFor(() => seqsOf(receiver.accepted(), "agent-g").length === 6, 10_000);
      expect(b.worker.isLeading()).toBe(false);
      await a.worker.stop();
      await audit.ingest("agent-g", shippedEvents("G", 7, 9));
      await waitFor(() => seqsOf(receiver.accepted(), "agent-g").length === 9, 10_000);
      expect(b.worker.isLeading()).toBe(true);
      expect(seqsOf(receiver.accepted(), "agent-g")).toEqual(range(1, 9));
    } finally {
      await Promise.all(running.splice(0).map((w) => w.stop()));
      await one.close();
      await two.close();
    }
  });
});

describe("webhook sink in the control plane", () => {
  it("starts from the config, and its cursor survives a restart (nothing re-sent, nothing lost)", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const dataDir = tempDir("moat-cp-sinks-");
    const keyFile = join(dataDir, "..", `${randomId(6)}.key`);
    writeFileSync(keyFile, `${SECRET}\n`);
    const config = () =>
      loadControlPlaneConfig({
        env: {},
        overrides: {
          dataDir,
          logLevel: "silent",
          http: { port: 0 },
          grpc: { port: 0, plaintext: true },
          audit: {
            sinks: {
              pollMs: 50,
              webhooks: [{ name: "siem", url: receiver.url, secretFile: keyFile, minBackoffMs: 20, maxBackoffMs: 100 }],
            },
          },
        },
      });
    let cp = await startControlPlane(config());
    try {
      await newAgent(cp.store, "agent-h");
      await createAuditService({ store: cp.store }).ingest("agent-h", shippedEvents("H", 1, 10));
      await waitFor(() => seqsOf(receiver.accepted(), "agent-h").length === 10, 10_000);
      const metrics = await (await fetch(`${cp.httpUrl}/metrics`)).text();
      expect(metrics).toMatch(/moat_cp_audit_sink_delivered_events_total\{sink="webhook.siem"\} \d+/);
      await cp.close();

      // Stored while the control plane is down.
      const offline = await openStore(cp.config.databaseUrl);
      await createAuditService({ store: offline }).ingest("agent-h", shippedEvents("H", 11, 15));
      await offline.close();

      cp = await startControlPlane(config());
      await waitFor(() => seqsOf(receiver.accepted(), "agent-h").length >= 15, 10_000);
      await new Promise((r) => setTimeout(r, 300));
      expect(seqsOf(receiver.accepted(), "agent-h")).toEqual(range(1, 15));
      const ids = receiver.accepted().map((e) => e.id);
      expect(new Set(ids).size).toBe(ids.length);
    } finally {
      await cp.close();
    }
  });

  it("delivers events an agent ships over gRPC within a second, woken by ingestion (not by polling)", async () => {
    receiver = await startWebhookReceiver(SECRET);
    const dataDir = tempDir("moat-cp-sinks-");
    const cp = await startControlPlane(
      loadControlPlaneConfig({
        env: { HOOK_KEY: SECRET },
        overrides: {
          dataDir,
          logLevel: "silent",
          http: { port: 0 },
          grpc: { port: 0, plaintext: true },
          audit: { sinks: { pollMs: 60_000, webhooks: [{ name: "siem", url: receiver.url, secretEnv: "HOOK_KEY" }] } },
        },
      }),
    );
    const Client = grpc.makeGenericClientConstructor(
      agentServiceDefinition as unknown as grpc.ServiceDefinition,
      "AgentService",
    );
    const client = new Client(cp.grpcAddress, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      enrol(req: unknown, cb: (e: grpc.ServiceError | null, r?: EnrolResponse) => void): void;
      connect(md: grpc.Metadata): grpc.ClientDuplexStream<unknown, unknown>;
    };
    try {
      await waitFor(() => cp.auditSinks.workers[0]?.isLeading(), 5000);
      const {
        agent: { id },
        enrolmentToken,
      } = await cp.agents.create({ name: "edge-sink", description: "" });
      const enrolled = await new Promise<EnrolResponse>((resolve, reject) =>
        client.enrol(
          create(EnrolRequestSchema, { enrolmentToken, agentVersion: "test", hostname: "test" }),
          (error, response) => (error ? reject(error) : resolve(response as EnrolResponse)),
        ),
      );
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${enrolled.credential}`);
      const call = client.connect(md);
      call.on("data", () => undefined);
      call.on("error", () => undefined);
      call.write(create(ConnectRequestSchema, { kind: { case: "hello", value: { agentVersion: "test" } } }));
      // Let the first poll pass, so only a wake-up can deliver in time.
      await new Promise((r) => setTimeout(r, 300));
      const sent = Date.now();
      call.write(
        create(ConnectRequestSchema, { kind: { case: "auditBatch", value: { events: shippedEvents("K", 1, 3) } } }),
      );
      await waitFor(() => seqsOf(receiver.accepted(), id).length === 3, 5000, 10);
      // Typically tens of milliseconds; the bound leaves room for a loaded CI machine, and is far below pollMs.
      const latency = Date.now() - sent;
      if (process.env.MOAT_SINK_LATENCY) process.stderr.write(`sink latency ${latency} ms\n`);
      expect(latency).toBeLessThan(2000);
      expect(seqsOf(receiver.accepted(), id)).toEqual([1, 2, 3]);
      call.end();
    } finally {
      client.close();
      await cp.close();
    }
  });
});
