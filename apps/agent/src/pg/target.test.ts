/**
 * The agent's login to targets with credentials only it holds: SCRAM-SHA-256, md5 and cleartext
 * password authentication, TLS with verify-full against the target's CA, and the errors users see
 * when the agent's credentials are wrong (never the password itself).
 */
import { writeFileSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { connect as tlsConnect, TLSSocket } from "node:tls";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCertificateAuthority, issueServerCertificate } from "@moat/pki";
import { startPostgres, tempDir, type TestPostgres } from "@moat/testkit";
import { connectTarget, parseTextArray, TargetError } from "./target.js";
import { psql, startHarness } from "../test-support/pg.js";

const PASSWORD = "canary-target-password-8d1f";
let server: TestPostgres;
let caFile: string;

beforeAll(async () => {
  const ca = await createCertificateAuthority("test target CA");
  const cert = await issueServerCertificate(ca, ["localhost", "127.0.0.1"]);
  caFile = join(tempDir(), "ca.crt");
  writeFileSync(caFile, ca.certPem);
  server = await startPostgres({
    ssl: cert,
    hba: [
      "hostssl all scram_user 127.0.0.1/32 scram-sha-256",
      "host all scram_user 127.0.0.1/32 scram-sha-256",
      "host all md5_user 127.0.0.1/32 md5",
      "host all clear_user 127.0.0.1/32 password",
      "host all all 127.0.0.1/32 trust",
    ],
  });
  await server.sql(`SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN PASSWORD '${PASSWORD}';
    SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD '${PASSWORD}';
    CREATE ROLE clear_user LOGIN PASSWORD '${PASSWORD}'; CREATE SCHEMA "odd ""schema""";`);
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

const target = (user: string, extra: object = {}) => ({
  host: "127.0.0.1",
  port: server.port,
  user,
  password: PASSWORD,
  sslmode: "disable" as const,
  connectTimeoutMs: 5000,
  ...extra,
});

describe("target authentication", () => {
  for (const user of ["scram_user", "md5_user", "clear_user"]) {
    it(`logs in as ${user}`, async () => {
      const c = await connectTarget({ target: target(user), database: "postgres", parameters: {} });
      expect(c.processId).toBeGreaterThan(0);
      expect(c.searchPath).toEqual(["public"]);
      c.socket.destroy();
    });
  }

  it("uses SCRAM over TLS verified against the target's CA (verify-full)", async () => {
    const c = await connectTarget({
      target: target("scram_user", { sslmode: "verify-full", caFile, serverName: "localhost" }),
      database: "postgres",
      parameters: {},
    });
    expect("encrypted" in c.socket && c.socket.encrypted).toBe(true);
    c.socket.destroy();
  });

  it("binds SCRAM to the target's TLS certificate: an interceptor with its own certificate cannot relay the login", async () => {
    // sslmode=require does not verify the certificate; channel binding (SCRAM-SHA-256-PLUS) still
    // ties the password proof to the TLS session the target itself terminates.
    const direct = await connectTarget({
      target: target("scram_user", { sslmode: "require" }),
      database: "postgres",
      parameters: {},
    });
    direct.socket.destroy();

    const interceptorCa = await createCertificateAuthority("interceptor");
    const interceptorCert = await issueServerCertificate(interceptorCa, ["127.0.0.1"]);
    const sockets: Socket[] = [];
    const relay = createServer((agentSide) => {
      sockets.push(agentSide);
      agentSide.once("data", () => {
        // The agent's SSLRequest: accept it with our own certificate, then reach the target the same way.
        agentSide.write("S");
        const fromAgent = new TLSSocket(agentSide, {
          isServer: true,
          cert: interceptorCert.certPem,
          key: interceptorCert.keyPem,
        });
        const up = connect(server.port, "127.0.0.1", () => {
          up.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
          up.once("data", () => {
            const toTarget = tlsConnect({ socket: up, rejectUnauthorized: false });
            sockets.push(toTarget);
            fromAgent.pipe(toTarget).pipe(fromAgent);
            fromAgent.on("error", () => toTarget.destroy());
            toTarget.on("error", () => fromAgent.destroy());
          });
        });
        sockets.push(up);
      });
    });
    await new Promise<void>((r) => relay.listen(0, "127.0.0.1", () => r()));
    try {
      const port = (relay.address() as AddressInfo).port;
      await expect(
        connectTarget({
          target: target("scram_user", { sslmode: "require", port }),
          database: "postgres",
          parameters: {},
        }),
      ).rejects.toThrow(/channel binding/i);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => relay.close(r));
    }
  });

  it("refuses a target whose certificate is not signed by the configured CA", async () => {
    const other = await createCertificateAuthority("someone else");
    const otherFile = join(tempDir(), "other.crt");
    writeFileSync(otherFile, other.certPem);
    await expect(
      connectTarget({
        target: target("scram_user", { sslmode: "verify-full", caFile: otherFile }),
        database: "postgres",
        parameters: {},
      }),
    ).rejects.toThrow(/TLS to the target failed/);
  });

  it("reports a wrong password without showing it", async () => {
    const error = await connectTarget({
      target: target("scram_user", { password: "wrong-canary-9f3a" }),
      database: "postgres",
      parameters: {},
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TargetError);
    expect((error as Error).message).toMatch(/password authentication failed/);
    expect((error as Error).message).not.toContain("wrong-canary");
  });

  it("says when the target wants a password and none is configured", async () => {
    await expect(
      connectTarget({ target: { ...target("md5_user"), password: undefined }, database: "postgres", parameters: {} }),
    ).rejects.toThrow(/none is configured/);
  });

  it("serves users through SCRAM + TLS to the target, and the password appears nowhere users or audit see", async () => {
    const h = await startHarness({
      pg: server,
      policies: [
        {
          apiVersion: "moat.dev/v1",
          kind: "Policy",
          metadata: { name: "all" },
          spec: {
            subjects: { groups: ["eng"] },
            resources: { names: ["db"] },
            rules: [{ name: "all", effect: "allow", actions: ["connect", "db:*"] }],
          },
        },
      ],
      target: { user: "scram_user", password: PASSWORD, sslmode: "verify-full", caFile, serverName: "localhost" },
    });
    try {
      const token = await h.token();
      const r = await psql(h, token, "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", {
        db: "postgres",
      });
      expect(r.stderr).toBe("");
      expect(r.stdout.trim()).toBe("scram_user|t");
      const bad = await psql(h, token, "SELECT 'x' FROM nowhere", { db: "postgres" });
      expect(bad.stderr + bad.stdout).not.toContain(PASSWORD);
      expect(JSON.stringify(h.events(), (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))).not.toContain(
        PASSWORD,
      );
    } finally {
      await h.close();
    }
  });
});

describe("parseTextArray", () => {
  it("reads PostgreSQL's array output", () => {
    expect(parseTextArray("{public}")).toEqual(["public"]);
    expect(parseTextArray('{a,"odd \\"schema\\"",b}')).toEqual(["a", 'odd "schema"', "b"]);
    expect(parseTextArray("{}")).toEqual([]);
    expect(parseTextArray("garbage")).toEqual([]);
  });
});
