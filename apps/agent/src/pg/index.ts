/**
 * Starts the Postgres listeners of an agent's postgres resources: loads the SQL parser once, gives
 * each listener its TLS certificate (configured, or issued by the agent itself into dataDir/pg-tls)
 * and its metrics.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hostname } from "node:os";
import { createSecureContext } from "node:tls";
import { createCertificateAuthority, issueServerCertificate } from "@moat/pki";
import { createClassifier, createClassifierPool, loadSqlParser } from "@moat/sql";
import type { Logger } from "@moat/common";
import { Counter, Gauge, type Registry } from "prom-client";
import type { AgentConfig } from "../config.js";
import type { BundleHolder } from "../bundle.js";
import type { AuditRecorder } from "../audit/recorder.js";
import { startPgListener, type PgListener } from "./listener.js";
import { FatalAgentError } from "../enrol.js";

export type { PgListener } from "./listener.js";

/** The agent's own certificate for Postgres clients (sslmode=require encrypts; verify-* needs `tls` configured). */
export async function ensureListenerCertificate(dataDir: string): Promise<{ certPem: string; keyPem: string }> {
  const dir = join(dataDir, "pg-tls");
  const certFile = join(dir, "server.crt");
  const keyFile = join(dir, "server.key");
  if (existsSync(certFile) && existsSync(keyFile))
    return { certPem: readFileSync(certFile, "utf8"), keyPem: readFileSync(keyFile, "utf8") };
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ca = await createCertificateAuthority(`Moat agent ${hostname()} local CA`);
  const cert = await issueServerCertificate(ca, ["localhost", "127.0.0.1", "::1", hostname()]);
  writeFileSync(join(dir, "ca.crt"), ca.certPem, { mode: 0o644 });
  writeFileSync(keyFile, cert.keyPem, { mode: 0o600 });
  writeFileSync(certFile, cert.certPem + ca.certPem, { mode: 0o644 });
  return { certPem: cert.certPem + ca.certPem, keyPem: cert.keyPem };
}

export async function startPostgresListeners(deps: {
  config: AgentConfig;
  bundles: BundleHolder;
  audit: AuditRecorder;
  logger: Logger;
  registry: Registry;
}): Promise<PgListener[]> {
  const resources = deps.config.resources.filter((r) => r.type === "postgres");
  for (const r of resources)
    if (!r.postgres)
      deps.logger.warn({ resource: r.name }, "postgres resource without a `postgres` section: announced, not served");
  const served = resources.filter((r) => r.postgres);
  if (served.length === 0) return [];
  await loadSqlParser();
  const registers = [deps.registry];
  const sessions = new Gauge({
    name: "moat_agent_pg_sessions",
    help: "Open Postgres sessions",
    labelNames: ["resource"],
    registers,
  });
  // Counted in plain numbers (one increment per statement; prom-client's labelled `inc` hashes its
  // labels each time) and handed to the counter when it is read.
  const counts = new Map<string, Record<"allow" | "deny" | "review", number>>();
  new Counter({
    name: "moat_agent_pg_statements_total",
    help: "Statements decided, by verdict",
    labelNames: ["resource", "verdict"],
    registers,
    collect() {
      this.reset();
      for (const [resource, byVerdict] of counts)
        for (const [verdict, n] of Object.entries(byVerdict)) if (n > 0) this.inc({ resource, verdict }, n);
    },
  });
  const refused = new Counter({
    name: "moat_agent_pg_refused_connections_total",
    help: "Connections refused before a session started, by reason",
    labelNames: ["resource", "reason"],
    registers,
  });
  const generated = served.some((r) => !r.postgres?.tls)
    ? await ensureListenerCertificate(deps.config.dataDir)
    : undefined;
  const listeners: PgListener[] = [];
  // One worker thread for every resource's long texts; started on the first one, gone when idle.
  const classifierPool = createClassifierPool();
  for (const r of served) {
    const pg = r.postgres as NonNullable<typeof r.postgres>;
    // What cannot work is said at start, naming the resource and the field (review 63: a missing
    // certificate, a key that is not the certificate's, a port in use ended the agent with a stack
    // trace and exit code 1, which a supervisor restarts forever).
    const field = `resource ${r.name}: postgres`;
    const tls = pg.tls
      ? {
          certPem: readConfigFile(`${field}.tls.certFile`, pg.tls.certFile),
          keyPem: readConfigFile(`${field}.tls.keyFile`, pg.tls.keyFile),
        }
      : (generated as { certPem: string; keyPem: string });
    try {
      createSecureContext({ cert: tls.certPem, key: tls.keyPem });
    } catch (error) {
      throw new FatalAgentError(`${field}.tls: the certificate and key cannot be used: ${(error as Error).message}`);
    }
    // The target's CA is read again for each connection; a file that cannot be read now is a mistake.
    if (pg.target.caFile) readConfigFile(`${field}.target.caFile`, pg.target.caFile);
    const counters = { allow: 0, deny: 0, review: 0 };
    counts.set(r.name, counters);
    const gauge = sessions.labels(r.name);
    const listener = await startPgListener({
      resource: r.name,
      listen: r.listen,
      config: pg,
      tls,
      bundles: deps.bundles,
      audit: deps.audit,
      classifier: createClassifier({ cacheEntries: pg.classifierCacheEntries }),
      classifierPool,
      logger: deps.logger,
      metrics: {
        sessions: { inc: () => gauge.inc(), dec: () => gauge.dec() },
        statement: (v) => counters[v]++,
        refused: (reason) => refused.labels(r.name, reason).inc(),
      },
    }).catch((error: NodeJS.ErrnoException) => {
      if (LISTEN_ERRORS.has(error.code ?? ""))
        throw new FatalAgentError(`resource ${r.name}: listen ${r.listen}: ${error.code} (${error.message})`);
      throw error;
    });
    listeners.push(listener);
  }
  return listeners;
}

/** Why a listen address cannot be used, as the configuration's mistake (exit 78), not a crash. */
const LISTEN_ERRORS = new Set([
  "EADDRINUSE",
  "EADDRNOTAVAIL",
  "EACCES",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EAI_FAIL",
  "ERR_SOCKET_BAD_PORT",
]);

/** A file the configuration names, read now; a FatalAgentError naming `field` when it cannot be. */
function readConfigFile(field: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new FatalAgentError(`${field}: cannot read ${path} (${code ?? (error as Error).message})`);
  }
}
