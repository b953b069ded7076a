/**
 * The NATS JetStream sink against a real nats-server (JetStream on, own store dir, 127.0.0.1):
 * stream creation, subjects and order, deduplication of a re-publication after a crash, and an
 * outage of NATS.
 */
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { connect, type JetStreamManager, type NatsConnection } from "nats";
import { Registry } from "prom-client";
import { createLogger, randomId, type Logger } from "@moat/common";
import { startNatsServer, tempDir, waitFor, type TestNatsServer } from "@moat/testkit";
import { createAuditService } from "../services/audit.js";
import { openStore, type Store } from "../store/index.js";
import { shippedEvents } from "../test-support/audit-sinks.js";
import { createSinkMetrics, type SinkMetrics } from "./metrics.js";
import { createNatsSink } from "./nats.js";
import { createSinkWorker, type SinkWorker } from "./worker.js";

const silent = createLogger({ name: "test", level: "silent" });
const STREAM = "MOAT_AUDIT";

let nats: TestNatsServer;
let store: Store;
let nc: NatsConnection | undefined;
const running: SinkWorker[] = [];

async function newAgent(id: string) {
  await store.agents.create({ id, name: id, description: "", enrolmentHash: "x", enrolmentExpiresAt: new Date() });
}

function startWorker(
  options: { server?: TestNatsServer; store?: Store; user?: string; password?: string; logger?: Logger } = {},
): { worker: SinkWorker; metrics: SinkMetrics } {
  const metrics = createSinkMetrics(new Registry());
  const settings = {
    batchSize: 5,
    timeoutMs: 1000,
    minBackoffMs: 50,
    maxBackoffMs: 300,
    startFrom: "earliest" as const,
  };
  const worker = createSinkWorker({
    sink: createNatsSink(
      {
        servers: [(options.server ?? nats).url],
        ...(options.user !== undefined ? { user: options.user, password: options.password ?? "" } : {}),
        stream: STREAM,
        subjectPrefix: "moat.audit",
        createStream: true,
        duplicateWindowSeconds: 600,
        maxInFlight: 1,
        ...settings,
      },
      { logger: options.logger ?? silent },
    ),
    repo: (options.store ?? store).auditSinks,
    holder: `test/${randomId(6)}`,
    ...settings,
    pollMs: 30,
    leaseMs: 2000,
    gapGraceMs: 60_000,
    logger: options.logger ?? silent,
    metrics,
  });
  running.push(worker);
  worker.start();
  return { worker, metrics };
}

async function manager(): Promise<JetStreamManager> {
  if (!nc || nc.isClosed()) nc = await connect({ servers: nats.url });
  return nc.jetstreamManager();
}

async function streamMessages(): Promise<
  { subject: string; msgId: string; seq: number; event: { id: string; agentId: string; seq: string; type: string } }[]
> {
  const jsm = await manager();
  const { state } = await jsm.streams.info(STREAM);
  const out = [];
  for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
    const message = await jsm.streams.getMessage(STREAM, { seq });
    out.push({
      subject: message.subject,
      msgId: message.header.get("Nats-Msg-Id"),
      seq,
      event: message.json<{ id: string; agentId: string; seq: string; type: string }>(),
    });
  }
  return out;
}

const streamCount = async () => {
  try {
    return (await (await manager()).streams.info(STREAM)).state.messages;
  } catch {
    return -1;
  }
};

beforeAll(async () => {
  nats = await startNatsServer();
  store = await openStore(`file:${join(tempDir("moat-sinks-nats-"), "moat.db")}`);
  await newAgent("agent-n");
  await newAgent("agent-m");
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((w) => w.stop()));
});
afterAll(async () => {
  await nc?.close();
  await store?.close();
  await nats?.destroy();
});

describe("NATS JetStream sink", () => {
  it("creates the stream and publishes every event to <prefix>.<type>, in order, with Nats-Msg-Id", async () => {
    const audit = createAuditService({ store });
    await audit.ingest("agent-n", shippedEvents("N", 1, 4));
    await audit.ingest("agent-m", shippedEvents("M", 1, 3, "session.start"));
    await audit.ingest("agent-n", shippedEvents("N", 5, 8));
    const { metrics } = startWorker();
    await waitFor(async () => (await streamCount()) === 11, 10_000);

    const info = await (await manager()).streams.info(STREAM);
    expect(info.config.subjects).toEqual(["moat.audit.>"]);
    const messages = await streamMessages();
    expect(messages.map((m) => m.msgId)).toEqual(messages.map((m) => m.event.id));
    for (const m of messages) expect(m.subject).toBe(`moat.audit.${m.event.type}`);
    const seqs = (agentId: string) =>
      messages.filter((m) => m.event.agentId === agentId).map((m) => Number(m.event.seq));
    expect(seqs("agent-n")).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(seqs("agent-m")).toEqual([1, 2, 3]);
    expect(messages.find((m) => m.event.agentId === "agent-m")?.subject).toBe("moat.audit.session.start");
    expect((await metrics.delivered.get()).values[0]?.value).toBe(11);
  });

  it("re-publishing after a crash (cursor not advanced) is dropped by JetStream as duplicates", async () => {
    const audit = createAuditService({ store });
    const cursorKey = "audit.sink.nats.cursor";
    const leaseKey = "audit.sink.nats.lease";
    const before = await store.auditSinks.getState(cursorKey);
    expect(before).toBeDefined();
    await audit.ingest("agent-n", shippedEvents("N", 9, 12));
    const first = startWorker();
    await waitFor(async () => (await streamCount()) === 15, 10_000);
    await first.worker.stop();

    // The crash: the events were published and acknowledged, but the cursor was never saved.
    expect(await store.auditSinks.acquireLease(leaseKey, "crash", 60_000, new Date())).toBe(true);
    expect(await store.auditSinks.putStateAsHolder(cursorKey, before as string, leaseKey, "crash")).toBe(true);
    await store.auditSinks.releaseLease(leaseKey, "crash");

    await audit.ingest("agent-m", shippedEvents("M", 4, 4, "session.end"));
    const second = startWorker();
    await waitFor(async () => (await second.metrics.delivered.get()).values[0]?.value === 5, 10_000);
    await waitFor(async () => (await streamCount()) === 16, 10_000);
    await new Promise((r) => setTimeout(r, 200));
    const messages = await streamMessages();
    expect(messages).toHaveLength(16);
    expect(new Set(messages.map((m) => m.event.id)).size).toBe(16);
    expect(messages.at(-1)?.event).toMatchObject({ agentId: "agent-m", seq: "4", type: "session.end" });
  });

  it("keeps retrying while NATS is down and resumes, in order, when it is back", async () => {
    const audit = createAuditService({ store });
    const { metrics } = startWorker();
    await waitFor(async () => (await streamCount()) === 16, 10_000);
    await nc?.close();
    nc = undefined;
    await nats.stop({ hard: true });

    await audit.ingest("agent-n", shippedEvents("N", 13, 20));
    await waitFor(async () => (await metrics.failures.get()).values.reduce((n, v) => n + v.value, 0) >= 2, 10_000);
    nats = await startNatsServer({ port: nats.port, storeDir: nats.storeDir });
    await waitFor(async () => (await streamCount()) === 24, 20_000);

    const messages = await streamMessages();
    const seqs = messages.filter((m) => m.event.agentId === "agent-n").map((m) => Number(m.event.seq));
    expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(new Set(messages.map((m) => m.event.id)).size).toBe(24);
    const reasons = (await metrics.failures.get()).values.map((v) => v.labels.reason);
    expect(reasons.some((r) => r === "unavailable" || r === "timeout")).toBe(true);
  });

  it("authenticates with a user and password, and never logs the password", async () => {
    const secured = await startNatsServer({ args: ["--user", "moat", "--pass", "nats-pw-0123456789"] });
    const local = await openStore(`file:${join(tempDir("moat-sinks-nats-"), "moat.db")}`);
    const lines: string[] = [];
    const logger = createLogger({ name: "test", level: "debug", destination: { write: (l: string) => lines.push(l) } });
    try {
      await local.agents.create({
        id: "agent-z",
        name: "z",
        description: "",
        enrolmentHash: "x",
        enrolmentExpiresAt: new Date(),
      });
      await createAuditService({ store: local }).ingest("agent-z", shippedEvents("Z", 1, 3));
      const refused = startWorker({
        server: secured,
        store: local,
        user: "moat",
        password: "wrong-pw-0123456789",
        logger,
      });
      await waitFor(
        async () => (await refused.metrics.failures.get()).values.some((v) => v.labels.reason === "rejected"),
        10_000,
      );
      await refused.worker.stop();
      const accepted = startWorker({
        server: secured,
        store: local,
        user: "moat",
        password: "nats-pw-0123456789",
        logger,
      });
      await waitFor(async () => (await accepted.metrics.delivered.get()).values[0]?.value === 3, 10_000);
      await accepted.worker.stop();
      const log = lines.join("");
      expect(log).toContain("delivery failed; retrying");
      expect(log).not.toContain("nats-pw-0123456789");
      expect(log).not.toContain("wrong-pw-0123456789");
    } finally {
      await local.close();
      await secured.destroy();
    }
  });
});
