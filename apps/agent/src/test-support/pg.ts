/**
 * Test support (not built into dist/): a Postgres listener of the agent in-process, in front of a
 * real PostgreSQL server, with a signed bundle, a real audit spool and locally minted tokens; plus
 * helpers to run real clients (psql, pgbench) through it.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { SignJWT } from "jose";
import { createLogger } from "@moat/common";
import { AuditEventSchema, fromBinary, type AuditEvent } from "@moat/proto";
import { createClassifier, createClassifierPool, loadSqlParser, type Classifier, type ClassifierPool } from "@moat/sql";
import { tempDir, type TestPostgres } from "@moat/testkit";
import { createBundleHolder, type BundleHolder } from "../bundle.js";
import { AuditSpool } from "../audit/spool.js";
import { createAuditRecorder } from "../audit/recorder.js";
import type { PostgresListenerConfig, PostgresTargetConfig } from "../config.js";
import { ensureListenerCertificate } from "../pg/index.js";
import { startPgListener, type PgListener } from "../pg/listener.js";
import { keyPair, signedBundle } from "./bundles.js";

/**
 * Functions PostgreSQL runs unseen by the agent's text and catalog checks (implicit casts of row
 * types): `abs(v)` on a row of `visits` INSERTs into `visit_log`, `abs(s)` on a row of `switches`
 * turns `default_transaction_read_only` off. Needs tables `visits` (id int) and `visit_log` (n int).
 */
export const HIDDEN_CASTS_SQL = `CREATE FUNCTION visit_number(visits) RETURNS int LANGUAGE plpgsql
  AS 'BEGIN INSERT INTO visit_log VALUES (1); RETURN 1; END';
CREATE CAST (visits AS int) WITH FUNCTION visit_number(visits) AS IMPLICIT;
CREATE TABLE switches (id int); INSERT INTO switches VALUES (1);
CREATE FUNCTION lift(switches) RETURNS int LANGUAGE plpgsql
  AS 'BEGIN PERFORM set_config(''default_transaction_read_only'', ''off'', false); RETURN 1; END';
CREATE CAST (switches AS int) WITH FUNCTION lift(switches) AS IMPLICIT;`;

export const bundleKey = keyPair("bundle-1");
export const tokenKey = keyPair("token-1");

export interface Harness {
  listener: PgListener;
  bundles: BundleHolder;
  port: number;
  dataDir: string;
  /** A token for `user` in `groups`, as the control plane would mint it. */
  token(user?: string, groups?: string[], o?: { jti?: string; serviceAccount?: boolean }): Promise<string>;
  /** Replaces the bundle's policies (a newer version). */
  setPolicies(policies: object[], o?: { revoked?: string[]; disabled?: string[] }): void;
  events(): AuditEvent[];
  /** Reasons of connections the listener refused, in order (its `refused` metric). */
  refusals: string[];
  spool: AuditSpool;
  close(): Promise<void>;
}

let version = 1n;

/** Shared by every harness of a test file, as by every listener of an agent (its worker is unref'd). */
const classifierPool = createClassifierPool();

export async function startHarness(options: {
  pg: TestPostgres;
  policies: object[];
  target?: Partial<PostgresTargetConfig>;
  listener?: Partial<PostgresListenerConfig>;
  /** Audit spool limits (default: 64 MiB, fail-closed). */
  spool?: { maxBytes?: number; segmentBytes?: number; whenFull?: "fail-closed" | "drop-oldest" };
  /** Where long texts are classified (default: a pool shared by the file's harnesses). */
  classifierPool?: ClassifierPool;
  /** The classifier of the agent's own thread (default: a new one). */
  classifier?: Classifier;
}): Promise<Harness> {
  await loadSqlParser();
  const dataDir = tempDir("moat-pg-agent-");
  const bundles = createBundleHolder({ agentId: "agent1", dataDir, trustedKeys: [bundleKey.trusted] });
  const apply = (policies: object[], o: { revoked?: string[]; disabled?: string[] } = {}) => {
    version++;
    const r = bundles.apply(
      signedBundle(bundleKey, {
        version,
        issuedAt: new Date(),
        ttlMs: 3600_000,
        tokenKeys: [tokenKey.trusted],
        policies: policies.map((p) => JSON.stringify(p)),
        ...o,
      }),
      new Date(),
    );
    if (!r.applied) throw new Error(r.error);
  };
  apply(options.policies);
  const refusals: string[] = [];
  const { spool } = AuditSpool.open({
    dir: join(dataDir, "audit"),
    maxBytes: 64 * 1024 * 1024,
    segmentBytes: 4 * 1024 * 1024,
    whenFull: "fail-closed",
    ...options.spool,
  });
  const audit = createAuditRecorder({ spool, bundleVersion: () => bundles.current()?.version ?? 0n });
  const logger = createLogger({ name: "pg-test", level: process.env.MOAT_TEST_LOG === "1" ? "debug" : "silent" });
  const listener = await startPgListener({
    resource: "db",
    listen: "127.0.0.1:0",
    config: {
      plaintextAuth: "loopback",
      maxMessageBytes: 64 * 1024 * 1024,
      classifierCacheEntries: 10_000,
      parseOffThreadBytes: 16 * 1024,
      maxSessions: 1000,
      setupTimeoutMs: 30_000,
      readOnlySessions: true,
      ...options.listener,
      target: {
        host: "127.0.0.1",
        port: options.pg.port,
        user: "postgres",
        sslmode: "disable",
        connectTimeoutMs: 5000,
        pooler: "none",
        ...options.target,
      },
    },
    tls: await ensureListenerCertificate(dataDir),
    bundles,
    audit,
    classifier: options.classifier ?? createClassifier(),
    classifierPool: options.classifierPool ?? classifierPool,
    logger,
    metrics: {
      sessions: { inc() {}, dec() {} },
      statement() {},
      refused: (reason: string) => refusals.push(reason),
    },
  });
  let jti = 0;
  return {
    refusals,
    spool,
    listener,
    bundles,
    port: listener.port,
    dataDir,
    async token(user = "alice@example.com", groups = ["eng"], o = {}) {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ groups, kind: o.serviceAccount ? "service-account" : "user" })
        .setProtectedHeader({ alg: "EdDSA", kid: tokenKey.kid, typ: "JWT" })
        .setIssuer("moat")
        .setAudience("moat-agents")
        .setSubject(user)
        .setJti(o.jti ?? `tok-${++jti}`)
        .setIssuedAt(now - 5)
        .setNotBefore(now - 5)
        .setExpirationTime(now + 900)
        .sign(tokenKey.privateKey);
    },
    setPolicies: apply,
    events: () => spool.read(1n, 1_000_000, 1 << 30).map((e) => fromBinary(AuditEventSchema, e.payload)),
    async close() {
      await listener.close();
      spool.close();
    },
  };
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion (never throws on a non-zero exit). */
export function run(cmd: string, args: string[], env: Record<string, string> = {}, input?: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: { ...process.env, ...env }, timeout: 60_000, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() });
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** psql through the agent: `-X -q -A -t` and ON_ERROR_STOP off unless given; `env` adds variables (PGCLIENTENCODING). */
export function psql(
  h: Harness,
  token: string,
  sql: string,
  o: {
    user?: string;
    db?: string;
    sslmode?: string;
    extra?: string[];
    input?: string;
    env?: Record<string, string>;
  } = {},
): Promise<Run> {
  const conn = `host=127.0.0.1 port=${h.port} user=${o.user ?? "alice@example.com"} dbname=${o.db ?? "app"} sslmode=${o.sslmode ?? "require"}`;
  return run(
    "psql",
    [conn, "-X", "-q", "-A", "-t", ...(o.extra ?? []), ...(sql ? ["-c", sql] : [])],
    { ...o.env, PGPASSWORD: token },
    o.input,
  );
}

/** `pgbench -i -s 1` of database app, directly on the server (not through the agent). */
export function pgbenchInit(port: number): Promise<Run> {
  return run("pgbench", ["-i", "-s", "1", "-q", `host=127.0.0.1 port=${port} user=postgres dbname=app`]);
}

/** pgbench through the agent (`args` before the connection string), as `user` with `token`. */
export function pgbench(h: Harness, token: string, args: string[], user = "alice@example.com"): Promise<Run> {
  return run("pgbench", [...args, `host=127.0.0.1 port=${h.port} user=${user} dbname=app sslmode=require`], {
    PGPASSWORD: token,
  });
}
