/**
 * The agent channel stores an agent's audit batches pipelined (the next ones are read while one is
 * written, so they share a group commit) and acks them in arrival order, never past a batch that
 * failed. A real control plane in-process and a raw gRPC client standing in for the agent.
 */
import * as grpc from "@grpc/grpc-js";
import {
  agentServiceDefinition,
  ConnectRequestSchema,
  create,
  EnrolRequestSchema,
  type ConnectResponse,
  type EnrolResponse,
} from "@moat/proto";
import { tempDir, waitFor } from "@moat/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadControlPlaneConfig } from "../config.js";
import { startControlPlane, type RunningControlPlane } from "../server.js";
import { shippedEvents } from "../test-support/audit-sinks.js";

type AgentClient = grpc.Client & {
  enrol(req: unknown, cb: (e: grpc.ServiceError | null, r?: EnrolResponse) => void): void;
  connect(md: grpc.Metadata): grpc.ClientDuplexStream<unknown, unknown>;
};

let cp: RunningControlPlane;
let client: AgentClient;

beforeAll(async () => {
  cp = await startControlPlane(
    loadControlPlaneConfig({
      env: {},
      overrides: {
        dataDir: tempDir("moat-cp-pipeline-"),
        logLevel: "silent",
        http: { port: 0 },
        grpc: { port: 0, plaintext: true },
      },
    }),
  );
  const Client = grpc.makeGenericClientConstructor(
    agentServiceDefinition as unknown as grpc.ServiceDefinition,
    "AgentService",
  );
  client = new Client(cp.grpcAddress, grpc.credentials.createInsecure()) as unknown as AgentClient;
});

afterAll(async () => {
  client.close();
  await cp.close();
});

/** Enrols an agent: its id and credential. */
async function enrolAgent(name: string): Promise<{ id: string; credential: string }> {
  const {
    agent: { id },
    enrolmentToken,
  } = await cp.agents.create({ name, description: "" });
  const enrolled = await new Promise<EnrolResponse>((resolve, reject) =>
    client.enrol(create(EnrolRequestSchema, { enrolmentToken, agentVersion: "test", hostname: "test" }), (error, r) =>
      error ? reject(error) : resolve(r as EnrolResponse),
    ),
  );
  return { id, credential: enrolled.credential };
}

/** Opens the agent's stream (Hello sent); collects audit acks and the stream's error. */
function openStream(credential: string) {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${credential}`);
  const call = client.connect(md);
  const acks: bigint[] = [];
  let error: grpc.ServiceError | undefined;
  call.on("data", (message: ConnectResponse) => {
    if (message.kind.case === "auditAck") acks.push(message.kind.value.ackedSeq);
  });
  call.on("error", (e: grpc.ServiceError) => (error = e));
  call.write(create(ConnectRequestSchema, { kind: { case: "hello", value: { agentVersion: "test" } } }));
  const batch = (events: Uint8Array[]) =>
    call.write(create(ConnectRequestSchema, { kind: { case: "auditBatch", value: { events } } }));
  return { call, acks, batch, error: () => error };
}

const storedSeqs = async (agentId: string) =>
  (await cp.store.auditEvents.search({ agentId }, 10_000, "asc")).map((e) => Number(e.seq));

describe("audit batches on the agent stream", () => {
  it("stores batches sent back to back and acks each, in order", async () => {
    const { id, credential } = await enrolAgent("pipelined");
    const agent = { id, ...openStream(credential) };
    // More than the pipeline's depth, written without waiting for any ack.
    for (let b = 0; b < 12; b++) agent.batch(shippedEvents("P", b * 100 + 1, b * 100 + 100));
    await waitFor(() => agent.acks.length === 12, 10_000);
    expect(agent.acks).toEqual(Array.from({ length: 12 }, (_, b) => BigInt((b + 1) * 100)));
    expect(await storedSeqs(agent.id)).toEqual(Array.from({ length: 1200 }, (_, i) => i + 1));
    // A resend of what is stored is acked again and stores nothing twice.
    agent.batch(shippedEvents("P", 1101, 1200));
    await waitFor(() => agent.acks.length === 13, 5000);
    expect(agent.acks[12]).toBe(1200n);
    expect((await storedSeqs(agent.id)).length).toBe(1200);
    agent.call.end();
  });

  it("acks nothing after a batch that fails, and fails the stream saying why", async () => {
    const { id, credential } = await enrolAgent("pipeline-fault");
    const agent = { id, ...openStream(credential) };
    const bad = shippedEvents("Q", 101, 200);
    bad[50] = Uint8Array.from([0xff, 0xff, 0xff]); // not an AuditEvent
    agent.batch(shippedEvents("Q", 1, 100));
    agent.batch(bad);
    agent.batch(shippedEvents("Q", 201, 300));
    agent.batch(shippedEvents("Q", 301, 400));
    await waitFor(() => agent.error() !== undefined, 5000);
    expect(agent.error()?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(agent.error()?.details).toMatch(/audit event/);
    // Batch 1 stored and acked; the bad batch stored nothing; nothing after it was acked (what was
    // stored of the later batches is stored once and acked when the agent resends it).
    expect(agent.acks).toEqual([100n]);
    const seqs = await storedSeqs(agent.id);
    expect(seqs.slice(0, 100)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(seqs.filter((s) => s > 100 && s <= 200)).toEqual([]);

    // The agent reconnects and resends everything unacked: all 400 stored, each once.
    const again = openStream(credential);
    for (const [from, to] of [
      [101, 200],
      [201, 300],
      [301, 400],
    ] as const)
      again.batch(shippedEvents("Q", from, to));
    await waitFor(() => again.acks.length === 3, 5000);
    expect(again.acks).toEqual([200n, 300n, 400n]);
    expect(await storedSeqs(agent.id)).toEqual(Array.from({ length: 400 }, (_, i) => i + 1));
    again.call.end();
  });
});
