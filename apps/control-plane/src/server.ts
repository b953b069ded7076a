/**
 * Assembles a running control plane from a validated config: store (migrated), TLS material, bus,
 * services, REST and gRPC listeners. `main.ts` adds process concerns (args, signals, banner);
 * tests call `startControlPlane` directly with real ports.
 */
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { createLogger, type Logger } from "@moat/common";
import * as grpc from "@grpc/grpc-js";
import { auditSinkIds, startAuditSinks, type AuditSinks } from "./audit-sinks/index.js";
import { createInProcessBus, type EventBus } from "./bus.js";
import type { ControlPlaneConfig } from "./config.js";
import { createAgentChannel, type AgentChannel } from "./grpc/server.js";
import { buildHttpApp } from "./http/app.js";
import { createMetrics } from "./metrics.js";
import { createKeyring, loadMasterKey } from "./keys.js";
import { createAgentService, type AgentService } from "./services/agents.js";
import { bundleBudgetBytes, createBundleService, type BundleService } from "./services/bundles.js";
import { createPolicyService, type PolicyService } from "./services/policies.js";
import { createTokenService } from "./services/tokens.js";
import { createAuditService, type AuditService } from "./services/audit.js";
import { createAuditRetention, type AuditRetention } from "./services/audit-retention.js";
import { createOidcService, type OidcConfig } from "./services/oidc.js";
import { createIdentityService } from "./services/identity.js";
import { openStore, type Store } from "./store/index.js";
import { loadOrCreateTlsMaterial, serverNames } from "./tls.js";
import { VERSION } from "./version.js";

export interface RunningControlPlane {
  config: ControlPlaneConfig;
  logger: Logger;
  store: Store;
  bus: EventBus;
  agents: AgentService;
  policies: PolicyService;
  channel: AgentChannel;
  /** Delivery of stored audit events to the configured sinks (webhooks, NATS JetStream). */
  auditSinks: AuditSinks;
  /** Audit ingestion, search, sessions, export and verification (what the agent channel and REST use). */
  audit: AuditService;
  /** The audit retention job (`audit.retention`); runs at start and then periodically when a limit is set. */
  auditRetention: AuditRetention;
  /** Base URL of the REST API, e.g. http://127.0.0.1:7070 */
  httpUrl: string;
  /** host:port agents dial. */
  grpcAddress: string;
  grpcPort: number;
  /** CA fingerprint agents pin ("" when plaintext). */
  caFingerprint: string;
  caPem: string;
  /** Set on the first start only: the bootstrap admin and its API key (shown once). */
  bootstrap?: { email: string; apiKey: string };
  /** Issues an enrolment token for the local agent (`localAgent.enabled`), creating it if needed. */
  issueLocalAgentToken(): Promise<string>;
  close(): Promise<void>;
}

function bindGrpc(server: grpc.Server, address: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (error, port) => (error ? reject(error) : resolve(port)));
  });
}

function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export async function startControlPlane(
  config: ControlPlaneConfig,
  options: {
    logger?: Logger;
    /** Base64 master key (MOAT_MASTER_KEY), the same on every replica; default: <dataDir>/master.key. */
    masterKey?: string;
  } = {},
): Promise<RunningControlPlane> {
  const logger = options.logger ?? createLogger({ name: "moat-control-plane", level: config.logLevel });
  const now = () => new Date();
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  chmodSync(config.dataDir, 0o700);

  const store = await openStore(config.databaseUrl);
  if (store.migrationsApplied.length > 0)
    logger.info({ migrations: store.migrationsApplied, store: store.provider }, "store migrated");

  const replicaId = config.replicaId ?? `${hostname()}:${process.pid}`;
  const metrics = createMetrics();
  const bus = createInProcessBus((topic, error) => logger.error({ err: error, topic }, "bus handler failed"));

  const tls = config.grpc.plaintext
    ? undefined
    : await loadOrCreateTlsMaterial({
        dataDir: config.dataDir,
        names: serverNames(config.grpc.host, config.grpc.advertiseAddress, config.grpc.subjectAltNames),
        ...(config.grpc.certFile && config.grpc.keyFile && config.grpc.caFile
          ? { files: { certFile: config.grpc.certFile, keyFile: config.grpc.keyFile, caFile: config.grpc.caFile } }
          : {}),
      });
  if (tls?.created.length)
    logger.info({ created: tls.created, caFingerprint: tls.caFingerprint }, "agent channel TLS material created");
  if (config.grpc.plaintext) logger.warn({ host: config.grpc.host }, "agent channel is PLAINTEXT (loopback only)");

  let ready = false;
  // The gRPC port may be 0 (tests): the advertised address is known only after binding, and only
  // enrolment tokens (issued later) need it.
  let grpcAddress = "";

  const agents = createAgentService({
    store,
    bus,
    now,
    endpoint: () => grpcAddress,
    caFingerprint: tls?.caFingerprint ?? "",
    enrolmentTtlMs: config.enrolment.tokenTtlSeconds * 1000,
    staleAfterMs: config.grpc.heartbeatSeconds * 3 * 1000,
  });
  const keyring = createKeyring({
    store,
    masterKey: loadMasterKey(config.dataDir, options.masterKey),
    now,
    activationDelayMs: config.tokens.keyActivationSeconds * 1000,
    // A replaced token key stays published while tokens it signed can still be valid.
    retireAfterMs: (config.tokens.ttlSeconds + 300) * 1000,
    bundleRetireAfterMs: config.bundles.keyGraceSeconds * 1000,
  });
  // Replicas share no bus yet (NATS comes with scale-out): every change that reaches agents bumps a
  // counter in the shared store, and each replica polls it and pushes fresh bundles to the agents
  // connected to it. In one process this is a no-op (it saw its own change on the in-process bus).
  let seenEpoch = await store.counters.get("bundle.epoch");
  bus.subscribe("bundle.changed", async () => {
    const epoch = await store.counters.increment("bundle.epoch");
    if (epoch === seenEpoch + 1n) seenEpoch = epoch;
  });
  let polling = false;
  const epochTimer = setInterval(() => {
    if (polling) return;
    polling = true;
    store.counters
      .get("bundle.epoch")
      .then((epoch) => {
        if (epoch > seenEpoch) {
          seenEpoch = epoch;
          channelRef.current?.pushAll();
        }
      })
      .catch((error: unknown) => logger.warn({ err: error }, "could not poll for changes made on other replicas"))
      .finally(() => (polling = false));
  }, config.replicaPollMs);
  epochTimer.unref();
  const channelRef: { current?: AgentChannel } = {};

  // Checked often enough that a short bundle-key grace period (tests) ends on time.
  const retireCheckMs = Math.min(60_000, Math.max(1_000, (config.bundles.keyGraceSeconds * 1000) / 4));
  const retireTimer = setInterval(() => {
    for (const use of ["token", "bundle"] as const) {
      keyring.retireExpired(use).then(
        async (retired) => {
          if (retired.length === 0) return;
          logger.info({ use, retired }, "old signing keys retired");
          await bus.publish("bundle.changed", { agentIds: "*" });
        },
        (error: unknown) => logger.error({ err: error, use }, "could not retire old signing keys"),
      );
    }
  }, retireCheckMs);
  retireTimer.unref();
  const tokens = createTokenService({
    store,
    keyring,
    bus,
    now,
    issuer: config.tokens.issuer,
    audience: config.tokens.audience,
    apiAudience: config.tokens.apiAudience,
    ttlSeconds: config.tokens.ttlSeconds,
  });
  const identity = createIdentityService({ store, tokens, bus, now });
  const oidc = config.oidc
    ? createOidcService({
        config: config.oidc as OidcConfig,
        store,
        bus,
        now,
        jwksCooldownMs: config.oidc.jwksRefreshCooldownSeconds * 1000,
      })
    : undefined;
  // Policy writes are checked against the bundles they would produce (bundles is defined below).
  const policies = createPolicyService({
    store,
    bus,
    checkBundles: (current, proposed) => bundles.checkBudget(current, proposed),
  });
  const bundles: BundleService = createBundleService({
    store,
    policies,
    keyring,
    now,
    validitySeconds: config.bundles.validitySeconds,
    tokenIssuer: config.tokens.issuer,
    tokenAudience: config.tokens.audience,
    maxBytes: bundleBudgetBytes(config.grpc.maxMessageBytes),
  });
  const audit = createAuditService({ store });
  const auditRetention = createAuditRetention({
    store,
    audit,
    logger: logger.child({ module: "audit-retention" }),
    config: config.audit.retention,
    sinkIds: auditSinkIds(config.audit.sinks),
    now,
  });
  const channel = createAgentChannel({
    logger: logger.child({ module: "agent-channel" }),
    agents,
    bundles,
    audit,
    bundleRefreshMs: Math.max(10_000, (config.bundles.validitySeconds * 1000) / 3),
    store,
    bus,
    metrics,
    now,
    replicaId,
    heartbeatSeconds: config.grpc.heartbeatSeconds,
    maxMessageBytes: config.grpc.maxMessageBytes,
  });
  // The chain includes the CA so that a new agent can find and pin it by fingerprint.
  channelRef.current = channel;
  const credentials = tls
    ? grpc.ServerCredentials.createSsl(
        null,
        [{ cert_chain: Buffer.from(tls.certPem + tls.caPem), private_key: Buffer.from(tls.keyPem) }],
        false,
      )
    : grpc.ServerCredentials.createInsecure();
  const grpcPort = await bindGrpc(channel.server, formatHostPort(config.grpc.host, config.grpc.port), credentials);
  const advertiseHost = config.grpc.host === "0.0.0.0" || config.grpc.host === "::" ? hostname() : config.grpc.host;
  grpcAddress = config.grpc.advertiseAddress ?? formatHostPort(advertiseHost, grpcPort);

  const bootstrap = await identity.bootstrapAdmin(config.bootstrap.adminEmail);
  if (bootstrap) {
    logger.info({ email: bootstrap.email }, "bootstrap admin created (its API key is shown once)");
    if (config.bootstrap.adminKeyFile) {
      writeFileSync(config.bootstrap.adminKeyFile, bootstrap.apiKey + "\n", { mode: 0o600 });
      chmodSync(config.bootstrap.adminKeyFile, 0o600);
    }
  }

  const app = await buildHttpApp({
    logger: logger.child({ module: "http" }),
    store,
    identity,
    tokens,
    keyring,
    bus,
    ...(oidc ? { oidc } : {}),
    audit,
    agents,
    policies,
    metrics,
    isReady: () => ready,
    version: VERSION,
    replicaId,
    bodyLimitBytes: config.http.bodyLimitBytes,
  });
  await app.listen({ host: config.http.host, port: config.http.port });
  const address = app.server.address();
  const httpPort = typeof address === "object" && address ? address.port : config.http.port;
  const httpUrl = `http://${formatHostPort(config.http.host === "0.0.0.0" ? "127.0.0.1" : config.http.host, httpPort)}`;
  ready = true;
  const auditSinks = startAuditSinks({
    config: config.audit.sinks,
    store,
    bus,
    logger,
    registry: metrics.registry,
    replicaId,
  });
  logger.info(
    { http: httpUrl, grpc: grpcAddress, tls: !!tls, store: store.provider, version: VERSION },
    "control plane ready",
  );
  auditRetention.start();

  let closed = false;
  return {
    config,
    logger,
    store,
    bus,
    agents,
    policies,
    channel,
    auditSinks,
    audit,
    auditRetention,
    httpUrl,
    grpcAddress,
    grpcPort,
    caFingerprint: tls?.caFingerprint ?? "",
    caPem: tls?.caPem ?? "",
    ...(bootstrap ? { bootstrap } : {}),
    async issueLocalAgentToken() {
      const name = config.localAgent.name;
      const existing = await store.agents.findActiveByName(name);
      if (existing) return (await agents.issueEnrolmentToken(existing.id)).enrolmentToken;
      return (await agents.create({ name, description: "Agent started beside the control plane" })).enrolmentToken;
    },
    async close() {
      if (closed) return;
      closed = true;
      ready = false;
      clearInterval(retireTimer);
      clearInterval(epochTimer);
      await auditRetention.stop();
      await auditSinks.close();
      channel.closeAll("the control plane is shutting down");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          channel.server.forceShutdown();
          resolve();
        }, 3000);
        channel.server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      await app.close();
      await bus.close();
      await store.close();
    },
  };
}
