/**
 * Assembles a running agent: identity (enrolling if needed), control-plane connection, admin
 * endpoint, metrics. `main.ts` adds process concerns; tests call `startAgent` directly.
 */
import { mkdirSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { hostname } from "node:os";
import { createLogger, type Logger } from "@moat/common";
import {
  create,
  ConnectRequestSchema,
  HelloSchema,
  ResourceType,
  type ConnectRequest,
  type ConnectResponse,
} from "@moat/proto";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import { startAdminServer } from "./admin-server.js";
import type { AgentConfig, ResourceConfig } from "./config.js";
import { createAgentServiceClient } from "./control-plane-client.js";
import { createControlPlaneConnection, type ConnectionState, type ControlPlaneConnection } from "./connection.js";
import { ensureIdentity } from "./enrol.js";
import { writeIdentity, type AgentIdentity } from "./identity-file.js";
import { createBundleHolder, type BundleHolder } from "./bundle.js";
import { TokenRejected, verifyAccessToken } from "./tokens.js";
import { createAuditRecorder } from "./audit/recorder.js";
import { createAuditShipper, type AuditShipper } from "./audit/shipper.js";
import { AuditSpool } from "./audit/spool.js";
import { VERSION } from "./version.js";
import { startPostgresListeners, type PgListener } from "./pg/index.js";

const TYPES: Record<ResourceConfig["type"], ResourceType> = {
  postgres: ResourceType.POSTGRES,
  ssh: ResourceType.SSH,
  kubernetes: ResourceType.KUBERNETES,
  http: ResourceType.HTTP,
};

/**
 * Reads a /v1/decide body (the control plane's simulate request, or `token` instead of
 * user/groups: then the identity comes from verifying the access token, as an enforcer does).
 */
async function decideFromJson(bundles: BundleHolder, body: unknown) {
  const b = body as Record<string, unknown>;
  const str = (k: string) => (typeof b[k] === "string" ? (b[k] as string) : undefined);
  const resource = str("resource");
  const action = str("action");
  const time = str("time");
  const now = time ? Date.parse(time) : Date.now();
  const bundleVersion = (bundles.current()?.version ?? 0n).toString();
  let who: { user: string; groups: string[]; serviceAccount: boolean };
  const token = str("token");
  if (token !== undefined) {
    try {
      const identity = await verifyAccessToken(token, bundles.current(), new Date(now));
      who = { user: identity.user, groups: identity.groups, serviceAccount: identity.serviceAccount };
    } catch (error) {
      if (error instanceof TokenRejected)
        return { effect: "deny", rule: "", message: `authentication failed: ${error.message}`, bundleVersion };
      throw error;
    }
  } else {
    const user = str("user");
    if (!user) throw new Error("user (or token) is required");
    who = {
      user,
      groups: Array.isArray(b.groups) ? b.groups.map(String) : [],
      serviceAccount: b.serviceAccount === true,
    };
  }
  if (!resource || !action) throw new Error("resource and action are required");
  const verdict = bundles.decide({
    ...who,
    resource,
    action,
    ...(Array.isArray(b.tables) ? { tables: b.tables.map(String) } : {}),
    ...(str("command") !== undefined ? { command: str("command") as string } : {}),
    ...(str("sourceIp") ? { sourceIp: str("sourceIp") as string } : {}),
    ...(str("reason") !== undefined ? { reason: str("reason") as string } : {}),
    now,
  });
  return {
    effect: verdict.effect,
    rule: verdict.rule,
    message: verdict.message,
    obligations: verdict.obligations,
    user: who.user,
    bundleVersion,
  };
}

export interface RunningAgent {
  identity: AgentIdentity;
  bundles: BundleHolder;
  connection: ControlPlaneConnection;
  adminPort: number | undefined;
  /** Postgres listeners by resource name. */
  postgres: Map<string, PgListener>;
  logger: Logger;
  /** Resolves with the reason when the control plane rejects this agent for good. */
  rejected: Promise<string>;
  /**
   * Stops the agent: its Postgres sessions first (drained for up to `drainMs`: see
   * PgListener.close; a second call cuts the drain short), then the control-plane stream, the
   * audit spool (everything recorded is in it) and the admin endpoint.
   */
  close(options?: { drainMs?: number }): Promise<void>;
}

export async function startAgent(
  config: AgentConfig,
  options: { logger?: Logger; signal?: AbortSignal } = {},
): Promise<RunningAgent> {
  const logger = options.logger ?? createLogger({ name: "moat-agent", level: config.logLevel });
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  chmodSync(config.dataDir, 0o700);

  const identity = await ensureIdentity({
    config,
    logger,
    version: VERSION,
    ...(options.signal ? { signal: options.signal } : {}),
  });

  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "moat_agent_" });
  const connectedGauge = new Gauge({
    name: "moat_agent_control_plane_connected",
    help: "1 while the control-plane stream is up",
    registers: [registry],
  });
  const stateChanges = new Counter({
    name: "moat_agent_control_plane_state_changes_total",
    help: "Connection state changes",
    labelNames: ["state"],
    registers: [registry],
  });

  const client = createAgentServiceClient({
    address: identity.endpoint,
    caPem: identity.caPem,
    plaintext: config.controlPlane.plaintext,
    maxMessageBytes: config.controlPlane.maxMessageBytes,
    ...(config.controlPlane.serverName ? { serverName: config.controlPlane.serverName } : {}),
  });

  let resolveRejected: (reason: string) => void = () => undefined;
  const rejected = new Promise<string>((r) => (resolveRejected = r));

  const bundleVersionGauge = new Gauge({
    name: "moat_agent_bundle_version",
    help: "Version of the policy bundle in force (0: none)",
    registers: [registry],
  });
  const bundleExpiryGauge = new Gauge({
    name: "moat_agent_bundle_expires_timestamp_seconds",
    help: "When the bundle in force stops being trusted",
    registers: [registry],
  });
  const bundleRejections = new Counter({
    name: "moat_agent_bundle_rejections_total",
    help: "Bundles refused (bad signature, rollback, wrong agent, invalid)",
    registers: [registry],
  });
  let currentIdentity = identity;
  const bundles = createBundleHolder({
    agentId: identity.agentId,
    dataDir: config.dataDir,
    trustedKeys: identity.bundleKeys,
    onTrustedKeys: (keys) => {
      if (JSON.stringify(keys) === JSON.stringify(currentIdentity.bundleKeys)) return;
      currentIdentity = { ...currentIdentity, bundleKeys: keys };
      writeIdentity(config.dataDir, currentIdentity);
    },
  });
  const showBundle = () => {
    const b = bundles.current();
    bundleVersionGauge.set(Number(b?.version ?? 0n));
    bundleExpiryGauge.set(b ? b.notAfter.getTime() / 1000 : 0);
  };
  const { spool, recovery } = AuditSpool.open({
    dir: join(config.dataDir, "audit"),
    maxBytes: config.audit.maxBytes,
    segmentBytes: config.audit.segmentBytes,
    whenFull: config.audit.whenFull,
  });
  // Created once the connection exists; events recorded before that are shipped on connect.
  const shipping: { shipper?: AuditShipper } = {};
  const audit = createAuditRecorder({
    spool,
    bundleVersion: () => bundles.current()?.version ?? 0n,
    onRecorded: () => shipping.shipper?.wake(),
  });
  const auditGauges = [
    new Gauge({
      name: "moat_agent_audit_spool_bytes",
      help: "Bytes in the audit spool",
      registers: [registry],
      collect() {
        this.set(spool.totalBytes);
      },
    }),
    new Gauge({
      name: "moat_agent_audit_unshipped_events",
      help: "Audit events not yet stored by the control plane",
      registers: [registry],
      collect() {
        this.set(Number(spool.unshipped));
      },
    }),
    new Gauge({
      name: "moat_agent_audit_oldest_unshipped_age_seconds",
      help: "Age of the oldest audit event not yet stored by the control plane (0 when none)",
      registers: [registry],
      collect() {
        this.set(spool.oldestUnshippedAgeMs() / 1000);
      },
    }),
  ];
  void auditGauges;
  if (recovery.truncatedBytes > 0) {
    logger.error(
      { truncatedBytes: recovery.truncatedBytes, droppedSegments: recovery.droppedSegments },
      "the audit spool had a torn or corrupt tail; it was truncated",
    );
    await audit.record({
      type: "audit.gap",
      message: `the audit spool's tail was truncated after a crash (${recovery.truncatedBytes} bytes, ${recovery.droppedSegments} later segments dropped)`,
      detail: {
        case: "auditGap",
        value: { firstMissingSeq: recovery.lastSeq + 1n, lastMissingSeq: 0n, reason: "torn or corrupt spool tail" },
      },
    });
  }
  await audit.record({ type: "agent.started", message: `agent ${VERSION} started on ${hostname()}` });

  const loaded = bundles.loadPersisted();
  const loadedExpiry = bundles.current()?.notAfter;
  if (loaded?.applied && loadedExpiry && loadedExpiry.getTime() <= Date.now())
    logger.warn(
      { version: loaded.version.toString(), expiresAt: loadedExpiry },
      "the policy bundle loaded from disk has expired; denying everything until the control plane sends a new one",
    );
  else if (loaded?.applied)
    logger.info({ version: loaded.version.toString(), expiresAt: loadedExpiry }, "policy bundle loaded from disk");
  else if (loaded)
    logger.error(
      { error: loaded.error },
      "the persisted policy bundle is not trusted; denying everything until a new one arrives",
    );
  else logger.warn("no policy bundle yet; denying everything until the control plane sends one");
  showBundle();

  const onMessage = (message: ConnectResponse, send: (m: ConnectRequest) => void) => {
    switch (message.kind.case) {
      case "bundle": {
        const result = bundles.apply(message.kind.value, new Date());
        if (result.applied) {
          logger.info(
            {
              version: result.version.toString(),
              policies: bundles.current()?.policyCount,
              expiresAt: bundles.current()?.notAfter,
            },
            "policy bundle applied",
          );
        } else {
          bundleRejections.inc();
          logger.error(
            {
              version: result.version.toString(),
              error: result.error,
              enforcing: bundles.current()?.version.toString() ?? "none",
            },
            "policy bundle rejected; the previous one stays in force",
          );
        }
        showBundle();
        if (result.applied) cutRevokedSessions();
        audit
          .record({
            type: "bundle.applied",
            message: result.applied
              ? `bundle ${result.version} applied`
              : `bundle ${result.version} rejected: ${result.error}`,
            detail: {
              case: "bundleApplied",
              value: { version: result.version, applied: result.applied, error: result.applied ? "" : result.error },
            },
          })
          .catch((error: unknown) => logger.error({ err: error }, "could not record a bundle event"));
        send(
          create(ConnectRequestSchema, {
            kind: {
              case: "bundleAck",
              value: { version: result.version, applied: result.applied, error: result.applied ? "" : result.error },
            },
          }),
        );
        return;
      }
      case "resourceRejected":
        logger.error(
          { resource: message.kind.value.name, reason: message.kind.value.reason },
          "the control plane rejected a resource",
        );
        return;
      case "welcome":
        shipping.shipper?.connected(message.kind.value.auditAckedSeq);
        return;
      case "auditAck":
        shipping.shipper?.acknowledged(message.kind.value.ackedSeq);
        return;
      case "heartbeatAck":
        return;
      default:
        // Approvals, kills and revocations are handled as their capabilities land.
        logger.debug({ kind: message.kind.case }, "control message not handled yet");
    }
  };

  const connection = createControlPlaneConnection({
    client,
    credential: identity.credential,
    logger,
    backoff: { initialMs: config.reconnect.initialDelayMs, maxMs: config.reconnect.maxDelayMs },
    hello: () =>
      create(HelloSchema, {
        agentVersion: VERSION,
        hostname: hostname(),
        bundleVersion: bundles.current()?.version ?? 0n,
        resources: config.resources.map((r) => ({
          name: r.name,
          type: TYPES[r.type],
          listenAddress: r.listen,
          description: r.description,
          labels: Object.entries(r.labels).map(([key, value]) => ({ key, value })),
        })),
      }),
    onMessage,
    onStateChange: (state: ConnectionState) => {
      if (state !== "connected") shipping.shipper?.disconnected();
      connectedGauge.set(state === "connected" ? 1 : 0);
      stateChanges.labels(state).inc();
    },
    onFatal: (reason) => resolveRejected(reason),
  });
  shipping.shipper = createAuditShipper({ spool, send: (m) => connection.send(m) });

  const pgResourceNames = config.resources.filter((r) => r.postgres).map((r) => r.name);
  const pgListeners: PgListener[] = await startPostgresListeners({
    config,
    bundles,
    audit,
    logger,
    registry,
  });
  /** Set once close() has begun (see RunningAgent.close). */
  let closing: Promise<void> | undefined;
  /** Whether the agent can decide anything (see AdminStatus.status). */
  function enforcementStatus(): { status: "ok" | "failing-closed" | "draining"; problem?: string } {
    if (closing !== undefined)
      return { status: "draining", problem: "the agent is stopping: new sessions are refused, open ones finish" };
    const b = bundles.current();
    if (!b) return { status: "failing-closed", problem: "no policy bundle yet: every session is denied" };
    if (b.notAfter.getTime() <= Date.now())
      return {
        status: "failing-closed",
        problem: `the policy bundle expired at ${b.notAfter.toISOString()}: every session and statement is denied until the control plane sends a new one`,
      };
    return { status: "ok" };
  }

  // Revoking a token or disabling a user ends their live sessions as soon as the bundle saying so
  // arrives; so does a bundle under which `connect` is no longer allowed (see PgListener.recheck).
  function cutRevokedSessions() {
    if (!bundles.current()) return;
    for (const l of pgListeners) {
      const n = l.recheck();
      if (n > 0)
        logger.info(
          { sessions: n },
          "sessions the new bundle no longer allows closed (revoked tokens, disabled users, access withdrawn or narrowed)",
        );
    }
  }
  connection.start();

  const admin = config.admin.enabled
    ? await startAdminServer({
        host: config.admin.host,
        port: config.admin.port,
        registry,
        ...(config.admin.decisionEndpoint ? { decide: (body: unknown) => decideFromJson(bundles, body) } : {}),
        status: () => ({
          ...enforcementStatus(),
          agentId: identity.agentId,
          agentName: identity.agentName,
          version: VERSION,
          controlPlane: connection.state(),
          bundleVersion: (bundles.current()?.version ?? 0n).toString(),
          bundleExpiresAt: bundles.current()?.notAfter.toISOString() ?? null,
          auditUnshipped: spool.unshipped.toString(),
          auditOldestUnshippedSeconds: Math.round(spool.oldestUnshippedAgeMs() / 100) / 10,
          resources: config.resources.length,
        }),
      })
    : undefined;

  return {
    identity,
    bundles,
    connection,
    adminPort: admin?.port,
    postgres: new Map(pgListeners.map((l, i) => [pgResourceNames[i] as string, l])),
    logger,
    rejected,
    async close(options = {}) {
      if (closing !== undefined) {
        // A second signal while draining: the sessions end now.
        await Promise.all(pgListeners.map((l) => l.close()));
        return closing;
      }
      closing = closeAll(options.drainMs ?? 0);
      return closing;
    },
  };

  async function closeAll(drainMs: number): Promise<void> {
    await Promise.all(pgListeners.map((l) => l.close({ drainMs })));
    await connection.stop();
    spool.close();
    client.close();
    await admin?.close();
  }
}
