/**
 * Bundle-signing key rotation on real processes. The new key reaches every agent in a bundle signed
 * by a key it trusts and then signs its bundles; an agent offline during the rotation catches up
 * within the grace period; after it the old key is retired and a bundle it signs is refused; an
 * agent offline past the grace period refuses what the control plane sends (the control plane says
 * why: re-enrol it) and works again once re-enrolled.
 */
import { createDecipheriv, createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import * as grpc from "@grpc/grpc-js";
import { afterAll, describe, expect, it } from "vitest";
import {
  agentServiceDefinition,
  BundleSchema,
  ConnectResponseSchema,
  create,
  SignedBundleSchema,
  timestampFromDate,
  toBinary,
  VerificationKeySchema,
  type BundleAck,
  type ConnectRequest,
  type ConnectResponse,
} from "@moat/proto";
import { freePort, waitFor } from "@moat/testkit";
import {
  api,
  cleanup,
  createAgent,
  getAgent,
  startAgent,
  startControlPlane,
  type AgentProc,
  type AgentView,
  type ControlPlaneProc,
} from "./support.js";

afterAll(cleanup);

const GRACE_SECONDS = 15;

const resourceYaml = (name: string) => `resources:\n  - { name: ${name}, type: postgres, listen: "127.0.0.1:6432" }\n`;

interface KeyView {
  kid: string;
  use: string;
  retiredAt: string | null;
  signing: boolean;
}

/** A signing key read from the control plane's store and decrypted with its master key. */
function storedKey(cp: ControlPlaneProc, kid: string) {
  const db = new Database(join(cp.dataDir, "moat.db"), { readonly: true });
  try {
    const row = db
      .prepare('SELECT "id", "use", "publicJwk", "privateKeyEnc" FROM "SigningKey" WHERE "id" = ?')
      .get(kid) as {
      id: string;
      use: string;
      publicJwk: string;
      privateKeyEnc: string;
    };
    const master = Buffer.from(readFileSync(join(cp.dataDir, "master.key"), "utf8").trim(), "base64");
    const raw = Buffer.from(row.privateKeyEnc.slice("v1:".length), "base64");
    const decipher = createDecipheriv("aes-256-gcm", master, raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(`${row.id}:${row.use}`));
    decipher.setAuthTag(raw.subarray(12, 28));
    const der = Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]);
    return {
      kid,
      privateKey: createPrivateKey({ key: der, format: "der", type: "pkcs8" }),
      verificationKey: create(VerificationKeySchema, { keyId: kid, algorithm: "EdDSA", jwkJson: row.publicJwk }),
    };
  } finally {
    db.close();
  }
}

/**
 * A stand-in control plane on the real one's TLS identity: it answers an agent's Hello with the
 * bundles the test gives it and reports the agent's acknowledgements.
 */
async function fakeControlPlane(cp: ControlPlaneProc) {
  const pki = (f: string) => readFileSync(join(cp.dataDir, "pki", f));
  const acks: BundleAck[] = [];
  let stream: grpc.ServerDuplexStream<ConnectRequest, ConnectResponse> | undefined;
  let helloVersion = -1n;
  const server = new grpc.Server();
  server.addService(
    agentServiceDefinition as unknown as grpc.ServiceDefinition,
    {
      enrol: (_call: unknown, callback: grpc.sendUnaryData<unknown>) =>
        callback({ code: grpc.status.UNIMPLEMENTED, details: "no enrolment here" }),
      connect: (call: grpc.ServerDuplexStream<ConnectRequest, ConnectResponse>) => {
        stream = call;
        call.on("data", (message: ConnectRequest) => {
          if (message.kind.case === "hello") helloVersion = message.kind.value.bundleVersion;
          if (message.kind.case === "bundleAck") acks.push(message.kind.value);
        });
        call.on("error", () => undefined);
      },
    } as unknown as grpc.UntypedServiceImplementation,
  );
  const port = await freePort();
  const credentials = grpc.ServerCredentials.createSsl(
    null,
    [{ cert_chain: Buffer.concat([pki("server.crt"), pki("ca.crt")]), private_key: pki("server.key") }],
    false,
  );
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, credentials, (error) => (error ? reject(error) : resolve())),
  );
  return {
    address: `127.0.0.1:${port}`,
    acks,
    connected: () => stream !== undefined && helloVersion >= 0n,
    helloVersion: () => helloVersion,
    send: (message: ConnectResponse) => stream?.write(message),
    close: () => server.forceShutdown(),
  };
}

describe("bundle-signing key rotation", () => {
  it("announces the new key, switches to it, retires the old one, and catches up or fails closed", async () => {
    const cp = await startControlPlane({ env: { MOAT_BUNDLE_KEY_GRACE_SECONDS: String(GRACE_SECONDS) } });
    const agent = async (name: string) => {
      const { id, token } = await createAgent(cp, name);
      const proc = await startAgent({ token, yaml: resourceYaml(`${name}-db`), decisionEndpoint: true });
      await waitFor(async () => (await getAgent(cp, id)).bundleVersion !== "0", 15_000);
      return { id, name, proc };
    };
    const view = (id: string) => getAgent(cp, id);
    const waitView = (id: string, test: (v: AgentView) => boolean, ms = 15_000) =>
      waitFor(async () => test(await view(id)), ms, 50);
    let revision = 0;
    /** A policy change, so every connected agent gets a new bundle. */
    const change = async () => {
      const res = await api(cp, "PUT", "/api/v1/policies/all-postgres", {
        apiVersion: "moat.dev/v1",
        kind: "Policy",
        metadata: { name: "all-postgres", description: `change ${++revision}` },
        spec: {
          subjects: { users: ["*"] },
          resources: { types: ["postgres"] },
          rules: [{ name: "connect", effect: "allow", actions: ["connect"] }],
        },
      });
      expect(res.status).toBeLessThan(300);
    };
    const keys = async () => (await api<{ items: KeyView[] }>(cp, "GET", "/api/v1/keys")).body.items;

    const online = await agent("online");
    const briefly = await agent("briefly-offline");
    const longGone = await agent("long-gone");
    const [oldKey] = (await keys()).filter((k) => k.use === "bundle");
    expect(oldKey).toMatchObject({ signing: true, retiredAt: null });
    for (const a of [online, briefly, longGone]) await waitView(a.id, (v) => v.bundleKeyId === oldKey?.kid);
    await briefly.proc.stop();
    await longGone.proc.stop();

    // Rotate. The online agent first gets a bundle signed by the old key that announces the new
    // one, then bundles signed by the new key.
    const before = BigInt((await view(online.id)).bundleVersion);
    const rotated = await api<{ kid: string; retiresOthersAt: string }>(cp, "POST", "/api/v1/keys/bundle/rotate");
    expect(rotated.status).toBe(201);
    const newKid = rotated.body.kid;
    const rotatedAt = Date.now();
    expect(Date.parse(rotated.body.retiresOthersAt) - rotatedAt).toBeGreaterThan((GRACE_SECONDS - 5) * 1000);
    await waitView(online.id, (v) => BigInt(v.bundleVersion) > before && v.bundleKeyId === oldKey?.kid);
    await change();
    await waitView(online.id, (v) => v.bundleKeyId === newKid && v.bundleError === "");
    const agentFile = () =>
      JSON.parse(readFileSync(join(online.proc.dataDir, "agent.json"), "utf8")) as {
        bundleKeys: { keyId: string }[];
      };
    expect(agentFile().bundleKeys.map((k) => k.keyId)).toEqual([oldKey?.kid, newKid]);

    // An agent that was offline during the rotation catches up when it returns within the grace period.
    const offlineAt = BigInt((await view(briefly.id)).bundleVersion);
    const returned = await startAgent({ dataDir: briefly.proc.dataDir, yaml: resourceYaml("briefly-offline-db") });
    // Its first bundle is signed by the old key (the one it trusts) and carries the new one.
    await waitView(briefly.id, (v) => BigInt(v.bundleVersion) > offlineAt && v.bundleKeyId === oldKey?.kid);
    await change();
    await waitView(briefly.id, (v) => v.bundleKeyId === newKid && v.bundleError === "");
    expect(Date.now() - rotatedAt).toBeLessThan(GRACE_SECONDS * 1000); // (or the test proves nothing)

    // The grace period ends: the old key is retired; agents keep accepting bundles (signed by the new key).
    await waitFor(
      async () => (await keys()).some((k) => k.kid === oldKey?.kid && k.retiredAt !== null),
      (GRACE_SECONDS + 30) * 1000,
      200,
    );
    expect((await keys()).find((k) => k.kid === newKid)).toMatchObject({ signing: true, retiredAt: null });
    // (Versions are per agent.)
    const afterRetirement = new Map<string, bigint>();
    for (const a of [online, briefly]) afterRetirement.set(a.id, BigInt((await view(a.id)).bundleVersion));
    await change();
    for (const a of [online, briefly]) {
      await waitView(
        a.id,
        (v) => BigInt(v.bundleVersion) > (afterRetirement.get(a.id) as bigint) && v.bundleKeyId === newKid,
      );
      expect((await view(a.id)).bundleError).toBe("");
    }
    await waitFor(
      () =>
        agentFile()
          .bundleKeys.map((k) => k.keyId)
          .join() === newKid,
      10_000,
    );

    // An agent offline for longer than the grace period trusts only the retired key: it refuses
    // the next bundle (keeping its last one until it expires), and the control plane says why.
    const stale = await startAgent({ dataDir: longGone.proc.dataDir, yaml: resourceYaml("long-gone-db") });
    const staleVersion = (await view(longGone.id)).bundleVersion;
    await waitView(longGone.id, (v) => v.bundleError !== "");
    const refused = await view(longGone.id);
    expect(refused.bundleError).toContain("unknown key");
    expect(refused.bundleError).toContain("re-enrol");
    expect(refused.bundleVersion).toBe(staleVersion);
    expect(stale.output()).toContain("policy bundle rejected");
    // Re-enrolment (a new token; same data dir) pins the current keys: bundles are accepted again.
    const reissued = await api<{ enrolmentToken: string }>(cp, "POST", `/api/v1/agents/${longGone.id}/enrolment-token`);
    await stale.stop();
    await startAgent({
      token: reissued.body.enrolmentToken,
      dataDir: longGone.proc.dataDir,
      yaml: resourceYaml("long-gone-db"),
    });
    await waitView(longGone.id, (v) => v.bundleKeyId === newKid && v.bundleError === "" && v.connected);

    // A bundle signed by the retired key is refused, while the same bundle signed by the current key
    // is accepted: the online agent, pointed at a stand-in control plane on the same TLS identity.
    await online.proc.stop();
    await returned.stop();
    const fake = await fakeControlPlane(cp);
    let pointed: AgentProc | undefined;
    try {
      pointed = await startAgent({
        dataDir: online.proc.dataDir,
        yaml: `${resourceYaml("online-db")}controlPlane:\n  address: "${fake.address}"\n`,
      });
      await waitFor(async () => fake.connected(), 15_000);
      const retired = storedKey(cp, oldKey?.kid as string);
      const current = storedKey(cp, newKid);
      const bundle = (version: bigint, signer: typeof current) => {
        const payload = toBinary(
          BundleSchema,
          create(BundleSchema, {
            agentId: online.id,
            version,
            issuedAt: timestampFromDate(new Date()),
            notAfter: timestampFromDate(new Date(Date.now() + 3600_000)),
            bundleKeys: [current.verificationKey],
            tokenIssuer: "moat",
            tokenAudience: "moat-agents",
          }),
        );
        return create(ConnectResponseSchema, {
          kind: {
            case: "bundle",
            value: create(SignedBundleSchema, {
              payload,
              signature: sign(null, payload, signer.privateKey),
              keyId: signer.kid,
              algorithm: "Ed25519",
            }),
          },
        });
      };
      const next = fake.helloVersion() + 1n;
      fake.send(bundle(next, retired));
      await waitFor(async () => fake.acks.length === 1, 10_000);
      expect(fake.acks[0]).toMatchObject({
        version: next,
        applied: false,
        error: expect.stringContaining("unknown key"),
      });
      fake.send(bundle(next, current));
      await waitFor(async () => fake.acks.length === 2, 10_000);
      expect(fake.acks[1]).toMatchObject({ version: next, applied: true });
    } finally {
      await pointed?.stop();
      fake.close();
    }
  }, 180_000);
});
