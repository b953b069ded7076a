/**
 * The agent's login to targets with credentials only it holds: SCRAM-SHA-256, md5 and cleartext
 * password authentication, TLS with verify-full against the target's CA, and the errors users see
 * when the agent's credentials are wrong (never the password itself).
 */
import { spawn } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { connect as tlsConnect, TLSSocket } from "node:tls";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCertificateAuthority, issueServerCertificate } from "@moat/pki";
import { freePort, startPostgres, tempDir, waitFor, type TestPostgres } from "@moat/testkit";
import { connectTarget, parseTextArray, TargetError } from "./target.js";
import { ALLOW_ALL_POLICY } from "../test-support/bundles.js";
import { psql, run, startHarness } from "../test-support/pg.js";

const PASSWORD = "canary-target-password-8d1f";
/** Group eng may connect to `db` and do anything there. */
const ALLOW_ALL = [ALLOW_ALL_POLICY];
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
  pooler: "none" as const,
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
      policies: ALLOW_ALL,
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

describe("what the agent connects to (review 47)", () => {
  /** pgbouncer (Debian's, as the postgres user: it refuses to run as root) in front of the test server. */
  async function withPgbouncer(extra: string[], body: (port: number) => Promise<void>): Promise<void> {
    const dir = tempDir("moat-pgbouncer-");
    chmodSync(dir, 0o777);
    const port = await freePort();
    writeFileSync(join(dir, "users.txt"), '"postgres" ""\n');
    const ini = [
      "[databases]",
      `postgres = host=127.0.0.1 port=${server.port} dbname=postgres`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${join(dir, "users.txt")}`,
      "pool_mode = session",
      ...extra,
    ];
    writeFileSync(join(dir, "pgbouncer.ini"), `${ini.join("\n")}\n`);
    const asPostgres = process.getuid?.() === 0 ? ["runuser", "-u", "postgres", "--"] : [];
    const command = [...asPostgres, "pgbouncer", join(dir, "pgbouncer.ini")];
    const child = spawn(command[0] as string, command.slice(1), { stdio: "ignore" });
    try {
      await waitFor(
        async () =>
          (
            await run("psql", [`host=127.0.0.1 port=${port} user=postgres dbname=postgres`, "-Atc", "SELECT 1"])
          ).stdout.trim() === "1",
        10_000,
      );
      await body(port);
    } finally {
      child.kill("SIGTERM");
    }
  }

  it("refuses a pooler it was not told is one, and one that drops the read-only backstop", async () => {
    await withPgbouncer(["ignore_startup_parameters = default_transaction_read_only"], async (port) => {
      const bouncer = { ...target("postgres"), port };
      const refused = await connectTarget({ target: bouncer, database: "postgres", parameters: {} }).catch(
        (e: unknown) => e,
      );
      expect(refused).toBeInstanceOf(TargetError);
      expect((refused as TargetError).message).toMatch(/looks like a connection pooler/);
      expect((refused as TargetError).forClient).not.toContain(String(port));
      // Declared as a session pooler: served.
      const session = { ...bouncer, pooler: "session" as const };
      const c = await connectTarget({ target: session, database: "postgres", parameters: {} });
      c.socket.destroy();
      // A read-only session it would open read-write (the parameter ignored): refused.
      const readOnly = { default_transaction_read_only: "on" };
      await expect(connectTarget({ target: session, database: "postgres", parameters: readOnly })).rejects.toThrow(
        /did not apply default_transaction_read_only = on/,
      );
    });
    // PostgreSQL itself applies it.
    const direct = await connectTarget({
      target: target("postgres"),
      database: "postgres",
      parameters: { default_transaction_read_only: "on" },
    });
    direct.socket.destroy();
  });

  it("refuses a connection an earlier session left temporary relations in (a pooler without a reset query)", async () => {
    await withPgbouncer(["server_reset_query =", "default_pool_size = 1"], async (port) => {
      const before = await run("psql", [
        `host=127.0.0.1 port=${port} user=postgres dbname=postgres`,
        "-Atc",
        "CREATE TEMP TABLE t AS SELECT 1 AS v",
      ]);
      expect(before.code).toBe(0);
      const session = { ...target("postgres"), port, pooler: "session" as const };
      await expect(connectTarget({ target: session, database: "postgres", parameters: {} })).rejects.toThrow(
        /holding 1 temporary relations, prepared statements or cursors of an earlier session/,
      );
    });
  });

  it("tells clients the agent cannot connect without its hosts, files or role", async () => {
    const policies = ALLOW_ALL;
    await server.sql("DROP ROLE IF EXISTS agent_full_7c2; CREATE ROLE agent_full_7c2 LOGIN CONNECTION LIMIT 0");
    const closed = await freePort();
    const secretDir = join(tempDir(), "secret-dir-4b1");
    for (const [given, hidden] of [
      [{ port: closed }, String(closed)],
      [{ password: undefined, passwordFile: join(secretDir, "target.password") }, "secret-dir-4b1"],
      [{ user: "agent_role_7c2", password: undefined }, "agent_role_7c2"],
      [{ user: "agent_full_7c2", password: undefined }, "agent_full_7c2"],
    ] as const) {
      const h = await startHarness({ pg: server, policies, target: given });
      try {
        const r = await psql(h, await h.token(), "SELECT 1", { db: "postgres" });
        expect(r.stderr).toMatch(
          /the agent cannot (connect to|read its credentials for) the target database|the target database refused the agent.s connection|the target database has too many connections/,
        );
        expect(r.stderr).not.toContain(hidden);
      } finally {
        await h.close();
      }
    }
    // What the client asked for that the server does not have is said as the server says it.
    const h = await startHarness({ pg: server, policies });
    try {
      const r = await psql(h, await h.token(), "SELECT 1", { db: "no_such_db" });
      expect(r.stderr).toContain('database "no_such_db" does not exist');
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
