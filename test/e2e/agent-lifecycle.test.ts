/**
 * The foundation end to end, on real processes: enrolment (once only), announced resources,
 * connection status, reconnect after a control-plane crash, disconnect on stop, revocation.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { decodeEnrolmentToken, encodeEnrolmentToken, hashSecret } from "@moat/common";
import {
  agentServiceDefinition,
  create,
  ConnectRequestSchema,
  EnrolRequestSchema,
  type EnrolResponse,
} from "@moat/proto";
import { waitFor } from "@moat/testkit";
import {
  api,
  cleanup,
  createAgent,
  getAgent,
  startAgent,
  startControlPlane,
  type ControlPlaneProc,
} from "./support.js";

afterEach(cleanup);
afterAll(cleanup);

const Client = grpc.makeGenericClientConstructor(
  agentServiceDefinition as unknown as grpc.ServiceDefinition,
  "AgentService",
);

function grpcClient(cp: ControlPlaneProc) {
  const ca = readFileSync(join(cp.dataDir, "pki", "ca.crt"));
  return new Client(cp.grpcAddress, grpc.credentials.createSsl(ca)) as unknown as grpc.Client & {
    enrol(req: unknown, cb: (e: grpc.ServiceError | null, r?: EnrolResponse) => void): void;
    connect(md: grpc.Metadata): grpc.ClientDuplexStream<unknown, unknown>;
  };
}

function enrolRaw(cp: ControlPlaneProc, token: string): Promise<{ code: number; details: string } | EnrolResponse> {
  const client = grpcClient(cp);
  return new Promise((resolve) => {
    client.enrol(
      create(EnrolRequestSchema, { enrolmentToken: token, agentVersion: "test", hostname: "test" }),
      (error, response) => {
        client.close();
        resolve(error ? { code: error.code, details: error.details } : (response as EnrolResponse));
      },
    );
  });
}

function connectRaw(cp: ControlPlaneProc, credential?: string): Promise<{ code: number; details: string }> {
  const client = grpcClient(cp);
  const md = new grpc.Metadata();
  if (credential !== undefined) md.set("authorization", `Bearer ${credential}`);
  const call = client.connect(md);
  call.on("data", () => undefined);
  call.on("error", () => undefined);
  call.write(create(ConnectRequestSchema, { kind: { case: "hello", value: { agentVersion: "raw" } } }));
  return new Promise((resolve) => {
    call.on("status", (s: grpc.StatusObject) => {
      client.close();
      resolve({ code: s.code, details: s.details });
    });
  });
}

const RESOURCES = `resources:
  - name: prod-db
    type: postgres
    listen: 127.0.0.1:6432
    labels: { env: prod, team: payments }
  - name: bastion
    type: ssh
    listen: 127.0.0.1:2222
`;

describe("agent enrolment and connection", () => {
  it("enrols once, announces resources, and stores only a hash of its credential", async () => {
    const cp = await startControlPlane();
    const { id, token } = await createAgent(cp, "edge-1");
    expect((await getAgent(cp, id)).state).toBe("pending");

    const agent = await startAgent({ token, yaml: RESOURCES });
    await waitFor(async () => (await getAgent(cp, id)).connected, 15_000);
    const view = await getAgent(cp, id);
    expect(view).toMatchObject({ state: "connected", version: "0.1.0" });
    await waitFor(async () => (await getAgent(cp, id)).bundleVersion === "1", 10_000); // the first bundle, acknowledged
    expect(await agent.health()).toMatchObject({ controlPlane: "connected", status: "ok" });

    const resources = await api<{ items: { name: string; type: string; labels: object; agentName: string }[] }>(
      cp,
      "GET",
      "/api/v1/resources",
    );
    expect(resources.body.items).toEqual([
      expect.objectContaining({ name: "bastion", type: "ssh", agentName: "edge-1" }),
      expect.objectContaining({ name: "prod-db", type: "postgres", labels: { env: "prod", team: "payments" } }),
    ]);

    // The credential lives in the agent's data dir (0600); the store has only its SHA-256.
    const identityFile = join(agent.dataDir, "agent.json");
    const identity = JSON.parse(readFileSync(identityFile, "utf8")) as { credential: string };
    expect(identity.credential).toMatch(/^moat_ac_/);
    const db = new Database(join(cp.dataDir, "moat.db"), { readonly: true });
    const row = db.prepare('SELECT "credentialHash", "enrolmentHash" FROM "Agent" WHERE "id" = ?').get(id) as {
      credentialHash: string;
      enrolmentHash: string | null;
    };
    const dump = JSON.stringify(db.prepare('SELECT * FROM "Agent"').all());
    db.close();
    expect(row.credentialHash).toBe(hashSecret(identity.credential));
    expect(row.enrolmentHash).toBeNull();
    expect(dump).not.toContain(identity.credential);
    expect(dump).not.toContain(decodeEnrolmentToken(token).secret);

    // A second use of the same token is refused, by the agent binary and on the wire.
    const second = await startAgent({ token });
    expect((await second.exited).code).toBe(78);
    expect(second.output()).toContain("enrolment refused: the enrolment token is invalid, expired or already used");
    expect(await enrolRaw(cp, token)).toMatchObject({ code: grpc.status.UNAUTHENTICATED });

    // Logs never carry the secrets.
    for (const secret of [identity.credential, decodeEnrolmentToken(token).secret, cp.adminKey]) {
      expect(cp.output()).not.toContain(secret);
      expect(agent.output()).not.toContain(secret);
    }
  });

  it("rejects wrong tokens and credentials with clear gRPC statuses", async () => {
    const cp = await startControlPlane();
    const { token } = await createAgent(cp, "edge-2");
    const decoded = decodeEnrolmentToken(token);

    const wrongSecret = encodeEnrolmentToken({ ...decoded, secret: "x".repeat(43) });
    expect(await enrolRaw(cp, wrongSecret)).toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
      details: expect.stringContaining("invalid, expired or already used"),
    });
    const unknownAgent = encodeEnrolmentToken({ ...decoded, agentId: "nosuchagent00000" });
    expect(await enrolRaw(cp, unknownAgent)).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(await enrolRaw(cp, "garbage")).toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
      details: expect.stringContaining("must start with"),
    });

    expect(await connectRaw(cp)).toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
      details: expect.stringContaining("agent credential"),
    });
    expect(await connectRaw(cp, "moat_ac_nosuchagent00000_" + "A".repeat(43))).toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
    });
    expect(await connectRaw(cp, "not-a-credential")).toMatchObject({ code: grpc.status.UNAUTHENTICATED });

    // The untouched token still works afterwards.
    expect(await enrolRaw(cp, token)).toMatchObject({ agentName: "edge-2" });
  });

  it("refuses a control plane that does not present the pinned CA", async () => {
    const cp = await startControlPlane();
    const { token } = await createAgent(cp, "edge-3");
    const forged = encodeEnrolmentToken({ ...decodeEnrolmentToken(token), caFingerprint: "0".repeat(64) });
    const agent = await startAgent({ token: forged });
    expect((await agent.exited).code).toBe(78);
    expect(agent.output()).toContain("did not present the CA pinned in the enrolment token");
    // Nothing was sent: the real token is still unused.
    expect(await enrolRaw(cp, token)).toMatchObject({ agentName: "edge-3" });
  });

  it("reconnects by itself within 5 s after the control plane is killed and restarted", async () => {
    const cp = await startControlPlane();
    const { id, token } = await createAgent(cp, "edge-4");
    const agent = await startAgent({ token });
    await waitFor(async () => (await agent.health()).controlPlane === "connected", 15_000);

    await cp.stop("SIGKILL");
    await waitFor(async () => (await agent.health()).controlPlane !== "connected", 15_000);
    await new Promise((r) => setTimeout(r, 1500)); // stay down for a while: backoff grows

    const again = await startControlPlane({
      dataDir: cp.dataDir,
      httpPort: Number(new URL(cp.url).port),
      grpcPort: Number(cp.grpcAddress.split(":")[1]),
    });
    const restartedAt = Date.now();
    await waitFor(async () => (await agent.health()).controlPlane === "connected", 5_000, 25);
    const elapsed = Date.now() - restartedAt;
    expect(elapsed).toBeLessThan(5_000);
    await waitFor(async () => (await getAgent(again, id)).connected, 5_000);
    expect(agent.child.exitCode).toBeNull();
  });

  it("shows a stopped agent as disconnected", async () => {
    const cp = await startControlPlane();
    const { id, token } = await createAgent(cp, "edge-5");
    const agent = await startAgent({ token });
    await waitFor(async () => (await getAgent(cp, id)).connected, 15_000);
    expect((await agent.stop("SIGTERM")).code).toBe(0);
    await waitFor(async () => (await getAgent(cp, id)).state === "disconnected", 5_000);

    // A crash (SIGKILL) is noticed too: the TCP connection dies with the process.
    const restarted = await startAgent({ dataDir: agent.dataDir });
    await waitFor(async () => (await getAgent(cp, id)).connected, 15_000);
    await restarted.stop("SIGKILL");
    await waitFor(async () => (await getAgent(cp, id)).state === "disconnected", 10_000);
  });

  it("cuts a deleted agent's stream and keeps it out", async () => {
    const cp = await startControlPlane();
    const { id, token } = await createAgent(cp, "edge-6");
    const agent = await startAgent({ token, yaml: RESOURCES });
    await waitFor(async () => (await getAgent(cp, id)).connected, 15_000);
    const credential = (JSON.parse(readFileSync(join(agent.dataDir, "agent.json"), "utf8")) as { credential: string })
      .credential;

    expect((await api(cp, "DELETE", `/api/v1/agents/${id}`)).status).toBe(204);
    const exit = await agent.exited;
    expect(exit.code).toBe(77);
    expect(agent.output()).toContain("the control plane rejected this agent (agent revoked");
    expect((await api(cp, "GET", `/api/v1/agents/${id}`)).status).toBe(404);
    expect((await api<{ items: unknown[] }>(cp, "GET", "/api/v1/resources")).body.items).toEqual([]);

    const restarted = await startAgent({ dataDir: agent.dataDir });
    expect((await restarted.exited).code).toBe(77);
    expect(await connectRaw(cp, credential)).toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: expect.stringContaining("revoked"),
    });
    expect(await enrolRaw(cp, token)).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
  });
});

describe("bounded messages", () => {
  it("refuses a message over the configured size with RESOURCE_EXHAUSTED, and keeps serving others", async () => {
    const cp = await startControlPlane({ env: { MOAT_GRPC_MAX_MESSAGE_BYTES: String(64 * 1024) } });
    const { token } = await createAgent(cp, "edge-big");
    const enrolled = (await enrolRaw(cp, token)) as EnrolResponse;
    const client = grpcClient(cp);
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${enrolled.credential}`);
    const call = client.connect(md);
    call.on("data", () => undefined);
    call.on("error", () => undefined);
    const status = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
    call.write(
      create(ConnectRequestSchema, { kind: { case: "hello", value: { agentVersion: "x".repeat(100 * 1024) } } }),
    );
    expect((await status).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    client.close();
    // The server is unaffected.
    expect((await api(cp, "GET", "/api/v1/agents")).status).toBe(200);
    const agent = await startAgent({
      token: (await api<{ enrolmentToken: string }>(cp, "POST", `/api/v1/agents/${enrolled.agentId}/enrolment-token`))
        .body.enrolmentToken,
    });
    await waitFor(async () => (await agent.health()).controlPlane === "connected", 15_000);
  });
});

describe("admin key recovery", () => {
  it("`moat-control-plane admin-key` issues a working key for the bootstrap admin", async () => {
    const { spawnNode, repoRoot } = await import("./support.js");
    const cp = await startControlPlane();
    const proc = spawnNode(join(repoRoot, "apps/control-plane/dist/main.js"), ["admin-key"], {
      MOAT_DATA_DIR: cp.dataDir,
    });
    expect((await proc.exited).code).toBe(0);
    const key = proc.output().trim();
    expect(key).toMatch(/^moat_ak_/);
    expect(key).not.toBe(cp.adminKey);
    const whoami = await api<{ email: string; role: string }>(cp, "GET", "/api/v1/whoami", undefined, key);
    expect(whoami.body).toMatchObject({ email: "admin@moat.local", role: "admin" });
    const unknown = spawnNode(join(repoRoot, "apps/control-plane/dist/main.js"), ["admin-key", "--email", "x@y.z"], {
      MOAT_DATA_DIR: cp.dataDir,
    });
    expect((await unknown.exited).code).toBe(1);
    expect(unknown.output()).toContain("no enabled admin user with email x@y.z");
  });
});

describe("configuration errors", () => {
  it("the control plane names the bad field and exits 78", async () => {
    const { spawnNode, repoRoot } = await import("./support.js");
    const proc = spawnNode(join(repoRoot, "apps/control-plane/dist/main.js"), [], { MOAT_HTTP_PORT: "not-a-port" });
    expect((await proc.exited).code).toBe(78);
    expect(proc.output()).toContain("MOAT_HTTP_PORT: must be a number");
  });

  it("the agent names the bad field and exits 78", async () => {
    const agent = await startAgent({ yaml: "resources:\n  - name: Bad Name\n    type: oracle\n    listen: nowhere\n" });
    expect((await agent.exited).code).toBe(78);
    const out = agent.output();
    expect(out).toContain("resources.0.name");
    expect(out).toContain("resources.0.type");
    expect(out).toContain("resources.0.listen");
  });

  it("the agent names a resource's unreadable certificate, and a port in use, and exits 78 (review 63)", async () => {
    const cp = await startControlPlane();
    const resource = (extra: string) =>
      "resources:\n  - name: dev-db\n    type: postgres\n    listen: 127.0.0.1:0\n    postgres:\n" +
      "      target: { host: 127.0.0.1, port: 5432, user: postgres, sslmode: disable }\n" +
      extra;
    const { token } = await createAgent(cp, "edge-cert");
    const agent = await startAgent({
      token,
      yaml: resource("      tls: { certFile: /nonexistent/agent.crt, keyFile: /nonexistent/agent.key }\n"),
    });
    expect((await agent.exited).code).toBe(78);
    expect(agent.output()).toContain(
      "resource dev-db: postgres.tls.certFile: cannot read /nonexistent/agent.crt (ENOENT)",
    );
    expect(agent.output()).not.toMatch(/\n\s+at /); // no stack trace
    const { createServer } = await import("node:net");
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
    const port = (busy.address() as { port: number }).port;
    try {
      const second = await createAgent(cp, "edge-port");
      const taken = await startAgent({
        token: second.token,
        yaml: resource("").replace("127.0.0.1:0", `127.0.0.1:${port}`),
      });
      expect((await taken.exited).code).toBe(78);
      expect(taken.output()).toContain(`resource dev-db: listen 127.0.0.1:${port}: EADDRINUSE`);
    } finally {
      busy.close();
    }
  });

  it("an agent with no token and no identity says how to enrol", async () => {
    const agent = await startAgent({});
    expect((await agent.exited).code).toBe(78);
    expect(agent.output()).toContain("this agent is not enrolled");
  });
});

describe("plaintext agent channel (loopback only, opt-in)", () => {
  it("works when both sides opt in; otherwise the agent refuses it and says why", async () => {
    const cp = await startControlPlane({ env: { MOAT_GRPC_PLAINTEXT: "true" } });
    const { id, token } = await createAgent(cp, "edge-7");
    const refused = await startAgent({ token });
    expect((await refused.exited).code).toBe(78);
    expect(refused.output()).toContain("serves plaintext gRPC; set controlPlane.plaintext: true");
    const agent = await startAgent({ token, yaml: "controlPlane:\n  plaintext: true\n" });
    await waitFor(async () => (await getAgent(cp, id)).connected, 15_000);
    expect(agent.child.exitCode).toBeNull();
  });
});
