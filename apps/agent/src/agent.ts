/**
 * Assembles a running agent: identity (enrolling if needed), control-plane connection, admin
 * endpoint, metrics. `main.ts` adds process concerns; tests call `startAgent` directly.
 */
import { mkdirSync, chmodSync } from "node:fs";
import { hostname } from "node:os";
import { createLogger, type Logger } from "@moat/common";
import { create, HelloSchema, ResourceType, type ConnectResponse } from "@moat/proto";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import { startAdminServer } from "./admin-server.js";
import type { AgentConfig, ResourceConfig } from "./config.js";
import { createAgentServiceClient } from "./control-plane-client.js";
import { createControlPlaneConnection, type ConnectionState, type ControlPlaneConnection } from "./connection.js";
import { ensureIdentity } from "./enrol.js";
import type { AgentIdentity } from "./identity-file.js";
import { VERSION } from "./version.js";

const TYPES: Record<ResourceConfig["type"], ResourceType> = {
  postgres: ResourceType.POSTGRES,
  ssh: ResourceType.SSH,
  kubernetes: ResourceType.KUBERNETES,
  http: ResourceType.HTTP,
};

export interface RunningAgent {
  identity: AgentIdentity;
  connection: ControlPlaneConnection;
  adminPort: number | undefined;
  logger: Logger;
  /** Resolves with the reason when the control plane rejects this agent for good. */
  rejected: Promise<string>;
  close(): Promise<void>;
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
  const bundleVersion = 0n;

  const onMessage = (message: ConnectResponse) => {
    switch (message.kind.case) {
      case "resourceRejected":
        logger.error(
          { resource: message.kind.value.name, reason: message.kind.value.reason },
          "the control plane rejected a resource",
        );
        return;
      case "welcome":
      case "heartbeatAck":
        return;
      default:
        // Bundles, approvals, kills and revocations are handled as their capabilities land.
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
        bundleVersion,
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
      connectedGauge.set(state === "connected" ? 1 : 0);
      stateChanges.labels(state).inc();
    },
    onFatal: (reason) => resolveRejected(reason),
  });
  connection.start();

  const admin = config.admin.enabled
    ? await startAdminServer({
        host: config.admin.host,
        port: config.admin.port,
        registry,
        status: () => ({
          status: "ok",
          agentId: identity.agentId,
          agentName: identity.agentName,
          version: VERSION,
          controlPlane: connection.state(),
          bundleVersion: bundleVersion.toString(),
          resources: config.resources.length,
        }),
      })
    : undefined;

  return {
    identity,
    connection,
    adminPort: admin?.port,
    logger,
    rejected,
    async close() {
      await connection.stop();
      client.close();
      await admin?.close();
    },
  };
}
